"""FabricExecutor: the same weights and metrics as the Trainer path where both apply, and a refusal, before any
client trains, of every Lightning feature it cannot honour."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyDataModule, TinyModule
from lightning.pytorch.callbacks import LearningRateMonitor
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from lightning_fedmut import Client, FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut.algorithms import SCAFFOLD, FedAvg, FedMut, FedProx, FedSAM
from lightning_fedmut.data import partition_iid
from lightning_fedmut.exceptions import ClientFailureError
from lightning_fedmut.execution import FabricExecutor, SequentialExecutor


def _clients(train, n=6, batch_size=16):
    return make_clients(train, partition_iid(len(train), n, seed=0), batch_size=batch_size)


def _fit(executor, module_cls=TinyModule, algorithm=None, train=None, rounds=2, **kwargs):
    torch.manual_seed(0)
    module = module_cls(momentum=0.5)
    loop = FederatedLoop(rounds=rounds, clients_per_round=4, local_epochs=kwargs.pop("local_epochs", 2),
                         algorithm=algorithm, executor=executor, seed=0, enable_progress_bar=False, **kwargs)
    loop.fit(module, _clients(train))
    return module.state_dict(), loop.client_history


def _assert_same_runs(a, b):
    (state_a, history_a), (state_b, history_b) = a, b
    assert list(state_a) == list(state_b)
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    assert history_a == history_b


@pytest.mark.parametrize("algorithm", [None, FedAvg, FedMut, FedProx, SCAFFOLD], ids=lambda a: getattr(a, "__name__", "default"))
def test_same_global_model_bit_for_bit_after_two_rounds(synthetic, algorithm):
    train, _ = synthetic
    make = (lambda: None) if algorithm is None else algorithm
    trainer_path = _fit(SequentialExecutor(), algorithm=make(), train=train)
    fabric_path = _fit(FabricExecutor(), algorithm=make(), train=train)
    _assert_same_runs(trainer_path, fabric_path)
    assert fabric_path[1][0]["train_loss"] > 0  # the logged epoch mean reached the client history


class _Scheduled(TinyModule):
    """An lr schedule per step (every 2 steps) and per epoch, and a module that reads the run's counters."""

    seen: ClassVar[list[tuple[int, int]]] = []  # every copy of the module appends here

    def on_train_batch_start(self, batch, batch_idx):
        _Scheduled.seen.append((self.current_epoch, self.global_step))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.5)
        per_step = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
        per_epoch = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return [opt], [{"scheduler": per_step, "interval": "step", "frequency": 2}, per_epoch]


@pytest.mark.parametrize("length", [{"local_epochs": 3}, {"local_steps": 7}], ids=["epochs", "steps"])
def test_schedulers_counters_and_step_counts_match_the_trainer(synthetic, length):
    train, _ = synthetic
    runs = []
    for executor in (SequentialExecutor(), FabricExecutor()):
        torch.manual_seed(0)
        module = _Scheduled()
        _Scheduled.seen = []
        steps: list[int] = []

        class Steps(FederatedCallback):
            def __init__(self, into):
                self.into = into

            def on_client_fit_end(self, loop, module, result):
                self.into.append(result.num_steps)

        loop = FederatedLoop(rounds=1, clients_per_round=2, executor=executor, seed=0, enable_progress_bar=False,
                             callbacks=[Steps(steps)], **length)
        loop.fit(module, _clients(train))
        runs.append((module.state_dict(), steps, _Scheduled.seen))
    (state_a, steps_a, seen_a), (state_b, steps_b, seen_b) = runs
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert steps_a == steps_b == ([9, 9] if "local_epochs" in length else [7, 7])  # 40 examples: 3 batches
    assert seen_a == seen_b  # (current_epoch, global_step) before each batch
    per_client = [(epoch, step) for step, epoch in enumerate([0, 0, 0, 1, 1, 1, 2, 2, 2])]
    assert seen_b == 2 * (per_client if "local_epochs" in length else per_client[:7])


