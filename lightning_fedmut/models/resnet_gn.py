"""ResNet-18 with GroupNorm (ResNet-18-GN): the CIFAR ResNet-18 whose BatchNorm layers are GroupNorm with 2 groups,
as FedSAM's and FedASAM's experiments (Caldarola et al., ECCV 2022): no running statistics to average or mutate."""

from __future__ import annotations

from torch import nn

from lightning_fedmut.models.cifar import resnet18_cifar
from lightning_fedmut.models.classifier import Classifier

__all__ = ["ResNet18GN", "resnet18_gn"]


def _group_norm(module: nn.Module, groups: int) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(groups, child.num_features))
        else:
            _group_norm(child, groups)


def resnet18_gn(num_classes: int = 10, in_channels: int = 3, groups: int = 2) -> nn.Sequential:
    """:func:`~lightning_fedmut.models.cifar.resnet18_cifar` with every ``BatchNorm2d`` replaced by ``GroupNorm(groups, C)``.

    Examples:
        >>> import torch
        >>> net = resnet18_gn()
        >>> net(torch.zeros(2, 3, 32, 32)).shape, any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        (torch.Size([2, 10]), False)
        >>> sum(p.numel() for p in net.parameters()), len(list(net.buffers()))
        (11173962, 0)
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or 64 % groups:
        raise ValueError(f"Expected `groups` to be an integer >= 1 that divides 64, got {groups!r}.")
    net = resnet18_cifar(num_classes, in_channels)
    _group_norm(net, groups)
    return net


class ResNet18GN(Classifier):
    """:class:`~lightning_fedmut.models.Classifier` around :func:`resnet18_gn`.

    Examples:
        >>> ResNet18GN(groups=4).hparams.groups
        4
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, groups: int = 2, lr: float = 0.01,
                 momentum: float = 0.5, weight_decay: float = 0.0) -> None:
        super().__init__(resnet18_gn(num_classes, in_channels, groups), num_classes=num_classes, lr=lr,
                         momentum=momentum, weight_decay=weight_decay)
        self.save_hyperparameters()
