"""The workers' own gloo process group, kept apart from torch.distributed's default group.

The loop's exchanges go through a ``ProcessGroupGloo`` built on its own store and never registered as the
default group, so ``torch.distributed.is_initialized()`` stays ``False`` in the workers. That matters:
torchmetrics metrics and Lightning sync across the default group whenever it exists, and a client's metric
would otherwise be averaged with another worker's client (or wait forever for a worker that is training).
All tensors exchanged are on the CPU, which gloo carries.
"""

from __future__ import annotations

import io
import os
import pickle
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from lightning_fedmut.distributed.environment import WorkerEnvironment

__all__: list[str] = []  # used through DistributedExecutor


class WorkerGroup:
    """Collectives among the run's workers: sum tensors, broadcast and gather Python objects.

    Args:
        env: the workers' environment (rank, world size, rendezvous address).
        timeout_s: how long an exchange waits for the others before it fails.
    """

    def __init__(self, env: WorkerEnvironment, timeout_s: float) -> None:
        timeout = timedelta(seconds=timeout_s)
        self.rank, self.world_size = env.rank, env.world_size
        if dist.is_available() and dist.is_initialized():  # the program's own group: share its store
            store = dist.distributed_c10d._get_default_store()
        else:
            agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)  # torchrun hosts it
            store = dist.TCPStore(env.main_address, env.main_port, env.world_size,
                                  is_master=env.rank == 0 and not agent_store, timeout=timeout,
                                  wait_for_workers=True)
        self._store = store
        prefixed = dist.PrefixStore("lightning_fedmut/", store)
        if env.source == "fork":  # one machine: loopback only
            options = dist.ProcessGroupGloo._Options()
            options._timeout = timeout
            options._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
            self._pg = dist.ProcessGroupGloo(prefixed, env.rank, env.world_size, options)
        else:  # across machines: the interface of GLOO_SOCKET_IFNAME, or of the host name
            self._pg = dist.ProcessGroupGloo(prefixed, env.rank, env.world_size, timeout)

    def all_reduce_(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor in place over the workers."""
        for tensor in tensors:
            cpu = tensor.detach().cpu().contiguous()
            self._pg.allreduce([cpu]).wait()
            if cpu.data_ptr() != tensor.data_ptr():
                tensor.copy_(cpu)

    def broadcast_object(self, obj: Any, src: int) -> Any:
        """Rank ``src``'s ``obj`` in every worker."""
        payload = _to_bytes(obj) if self.rank == src else torch.empty(0, dtype=torch.uint8)
        size = torch.tensor([payload.numel()], dtype=torch.int64)
        self._pg.broadcast([size], _root(src)).wait()
        if self.rank != src:
            payload = torch.empty(int(size.item()), dtype=torch.uint8)
        self._pg.broadcast([payload], _root(src)).wait()
        return obj if self.rank == src else _from_bytes(payload)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every worker's ``obj``, in rank order (each unpickled from what was sent, the own one included)."""
        payload = _to_bytes(obj)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        self._pg.allgather([sizes], [torch.tensor([payload.numel()], dtype=torch.int64)]).wait()
        longest = max(int(s.item()) for s in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[: payload.numel()] = payload
        out = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.world_size)]
        self._pg.allgather([out], [padded]).wait()
        return [_from_bytes(t[: int(s.item())]) for t, s in zip(out, sizes)]

    def barrier(self) -> None:
        self._pg.barrier().wait()

    def close(self) -> None:
        """Leave the group (after the last exchange)."""
        shutdown = getattr(self._pg, "shutdown", None)
        if shutdown is not None:
            try:
                shutdown()
            except RuntimeError:
                pass
        self._pg = None
        self._store = None


def _root(src: int) -> dist.BroadcastOptions:
    options = dist.BroadcastOptions()
    options.rootRank = src
    return options


def _to_bytes(obj: Any) -> torch.Tensor:
    buffer = io.BytesIO()
    pickle.dump(obj, buffer, protocol=pickle.HIGHEST_PROTOCOL)
    return torch.frombuffer(bytearray(buffer.getbuffer()), dtype=torch.uint8)


def _from_bytes(tensor: torch.Tensor) -> Any:
    return pickle.loads(tensor.numpy().tobytes())  # bytes from this run's own workers only
