"""Where the worker processes of a run come from: started by the loop, by torchrun, or by SLURM's srun."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

__all__ = ["WorkerEnvironment", "detect_environment"]


@dataclass(frozen=True)
class WorkerEnvironment:
    """The process group a run's workers form.

    Attributes:
        world_size: the number of worker processes.
        rank: this process's rank (0 logs, shows progress and writes checkpoints).
        local_rank: its rank on this machine (which GPU it uses).
        main_address: the address of rank 0's rendezvous.
        main_port: its port.
        source: ``"fork"`` (the loop starts the workers), ``"torchrun"`` or ``"slurm"``.
        store_path: with forked workers, the file their rendezvous store lives in (in a private folder, so
            nothing listens on a network port for it); ``None`` under a launcher, whose address stands.

    Examples:
        >>> env = WorkerEnvironment(world_size=2, rank=1, local_rank=1, main_address="127.0.0.1", main_port=29500,
        ...                         source="fork")
        >>> env.is_global_zero, env.creates_processes
        (False, True)
    """

    world_size: int
    rank: int
    local_rank: int
    main_address: str
    main_port: int
    source: str
    store_path: str | None = None

    @property
    def is_global_zero(self) -> bool:
        return self.rank == 0

    @property
    def creates_processes(self) -> bool:
        """Whether the loop starts the other workers itself (they were not started by a launcher)."""
        return self.source == "fork"


def detect_environment() -> WorkerEnvironment | None:
    """The environment of a run started by ``torchrun`` (or any torchelastic launcher) or ``srun``, else ``None``.

    Uses Lightning's cluster environments, so what Lightning's own DDP detects is detected here too.

    Examples:
        >>> import os
        >>> os.environ.get("TORCHELASTIC_RUN_ID") is None and detect_environment() is None
        True
    """
    from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment, TorchElasticEnvironment

    env: ClusterEnvironment
    if TorchElasticEnvironment.detect():
        env, source = TorchElasticEnvironment(), "torchrun"
    elif SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        env, source = SLURMEnvironment(), "slurm"
    else:
        return None
    return WorkerEnvironment(world_size=env.world_size(), rank=env.global_rank(), local_rank=env.local_rank(),
                             main_address=env.main_address, main_port=env.main_port, source=source)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the loopback interface by default).

    Examples:
        >>> 0 < free_port() < 65536
        True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