class _Logging(TinyModule):
    """Logs every way ``self.log`` can: per step, per epoch, both, a metric object, max/sum, in hooks and via log_dict."""

    def __init__(self, momentum=0.0):
        super().__init__(momentum=momentum)
        self.acc = MulticlassAccuracy(3, average="micro")

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.acc(logits, y)
        self.log("loss_step_only", loss)
        self.log("loss_both", loss, on_step=True, on_epoch=True)
        self.log("acc", self.acc, on_step=False, on_epoch=True)
        self.log("loss_max", loss, on_step=False, on_epoch=True, reduce_fx="max")
        self.log_dict({"n_sum": float(len(y)), "batch_idx": float(batch_idx)}, on_step=False, on_epoch=True,
                      reduce_fx="sum")
        return {"loss": loss}

    def on_train_epoch_end(self):
        self.log("epoch_seen", float(self.current_epoch))


def test_logged_values_reach_the_results_as_in_the_trainer(synthetic):
    train, _ = synthetic
    trainer_path = _fit(SequentialExecutor(), module_cls=_Logging, train=train, rounds=1)
    fabric_path = _fit(FabricExecutor(), module_cls=_Logging, train=train, rounds=1)
    row = trainer_path[1][0]
    assert set(row) == {"round", "client_id", "slot", "num_examples", "loss_step_only", "loss_both",
                        "loss_both_step", "loss_both_epoch", "acc", "loss_max", "n_sum", "batch_idx", "epoch_seen"}
    assert (row["n_sum"], row["batch_idx"], row["epoch_seen"]) == (40.0, 3.0, 1.0)
    _assert_same_runs(trainer_path, fabric_path)


class _Manual(TinyModule):
    def __init__(self, momentum=0.0):
        super().__init__(momentum=momentum)
        self.automatic_optimization = False


class _Asks(FederatedCallback):
    """Adds a Lightning callback the runner cannot run to every client's Trainer."""

    def on_client_fit_start(self, loop, module, task):
        task.callbacks.append(LearningRateMonitor())


_REFUSALS = [
    ({"trainer_kwargs": {"gradient_clip_val": 1.0}},
     "FabricExecutor cannot honour `trainer_kwargs['gradient_clip_val']`: it accepts one of (None, 0, 0.0),"
     " received 1.0. Use SequentialExecutor (the default) for it."),
    ({"trainer_kwargs": {"accumulate_grad_batches": 2}},
     "FabricExecutor cannot honour `trainer_kwargs['accumulate_grad_batches']`: it accepts one of (None, 1),"
     " received 2. Use SequentialExecutor (the default) for it."),
    ({"trainer_kwargs": {"precision": "bf16-mixed"}},
     "FabricExecutor cannot honour `trainer_kwargs['precision']`: it accepts one of (None, 32, '32', '32-true'),"
     " received 'bf16-mixed'. Use SequentialExecutor (the default) for it."),
    ({"trainer_kwargs": {"callbacks": [LearningRateMonitor()]}},
     "FabricExecutor runs no Lightning callbacks of `trainer_kwargs['callbacks']`; received"
     " ['LearningRateMonitor']. Use SequentialExecutor (the default) for them."),
    ({"trainer_kwargs": {"profiler": "simple"}},
     "FabricExecutor cannot honour `trainer_kwargs['profiler']` (received 'simple'): it runs no Trainer. Use"
     " SequentialExecutor (the default) for it."),
    ({"module_cls": _Manual},
     "FabricExecutor trains with automatic optimization; _Manual sets `automatic_optimization=False`. Use"
     " SequentialExecutor (the default) for it."),
    ({"callbacks": [_Asks()]},
     "FabricExecutor cannot run the Lightning callbacks ['LearningRateMonitor'] that the loop's components add to"
     " client 0; it runs ['ProximalTerm', 'ControlVariateCorrection']. Use SequentialExecutor (the default) with"
     " them."),
    ({"algorithm": FedSAM()},
     "FabricExecutor cannot run the Lightning callbacks ['SharpnessAwareStep'] that the loop's components add to"
     " client 0; it runs ['ProximalTerm', 'ControlVariateCorrection']. Use SequentialExecutor (the default) with"
     " them."),
]


