"""The loop's work where a client trains: the callbacks' client hooks, the start-model check, the sampler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_fedmut._failures import divergence_causes
from lightning_fedmut.exceptions import ClientDataExhaustedError, DivergenceError
from lightning_fedmut.execution.base import TaskHooks
from lightning_fedmut.functional.state import first_non_finite
from lightning_fedmut.tasks import ClientResult, ClientTask

if TYPE_CHECKING:
    from lightning_fedmut.loop import FederatedLoop


class _Steps(Callback):
    """Counts a client's optimizer steps that changed its weights, and fails the client when an epoch yields no
    batch (an empty or one-shot iterable loader would make a run with ``local_steps`` loop forever)."""

    def __init__(self, client_id: Any) -> None:
        self.client_id = client_id
        self.steps: int | None = None  # unknown unless a Trainer ran this callback
        self._batches = 0
        self._start: float | None = None

    @staticmethod
    @torch.no_grad()
    def _fingerprint(pl_module: LightningModule) -> float:
        # one float64 sum of the trainable weights: any step that moves them moves it (one pass, no copy)
        return float(sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(pl_module.parameters())
                         if p.requires_grad and p.is_floating_point()))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = self._fingerprint(pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._batches = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self._batches += 1

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._batches == 0 and trainer.limit_train_batches != 0:
            raise ClientDataExhaustedError(
                f"Client {self.client_id!r}'s data yielded no batch in epoch {trainer.current_epoch}: its loader is"
                " empty, or an iterable that can be read only once. Give it a DataLoader that can be iterated again"
                " (with `local_steps`, a client runs as many epochs as the steps need)."
            )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        changed = self._start is None or self._fingerprint(pl_module) != self._start
        self.steps = int(trainer.global_step) if changed else 0


class LoopTaskHooks(TaskHooks):
    """The loop's work where a client trains: the callbacks' client hooks, the start-model check, the sampler."""

    def __init__(self, loop: FederatedLoop, module: LightningModule, global_state: dict[str, Any]) -> None:
        self.loop, self.module, self.global_state = loop, module, global_state
        self._steps: dict[int, _Steps] = {}

    def on_task_start(self, task: ClientTask) -> None:
        loop = self.loop
        self._steps[task.slot] = _Steps(task.client.id)
        task.callbacks.append(self._steps[task.slot])
        loop._call("on_client_fit_start", self.module, task)
        if loop._start_models_change:
            name = first_non_finite(task.start_state)
            if name is not None:
                raise DivergenceError(
                    f"The start model of slot {task.slot} in round {task.round} has non-finite values in"
                    f" {name!r}: the global model diverged. Likely causes: {divergence_causes(loop)}."
                )

    def on_task_end(self, result: ClientResult) -> None:
        counter = self._steps.pop(result.task.slot, None)
        if counter is not None and result.num_steps is None:
            result.num_steps = counter.steps
        if result.failed:
            self.loop._call("on_client_fit_failure", self.module, result)
        else:
            self.loop._call("on_client_fit_end", self.module, result)
            self.loop.sampler.observe(result, self.global_state)
