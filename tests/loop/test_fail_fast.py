"""No silent failures: systematic client errors, divergence, signals in every phase, shared folders, exhausted data."""

from __future__ import annotations

import os
import signal
import traceback

import pytest
import torch
from helpers import TinyDataModule, TinyModule, state_of
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, IterableDataset

from lightning_fedmut import Client, FedAvg, FederatedCallback, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.data import partition_dirichlet, partition_iid
from lightning_fedmut.divergence import DivergenceMonitor
from lightning_fedmut.exceptions import ClientFailureError, DivergenceError, Preempted


def _clients(train, n=6):
    return make_clients(train, partition_iid(len(train), n, seed=0), batch_size=16)


# ------------------------------------------------------------------------ systematic failures
class AlwaysRaises(TinyModule):
    calls = 0

    def training_step(self, batch, batch_idx):
        AlwaysRaises.calls += 1
        raise ValueError("this training_step is broken")


class BadLabels(TinyModule):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return super().training_step((x, y + 10), batch_idx)  # labels outside the classes


class NoTrainingStep(TinyModule):
    training_step = None  # type: ignore[assignment]


class SetupRaises(TinyDataModule):
    def setup(self, stage):
        raise OSError("the data folder is not mounted")


def test_a_training_step_that_always_raises_stops_the_run_in_round_zero_with_the_clients_traceback(synthetic):
    train, _ = synthetic
    AlwaysRaises.calls = 0
    loop = FederatedLoop(rounds=5, clients_per_round=5, local_steps=1, enable_progress_bar=False)
    with pytest.warns(RuntimeWarning, match=r"Client \d+ failed in round 0"), \
            pytest.raises(ClientFailureError, match=r"The first 3 clients of the run failed with ValueError") as info:
        loop.fit(AlwaysRaises(), _clients(train))
    assert AlwaysRaises.calls == 3  # stopped before the other two clients trained
    cause = info.value.__cause__
    assert isinstance(cause, ValueError) and str(cause) == "this training_step is broken"
    frames = [f.name for f in traceback.extract_tb(cause.__traceback__)]
    assert "training_step" in frames  # the client's own traceback is kept
    assert loop.history == []


@pytest.mark.parametrize("case", ["bad labels", "no training_step", "datamodule setup raises"])
def test_other_systematic_setup_bugs_stop_at_once(synthetic, case):
    train, _ = synthetic
    module, clients = TinyModule(), _clients(train)
    if case == "bad labels":
        module = BadLabels()
    elif case == "no training_step":
        module = NoTrainingStep()
    else:
        clients = [Client(id=i, data=SetupRaises(train), num_examples=10) for i in range(4)]
    loop = FederatedLoop(rounds=3, clients_per_round=3, local_steps=1, enable_progress_bar=False)
    with pytest.warns(RuntimeWarning), pytest.raises(ClientFailureError, match="a bug in the setup"):
        loop.fit(module, clients)


def test_one_faulty_client_is_warned_with_its_id_and_the_run_goes_on(synthetic):
    train, _ = synthetic
    clients = _clients(train)
    clients[2].data = DataLoader(_Unreadable(), batch_size=4)  # one client whose data cannot be read
    loop = FederatedLoop(rounds=4, clients_per_round=6, local_steps=1, enable_progress_bar=False)
    with pytest.warns(RuntimeWarning, match=r"Client 2 failed in round 0 \(slot \d\).*OSError: shard unreadable"):
        result = loop.fit(TinyModule(), clients)
    assert [h["clients/failed"] for h in result.history] == [1, 1, 1, 1]
    assert [h["clients/trained"] for h in result.history] == [5, 5, 5, 5]


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        raise OSError("shard unreadable")


def test_isolate_keeps_todays_behaviour_for_intermittent_failures(synthetic):
    train, _ = synthetic
    loop = FederatedLoop(rounds=2, clients_per_round=3, local_steps=1, enable_progress_bar=False,
                         on_client_failure="isolate")
    with pytest.warns(RuntimeWarning, match="Round 1: 0 of 3 clients succeeded"):
        result = loop.fit(AlwaysRaises(), _clients(train))
    assert [h["round_skipped"] for h in result.history] == [1, 1]


class NoOptimizer(TinyModule):
    def configure_optimizers(self):
        return None


class ReturnsNone(TinyModule):
    def training_step(self, batch, batch_idx):
        super().training_step(batch, batch_idx)


@pytest.mark.parametrize("case", ["configure_optimizers returns None", "training_step returns None",
                                  "limit_train_batches=0"])
