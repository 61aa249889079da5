"""Client-side validation: each client's own validation data, the schedulers and callbacks that monitor it, and
the personalised (local) accuracy per round."""

import copy
import math
import random

import numpy as np
import pytest
import torch
from helpers import TinyModule
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader, Subset

from lightning_fedmut import Client, FedAvg, FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut.data import train_val_split
from lightning_fedmut.execution import evaluate
from lightning_fedmut.loop.checks import check_fit
from lightning_fedmut.result import client_metric_spread, weighted_client_means
from lightning_fedmut.utilities.seed import CLIENT_STREAM, derive_seed

PARTS = [list(range(i * 60, (i + 1) * 60)) for i in range(4)]


class PlateauModule(TinyModule):
    """Halves the learning rate whenever `val_loss` falls by less than half (so: nearly every epoch)."""

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}


class LearningRates(Callback):
    """The learning rate of every local epoch of every client Trainer, in order."""

    def __init__(self):
        self.lrs = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


class LocalAccuracy(FederatedCallback):
    """The reference: evaluates each client's trained weights on its validation data as soon as it has trained."""

    def __init__(self, model):
        self.model, self.metrics = model, []

    def on_client_fit_end(self, loop, module, result):
        self.model.load_state_dict(result.state)
        self.metrics.append(evaluate(self.model, result.client.val_data))


def _loop(**kwargs):
    kwargs = {"rounds": 2, "clients_per_round": 2, "aggregator": FedAvg(weighted=False), "seed": 0,
              "enable_progress_bar": False, **kwargs}
    return FederatedLoop(**kwargs)


# --------------------------------------------------------------------------------------- the split and the Client
def test_train_val_split_holds_out_the_fraction_reproducibly_per_client():
    parts = {"a": np.arange(0, 50), "b": np.arange(50, 57), "c": np.arange(57, 60)}
    split = train_val_split(parts, val_fraction=0.2, seed=3)
    for cid, (train, val) in split.items():
        n = len(parts[cid])
        assert len(val) == math.ceil(0.2 * n) and len(train) == n - len(val)  # 10, 2, 1 held out
        assert sorted([*train, *val]) == parts[cid].tolist()
        assert list(train) == sorted(train) and list(val) == sorted(val)  # the partition's order
    assert [len(v) for _, v in split.values()] == [10, 2, 1]
    again = train_val_split(parts, val_fraction=0.2, seed=3)
    assert all(np.array_equal(split[c][1], again[c][1]) for c in parts)
    other = train_val_split(parts, val_fraction=0.2, seed=4)
    assert not np.array_equal(split["a"][1], other["a"][1])
    assert split["a"][1].tolist() != list(range(40, 50))  # random, not the last examples
    # a client's split does not depend on what the other clients hold
    changed = train_val_split({"a": parts["a"], "b": np.arange(100, 140)}, val_fraction=0.2, seed=3)
    assert np.array_equal(changed["a"][1], split["a"][1])


def test_train_val_split_refuses_what_cannot_be_split():
    with pytest.raises(ValueError, match=r"Client 1 has 1 example: `val_fraction`=0.5 leaves none to train on"):
        train_val_split([[0, 1, 2, 3], [4]], val_fraction=0.5)
    with pytest.raises(ValueError, match=r"Expected `val_fraction` in \(0.0, 1.0\), got 0.0"):
        train_val_split([[0, 1]], val_fraction=0.0)
    with pytest.raises(ValueError, match=r"Expected `val_fraction` in \[0.0, 1.0\), got 1.0"):
        train_val_split([[0, 1]], val_fraction=1.0)


