"""The workers' own gloo process group, kept apart from torch.distributed's default group.

The loop's exchanges go through a ``ProcessGroupGloo`` built on its own store and never registered as the
default group, so ``torch.distributed.is_initialized()`` stays ``False`` in the workers. That matters:
torchmetrics metrics and Lightning sync across the default group whenever it exists, and a client's metric
would otherwise be averaged with another worker's client (or wait forever for a worker that is training).
All tensors exchanged are on the CPU, which gloo carries.

Trust. Forked workers meet through a file store in a private folder and gloo binds ``127.0.0.1``: nothing of
theirs listens beyond the loopback interface. Under torchrun or srun the launcher's address stands, and the
exchange is unauthenticated: it is meant for a trusted cluster network. Objects travel as their tensors'
raw bytes beside the rest written by ``torch.save``, which is read back with ``torch.load(weights_only=True)``:
tensors and plain data (dicts, lists, tuples, strings, numbers, booleans, ``None``) only, so what a worker
receives never runs code.

Waiting. A collective runs in gloo's threads while this process waits on it in Python, a tenth of a second
at a time: signal handlers run meanwhile (Ctrl+C and SIGTERM stop the run), and a ``watch`` (rank 0's check
of the forked workers' heartbeats) names a worker that stopped answering, long before gloo's own timeout.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from lightning_fedmut.distributed.environment import WorkerEnvironment
from lightning_fedmut.loop.connectors import signals as _signals

__all__: list[str] = []  # used through DistributedExecutor

#: Seconds between two checks of the signals and the watch while a collective waits.
POLL_S = 0.1
#: Groups left while a collective still waited (a worker stopped or died): gloo cannot free them while the
#: other end is alive, so they are kept until the launcher has ended the workers (:func:`release_abandoned`).
_abandoned: list[Any] = []
#: Threads freeing the groups closed after their last exchange (see :meth:`WorkerGroup.close`).
_releasing: list[threading.Thread] = []


def release_abandoned() -> None:
    """Free the groups left mid-exchange, once their other workers are gone."""
    _abandoned.clear()


def wait_released() -> None:
    """Wait until the groups closed earlier are freed: before a fork, no thread may be inside gloo."""
    while _releasing:
        _releasing.pop().join()


class WorkerGroup:
    """Collectives among the run's workers: sum tensors, broadcast and gather Python objects.

    Args:
        env: the workers' environment (rank, world size, rendezvous address or store file).
        timeout_s: how long an exchange waits for the others before it fails.
        watch: called while an exchange waits (every :data:`POLL_S` seconds, and once with ``failed=True``
            when it failed); it raises when a worker is known to be gone or silent.
    """

    def __init__(self, env: WorkerEnvironment, timeout_s: float,
                 watch: Callable[..., None] | None = None) -> None:
        timeout = timedelta(seconds=timeout_s)
        self.rank, self.world_size = env.rank, env.world_size
        self._watch = watch
        self._waiting = False
        store: dist.Store
        if env.store_path is not None:  # forked workers on one machine: a file, no port
            store = dist.FileStore(env.store_path, env.world_size)
            store.set_timeout(timeout)
        elif dist.is_available() and dist.is_initialized():  # the program's own group: share its store
            store = dist.distributed_c10d._get_default_store()
        else:
            agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)  # torchrun hosts it
            store = dist.TCPStore(env.main_address, env.main_port, env.world_size,
                                  is_master=env.rank == 0 and not agent_store, timeout=timeout,
                                  wait_for_workers=True)
        self._store: dist.Store | None = store
        # the process group's collectives (allreduce, broadcast ...) are not in torch's type stubs
        self._pg: Any
        prefixed = dist.PrefixStore("lightning_fedmut/", store)
        if env.source == "fork":  # one machine: loopback only
            options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
            options._timeout = timeout
            options._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
            self._pg = dist.ProcessGroupGloo(prefixed, env.rank, env.world_size, options)
        else:  # across machines: the interface of GLOO_SOCKET_IFNAME, or of the host name
            self._pg = dist.ProcessGroupGloo(prefixed, env.rank, env.world_size, timeout)

    def all_reduce_(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor in place over the workers."""
        for tensor in tensors:
            cpu = tensor.detach().cpu().contiguous()
            self._wait(self._pg.allreduce([cpu]))
            if cpu.data_ptr() != tensor.data_ptr():
                tensor.copy_(cpu)

    def broadcast_object(self, obj: Any, src: int) -> Any:
        """Rank ``src``'s ``obj`` in every worker."""
        payload = _to_bytes(obj) if self.rank == src else torch.empty(0, dtype=torch.uint8)
        size = torch.tensor([payload.numel()], dtype=torch.int64)
        self._wait(self._pg.broadcast([size], _root(src)))
        if self.rank != src:
            payload = torch.empty(int(size.item()), dtype=torch.uint8)
        self._wait(self._pg.broadcast([payload], _root(src)))
        return obj if self.rank == src else _from_bytes(payload)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every worker's ``obj``, in rank order (each unpickled from what was sent, the own one included)."""
        payload = _to_bytes(obj)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        self._wait(self._pg.allgather([sizes], [torch.tensor([payload.numel()], dtype=torch.int64)]))
        longest = max(int(s.item()) for s in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[: payload.numel()] = payload
        out = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.world_size)]
        self._wait(self._pg.allgather([out], [padded]))
        return [_from_bytes(t[: int(s.item())]) for t, s in zip(out, sizes)]

    def barrier(self) -> None:
        self._wait(self._pg.barrier())

    def _wait(self, work: Any) -> None:
        """Wait for ``work`` in Python, so that signals are handled and the watch runs meanwhile."""
        done = threading.Event()
        work.get_future().add_done_callback(lambda _: done.set())
        self._waiting = True
        while not done.wait(POLL_S):
            _signals.check_waiting()
            if self._watch is not None:
                self._watch()
        self._waiting = False
        try:
            work.wait()
        except Exception:
            if self._watch is not None:  # a worker that died or left: name it
                self._watch(failed=True)
            raise

    def close(self) -> None:
        """Leave the group (after the last exchange, or after one that was given up)."""
        pg, self._pg, self._store = self._pg, None, None
        if pg is None:  # closed already
            return
        if hasattr(pg, "shutdown"):
            with contextlib.suppress(RuntimeError):
                pg.shutdown()
        if self._waiting:  # freeing it now would wait for the silent worker
            _abandoned.append(pg)
            return
        # Destroying a gloo group waits about 20 ms for its connections to close, without the GIL: a thread of its
        # own does it, so that the fit's end (and the workers' exit, which rank 0 waits for) does not.
        holder = [pg]
        del pg  # the thread's is the last reference
        thread = threading.Thread(target=holder.clear, name="lightning_fedmut-release-group")
        _releasing[:] = [*(t for t in _releasing if t.is_alive()), thread]
        thread.start()


