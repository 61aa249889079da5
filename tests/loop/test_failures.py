"""Fault injection: failing clients, NaN weights, whole rounds failing, divergence, and bad input."""

import pytest
import torch
from helpers import StartModelRecorder, TinyModule, state_of
from lightning.pytorch import Callback
from torch.utils.data import DataLoader

from lightning_fedmut import (
    DivergenceError,
    FedAvg,
    FederatedCallback,
    FederatedLoop,
    MutationCallback,
    RoundFailedError,
    make_clients,
)
from lightning_fedmut.checkpoint import list_checkpoints
from lightning_fedmut.data import partition_iid


class FaultyModule(TinyModule):
    """Raises in training_step, or returns NaN weights, for the (round, client) pairs it is told."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.raise_now = False
        self.nan_now = False

    def training_step(self, batch, batch_idx):
        if self.raise_now:
            raise ValueError("bad batch on this client")
        return super().training_step(batch, batch_idx)

    def on_train_end(self):
        if self.nan_now:
            with torch.no_grad():
                self.net[0].weight[0, 0] = float("nan")


class _Flags(Callback):
    """A per-task Lightning callback that tells the client's module what to do."""

    def __init__(self, raise_now, nan_now):
        self.raise_now, self.nan_now = raise_now, nan_now

    def setup(self, trainer, pl_module, stage):
        pl_module.raise_now, pl_module.nan_now = self.raise_now, self.nan_now


class Inject(FederatedCallback):
    def __init__(self, raise_on=(), nan_on=()):
        self.raise_on, self.nan_on = set(raise_on), set(nan_on)
        self.trained: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.failed = []

    def on_client_fit_start(self, loop, module, task):
        cid = task.client.id
        task.callbacks.append(_Flags(raise_now=(loop.round, cid) in self.raise_on or (loop.round, "*") in self.raise_on,
                                     nan_now=(loop.round, cid) in self.nan_on or (loop.round, "*") in self.nan_on))

    def on_client_fit_end(self, loop, module, result):
        self.trained[(loop.round, result.task.slot)] = {k: v.detach().clone() for k, v in result.state.items()}

    def on_client_fit_failure(self, loop, module, result):
        self.failed.append((loop.round, result.client.id, result.task.slot, type(result.error).__name__))


def _run(synthetic, inject, tmp_path=None, rounds=3, k=4, callbacks=(), **kwargs):
    train, val = synthetic
    torch.manual_seed(0)
    model = FaultyModule()
    clients = make_clients(train, partition_iid(len(train), 8, seed=0), batch_size=16)
    loop = FederatedLoop(rounds=rounds, clients_per_round=k, aggregator=FedAvg(weighted=False),
                         callbacks=[*callbacks, inject], seed=0, enable_progress_bar=False,
                         checkpoint_dir=None if tmp_path is None else tmp_path / "ckpt", **kwargs)
    return model, clients, DataLoader(val, batch_size=60), loop


@pytest.mark.parametrize("kind", ["raise", "nan"])
def test_failed_client_is_left_out_and_recorded(synthetic, tmp_path, kind):
    # find which clients round 1 samples, then make the second of them fail
    model, clients, val, loop = _run(synthetic, Inject())
    probe = loop.fit(model, clients)
    victim = [r["client_id"] for r in probe.client_history if r["round"] == 1][1]
    inject = Inject(**{("raise_on" if kind == "raise" else "nan_on"): [(1, victim)]})
    rec = StartModelRecorder()
    model, clients, val, loop = _run(synthetic, inject, tmp_path, callbacks=[rec])
    result = loop.fit(model, clients, val_dataloaders=val)

    assert result.failures == [{
        "round": 1, "client_id": victim, "slot": 1,
        "type": "ValueError" if kind == "raise" else "NonFiniteWeightsError",
        "message": "bad batch on this client" if kind == "raise" else "trained weights hold NaN or Inf in 'net.0.weight'",
    }]
    assert inject.failed == [(1, victim, 1, result.failures[0]["type"])]
    assert [h["clients/trained"] for h in result.history] == [4, 3, 4]
    assert [h["clients/failed"] for h in result.history] == [0, 1, 0]
    assert [r["slot"] for r in result.client_history if r["round"] == 1] == [0, 2, 3]
    # the round-1 global is the uniform mean of the three clients that succeeded (float64 reference)
    for key, value in rec.globals[1].items():
        if value.is_floating_point():
            ref = sum(inject.trained[(1, s)][key].double() for s in (0, 2, 3)) / 3
            torch.testing.assert_close(value.double(), ref, rtol=0, atol=1e-6)
    # the checkpoint on disk loads and continues
    model2, clients2, val2, loop2 = _run(synthetic, Inject(), tmp_path, rounds=4)
    more = loop2.fit(model2, clients2, val_dataloaders=val2, ckpt_path="last")
    assert [h["round"] for h in more.history] == [0, 1, 2, 3] and more.failures == result.failures