def test_training_that_changes_nothing_is_an_error_after_round_zero(synthetic, case):
    train, _ = synthetic
    module = {"configure_optimizers returns None": NoOptimizer, "training_step returns None": ReturnsNone,
              "limit_train_batches=0": TinyModule}[case]()
    kwargs = {"trainer_kwargs": {"limit_train_batches": 0}} if case == "limit_train_batches=0" else {}
    loop = FederatedLoop(rounds=3, clients_per_round=2, local_steps=2, enable_progress_bar=False, **kwargs)
    with pytest.raises(ClientFailureError, match="No client took an optimizer step in round 0"):
        loop.fit(module, _clients(train))
    assert len(loop.history) == 0


class Once(IterableDataset):
    """An iterable that yields its examples once, then nothing."""

    def __init__(self, dataset):
        self.dataset, self.used = dataset, False

    def __iter__(self):
        if self.used:
            return iter([])
        self.used = True
        return iter([self.dataset[i] for i in range(8)])


def test_an_exhausted_iterable_client_fails_instead_of_hanging(synthetic):
    train, _ = synthetic
    clients = [Client(id="once", data=DataLoader(Once(train), batch_size=4), num_examples=8), *_clients(train)[:2]]
    loop = FederatedLoop(rounds=1, clients_per_round=3, local_steps=5, enable_progress_bar=False, seed=0)
    with pytest.warns(RuntimeWarning, match="Client 'once' failed"):
        result = loop.fit(TinyModule(), clients)
    assert [(f["client_id"], f["type"]) for f in result.failures] == [("once", "ClientDataExhaustedError")]
    assert "yielded no batch in epoch 1" in result.failures[0]["message"]


# ----------------------------------------------------------------------------------- divergence
def _diverging(synthetic, lr, radius, monitor, rounds=25):
    train, val = synthetic
    parts = partition_dirichlet(train.tensors[1].numpy(), 10, alpha=0.1, min_size=5, seed=0)
    torch.manual_seed(0)
    loop = FederatedLoop(rounds=rounds, clients_per_round=6, local_epochs=2, aggregator=FedAvg(weighted=False),
                         callbacks=[MutationCallback(radius=radius)], enable_progress_bar=False, seed=0,
                         divergence=monitor, on_client_failure="isolate")
    return loop, TinyModule(lr=lr, momentum=0.9), make_clients(train, parts, batch_size=8), DataLoader(val, 60)


def test_fedmut_at_lr_half_stops_with_the_round_named(synthetic):
    import re

    loop, model, clients, val = _diverging(synthetic, lr=0.5, radius=4.0, monitor=True)
    with pytest.raises(DivergenceError, match=r"Round \d+: the global model's `val_loss` is [-+.e\d]+, more than 10"
                                              r" times its first value .*radius=4.*learning rate too high") as info:
        loop.fit(model, clients, val_dataloaders=val)
    stopped = int(re.match(r"Round (\d+)", str(info.value)).group(1))
    assert 0 < stopped < 25 and len(loop.history) == stopped  # the rounds before are complete; this one stopped
    first = loop.history[0]["val_loss"]
    assert f"({first:.4g})" in str(info.value)


def test_clients_returning_nan_in_consecutive_rounds_stop_the_run(synthetic, tmp_path):
    import re

    loop, model, clients, _ = _diverging(synthetic, lr=1.0, radius=4.0, monitor=True, rounds=25)
    loop.checkpoint_connector.dirpath = tmp_path  # a checkpoint every round, the last 2 kept
    loop.checkpoint_dir = tmp_path
    pattern = r"in 3 rounds in a row \(round (\d+): (\d) of 6, round \d+: (\d) of 6, round (\d+): (\d) of 6\)"
    with pytest.raises(DivergenceError, match="At least 50% of the clients returned NaN or Inf weights " + pattern) as info:
        loop.fit(model, clients)  # no evaluation: only the non-finite clients count here
    first, n1, n2, last, n3 = map(int, re.search(pattern, str(info.value)).groups())
    assert last == first + 2 and min(n1, n2, n3) >= 3
    assert [h["clients/failed"] for h in loop.history[first:last]] == [n1, n2]
    # the last good round's checkpoint (after round first - 1) is kept beside the two newest
    assert sorted(p.name for p in tmp_path.glob("round-*.ckpt")) == [
        f"round-{first:05d}.ckpt", f"round-{last - 1:05d}.ckpt", f"round-{last:05d}.ckpt"]


class NaNValidation(TinyModule):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(float("nan")))


def test_a_non_finite_evaluation_loss_stops_the_run(synthetic):
    train, val = synthetic
    loop = FederatedLoop(rounds=3, clients_per_round=2, local_steps=1, enable_progress_bar=False)
    with pytest.raises(DivergenceError, match=r"Round 0: the global model's `val_loss` is nan"):
        loop.fit(NaNValidation(), _clients(train), val_dataloaders=DataLoader(val, batch_size=60))