def _root(src: int) -> dist.BroadcastOptions:
    options = dist.BroadcastOptions()
    options.rootRank = src
    return options


#: The first bytes of what :func:`_to_bytes` writes: a format tag and the version.
_MAGIC = b"LFMX0001"
#: Every tensor's bytes start at a multiple of this (any dtype can be viewed there).
_ALIGN = 64


def _aligned(n: int) -> int:
    """The first multiple of :data:`_ALIGN` at or after ``n``."""
    return -(-n // _ALIGN) * _ALIGN


def _to_bytes(obj: Any) -> torch.Tensor:
    """``obj`` as one byte tensor: its tensors' raw bytes, and the rest as ``torch.save`` writes it.

    The dense tensors found in ``obj``'s dicts, lists and tuples are copied side by side into one buffer (each
    at a multiple of 64 bytes); the structure around them, with ``None`` in their place, and a table of where
    each goes (its path of keys, dtype, shape, offset) are written by ``torch.save``, in front. Copying the
    bytes costs a fraction of ``torch.save``'s zip archive of the tensors (its checksums and records): see
    ``benchmarks/scaling.py``'s exchange phase. Other tensors (sparse, quantized, meta, subclasses) stay in the
    part ``torch.save`` writes.

    Examples:
        >>> _from_bytes(_to_bytes({"slot": 3, "loss": 0.5, "state": {"w": torch.ones(2)}, "error": None}))
        {'slot': 3, 'loss': 0.5, 'state': {'w': tensor([1., 1.])}, 'error': None}
        >>> back = _from_bytes(_to_bytes([(torch.arange(3), {1: torch.zeros(2, 0)}), torch.tensor(True)]))
        >>> back
        [(tensor([0, 1, 2]), {1: tensor([], size=(2, 0))}), tensor(True)]
    """
    found: list[tuple[tuple[Any, ...], torch.Tensor]] = []
    skeleton = _strip(obj, (), found)
    table, end = [], 0
    for path, tensor in found:
        offset = _aligned(end)
        table.append((path, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), offset,
                      tensor.requires_grad, str(tensor.device)))
        end = offset + tensor.numel() * tensor.element_size()
    buffer = io.BytesIO()
    torch.save((skeleton, table), buffer)
    head = torch.frombuffer(bytearray(buffer.getbuffer()), dtype=torch.uint8)
    start = _aligned(16 + head.numel())
    out = torch.zeros(start + end, dtype=torch.uint8)
    out[:8] = torch.frombuffer(bytearray(_MAGIC), dtype=torch.uint8)
    out[8:16] = torch.frombuffer(bytearray(head.numel().to_bytes(8, "little")), dtype=torch.uint8)
    out[16:16 + head.numel()] = head
    for (_, tensor), (_, _, shape, offset, _, _) in zip(found, table):
        size = tensor.numel() * tensor.element_size()
        if size:
            out[start + offset:start + offset + size].view(tensor.dtype).view(shape).copy_(tensor.detach())
    return out