@pytest.mark.parametrize(("kwargs", "message"), _REFUSALS, ids=[m.split("`")[1] if "`" in m else m[:30]
                                                              for _, m in _REFUSALS])
def test_what_it_cannot_honour_is_refused_before_any_client_trains(synthetic, kwargs, message):
    train, _ = synthetic
    kwargs = dict(kwargs)
    torch.manual_seed(0)
    module = kwargs.pop("module_cls", TinyModule)()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trained = []

    class Trained(FederatedCallback):
        def on_client_fit_end(self, loop, module, result):
            trained.append(result)

    callbacks = [*kwargs.pop("callbacks", []), Trained()]
    loop = FederatedLoop(rounds=1, clients_per_round=2, local_steps=1, executor=FabricExecutor(),
                         callbacks=callbacks, enable_progress_bar=False, **kwargs)
    with pytest.raises(ValueError) as info:
        loop.fit(module, _clients(train))
    assert str(info.value) == message
    assert trained == []
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_clients_with_validation_data_or_a_datamodule_are_refused(synthetic):
    train, val = synthetic
    with_val = [Client(id="v", data=DataLoader(train, batch_size=16), val_data=DataLoader(val, batch_size=16))]
    loop = FederatedLoop(rounds=1, clients_per_round=1, local_steps=1, executor=FabricExecutor(),
                         enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"^FabricExecutor does not validate clients; client 'v' has `val_data`"):
        loop.fit(TinyModule(), with_val)
    datamodule = [Client(id="d", data=TinyDataModule(train), num_examples=len(train))]
    with pytest.raises(ValueError, match=r"^FabricExecutor trains clients on a DataLoader; client 'd' has a"
                                         r" TinyDataModule"):
        loop.fit(TinyModule(), datamodule)


def test_self_trainer_names_what_it_offers(synthetic):
    class AsksForLogger(TinyModule):
        def training_step(self, batch, batch_idx):
            self.trainer.logger  # noqa: B018 - the attribute access is the test
            return super().training_step(batch, batch_idx)

    train, _ = synthetic
    failures = []

    class Failed(FederatedCallback):
        def on_client_fit_failure(self, loop, module, result):
            failures.append(str(result.error))

    loop = FederatedLoop(rounds=1, clients_per_round=1, local_steps=1, executor=FabricExecutor(),
                         callbacks=[Failed()], enable_progress_bar=False)
    with pytest.warns(RuntimeWarning, match="Client 0 failed in round 0"), pytest.raises(ClientFailureError):
        loop.fit(AsksForLogger(), _clients(train, n=2))
    assert failures == [
        "`self.trainer.logger` is not available under FabricExecutor (no Trainer runs); it offers current_epoch,"
        " global_step, max_epochs, max_steps, should_stop, limit_train_batches, callback_metrics, optimizers and"
        " lightning_module. Use SequentialExecutor."]


def test_no_override_outlives_a_client(synthetic):
    """After each client the working copy logs through Lightning again and is attached to no trainer."""
    train, _ = synthetic
    after = []

    class Look(FederatedCallback):
        def on_client_fit_end(self, loop, module, result):
            working = loop.executor._working
            after.append(("log" in vars(working), "log_dict" in vars(working), working._trainer))

    loop = FederatedLoop(rounds=1, clients_per_round=2, local_steps=2, executor=FabricExecutor(),
                         callbacks=[Look()], enable_progress_bar=False)
    loop.fit(TinyModule(), _clients(train))
    assert after == [(False, False, None), (False, False, None)]


@pytest.mark.slow
def test_workers_run_it_as_they_run_the_trainer_path(synthetic):
    train, _ = synthetic
    trainer_path = _fit(SequentialExecutor(), algorithm=FedMut(), train=train, workers=2)
    fabric_path = _fit(FabricExecutor(), algorithm=FedMut(), train=train, workers=2)
    _assert_same_runs(trainer_path, fabric_path)
