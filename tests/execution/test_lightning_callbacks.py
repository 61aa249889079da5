"""Lightning's common callbacks in client Trainers: each works as documented, or is refused before training."""

import importlib.util
import json
import os
import sys
from datetime import timedelta

import pytest
import torch
from helpers import TinyModule
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import (
    DeviceStatsMonitor,
    EarlyStopping,
    GradientAccumulationScheduler,
    LearningRateMonitor,
    ModelCheckpoint,
    OnExceptionCheckpoint,
    RichProgressBar,
    StochasticWeightAveraging,
    Timer,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader
from wandb_records import offline_runs, summarize

from lightning_fedmut import FedAvg, FederatedCallback, FederatedLoop, make_clients

# 4 clients of 60 examples: 4 batches of 16 per local epoch
PARTS = [list(range(i * 60, (i + 1) * 60)) for i in range(4)]


class StepLRModule(TinyModule):
    """Halves the learning rate after every local epoch."""

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}


class EpochsRun(Callback):
    """Records how many local epochs each client Trainer ran (a shared object, as the user's callbacks are)."""

    def __init__(self):
        self.epochs = []

    def on_train_end(self, trainer, pl_module):
        self.epochs.append(trainer.current_epoch)


class FreshPerTask(FederatedCallback):
    """The reference: a brand-new Lightning callback for every client Trainer, through ``task.callbacks``."""

    def __init__(self, factory):
        self.factory = factory

    def on_client_fit_start(self, loop, module, task):
        task.callbacks.append(self.factory())


def _fit(synthetic, trainer_kwargs=None, module=TinyModule, rounds=2, local_epochs=2, **kwargs):
    train, val = synthetic
    torch.manual_seed(0)
    model = module()
    loop = FederatedLoop(rounds=rounds, clients_per_round=2, local_epochs=local_epochs,
                         aggregator=FedAvg(weighted=False), trainer_kwargs=trainer_kwargs, seed=0,
                         enable_progress_bar=False, **kwargs)
    # the callbacks are in the Trainer that validates the global model, too
    result = loop.fit(model, make_clients(train, PARTS, batch_size=16), val_dataloaders=DataLoader(val, batch_size=60))
    assert result.failures == []
    assert [row["round"] for row in result.history if "val_acc" in row] == list(range(rounds))
    return result


def _same_run(a, b):
    assert a.history == b.history
    assert a.client_history == b.client_history
    for (k, x), y in zip(a.module.state_dict().items(), b.module.state_dict().values()):
        assert torch.equal(x, y), k