def test_make_clients_with_val_fraction_gives_each_client_its_held_out_examples(synthetic):
    train, _ = synthetic
    plain = make_clients(train, PARTS, batch_size=16)
    assert all(c.val_data is None for c in plain)
    assert [c.data.dataset.indices for c in plain] == PARTS  # unchanged without val_fraction
    clients = make_clients(train, PARTS, batch_size=16, val_fraction=0.25, seed=1, val_batch_size=5)
    split = train_val_split(PARTS, 0.25, seed=1)
    for c, (tr, va) in zip(clients, split.values()):
        assert c.num_examples == 45 == len(c.data.dataset)
        assert c.data.dataset.indices == tr.tolist() and c.val_data.dataset.indices == va.tolist()
        assert c.val_data.batch_size == 5 and isinstance(c.val_data.sampler, torch.utils.data.SequentialSampler)


class SplitDataModule(LightningDataModule):
    def __init__(self, train, val):
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=16)


class TrainOnlyDataModule(LightningDataModule):
    def train_dataloader(self):
        return DataLoader(list(range(4)))


def test_client_val_data_is_checked(synthetic):
    train, _ = synthetic
    loader = DataLoader(Subset(train, range(20)), batch_size=4)
    dm = SplitDataModule(Subset(train, range(20)), Subset(train, range(20, 30)))
    with pytest.raises(TypeError, match=r"`val_data` of client 'a' to be its own LightningDataModule \(`data`\)"):
        Client(id="a", data=dm, num_examples=20, val_data=loader)
    with pytest.raises(ValueError, match=r"TrainOnlyDataModule has no `val_dataloader`"):
        only = TrainOnlyDataModule()
        Client(id="b", data=only, num_examples=4, val_data=only)
    with pytest.raises(TypeError, match=r"`val_data` of client 'c' to be a DataLoader or None, got Subset"):
        Client(id="c", data=loader, val_data=Subset(train, range(3)))
    with pytest.raises(ValueError, match=r"Client 'd' has a `val_data` DataLoader that yields no batch"):
        Client(id="d", data=loader, val_data=DataLoader(Subset(train, range(3)), batch_size=4, drop_last=True))


# ------------------------------------------------------------- schedulers and callbacks that monitor validation
def test_reduce_lr_on_plateau_monitoring_val_loss_trains_a_client_as_lightning_does(synthetic):
    """One client, one round: the federated client's training equals `Trainer.fit` with its train and validation
    loaders, its seeds and the quiet flags, bit for bit, learning-rate schedule included."""
    train, _ = synthetic
    (client,) = make_clients(train, [list(range(100))], batch_size=16, val_fraction=0.3, seed=0)
    torch.manual_seed(0)
    model = PlateauModule()
    start = copy.deepcopy(model)
    federated_lrs = LearningRates()
    result = _loop(rounds=1, clients_per_round=1, local_epochs=4,
                   trainer_kwargs={"callbacks": [federated_lrs]}).fit(model, [client])

    seed = derive_seed(0, CLIENT_STREAM, 0, 0)
    torch.manual_seed(seed), random.seed(seed), np.random.seed(seed)
    reference_lrs = LearningRates()
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, devices=1, max_epochs=4, callbacks=[reference_lrs])
    trainer.fit(start, client.data, client.val_data)

    for (k, got), want in zip(model.state_dict().items(), start.state_dict().values()):
        assert torch.equal(got, want), k
    assert federated_lrs.lrs == reference_lrs.lrs
    assert reference_lrs.lrs[0] == 0.1 and reference_lrs.lrs[-1] < 0.1  # the plateau did lower it
    (row,) = result.client_history
    assert row["num_examples"] == 70
    assert row["val_loss"] == float(trainer.callback_metrics["val_loss"])
    assert row["val_acc"] == float(trainer.callback_metrics["val_acc"])


