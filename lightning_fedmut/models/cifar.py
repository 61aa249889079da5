"""The FedMut paper's CIFAR models in plain torch: the LeNet-style CNN, ResNet-18 (CIFAR form), VGG-16-BN."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_fedmut.models.classifier import Classifier


# ------------------------------------------------------------------------------------------- LeNet
def lenet_cnn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Sequential:
    """The paper's CNN: conv 5x5 (6 channels), max-pool, conv 5x5 (16), max-pool, then 120-84-classes.

    With ``in_channels=3, image_size=32`` it is the CIFAR model (``16*5*5`` features); with
    ``in_channels=1, image_size=28`` the same network fits MNIST (``16*4*4``).

    Examples:
        >>> import torch
        >>> lenet_cnn()(torch.zeros(2, 3, 32, 32)).shape, lenet_cnn(in_channels=1, image_size=28)[7].in_features
        (torch.Size([2, 10]), 256)
    """
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ValueError(f"Expected `image_size` >= 16 for two 5x5 convolutions and two poolings, got {image_size}.")
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


class LeNetCNN(Classifier):
    """:class:`Classifier` around :func:`lenet_cnn`: the built-in model for CIFAR and (1x28x28) MNIST.

    Examples:
        >>> LeNetCNN(num_classes=100).hparams.num_classes
        100
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, lr: float = 0.01,
        momentum: float = 0.5, weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lenet_cnn(num_classes, in_channels, image_size), num_classes=num_classes, lr=lr,
                         momentum=momentum, weight_decay=weight_decay)
        self.save_hyperparameters()


# ---------------------------------------------------------------------------------------- ResNet-18
class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def resnet18_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Sequential:
    """ResNet-18 in its CIFAR form: a 3x3 stride-1 stem without max-pool, stages of 64-128-256-512.

    Examples:
        >>> import torch
        >>> net = resnet18_cifar()
        >>> net(torch.zeros(2, 3, 32, 32)).shape, sum(p.numel() for p in net.parameters())
        (torch.Size([2, 10]), 11173962)
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
    ]
    in_planes = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)]
        in_planes = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


class ResNet18(Classifier):
    """:class:`Classifier` around :func:`resnet18_cifar` (the paper trains it with ``acceleration=0.5``).

    Examples:
        >>> ResNet18(num_classes=100).hparams.num_classes
        100
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, lr: float = 0.01, momentum: float = 0.5,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(resnet18_cifar(num_classes, in_channels), num_classes=num_classes, lr=lr, momentum=momentum,
                         weight_decay=weight_decay)
        self.save_hyperparameters()


# ------------------------------------------------------------------------------------------ VGG-16
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_bn(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5) -> nn.Sequential:
    """VGG-16 with BatchNorm for 32x32 inputs: 13 conv-BN-ReLU layers, then 512-4096-4096-classes.

    Examples:
        >>> import torch
        >>> net = vgg16_bn()
        >>> net(torch.zeros(2, 3, 32, 32)).shape, sum(isinstance(m, nn.BatchNorm2d) for m in net)
        (torch.Size([2, 10]), 13)
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
            channels = int(v)
    layers += [
        nn.Flatten(),
        nn.Linear(512, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(4096, num_classes),
    ]
    return nn.Sequential(*layers)


class VGG16(Classifier):
    """:class:`Classifier` around :func:`vgg16_bn`.

    Examples:
        >>> VGG16().hparams.dropout
        0.5
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5, lr: float = 0.01,
        momentum: float = 0.5, weight_decay: float = 0.0,
    ) -> None:
        super().__init__(vgg16_bn(num_classes, in_channels, dropout), num_classes=num_classes, lr=lr,
                         momentum=momentum, weight_decay=weight_decay)
        self.save_hyperparameters()
