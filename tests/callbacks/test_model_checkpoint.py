"""GlobalModelCheckpoint: standard Lightning checkpoints of the global model, their top-k, and resume."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyModule
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedCallback, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.callbacks import GlobalModelCheckpoint
from lightning_fedmut.data import partition_iid


class GlobalStates(FederatedCallback):
    """A copy of the global weights and the round's metrics at the end of every round."""

    def __init__(self):
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.metrics: dict[int, dict[str, float]] = {}

    def on_round_end(self, loop, module):
        self.states[loop.round] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.metrics[loop.round] = dict(loop.round_metrics)


class Crash(FederatedCallback):
    def __init__(self, at: int):
        self.at = at

    def on_round_start(self, loop, module):
        if loop.round == self.at:
            raise RuntimeError("crash")


def _fit(synthetic, checkpoint, rounds=5, extra=(), ckpt_path=None, checkpoint_dir=None, loop_kwargs=None,
         **model_kwargs):
    train, val = synthetic
    torch.manual_seed(0)
    model = TinyModule(hidden=12, lr=0.2, **model_kwargs)
    clients = make_clients(train, partition_iid(len(train), 6, seed=0), batch_size=16)
    loop = FederatedLoop(rounds=rounds, clients_per_round=3, local_steps=2, aggregator=FedAvg(weighted=False),
                         callbacks=[MutationCallback(radius=2.0), checkpoint, *extra], seed=0,
                         enable_progress_bar=False, checkpoint_dir=checkpoint_dir, **(loop_kwargs or {}))
    result = loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=60), ckpt_path=ckpt_path)
    return model, result


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_best_and_last_load_with_load_from_checkpoint(synthetic, tmp_path):
    states = GlobalStates()
    checkpoint = GlobalModelCheckpoint(dirpath=tmp_path, monitor="val_loss", mode="min", save_top_k=2)
    model, result = _fit(synthetic, checkpoint, extra=[states], batch_norm=True)

    # the two rounds with the lowest val_loss in the history, recorded independently
    losses = {row["round"]: row["val_loss"] for row in result.history}
    best_two = sorted(losses, key=lambda r: (losses[r], r))[:2]
    files = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    expected = sorted([f"round={r}-val_loss={losses[r]:.4f}.ckpt" for r in best_two] + ["last.ckpt"])
    assert files == expected
    assert checkpoint.best_model_path == str(tmp_path / f"round={best_two[0]}-val_loss={losses[best_two[0]]:.4f}.ckpt")
    assert checkpoint.best_model_score == losses[best_two[0]]

    # MyModule.load_from_checkpoint: the weights of that round bit for bit, and the hyperparameters
    best = TinyModule.load_from_checkpoint(checkpoint.best_model_path)
    assert isinstance(best, LightningModule)
    assert dict(best.hparams) == {"features": 8, "classes": 3, "hidden": 12, "batch_norm": True, "lr": 0.2,
                                  "momentum": 0.0}
    assert _same(best.state_dict(), states.states[best_two[0]])
    assert best.state_dict()["net.1.num_batches_tracked"].dtype == torch.int64

    last = TinyModule.load_from_checkpoint(tmp_path / "last.ckpt")
    assert _same(last.state_dict(), {k: v.detach() for k, v in model.state_dict().items()})

    # an ordinary Lightning checkpoint, read as data only
    raw = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert (raw["epoch"], raw["global_step"]) == (4, 4)
    import lightning.pytorch

    assert raw["pytorch-lightning_version"] == lightning.pytorch.__version__
    assert raw["hparams_name"] == "kwargs"


def test_max_mode_keeps_every_round_with_top_k_minus_one_and_round_only_names(synthetic, tmp_path):
    states = GlobalStates()
    checkpoint = GlobalModelCheckpoint(dirpath=tmp_path / "all", save_top_k=-1, save_last=False)
    _fit(synthetic, checkpoint, rounds=3, extra=[states])
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["round=0.ckpt", "round=1.ckpt", "round=2.ckpt"]
    for r in range(3):
        loaded = torch.load(tmp_path / "all" / f"round={r}.ckpt", weights_only=True)
        assert loaded["epoch"] == r and _same(loaded["state_dict"], states.states[r])


def test_top_1_by_max_matches_the_history(synthetic, tmp_path):
    checkpoint = GlobalModelCheckpoint(dirpath=tmp_path, monitor="val_acc", mode="max", filename="best-{round}",
                                       save_last=False)
    _, result = _fit(synthetic, checkpoint)
    accs = [row["val_acc"] for row in result.history]
    first_best = accs.index(max(accs))  # ties: the earlier round stays
    assert [p.name for p in tmp_path.glob("*.ckpt")] == [f"best-round={first_best}.ckpt"]


