"""A 1-D CNN for MNIST-1D signals of length 40."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_fedmut.models.classifier import Classifier


class _AddChannel(nn.Module):
    """``(N, L)`` signals to ``(N, 1, L)``; inputs that already have a channel pass through."""

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1) if x.dim() == 2 else x


def mnist1d_cnn(num_classes: int = 10, channels: int = 25, length: int = 40) -> nn.Sequential:
    """Three strided 1-D convolutions and a linear head, the convolutional baseline of MNIST-1D.

    Examples:
        >>> import torch
        >>> mnist1d_cnn()(torch.zeros(5, 40)).shape
        torch.Size([5, 10])
    """
    def out_len(n: int, kernel: int) -> int:
        return (n + 2 - kernel) // 2 + 1

    n = out_len(out_len(out_len(length, 5), 3), 3)
    return nn.Sequential(
        _AddChannel(),
        nn.Conv1d(1, channels, 5, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(channels * n, num_classes),
    )


class MNIST1DCNN(Classifier):
    """:class:`Classifier` around :func:`mnist1d_cnn`, the built-in model for ``--data mnist1d``.

    Examples:
        >>> MNIST1DCNN().hparams.channels
        25
    """

    def __init__(
        self, num_classes: int = 10, channels: int = 25, lr: float = 0.01, momentum: float = 0.5,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(mnist1d_cnn(num_classes, channels), num_classes=num_classes, lr=lr, momentum=momentum,
                         weight_decay=weight_decay)
        self.save_hyperparameters()