def test_early_stopping_on_val_loss_stops_local_training(synthetic):
    class Epochs(Callback):
        def __init__(self):
            self.epochs = []

        def on_train_end(self, trainer, pl_module):
            self.epochs.append(trainer.current_epoch)

    train, _ = synthetic
    clients = make_clients(train, PARTS, batch_size=16, val_fraction=0.25, seed=0)
    epochs = Epochs()
    stop = EarlyStopping(monitor="val_loss", patience=0, min_delta=0.05)
    _loop(local_epochs=8, trainer_kwargs={"callbacks": [stop, epochs]}).fit(TinyModule(), clients)
    assert len(epochs.epochs) == 4 and all(e < 8 for e in epochs.epochs)
    unstopped = Epochs()
    _loop(local_epochs=8, trainer_kwargs={"callbacks": [unstopped]}).fit(TinyModule(), clients)
    assert unstopped.epochs == [8] * 4


def test_a_scheduler_monitoring_validation_without_client_validation_data_is_refused_before_training(synthetic):
    train, _ = synthetic
    trained = []

    class Trained(FederatedCallback):
        def on_client_fit_start(self, loop, module, task):
            trained.append(task.client.id)

    class Counting(PlateauModule):
        calls = 0

        def configure_optimizers(self):
            type(self).calls += 1
            return super().configure_optimizers()

    model = Counting()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"`configure_optimizers` of Counting returns a scheduler that monitors"
                                         r" 'val_loss', but clients 0, 1, 2 and 1 more have no validation data.*"
                                         r"make_clients\(\.\.\., val_fraction=0\.1\).*or monitor a training metric"):
        _loop(callbacks=[Trained()]).fit(model, make_clients(train, PARTS, batch_size=16))
    assert trained == []
    assert Counting.calls == 1  # once, on a throwaway copy: the module is untouched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    # some clients with validation data, one without: that one is named
    mixed = make_clients(train, PARTS, batch_size=16, val_fraction=0.2)
    mixed[2] = Client(id="x", data=mixed[2].data)
    with pytest.raises(ValueError, match=r"but client 'x' has no validation data"):
        _loop().fit(PlateauModule(), mixed)


def test_callbacks_monitoring_validation_without_client_validation_data_are_refused(synthetic):
    train, _ = synthetic
    clients = make_clients(train, PARTS, batch_size=16)

    class WithCallbacks(TinyModule):
        def configure_callbacks(self):
            return [EarlyStopping(monitor="val/acc", mode="max")]

    with pytest.raises(ValueError, match=r"EarlyStopping from `configure_callbacks` of WithCallbacks monitors"
                                         r" 'val/acc', but clients .* have no validation data"):
        _loop().fit(WithCallbacks(), clients)
    kwargs = {"callbacks": [EarlyStopping(monitor="val_loss")]}
    with pytest.raises(ValueError, match=r"EarlyStopping in `trainer_kwargs\['callbacks'\]` monitors 'val_loss'"):
        check_fit(TinyModule(), clients, None, 2, trainer_kwargs=kwargs)
    # a training metric, or clients that all have validation data: accepted
    check_fit(TinyModule(), clients, None, 2, trainer_kwargs={"callbacks": [EarlyStopping(monitor="train_loss")]})
    check_fit(TinyModule(), make_clients(train, PARTS, batch_size=16, val_fraction=0.2), None, 2, trainer_kwargs=kwargs)


# ------------------------------------------------------------------------------- the local accuracy per round
@pytest.mark.parametrize("length", [{"local_epochs": 2}, {"local_steps": 2}], ids=["epochs", "steps"])
def test_client_history_holds_each_clients_validation_of_its_trained_model(synthetic, length):
    """`val_acc` and `val_loss` of a client's row are its trained model's, on its own validation data (with
    `local_steps` that end inside an epoch, too); the history has their example-weighted mean."""
    train, _ = synthetic
    clients = make_clients(train, PARTS, batch_size=16, val_fraction=0.25, seed=0)
    reference = LocalAccuracy(TinyModule())
    result = _loop(callbacks=[reference], **length).fit(TinyModule(), clients)
    assert len(result.client_history) == 4
    for row, expected in zip(result.client_history, reference.metrics):
        assert row["val_acc"] == expected["val_acc"] and row["val_loss"] == expected["val_loss"]
    for r in (0, 1):
        rows = [row for row in result.client_history if row["round"] == r]
        assert result.history[r]["clients/val_acc"] == weighted_client_means(rows)["clients/val_acc"]


