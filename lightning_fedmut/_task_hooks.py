"""The loop's work where a client trains: the callbacks' client hooks, the start-model check, the sampler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch import LightningModule

from lightning_fedmut._failures import divergence_causes
from lightning_fedmut.exceptions import DivergenceError
from lightning_fedmut.execution.base import TaskHooks
from lightning_fedmut.functional.state import first_non_finite
from lightning_fedmut.tasks import ClientResult, ClientTask

if TYPE_CHECKING:
    from lightning_fedmut.loop import FederatedLoop


class LoopTaskHooks(TaskHooks):
    """The loop's work where a client trains: the callbacks' client hooks, the start-model check, the sampler."""

    def __init__(self, loop: FederatedLoop, module: LightningModule, global_state: dict[str, Any]) -> None:
        self.loop, self.module, self.global_state = loop, module, global_state

    def on_task_start(self, task: ClientTask) -> None:
        loop = self.loop
        loop._call("on_client_fit_start", self.module, task)
        if loop._start_models_change:
            name = first_non_finite(task.start_state)
            if name is not None:
                raise DivergenceError(
                    f"The start model of slot {task.slot} in round {task.round} has non-finite values in"
                    f" {name!r}: the global model diverged. Likely causes: {divergence_causes(loop)}."
                )

    def on_task_end(self, result: ClientResult) -> None:
        if result.failed:
            self.loop._call("on_client_fit_failure", self.module, result)
        else:
            self.loop._call("on_client_fit_end", self.module, result)
            self.loop.sampler.observe(result, self.global_state)