def test_a_negative_batchnorm_variance_is_named(synthetic):
    train, val = synthetic

    class Negative(FederatedCallback):  # what a mutated running variance can become
        def on_after_aggregate(self, loop, module):
            with torch.no_grad():
                module.net[1].running_var[3] = -0.5

    loop = FederatedLoop(rounds=2, clients_per_round=2, local_steps=1, callbacks=[Negative()],
                         enable_progress_bar=False)
    with pytest.raises(DivergenceError, match=r"Round 0:.*BatchNorm running variance is negative in 'net.1.running_var'"):
        loop.fit(TinyModule(batch_norm=True), _clients(train), val_dataloaders=DataLoader(val, batch_size=60))


def test_warn_instead_of_stop(synthetic):
    loop, model, clients, val = _diverging(synthetic, lr=0.5, radius=4.0, monitor=DivergenceMonitor(action="warn"),
                                           rounds=3)
    with pytest.warns(RuntimeWarning, match="more than 10 times its first value"):
        result = loop.fit(model, clients, val_dataloaders=val)
    assert len(result.history) == 3


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"action": "ignore"}, r"`action` in \('stop', 'warn'\), got 'ignore'"),
    ({"nonfinite_fraction": 0.0}, r"`nonfinite_fraction` in \(0.0, 1.0\], got 0.0"),
    ({"patience": 0}, r"`patience` to be an integer >= 1, got 0"),
    ({"loss_factor": 1.0}, r"`loss_factor` in \(1.0, inf\), got 1.0"),
])
def test_bad_divergence_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DivergenceMonitor(**kwargs)


# -------------------------------------------------------------------------------------- signals
class _SigtermAt(Callback):
    """A Lightning callback: SIGTERM to this process during round 2's client training or evaluation."""

    def __init__(self, where, loop_ref):
        self.where, self.loop_ref, self.sent = where, loop_ref, False

    def _send(self, where):
        if self.where == where and self.loop_ref[0].round == 2 and not self.sent:
            self.sent = True  # a scheduler sends it once
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._send("client training")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.state.fn == "validate":
            self._send("validation")


class _SigtermAggregation(FederatedCallback):
    def on_before_aggregate(self, loop, module, aggregator):
        if loop.round == 2:
            os.kill(os.getpid(), signal.SIGTERM)


class _SigtermLogger(Logger):
    def __init__(self, active):
        super().__init__()
        self.active = active

    name = "sigterm"
    version = "0"

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        if self.active and step == 2:
            os.kill(os.getpid(), signal.SIGTERM)


def _signal_run(synthetic, tmp_path, where=None, ckpt_path=None):
    train, val = synthetic
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True)
    loop_ref = []
    loop = FederatedLoop(rounds=5, clients_per_round=3, local_epochs=1, aggregator=FedAvg(weighted=False),
                         callbacks=[MutationCallback(radius=2.0), *([_SigtermAggregation()] if where == "aggregation"
                                                                    else [])],
                         trainer_kwargs={"callbacks": [_SigtermAt(where, loop_ref)]},
                         logger=_SigtermLogger(where == "logging"), checkpoint_dir=tmp_path, checkpoint_every=2,
                         enable_progress_bar=False, seed=4)
    loop_ref.append(loop)
    result = loop.fit(model, _clients(train, n=8), val_dataloaders=DataLoader(val, batch_size=20), ckpt_path=ckpt_path)
    return model, result


@pytest.mark.parametrize("where", ["client training", "aggregation", "validation", "logging"])
def test_sigterm_in_each_phase_saves_and_resumes_bit_for_bit(synthetic, tmp_path, where):
    reference_model, reference = _signal_run(synthetic, tmp_path / "reference")
    with pytest.raises(Preempted) as info:
        _signal_run(synthetic, tmp_path / "run", where=where)
    assert info.value.code == 143
    saved = sorted(p.name for p in (tmp_path / "run").glob("round-*.ckpt"))
    if where == "client training":  # the round's clients are dropped; rounds 0-1 were saved
        assert saved == ["round-00002.ckpt"] and "among the clients of round 2" in str(info.value)
    else:  # round 2 is finished and saved, although checkpoint_every=2 would not save it
        assert saved == ["round-00002.ckpt", "round-00003.ckpt"] and "which was finished first" in str(info.value)
    assert "Resume with `fit(..., ckpt_path='last')`" in str(info.value)
    model, resumed = _signal_run(synthetic, tmp_path / "run", ckpt_path="last")
    assert resumed.history == reference.history and resumed.client_history == reference.client_history
    expected = state_of(reference_model)
    assert all(torch.equal(v, expected[k]) for k, v in state_of(model).items())