def test_learning_rate_monitor_logs_each_clients_learning_rate_and_writes_nothing(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _fit(synthetic, {"callbacks": [LearningRateMonitor(logging_interval="epoch")]}, module=StepLRModule,
                  local_epochs=3)
    # every client starts from a fresh optimizer (lr 0.1) and halves it after each epoch: the last epoch runs at 0.025
    assert len(result.client_history) == 4
    assert [row["lr-SGD"] for row in result.client_history] == pytest.approx([0.025] * 4, rel=1e-6)
    assert [row["clients/lr-SGD"] for row in result.history] == pytest.approx([0.025] * 2, rel=1e-6)
    assert os.listdir(tmp_path) == []  # no lightning_logs, no wandb folder: the client logger keeps it in memory


def test_what_only_the_client_logger_sees_joins_the_client_history(synthetic):
    class LogsItself(TinyModule):
        def on_train_start(self):
            self.batches = 0

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.batches += 1

        def on_train_end(self):
            self.logger.log_metrics({"batches_seen": self.batches, "epoch": 99, "vector": torch.zeros(2)}, step=0)
            self.logger.experiment.add_image("anything", torch.zeros(3, 2, 2))  # code written for a real logger

    result = _fit(synthetic, module=LogsItself, local_epochs=2)
    # 4 batches per epoch, 2 epochs; Lightning's own `epoch` and the non-scalar are left out
    assert [sorted(row) for row in result.client_history] == 4 * [
        ["batches_seen", "client_id", "num_examples", "round", "slot", "train_loss"]]
    assert [row["batches_seen"] for row in result.client_history] == [8.0] * 4


def test_client_metrics_reach_the_wandb_client_table_and_no_client_opens_a_run(synthetic, tmp_path):
    logger = WandbLogger(project="fedmut-test", save_dir=str(tmp_path), offline=True)
    result = _fit(synthetic, {"callbacks": [LearningRateMonitor()]}, logger=logger, client_table_every=2)
    runs = offline_runs(tmp_path)
    assert len(runs) == 1
    history = summarize(runs[0])["history"]
    (table,) = [h for h in history if "clients/table.path" in h]
    data = json.loads((runs[0] / "files" / table["clients/table.path"]).read_text())
    assert "lr-SGD" in data["columns"]
    col = data["columns"].index("lr-SGD")
    assert [row[col] for row in data["data"]] == [row["lr-SGD"] for row in result.client_history]


@pytest.mark.parametrize("kwargs", [
    {"callbacks": [ModelCheckpoint(monitor="val_acc")]},
    {"callbacks": OnExceptionCheckpoint(".")},
    {"enable_checkpointing": True},
])
def test_model_checkpoint_is_refused_before_training_pointing_to_global_model_checkpoint(kwargs):
    with pytest.raises((TypeError, ValueError), match=r"client Trainers do not checkpoint.*GlobalModelCheckpoint"):
        FederatedLoop(rounds=1, clients_per_round=1, trainer_kwargs=kwargs)


def test_early_stopping_stops_each_clients_training_on_its_own(synthetic):
    """One EarlyStopping shared by every client Trainer acts as a fresh one per client: best score and patience
    are the client's own, not carried over from the previous client."""
    def stopper():
        return EarlyStopping(monitor="train_loss", mode="min", patience=0, min_delta=0.2)

    shared, reference, unstopped = EpochsRun(), EpochsRun(), EpochsRun()
    result = _fit(synthetic, {"callbacks": [stopper(), shared]}, local_epochs=6)
    expected = _fit(synthetic, {"callbacks": [reference]}, local_epochs=6, callbacks=[FreshPerTask(stopper)])
    _fit(synthetic, {"callbacks": [unstopped]}, local_epochs=6)
    _same_run(result, expected)
    assert shared.epochs == reference.epochs
    assert unstopped.epochs == [6] * 4  # current_epoch after a full run
    # every client stopped early, after its own patience; carried over from the previous client, the best score
    # would stop the later clients after their first epoch ([3, 1, 1, 1])
    assert all(e < 6 for e in shared.epochs) and shared.epochs[1:] != [1, 1, 1]


def test_stochastic_weight_averaging_averages_each_clients_own_weights(synthetic):
    def swa():
        return StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=1)

    result = _fit(synthetic, {"callbacks": [swa()]}, local_epochs=3)
    expected = _fit(synthetic, {}, local_epochs=3, callbacks=[FreshPerTask(swa)])
    plain = _fit(synthetic, {}, local_epochs=3)
    _same_run(result, expected)
    assert not torch.equal(result.module.net[0].weight, plain.module.net[0].weight)  # SWA did average


def test_gradient_accumulation_scheduler_equals_accumulate_grad_batches(synthetic):
    result = _fit(synthetic, {"callbacks": [GradientAccumulationScheduler({0: 2})]})
    expected = _fit(synthetic, {"accumulate_grad_batches": 2})
    plain = _fit(synthetic, {})
    _same_run(result, expected)
    assert not torch.equal(result.module.net[0].weight, plain.module.net[0].weight)


def test_timer_limits_each_clients_own_training(synthetic, monkeypatch):
    from lightning.pytorch.callbacks import timer

    class Clock:  # one second per reading: the Timer reads it at a client's start and after each batch
        now = 0.0

        @classmethod
        def monotonic(cls):
            cls.now += 1.0
            return cls.now

    monkeypatch.setattr(timer, "time", Clock)
    # 3 s: every client stops after 3 batches of its own, not the federation after 3 batches in all
    result = _fit(synthetic, {"callbacks": [Timer(duration=timedelta(seconds=3), interval="step")]}, local_epochs=3)
    expected = _fit(synthetic, {}, local_steps=3)
    _same_run(result, expected)
    # a duration no client reaches changes nothing
    _same_run(_fit(synthetic, {"callbacks": [Timer(duration=timedelta(days=1))]}), _fit(synthetic, {}))


def _rich_progress_bar():
    if importlib.util.find_spec("rich") is not None:
        return RichProgressBar()
    return RichProgressBar.__new__(RichProgressBar)  # the class without `rich` installed: its type is what is checked


@pytest.mark.parametrize("bar", [TQDMProgressBar, _rich_progress_bar], ids=["tqdm", "rich"])
def test_progress_bars_are_refused_unless_client_progress_bars_are_enabled(bar):
    with pytest.raises(ValueError, match=rf"{bar().__class__.__name__} in `trainer_kwargs\['callbacks'\]`: client"
                                         r" Trainers run without a progress bar.*enable_progress_bar=True"):
        FederatedLoop(rounds=1, clients_per_round=1, trainer_kwargs={"callbacks": [bar()]})


