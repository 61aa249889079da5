"""The loop's work where a client trains: the callbacks' client hooks, the start-model check, the sampler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_fedmut.exceptions import ClientDataExhaustedError, DivergenceError
from lightning_fedmut.execution.base import TaskHooks
from lightning_fedmut.federation import local_key
from lightning_fedmut.functional.state import first_non_finite, frozen_keys
from lightning_fedmut.loop.connectors.failures import divergence_causes
from lightning_fedmut.state import DeclaredState
from lightning_fedmut.tasks import ClientResult, ClientTask

if TYPE_CHECKING:
    from lightning_fedmut.loop import FederatedLoop


class _EpochGuard(Callback):
    """With ``local_steps`` a client runs epochs until the steps are done: fail it when an epoch yields no batch
    (an empty or one-shot iterable loader would loop forever). Given to client Trainers only then."""

    def __init__(self, client_id: Any) -> None:
        self.client_id = client_id
        self._step_at_start = 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._step_at_start = trainer.global_step

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step == self._step_at_start and trainer.limit_train_batches != 0:
            raise ClientDataExhaustedError(
                f"Client {self.client_id!r}'s data yielded no batch in epoch {trainer.current_epoch}: its loader is"
                " empty, or an iterable that can be read only once. Give it a DataLoader that can be iterated again"
                " (with `local_steps`, a client runs as many epochs as the steps need)."
            )


@torch.no_grad()
def _fingerprint(state: Mapping[str, Any], keys: list[str]) -> float:
    """One float64 number of the trainable weights: a step that moves any of them moves it (one pass, no copy)."""
    return float(sum(state[k].sum(dtype=torch.float64) * (i + 1) for i, k in enumerate(keys)))


class LoopTaskHooks(TaskHooks):
    """The loop's work where a client trains: the callbacks' client hooks, the start-model check, the sampler."""

    def __init__(self, loop: FederatedLoop, module: LightningModule, global_state: dict[str, Any]) -> None:
        self.loop, self.module, self.global_state = loop, module, global_state
        self._keys = [k for k, p in module.named_parameters() if p.requires_grad and p.is_floating_point()]
        self._start: dict[int, float] = {}  # each slot's start weights, as one number
        self._declaring = [c for c in loop._components() if isinstance(c, DeclaredState) and c.declares("client")]
        unshared = frozen_keys(module)  # the sampler learns from the federated entries only
        self._federated = {k: v for k, v in global_state.items() if k not in unshared}

    def on_task_start(self, task: ClientTask) -> None:
        loop = self.loop
        if loop.local_steps is not None:
            task.callbacks.append(_EpochGuard(task.client.id))
        for key in loop._local:  # the federation policy's local entries: the client's own, once it has trained
            own = task.client_state.get(local_key(key))
            if own is not None:
                task.start_state[key].copy_(own)
        for component in self._declaring:  # declared client state: this client's values
            component.load_client_state(task.client_state)
        loop._call("on_client_fit_start", self.module, task)
        self._start[task.slot] = _fingerprint(task.start_state, self._keys)
        if loop._start_models_change:
            name = first_non_finite(task.start_state)
            if name is not None:
                raise DivergenceError(
                    f"The start model of slot {task.slot} in round {task.round} has non-finite values in"
                    f" {name!r}: the global model diverged. Likely causes: {divergence_causes(loop)}."
                )

    def on_task_end(self, result: ClientResult) -> None:
        start = self._start.pop(result.task.slot, None)
        if start is not None and result.state is not None and _fingerprint(result.state, self._keys) == start:
            result.num_steps = 0  # steps that changed none of its weights are no step (the first-round check)
        if result.failed:
            self.loop._call("on_client_fit_failure", self.module, result)
        else:
            self.loop._call("on_client_fit_end", self.module, result)
            self.loop.sampler.observe(result, self._federated)
        for component in self._declaring:  # kept with the client's state; a failed client's is dropped
            component.store_client_state(None if result.failed else result.client_state)
        if not result.failed and self.loop._local and result.state is not None and result.client_state is not None:
            for key in self.loop._local:  # the client keeps its trained local entries for its next round
                result.client_state[local_key(key)] = result.state[key].detach().cpu().clone()