# ----------------------------------------------------------------------------- shared folders
def test_a_second_live_run_on_one_checkpoint_dir_is_refused(synthetic, tmp_path):
    train, _ = synthetic
    seen = []

    class StartAnother(FederatedCallback):
        def on_round_end(self, loop, module):
            other = FederatedLoop(rounds=1, clients_per_round=1, local_steps=1, checkpoint_dir=tmp_path,
                                  enable_progress_bar=False)
            with pytest.raises(RuntimeError, match=r"is in use by another running fit \(pid \d+ on .*\)") as info:
                other.fit(TinyModule(), _clients(train))
            seen.append(str(info.value))

    FederatedLoop(rounds=1, clients_per_round=1, local_steps=1, checkpoint_dir=tmp_path, callbacks=[StartAnother()],
                  enable_progress_bar=False).fit(TinyModule(), _clients(train))
    assert len(seen) == 1
    # once the first run ended, the folder is free again
    FederatedLoop(rounds=2, clients_per_round=1, local_steps=1, checkpoint_dir=tmp_path,
                  enable_progress_bar=False).fit(TinyModule(), _clients(train), ckpt_path="last")


def test_resuming_with_other_hyperparameters_or_data_names_each_difference(synthetic, tmp_path):
    train, _ = synthetic
    FederatedLoop(rounds=1, clients_per_round=2, local_steps=1, checkpoint_dir=tmp_path, seed=0,
                  callbacks=[MutationCallback(radius=2.0)], enable_progress_bar=False).fit(
        TinyModule(lr=0.1), _clients(train))
    other_parts = partition_iid(len(train), 6, seed=1)  # same sizes, other examples
    loop = FederatedLoop(rounds=2, clients_per_round=2, local_steps=1, checkpoint_dir=tmp_path, seed=0,
                         callbacks=[MutationCallback(radius=3.0)], enable_progress_bar=False)
    with pytest.raises(ValueError) as info:
        loop.fit(TinyModule(lr=0.5), make_clients(train, other_parts, batch_size=16), ckpt_path="last")
    message = str(info.value)
    for setting in ("client_data", "callbacks"):
        assert f"{setting}: checkpoint has" in message
    assert "model_hparams.lr: checkpoint has 0.1, this run has 0.5" in message  # a mapping is compared entry by entry
    assert "'radius': 2.0" in message and "'radius': 3.0" in message


# --------------------------------------------------------------------------- validation data
class _FlakyValidation(torch.utils.data.Dataset):
    """Readable until ``broken`` is set."""

    broken = False

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        if _FlakyValidation.broken:
            raise OSError("the validation share went away")
        return self.dataset[index]


def test_a_validation_loader_that_cannot_be_read_fails_before_training(synthetic):
    train, val = synthetic
    _FlakyValidation.broken = True
    try:
        loop = FederatedLoop(rounds=2, clients_per_round=2, local_steps=1, enable_progress_bar=False)
        with pytest.raises(ValueError, match=r"`val_dataloaders`\[0\] raised on its first batch \(OSError: the"):
            loop.fit(TinyModule(), _clients(train), val_dataloaders=DataLoader(_FlakyValidation(val), batch_size=30))
    finally:
        _FlakyValidation.broken = False
    assert loop.history == []


def test_a_validation_loader_that_breaks_mid_run_saves_the_round_first(synthetic, tmp_path):
    train, val = synthetic

    class BreakAt(FederatedCallback):
        def on_validation_start(self, loop, module):
            _FlakyValidation.broken = loop.round == 2

    loop = FederatedLoop(rounds=4, clients_per_round=2, local_steps=1, checkpoint_dir=tmp_path, checkpoint_every=3,
                         callbacks=[BreakAt()], enable_progress_bar=False)
    try:
        with pytest.raises(OSError, match="the validation share went away"):
            loop.fit(TinyModule(), _clients(train), val_dataloaders=DataLoader(_FlakyValidation(val), batch_size=30))
    finally:
        _FlakyValidation.broken = False
    # round 2 was aggregated: it is kept, marked unevaluated, although checkpoint_every=3 would not save it
    assert [p.name for p in tmp_path.glob("round-*.ckpt")] == ["round-00003.ckpt"]
    assert loop.history[-1]["round"] == 2 and loop.history[-1]["evaluation_failed"] == 1
    resumed = FederatedLoop(rounds=4, clients_per_round=2, local_steps=1, checkpoint_dir=tmp_path, checkpoint_every=3,
                            enable_progress_bar=False).fit(
        TinyModule(), _clients(train), val_dataloaders=DataLoader(_FlakyValidation(val), batch_size=30),
        ckpt_path="last")
    assert [h["round"] for h in resumed.history] == [0, 1, 2, 3] and "val_acc" in resumed.history[3]
