"""Scale-out: a round's clients trained in parallel worker processes on torch.distributed (SPMD).

``FederatedLoop(workers=N)`` forks the other ``N - 1`` workers at ``fit``; under ``torchrun`` or ``srun``
the loop joins the launcher's processes instead. See :class:`DistributedExecutor`.
"""

from __future__ import annotations

from lightning_fedmut.distributed.environment import WorkerEnvironment, detect_environment
from lightning_fedmut.distributed.executor import (
    DistributedExecutor,
    RemoteClientError,
    balanced_owners,
    loader_cost,
)
from lightning_fedmut.distributed.launcher import WorkerError
from lightning_fedmut.distributed.reduce import barrier, reduce_round_state
from lightning_fedmut.execution.base import ClientExecutor

__all__ = [
    "DistributedExecutor",
    "RemoteClientError",
    "WorkerEnvironment",
    "WorkerError",
    "balanced_owners",
    "barrier",
    "detect_environment",
    "executor_for",
    "loader_cost",
    "reduce_round_state",
]


def executor_for(executor: ClientExecutor, workers: int | None, workers_per_device: int = 1) -> ClientExecutor:
    """The executor a loop runs with: ``executor`` itself in one process, else a :class:`DistributedExecutor`
    around it (``workers`` > 1, or a process started by torchrun or srun).

    Examples:
        >>> from lightning_fedmut.execution import SequentialExecutor
        >>> executor_for(SequentialExecutor(), workers=None)
        SequentialExecutor()
        >>> executor_for(SequentialExecutor(), workers=2)
        DistributedExecutor(workers=2, inner=SequentialExecutor())
    """
    if isinstance(executor, DistributedExecutor):
        if workers not in (None, executor.workers):
            raise ValueError(f"`executor` has {executor.workers} workers but `workers`={workers}; pass one of them.")
        return executor
    if (workers is not None and workers > 1) or detect_environment() is not None:
        return DistributedExecutor(workers=workers, inner=executor, workers_per_device=workers_per_device)
    return executor
