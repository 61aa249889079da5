"""``prepare_data`` runs once per federated ``fit``, and a module that logs nothing is told so once."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from helpers import TinyDataModule, TinyModule
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader

from lightning_fedmut import Client, FederatedLoop, make_clients
from lightning_fedmut.data import partition_iid
from lightning_fedmut.models import Classifier


class CountingModule(TinyModule):
    """Counts ``prepare_data`` calls on the class: the clients' working copy counts too."""

    prepared = 0

    def prepare_data(self):
        type(self).prepared += 1


class CountingDataModule(TinyDataModule):
    def __init__(self, dataset, calls):
        super().__init__(dataset)
        self.calls = calls

    def prepare_data(self):
        self.calls.append(id(self))


def _loop(**kwargs):
    return FederatedLoop(rounds=3, clients_per_round=4, local_steps=2, enable_progress_bar=False, **kwargs)


def test_prepare_data_runs_once_per_fit_not_per_client_or_evaluation(synthetic):
    train, val = synthetic
    CountingModule.prepared = 0
    model = CountingModule()
    loop = _loop()
    clients = make_clients(train, partition_iid(len(train), 4, seed=0), batch_size=16, val_fraction=0.2, seed=0)
    result = loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=60))
    assert len(result.history) == 3 and "val_acc" in result.history[-1]
    assert CountingModule.prepared == 1
    loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=60))
    assert CountingModule.prepared == 2  # once more for the second fit


def test_prepare_data_of_each_client_datamodule_runs_once_per_fit(synthetic):
    train, val = synthetic
    calls: list[int] = []
    parts = partition_iid(len(train), 4, seed=0)
    datamodules = [CountingDataModule(torch.utils.data.Subset(train, p), calls) for p in parts]
    clients = [Client(id=str(i), data=dm, num_examples=len(p)) for i, (dm, p) in enumerate(zip(datamodules, parts))]
    CountingModule.prepared = 0
    model = CountingModule()
    _loop().fit(model, clients, val_dataloaders=DataLoader(val, batch_size=60))
    assert CountingModule.prepared == 1
    assert sorted(calls) == sorted(id(dm) for dm in datamodules)


class SilentModule(LightningModule):
    """Trains and validates, logging nothing."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(8, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_recording(model, synthetic, val=True):
    train, val_set = synthetic
    clients = make_clients(train, partition_iid(len(train), 4, seed=0), batch_size=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _loop().fit(model, clients, val_dataloaders=DataLoader(val_set, batch_size=60) if val else None)
    return result, [w for w in caught if "what the module logs" in str(w.message)]


def test_a_module_that_logs_nothing_is_warned_once_naming_what_to_log(synthetic):
    result, warned = _fit_recording(SilentModule(), synthetic)
    assert len(result.history) == 3
    assert len(warned) == 1
    message = str(warned[0].message)
    assert message.startswith("After round 0:")
    assert 'self.log("train_loss", loss)' in message and "`training_step`" in message
    assert 'self.log("val_loss", loss)' in message and "`validation_step`" in message
    assert "history's columns come from what the module logs" in message
    assert warned[0].filename == __file__  # points at the user's fit call


def test_without_validation_data_only_the_training_metric_is_asked_for(synthetic):
    _, warned = _fit_recording(SilentModule(), synthetic, val=False)
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "train_loss" in message and "val_loss" not in message


def test_modules_that_log_their_metrics_are_not_warned(synthetic):
    for model in (TinyModule(), Classifier(torch.nn.Linear(8, 3), num_classes=3)):
        _, warned = _fit_recording(model, synthetic)
        assert warned == []