def test_a_datamodule_client_validates_on_its_val_dataloader(synthetic):
    train, _ = synthetic
    split = train_val_split(PARTS, 0.25, seed=0)
    as_loaders = [Client(id=i, data=DataLoader(Subset(train, tr.tolist()), batch_size=16, shuffle=True),
                         val_data=DataLoader(Subset(train, va.tolist()), batch_size=16))
                  for i, (tr, va) in split.items()]
    modules = [SplitDataModule(Subset(train, tr.tolist()), Subset(train, va.tolist())) for tr, va in split.values()]
    as_datamodules = [Client(id=i, data=dm, num_examples=45, val_data=dm) for i, dm in enumerate(modules)]
    torch.manual_seed(0)
    a = _loop().fit(TinyModule(), as_loaders)
    torch.manual_seed(0)
    b = _loop().fit(TinyModule(), as_datamodules)
    assert "val_acc" in a.client_history[0]
    assert a.client_history == b.client_history and a.history == b.history
    # without `val_data` the DataModule's val_dataloader is not used, as before
    torch.manual_seed(0)
    c = _loop().fit(TinyModule(), [Client(id=i, data=dm, num_examples=45) for i, dm in enumerate(modules)])
    assert "val_acc" not in c.client_history[0]


def test_client_metric_spread_against_numpy(synthetic):
    rows = [{"round": 0, "client_id": i, "slot": i, "num_examples": n, "val_acc": a, "train_loss": 1.0}
            for i, (n, a) in enumerate([(10, 0.5), (30, 0.75), (5, 0.875), (7, 0.125)])]
    rows.append({"round": 0, "client_id": 9, "slot": 4, "num_examples": 3, "train_loss": 2.0})  # no val_acc
    acc = np.array([0.5, 0.75, 0.875, 0.125], dtype=np.float64)
    spread = client_metric_spread(rows, ["val_acc", "val_loss"])
    assert spread == {"clients/val_acc_mean": float(acc.mean()), "clients/val_acc_std": float(acc.std()),
                      "clients/val_acc_min": 0.125, "clients/val_acc_max": 0.875}
    assert client_metric_spread(rows[:1], ["val_acc"])["clients/val_acc_std"] == 0.0
    # on a real round
    train, _ = synthetic
    result = _loop().fit(TinyModule(), make_clients(train, PARTS, batch_size=16, val_fraction=0.25))
    last = [row for row in result.client_history if row["round"] == 1]
    values = np.array([row["val_acc"] for row in last])
    got = client_metric_spread(last, ["val_acc"])
    assert got["clients/val_acc_std"] == pytest.approx(float(values.std()), abs=1e-15)
    assert (got["clients/val_acc_min"], got["clients/val_acc_max"]) == (values.min(), values.max())


def test_the_history_holds_the_spread_of_the_clients_local_accuracy(synthetic):
    from lightning_fedmut import FederatedLoop
    from lightning_fedmut.data import make_clients as make
    from lightning_fedmut.data import partition_iid as iid

    train, _ = synthetic
    clients = make(train, iid(len(train), 6, seed=0), batch_size=16, val_fraction=0.25)
    result = FederatedLoop(rounds=2, clients_per_round=4, local_steps=2, enable_progress_bar=False, seed=0).fit(
        TinyModule(), clients)
    for row in result.history:
        local = [c["val_acc"] for c in result.client_history if c["round"] == row["round"]]
        assert row["clients/val_acc_mean"] == pytest.approx(np.mean(local), abs=1e-12)
        assert row["clients/val_acc_std"] == pytest.approx(np.std(local), abs=1e-12)
        assert (row["clients/val_acc_min"], row["clients/val_acc_max"]) == (min(local), max(local))