def test_rounds_without_evaluation_are_not_ranked(synthetic, tmp_path):
    checkpoint = GlobalModelCheckpoint(dirpath=tmp_path, monitor="val_acc", save_top_k=-1, filename="{round}",
                                       save_last=False)
    _fit(synthetic, checkpoint, loop_kwargs={"evaluate_every": 2})
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["round=1.ckpt", "round=3.ckpt", "round=4.ckpt"]


def test_resumed_run_keeps_the_same_top_k(synthetic, tmp_path):
    reference = GlobalModelCheckpoint(dirpath=tmp_path / "ref", monitor="val_loss", save_top_k=2)
    _fit(synthetic, reference, rounds=6)

    crashed = GlobalModelCheckpoint(monitor="val_loss", save_top_k=2)
    with pytest.raises(RuntimeError, match="crash"):
        _fit(synthetic, crashed, rounds=6, extra=[Crash(at=3)], checkpoint_dir=tmp_path / "run")
    resumed = GlobalModelCheckpoint(monitor="val_loss", save_top_k=2)
    _fit(synthetic, resumed, rounds=6, ckpt_path="last", checkpoint_dir=tmp_path / "run")

    names = sorted(p.name for p in (tmp_path / "ref").glob("*.ckpt"))
    assert sorted(p.name for p in (tmp_path / "run").glob("*.ckpt") if not p.name.startswith("round-")) == names
    for name in names:
        a = torch.load(tmp_path / "ref" / name, weights_only=True)
        b = torch.load(tmp_path / "run" / name, weights_only=True)
        assert _same(a["state_dict"], b["state_dict"]) and a["epoch"] == b["epoch"]
    assert resumed.best_k_models == {str(tmp_path / "run" / n): s for n, s in
                                     ((n, reference.best_k_models[str(tmp_path / "ref" / n)]) for n in names
                                      if n != "last.ckpt")}


def test_missing_monitor_lists_the_metrics_that_exist(synthetic, tmp_path):
    checkpoint = GlobalModelCheckpoint(dirpath=tmp_path, monitor="val_accuracy")
    with pytest.raises(ValueError) as err:
        _fit(synthetic, checkpoint, rounds=2)
    message = str(err.value)
    assert "`monitor` names the metric 'val_accuracy', which round 0 did not report" in message
    assert "'val_acc'" in message and "'val_loss'" in message and "'fedmut/beta'" in message


def test_no_folder_is_refused_before_training(synthetic):
    calls = []

    class Count(FederatedCallback):
        def on_round_start(self, loop, module):
            calls.append(loop.round)

    with pytest.raises(ValueError, match=r"has nowhere to write: pass `dirpath=...`, or set"
                                         r" `FederatedLoop\(checkpoint_dir=...\)`"):
        _fit(synthetic, GlobalModelCheckpoint(), extra=[Count()])
    assert calls == []


def test_hyperparameters_weights_only_cannot_read_are_refused(synthetic, tmp_path):
    class Holder:
        pass

    class WithObject(TinyModule):
        def __init__(self, thing=None, **kwargs):
            super().__init__(**kwargs)
            self.save_hyperparameters()

    train, _ = synthetic
    loop = FederatedLoop(rounds=1, clients_per_round=2, local_steps=1, enable_progress_bar=False,
                         callbacks=[GlobalModelCheckpoint(dirpath=tmp_path)])
    clients = make_clients(train, partition_iid(len(train), 4, seed=0), batch_size=16)
    with pytest.raises(ValueError, match=r"the hyperparameter 'thing' of WithObject is a Holder, which a checkpoint"
                                         r" loaded with weights_only=True cannot hold"):
        loop.fit(WithObject(thing=Holder()), clients)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "best"}, "Expected `mode` to be one of 'min', 'max', got 'best'."),
    ({"save_top_k": -2}, "Expected `save_top_k` to be an integer >= -1, got -2."),
    ({"save_top_k": 3}, "Expected `save_top_k` to be -1, 0 or 1 without `monitor`, got 3"),
    ({"monitor": "val_acc", "save_top_k": 3, "filename": "best"},
     "Expected `filename` to contain {round} with save_top_k=3, got 'best'"),
    ({"filename": "a/b"}, "Expected `filename` to be a file name template without folders, got 'a/b'."),
    ({"filename": "last"}, "Expected `filename` other than 'last'"),
    ({"filename": "{round:.x}"}, "Expected `filename` fields like {val_acc:.4f}, got {round:.x}."),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as err:
        GlobalModelCheckpoint(**kwargs)
    assert str(err.value).startswith(message)


def test_names_with_slashes_and_formats():
    checkpoint = GlobalModelCheckpoint(monitor="clients/train_loss")
    assert checkpoint.format_name(12, {"clients/train_loss": 0.25}) == "round=12-clients_train_loss=0.2500.ckpt"
    assert GlobalModelCheckpoint(filename="{round:03d}").format_name(7, {}) == "round=007.ckpt"
