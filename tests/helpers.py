"""Small models and data for the tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_fedmut import FederatedCallback


def make_synthetic(n_train: int = 240, n_val: int = 60, features: int = 8, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=g) * 2
    y = torch.randint(0, classes, (n_train + n_val,), generator=g)
    x = centers[y] + torch.randn(n_train + n_val, features, generator=g)
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


class TinyModule(LightningModule):
    """An MLP with optional BatchNorm that logs train_loss and val_acc."""

    def __init__(self, features: int = 8, classes: int = 3, hidden: int = 16, batch_norm: bool = False,
                 lr: float = 0.1, momentum: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        layers = [nn.Linear(features, hidden)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers += [nn.ReLU(), nn.Linear(hidden, classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)


class NoValidationModule(TinyModule):
    validation_step = None  # type: ignore[assignment]


class TinyDataModule(LightningDataModule):
    def __init__(self, dataset, batch_size: int = 16):
        super().__init__()
        self.dataset, self.batch_size = dataset, batch_size

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True)


class Crash(FederatedCallback):
    """Raises at the start of round ``at_round``: a crash to resume from."""

    def __init__(self, at_round):
        self.at_round = at_round

    def on_round_start(self, loop, module):
        if loop.round == self.at_round:
            raise RuntimeError(f"crash at round {loop.round}")


class Recorder(FederatedCallback):
    """Records every hook call as a string."""

    def __init__(self):
        self.calls: list[str] = []

    def _rec(self, name, loop, *args):
        self.calls.append(f"{name}:{loop.round}" if name not in ("setup", "teardown") else name)

    def setup(self, loop, module, stage):
        self._rec("setup", loop)

    def teardown(self, loop, module, stage):
        self._rec("teardown", loop)

    def on_fit_start(self, loop, module):
        self._rec("on_fit_start", loop)

    def on_fit_end(self, loop, module):
        self._rec("on_fit_end", loop)

    def on_round_start(self, loop, module):
        self._rec("on_round_start", loop)

    def on_round_end(self, loop, module):
        self._rec("on_round_end", loop)

    def on_client_fit_start(self, loop, module, task):
        self.calls.append(f"on_client_fit_start:{loop.round}:{task.slot}")

    def on_client_fit_end(self, loop, module, result):
        self.calls.append(f"on_client_fit_end:{loop.round}:{result.task.slot}")

    def on_before_aggregate(self, loop, module, aggregator):
        self._rec("on_before_aggregate", loop)

    def on_after_aggregate(self, loop, module):
        self._rec("on_after_aggregate", loop)

    def on_validation_start(self, loop, module):
        self._rec("on_validation_start", loop)

    def on_validation_end(self, loop, module):
        self._rec("on_validation_end", loop)

    def on_exception(self, loop, module, exception):
        self._rec("on_exception", loop)


class StartModelRecorder(FederatedCallback):
    """Saves a float64 copy of every client's start state (place it after the MutationCallback)."""

    def __init__(self):
        self.starts: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.globals: dict[int, dict[str, torch.Tensor]] = {}

    def on_client_fit_start(self, loop, module, task):
        self.starts[(loop.round, task.slot)] = {k: v.detach().clone() for k, v in task.start_state.items()}

    def on_after_aggregate(self, loop, module):
        self.globals[loop.round] = {k: v.detach().clone() for k, v in module.state_dict().items()}


def state_of(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def make_result(state, num_examples=1, slot=0, client_id=0, payload=None):
    """A ClientResult holding ``state`` (a state dict), as an executor returns it."""
    from lightning_fedmut import Client
    from lightning_fedmut.tasks import ClientResult, ClientTask

    client = Client(id=client_id, data=DataLoader(TensorDataset(torch.zeros(max(num_examples, 1), 1))))
    task = ClientTask(round=0, slot=slot, client=client, seed=0, start_state={})
    return ClientResult(task=task, num_examples=num_examples, state=state, payload=dict(payload or {}))


def terminal_signals() -> None:
    """``preexec_fn`` of a child that stands for a program started from a terminal: SIGINT and SIGTERM unblocked and
    at their defaults, whatever the test process inherited or changed (dispositions to ignore and blocked signals
    pass to children)."""
    import signal

    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
