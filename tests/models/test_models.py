"""Built-in models: shapes, sizes, the architecture choices of the FedMut paper, and the per-dataset defaults."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lightning_fedmut.cli import main
from lightning_fedmut.models import (
    MNIST1DCNN,
    VGG16,
    DigitsCNN,
    LeNetCNN,
    ResNet18,
    default_model,
    digits_cnn,
    lenet_cnn,
    mnist1d_cnn,
    resnet18_cifar,
    vgg16_bn,
)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("net, shape, size", [
    (lenet_cnn(), (3, 32, 32), 62006),  # conv 3-6-16 (5x5), fc 400-120-84-10
    (lenet_cnn(in_channels=1, image_size=28), (1, 28, 28), 44426),
    (mnist1d_cnn(), (40,), 5210),
    (digits_cnn(), (1, 8, 8), 6186),
    (resnet18_cifar(), (3, 32, 32), 11173962),
    (vgg16_bn(), (3, 32, 32), 33646666),
], ids=["lenet-cifar", "lenet-mnist", "mnist1d", "digits", "resnet18", "vgg16bn"])
def test_networks_shapes_and_sizes(net, shape, size):
    assert net(torch.zeros(2, *shape)).shape == (2, 10)
    assert n_params(net) == size


def test_resnet18_has_the_cifar_stem():
    net = resnet18_cifar(num_classes=100)
    stem = net[0]
    assert (stem.kernel_size, stem.stride, stem.padding, stem.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert net[:3](torch.zeros(1, 3, 32, 32)).shape == (1, 64, 32, 32)  # full resolution after the stem
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 20
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_vgg16_has_thirteen_conv_bn_layers():
    net = vgg16_bn()
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net) == 13
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [4096, 4096, 10]


def test_lenet_rejects_images_too_small():
    with pytest.raises(ValueError, match="Expected `image_size` >= 16 for two 5x5 convolutions and two poolings, got 12"):
        lenet_cnn(image_size=12)


@pytest.mark.parametrize("module, kwargs", [
    (LeNetCNN, {"num_classes": 100, "lr": 0.02}),
    (ResNet18, {"num_classes": 100, "momentum": 0.9}),
    (VGG16, {"dropout": 0.1, "weight_decay": 5e-4}),
    (MNIST1DCNN, {"channels": 8}),
])
def test_lightning_modules_save_their_arguments_and_train_with_sgd(module, kwargs):
    model = module(**kwargs)
    for key, value in kwargs.items():
        assert model.hparams[key] == value
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (
        kwargs.get("lr", 0.01), kwargs.get("momentum", 0.5), kwargs.get("weight_decay", 0.0))


@pytest.mark.parametrize("dataset, shape, classes, name", [
    ("digits", (1, 8, 8), 10, "DigitsCNN"),
    ("synthetic", (1, 8, 8), 10, "DigitsCNN"),
    ("mnist1d", (40,), 10, "MNIST1DCNN"),
    ("mnist", (1, 28, 28), 10, "LeNetCNN"),
    ("fashion_mnist", (1, 28, 28), 10, "LeNetCNN"),
    ("cifar10", (3, 32, 32), 10, "LeNetCNN"),
    ("cifar100", (3, 32, 32), 100, "LeNetCNN"),
])
def test_default_model_fits_its_dataset(dataset, shape, classes, name):
    cls, kwargs = default_model(dataset)
    model = cls(**kwargs)
    assert type(model).__name__ == name
    model.eval()
    assert model(torch.zeros(2, *shape)).shape == (2, classes)


def test_default_model_unknown_dataset():
    with pytest.raises(ValueError, match="Expected `dataset` to be one of digits, synthetic, mnist1d"):
        default_model("imagenet")


def test_fit_on_mnist1d_uses_the_1d_cnn(tmp_path, capsys):
    out_file = tmp_path / "h.json"
    code = main(["fit", "--data=mnist1d", "--partition.num_clients=4", "--loop.clients_per_round=2",
                 "--loop.rounds=2", "--loop.local_steps=2", "--loop.enable_progress_bar=false", "--logger=none",
                 f"--history_file={out_file}"])
    assert code == 0
    assert "FedMut: MNIST1DCNN on mnist1d, 4 clients, 2 per round, 2 rounds" in capsys.readouterr().out
    result = json.loads(out_file.read_text())
    assert result["config"]["model"]["class_path"] == "lightning_fedmut.models.mnist1d.MNIST1DCNN"
    assert [r["round"] for r in result["history"] if "val_acc" in r] == [0, 1]


def test_digits_cnn_is_unchanged():
    assert DigitsCNN().hparams == {"num_classes": 10, "batch_norm": True, "width": 16, "lr": 0.01, "momentum": 0.5,
                                   "weight_decay": 0.0}
