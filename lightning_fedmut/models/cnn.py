"""A small CNN with BatchNorm for 8x8 digit images."""

from __future__ import annotations

from torch import nn

from lightning_fedmut.models.classifier import Classifier


def digits_cnn(num_classes: int = 10, batch_norm: bool = True, width: int = 16) -> nn.Sequential:
    """Two 3x3 conv blocks (optionally with BatchNorm) and a linear head for ``1x8x8`` inputs.

    Examples:
        >>> import torch
        >>> digits_cnn()(torch.zeros(5, 1, 8, 8)).shape
        torch.Size([5, 10])
    """
    def block(cin: int, cout: int) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        return [*layers, nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(1, width), *block(width, 2 * width), nn.Flatten(), nn.Linear(2 * width * 4, num_classes))


class DigitsCNN(Classifier):
    """:class:`Classifier` around :func:`digits_cnn`, the quickstart's model.

    Examples:
        >>> DigitsCNN(batch_norm=False).hparams.lr
        0.01
    """

    def __init__(
        self, num_classes: int = 10, batch_norm: bool = True, width: int = 16, lr: float = 0.01, momentum: float = 0.5
    ) -> None:
        super().__init__(digits_cnn(num_classes, batch_norm, width), num_classes=num_classes, lr=lr, momentum=momentum)
        self.save_hyperparameters()