def test_a_progress_bar_with_enable_progress_bar_shows_one_bar_per_client_trainer(synthetic, capsys):
    _fit(synthetic, {"callbacks": [TQDMProgressBar(refresh_rate=1)], "enable_progress_bar": True}, rounds=1,
         local_epochs=1)
    shown = capsys.readouterr()
    bars = shown.out + shown.err
    assert bars.count("Epoch 0: 100%") >= 2  # the round's two clients, each in its own bar
    assert "v_num" not in bars  # the client logger has no version to show


@pytest.mark.skipif(importlib.util.find_spec("psutil") is not None, reason="psutil is installed")
def test_device_stats_monitor_on_cpu_without_psutil_is_refused():
    with pytest.raises(ValueError, match=r"DeviceStatsMonitor .* psutil, which is not installed: `pip install psutil`"):
        FederatedLoop(rounds=1, clients_per_round=1, trainer_kwargs={"accelerator": "cpu",
                                                                     "callbacks": [DeviceStatsMonitor()]})


@pytest.mark.skipif(importlib.util.find_spec("psutil") is None, reason="needs psutil")
def test_device_stats_monitor_statistics_join_the_client_history(synthetic):
    # Lightning logs device statistics every `log_every_n_steps` steps; a client here takes fewer than the default 50
    result = _fit(synthetic, {"accelerator": "cpu", "callbacks": [DeviceStatsMonitor()], "log_every_n_steps": 1})
    for row in result.client_history:
        assert any(k.startswith("DeviceStatsMonitor.on_train_batch_end") for k in row)


def test_device_stats_monitor_runs_with_the_client_logger(synthetic):
    # without a logger Lightning refuses it in every client; cpu_stats=False on the CPU logs nothing but runs
    result = _fit(synthetic, {"accelerator": "cpu", "callbacks": [DeviceStatsMonitor(cpu_stats=False)]})
    assert [sorted(row) for row in result.client_history] == 4 * [
        ["client_id", "num_examples", "round", "slot", "train_loss"]]
    _same_run(result, _fit(synthetic, {"accelerator": "cpu"}))


def test_an_accelerator_this_machine_lacks_fails_at_construction_in_one_line():
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

    missing = ["tpu"] + ([] if CUDAAccelerator.is_available() or MPSAccelerator.is_available() else ["gpu", "cuda"])
    for name in missing:
        with pytest.raises(ValueError) as info:
            FederatedLoop(rounds=1, clients_per_round=1, trainer_kwargs={"accelerator": name})
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"`trainer_kwargs` asks for accelerator={name!r}, which this machine does not have"
                                  " (available: 'cpu'")
        assert message.endswith("pass accelerator='auto', which takes a GPU if there is one, or 'cpu'.")
    with pytest.raises(ValueError, match=r"`trainer_kwargs\['accelerator'\]` to be one of 'auto', 'cpu', 'cuda',"
                                         r" 'gpu', 'mps', 'tpu' or an Accelerator, got 'GPUs'"):
        FederatedLoop(rounds=1, clients_per_round=1, trainer_kwargs={"accelerator": "GPUs"})
    FederatedLoop(rounds=1, clients_per_round=1, trainer_kwargs={"accelerator": "cpu"})


def test_a_real_logger_in_trainer_kwargs_is_refused_with_the_reason(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    with pytest.raises(ValueError, match=r"client Trainers never log on their own \(a logger there would open a run or"
                                         r" a folder per client per round\).*FederatedLoop\(logger=\.\.\.\)"):
        FederatedLoop(rounds=1, clients_per_round=1, trainer_kwargs={"logger": CSVLogger(tmp_path)})
    _fit_without = FederatedLoop(rounds=1, clients_per_round=1, trainer_kwargs={"logger": False})
    assert _fit_without.trainer_kwargs["logger"] is False  # no logger at all stays allowed


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked; tested on Linux")
def test_callbacks_and_client_validation_with_two_workers_equal_one_process(synthetic):
    """Each client's EarlyStopping starts afresh, so which worker trained the previous client does not matter."""
    from lightning_fedmut.distributed import DistributedExecutor

    train, val = synthetic
    clients = make_clients(train, PARTS, batch_size=16, val_fraction=0.25, seed=0)

    def run(executor):
        torch.manual_seed(0)
        model = StepLRModule()
        kwargs = {"callbacks": [EarlyStopping(monitor="val_loss", patience=0, min_delta=0.05), LearningRateMonitor()]}
        result = FederatedLoop(rounds=2, clients_per_round=3, local_epochs=4, aggregator=FedAvg(weighted=False),
                               trainer_kwargs=kwargs, seed=0, enable_progress_bar=False, executor=executor).fit(
            model, clients, val_dataloaders=DataLoader(val, batch_size=60))
        return result

    one, two = run(None), run(DistributedExecutor(workers=2, timeout=60.0))
    assert {"lr-SGD", "val_acc", "val_loss"} <= set(one.client_history[0])
    _same_run(one, two)