def _from_bytes(tensor: torch.Tensor) -> Any:
    """What :func:`_to_bytes` wrote, read as data: tensors and plain Python values only, never code.

    The part ``torch.save`` wrote is read with ``torch.load(weights_only=True)``; each tensor is a copy of its
    bytes, of the dtype and shape the table names, on the device it was sent from, as ``torch.load`` places a
    tensor (nothing in the bytes is run or interpreted otherwise).

    Examples:
        >>> from fractions import Fraction
        >>> _from_bytes(_to_bytes({"x": Fraction(1, 3)}))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: Workers exchange tensors and plain data only (dict, list, tuple, str, int, float, bool, None)...
    """
    if tensor.numel() < 16 or bytes(tensor[:8].tolist()) != _MAGIC:
        raise ValueError("Expected the bytes of a worker's exchange (they start with the format tag"
                         f" {_MAGIC!r}), got {bytes(tensor[:8].tolist())!r}: workers of one run must run one version.")
    length = int.from_bytes(bytes(tensor[8:16].tolist()), "little")
    try:
        skeleton, table = torch.load(io.BytesIO(tensor[16:16 + length].numpy().tobytes()), weights_only=True)
    except pickle.UnpicklingError as err:
        raise TypeError(
            "Workers exchange tensors and plain data only (dict, list, tuple, str, int, float, bool, None), and"
            f" received something else: {str(err).splitlines()[0]}. Keep a callback's or sampler's exchanged"
            " values (payloads, client states, gathered objects) to tensors and plain data."
        ) from None
    start = _aligned(16 + length)
    placed = {}
    for path, dtype_name, shape, offset, requires_grad, device in table:
        dtype = getattr(torch, dtype_name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"Expected a torch dtype in a worker's exchange, got {dtype_name!r}.")
        size = math.prod(shape) * dtype.itemsize
        raw = tensor[start + offset:start + offset + size].view(dtype).view(shape)
        # a copy, on the device the tensor was sent from (as torch.load would place it)
        value = raw.clone() if device == "cpu" else raw.to(torch.device(device), copy=True)
        placed[tuple(path)] = value.requires_grad_() if requires_grad else value
    return _fill(skeleton, (), placed) if placed else skeleton


def _strip(obj: Any, path: tuple[Any, ...], found: list[tuple[tuple[Any, ...], torch.Tensor]]) -> Any:
    """``obj`` with ``None`` in place of each dense tensor, which goes to ``found`` with its path of keys."""
    kind = type(obj)
    if (kind in (torch.Tensor, torch.nn.Parameter) and obj.layout == torch.strided and not obj.is_quantized
            and obj.device.type != "meta"):
        found.append((path, obj))
        return None
    if kind is dict or kind is OrderedDict:
        return kind((k, _strip(v, (*path, k), found)) for k, v in obj.items())
    if kind is list or kind is tuple:
        return kind(_strip(v, (*path, i), found) for i, v in enumerate(obj))
    return obj


def _fill(skeleton: Any, path: tuple[Any, ...], placed: dict[tuple[Any, ...], torch.Tensor]) -> Any:
    """The inverse of :func:`_strip`: ``skeleton`` with the tensors of ``placed`` back at their paths."""
    if path in placed:
        return placed[path]
    kind = type(skeleton)
    if kind is dict or kind is OrderedDict:
        return kind((k, _fill(v, (*path, k), placed)) for k, v in skeleton.items())
    if kind is list or kind is tuple:
        return kind(_fill(v, (*path, i), placed) for i, v in enumerate(skeleton))
    return skeleton