def test_failed_slot_does_not_shift_fedmut_start_models(synthetic):
    """Slot 0 fails in round 1; every slot still gets its own column of the coefficient table."""
    mut = MutationCallback(radius=4.0, acceleration=0.3)

    class Table(FederatedCallback):
        def on_after_aggregate(self, loop, module):
            if loop.round == 0:
                self.coefficients = mut.coefficients.clone()
                self.delta = [d.clone() for d in mut._delta]
                self.glb = state_of(module)

    class FailSlot0(FederatedCallback):
        def on_client_fit_start(self, loop, module, task):
            task.callbacks.append(_Flags(raise_now=loop.round == 1 and task.slot == 0, nan_now=False))

    table, rec = Table(), StartModelRecorder()
    model, clients, val, loop = _run(synthetic, FailSlot0(), callbacks=[mut, table, rec], rounds=2)
    result = loop.fit(model, clients)
    assert [(f["round"], f["slot"]) for f in result.failures] == [(1, 0)]
    for slot in range(4):
        start = rec.starts[(1, slot)]
        for j, key in enumerate(mut.keys):
            expected = table.glb[key] + 4.0 * float(table.coefficients[j, slot]) * table.delta[j]
            torch.testing.assert_close(start[key], expected, rtol=0, atol=1e-6)


def test_all_clients_fail_skip_keeps_global(synthetic, tmp_path):
    rec = StartModelRecorder()
    inject = Inject(raise_on=[(1, "*")])
    model, clients, val, loop = _run(synthetic, inject, tmp_path, callbacks=[rec], on_client_failure="isolate")
    with pytest.warns(RuntimeWarning, match=r"Round 1: 0 of 4 clients succeeded.*skipped"):
        result = loop.fit(model, clients, val_dataloaders=val)
    assert [h["round_skipped"] for h in result.history] == [0, 1, 0]
    assert sorted(rec.globals) == [0, 2]  # no aggregation in round 1
    assert result.history[1]["val_acc"] == result.history[0]["val_acc"]  # same global model evaluated
    assert len(result.failures) == 4
    # resumed with the same settings (the failure policy and the validation data are part of the fingerprint)
    model2, clients2, val2, loop2 = _run(synthetic, Inject(), tmp_path, rounds=4, on_client_failure="isolate")
    assert len(loop2.fit(model2, clients2, val_dataloaders=val2, ckpt_path="last").history) == 4


def test_all_clients_fail_raise(synthetic, tmp_path):
    inject = Inject(raise_on=[(1, "*")])
    model, clients, val, loop = _run(synthetic, inject, tmp_path, on_round_failure="raise", on_client_failure="isolate")
    with pytest.raises(RoundFailedError, match=r"Round 1: 0 of 4 clients.*`min_clients_per_round`=1.*ValueError"):
        loop.fit(model, clients)
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["round-00001.ckpt"]
    model2, clients2, val2, loop2 = _run(synthetic, Inject(), tmp_path, on_round_failure="raise",
                                         on_client_failure="isolate")
    assert len(loop2.fit(model2, clients2, ckpt_path="last").history) == 3


def test_min_clients_per_round(synthetic):
    inject = Inject(raise_on=[(0, "*")])
    model, clients, val, loop = _run(synthetic, inject, rounds=1, min_clients_per_round=2, on_round_failure="raise",
                                     on_client_failure="isolate")
    with pytest.raises(RoundFailedError, match="fewer than `min_clients_per_round`=2"):
        loop.fit(model, clients)


def test_absurd_radius_stops_with_divergence_error(synthetic):
    train, val = synthetic
    torch.manual_seed(0)
    model = TinyModule(lr=0.5, momentum=0.9)
    clients = make_clients(train, partition_iid(len(train), 8, seed=0), batch_size=16)
    loop = FederatedLoop(rounds=30, clients_per_round=4, local_epochs=2, aggregator=FedAvg(weighted=False),
                         callbacks=[MutationCallback(radius=50.0, acceleration=0.3)], seed=0,
                         enable_progress_bar=False)
    with pytest.raises(DivergenceError, match=r"round \d+.*radius too large"):
        loop.fit(model, clients)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"checkpoint_every": 0}, ValueError, r"`checkpoint_every` to be an integer >= 1, got 0"),
        ({"keep_last": 0}, ValueError, r"`keep_last` to be an integer >= 1, got 0"),
        ({"checkpoint_dir": 3}, TypeError, r"`checkpoint_dir` to be a path or None, got int"),
        ({"min_clients_per_round": 5}, ValueError, r"`min_clients_per_round` to be an integer <= 4, got 5"),
        ({"on_round_failure": "retry"}, ValueError, r"`on_round_failure` in \('skip', 'raise'\), got 'retry'"),
        ({"enable_progress_bar": "no"}, TypeError, r"`enable_progress_bar` to be a bool, got 'no'"),
        ({"seed": -1}, ValueError, r"`seed` to be an integer >= 0, got -1"),
        ({"local_steps": 0}, ValueError, r"`local_steps` to be an integer >= 1, got 0"),
        ({"client_table_every": 0}, ValueError, r"`client_table_every` to be an integer >= 1, got 0"),
        ({"trainer_kwargs": {"logger": True}}, ValueError, r"logger=True: client Trainers never log.*FederatedLoop\(logger"),
        ({"trainer_kwargs": {"devices": "0,1"}}, ValueError, r"devices='0,1'.*devices=1"),
        ({"trainer_kwargs": {"devices": -1}}, ValueError, r"devices=-1"),
        ({"trainer_kwargs": {"num_nodes": 2}}, ValueError, r"num_nodes=2"),
        ({"trainer_kwargs": ["cpu"]}, TypeError, r"`trainer_kwargs` to be a dict, got list"),
        ({"callbacks": [MutationCallback(), MutationCallback()]}, ValueError,
         r"MutationCallback and MutationCallback both replace the clients' start models"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        FederatedLoop(rounds=2, clients_per_round=4, **kwargs)
