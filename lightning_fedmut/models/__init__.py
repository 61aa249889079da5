"""Built-in LightningModules for the examples, tests and command line.

Each built-in data set of :mod:`lightning_fedmut.datasets` has a default model
(:func:`default_model`): :class:`DigitsCNN` for ``digits`` and ``synthetic``, :class:`MNIST1DCNN` for
``mnist1d``, and the FedMut paper's CNN (:class:`LeNetCNN`) for MNIST, Fashion-MNIST and CIFAR.
:class:`ResNet18` and :class:`VGG16` are the paper's larger CIFAR models. All are defined with plain
torch and train with SGD (lr 0.01, momentum 0.5 by default).
"""

from __future__ import annotations

from typing import Any

from lightning_fedmut.models.cifar import VGG16, LeNetCNN, ResNet18, lenet_cnn, resnet18_cifar, vgg16_bn
from lightning_fedmut.models.classifier import Classifier
from lightning_fedmut.models.cnn import DigitsCNN, digits_cnn
from lightning_fedmut.models.generator import ConditionalGenerator
from lightning_fedmut.models.mnist1d import MNIST1DCNN, mnist1d_cnn
from lightning_fedmut.models.shakespeare import CharLSTM, char_lstm

__all__ = [
    "MNIST1DCNN",
    "VGG16",
    "CharLSTM",
    "Classifier",
    "ConditionalGenerator",
    "DigitsCNN",
    "LeNetCNN",
    "ResNet18",
    "char_lstm",
    "default_model",
    "digits_cnn",
    "lenet_cnn",
    "mnist1d_cnn",
    "resnet18_cifar",
    "vgg16_bn",
]

_DEFAULTS: dict[str, tuple[type, dict[str, Any]]] = {
    "digits": (DigitsCNN, {}),
    "synthetic": (DigitsCNN, {}),
    "mnist1d": (MNIST1DCNN, {}),
    "mnist": (LeNetCNN, {"in_channels": 1, "image_size": 28}),
    "fashion_mnist": (LeNetCNN, {"in_channels": 1, "image_size": 28}),
    "cifar10": (LeNetCNN, {}),
    "cifar100": (LeNetCNN, {"num_classes": 100}),
}


def default_model(dataset: str) -> tuple[type, dict[str, Any]]:
    """The built-in model class for a built-in data set, and the arguments that fit it to the data.

    Examples:
        >>> cls, kwargs = default_model("cifar100")
        >>> cls.__name__, kwargs
        ('LeNetCNN', {'num_classes': 100})
    """
    if dataset not in _DEFAULTS:
        raise ValueError(f"Expected `dataset` to be one of {', '.join(_DEFAULTS)}, got {dataset!r}.")
    cls, kwargs = _DEFAULTS[dataset]
    return cls, dict(kwargs)
