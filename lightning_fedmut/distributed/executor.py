"""A round's clients trained in parallel worker processes, SPMD on torch.distributed, as pfl-research does."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any, TypeVar, cast

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from lightning_fedmut.distributed.environment import WorkerEnvironment, detect_environment
from lightning_fedmut.distributed.group import WorkerGroup
from lightning_fedmut.distributed.launcher import fork_workers
from lightning_fedmut.distributed.sharding import reduce_metric_terms, shard_dataloaders, unshardable_reason
from lightning_fedmut.distributed.timers import PhaseTimes
from lightning_fedmut.execution.base import ClientExecutor, ClientTraining, TaskHooks
from lightning_fedmut.execution.evaluation import Evaluator
from lightning_fedmut.execution.sequential import SequentialExecutor
from lightning_fedmut.functional.state import frozen_keys
from lightning_fedmut.tasks import ClientResult, ClientTask
from lightning_fedmut.utilities.validation import check_int, check_real

__all__ = ["DistributedExecutor", "RemoteClientError", "balanced_owners", "loader_cost"]

T = TypeVar("T")


def balanced_owners(costs: Sequence[float], world_size: int, capacity: int) -> list[int]:
    """The rank that trains each of a chunk's tasks, so that every rank has about the same work.

    The costliest task first (the earlier slot on a tie), each to the rank with the least work so far (then the
    fewest tasks, then the lowest rank) among those holding fewer than ``capacity``: the longest-processing-time
    rule. It depends on the costs alone, which every worker computes alike from the clients' data, never on
    timing, so every worker knows who trains what.

    Examples:
        >>> balanced_owners([8, 1, 1, 1, 1, 4, 4], world_size=2, capacity=7)  # loads 10 and 10
        [0, 0, 1, 0, 1, 1, 1]
        >>> balanced_owners([8, 1, 1, 1, 1, 1, 1], world_size=2, capacity=7)  # loads 8 and 6
        [0, 1, 1, 1, 1, 1, 1]
        >>> balanced_owners([8, 1, 1, 1, 1, 1, 1], world_size=2, capacity=4)  # at most 4 each: loads 10 and 4
        [0, 1, 1, 1, 1, 0, 0]
        >>> balanced_owners([1, 1, 1], world_size=2, capacity=2)  # equal costs: dealt in slot order
        [0, 1, 0]
    """
    if capacity * world_size < len(costs):
        raise ValueError(f"Expected `capacity` * `world_size` >= the number of tasks ({len(costs)}), got"
                         f" {capacity} * {world_size}.")
    loads = [0.0] * world_size
    counts = [0] * world_size
    owners = [0] * len(costs)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min((r for r in range(world_size) if counts[r] < capacity), key=lambda r: (loads[r], counts[r], r))
        owners[index] = rank
        loads[rank] += costs[index]
        counts[rank] += 1
    return owners


def loader_cost(loader: Any, num_examples: int | None, steps: Callable[[int], int] = int) -> float:
    """The work of running ``loader``, for :func:`balanced_owners`: ``steps(its batches)`` plus one for the
    Trainer, or ``num_examples`` (else 1) where the loader has no length (a DataModule, an iterable data set).

    Examples:
        >>> from torch.utils.data import DataLoader
        >>> loader = DataLoader(range(10), batch_size=4)
        >>> loader_cost(loader, 10), loader_cost(loader, 10, steps=lambda batches: 5 * batches)
        (4.0, 16.0)
        >>> loader_cost(None, 7)
        7.0
    """
    try:
        batches = len(loader)
    except TypeError:
        return float(num_examples or 1)
    return float(steps(batches) + 1)


class RemoteClientError(RuntimeError):
    """A client's error, as it reaches the processes that did not train the client.

    ``type_name`` is the original exception's type, so failure records are the same in every process.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(message)
        self.type_name = type_name
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, str(self), self.traceback_text))


class DistributedExecutor(ClientExecutor):
    """Train each round's clients in ``workers`` processes, every one running the same loop with the same seeds.

    The round's clients are dealt to the workers by their cost, the costliest first to the least loaded worker
    (:func:`balanced_owners`: clients of unequal size keep no worker waiting for another), and each worker trains
    its own with the ``inner`` executor, one working copy per worker;
    FedMut's start models are built there from the global weights, delta and coefficient table that every
    rank holds identically, so no start model is sent. After its clients, each worker sends its results (the
    trained states as CPU tensors, metrics, step counts, payloads, per-client states, errors) to every other, and every
    worker hands the round's results to the loop in slot order: the aggregator, the history and the
    client-state store then see exactly what one process sees, so results equal a one-process run bit for bit,
    whatever the number of workers. The global model is evaluated by all workers, each on a share of the
    validation batches, and its metrics combined exactly (see :meth:`evaluate`); :attr:`rank_times` itemises
    where each rank's time went.
    Rank 0 alone logs, shows progress and writes checkpoints.

    The round goes in chunks: each rank trains up to ``exchange_mb`` of its clients' states (at least one), then
    the chunk's results are gathered and handed to the aggregator in slot order, one at a time, before the next
    chunk trains. A worker therefore holds a bounded number of trained models beyond its working copy and the
    global model, whatever ``clients_per_round`` (``benchmarks/worker_memory.py`` measures it), and small models
    are exchanged once a round; every worker still receives every trained state, which is what keeps the
    aggregate bitwise equal to one process's.

    Workers come from one of three places: started by the loop itself at ``fit`` (a plain ``python script.py``,
    or the CLI; they are forked: tutorial 9 says why), or the processes of
    ``torchrun`` or SLURM's ``srun``, which the loop detects and joins.

    Args:
        workers: the number of worker processes (under torchrun or srun: their number, or ``None``).
        inner: how a worker trains its clients; default :class:`~lightning_fedmut.execution.SequentialExecutor`.
        workers_per_device: workers sharing one GPU (rank ``r`` uses ``cuda:(local_rank // workers_per_device)``).
        timeout: seconds a worker waits for the others at an exchange before the run fails (gloo's timeout). A
            worker that trains more clients, or slower ones, keeps the others waiting for as long: keep it long.
        exchange_mb: how many MB of its own trained states a worker may hold before the results are exchanged:
            ``exchange_mb // model size`` clients each (at least one, at most all of the round's), so a worker's
            memory stays within a bound whatever ``clients_per_round``, and small models are exchanged once a round.
        answer_timeout: with workers the loop started (not torchrun's or srun's), seconds a worker may stay
            silent while rank 0 waits for it before the run fails with :class:`WorkerError` naming its rank and
            PID. Workers answer from a thread of their own while they train, so only a stopped worker (SIGSTOP,
            a debugger) or one stuck where Python does not run stays silent. A client stuck in Python code is
            ended by the loop's ``client_timeout`` instead.

    Ctrl+C and SIGTERM reach rank 0 (the process the user started) also while it waits for the other workers,
    and stop the run within seconds, whatever the workers are doing (see ``docs/tutorials/09-scale-out.md``).

    Examples:
        >>> executor = DistributedExecutor(workers=2)
        >>> executor.world_size, executor.is_global_zero
        (2, True)
    """

    def __init__(self, workers: int | None = None, inner: ClientExecutor | None = None, workers_per_device: int = 1,
                 timeout: float = 1800.0, answer_timeout: float = 120.0, exchange_mb: float = 16.0) -> None:
        self.environment = detect_environment()
        if self.environment is not None and workers not in (None, self.environment.world_size):
            raise ValueError(
                f"This process was started by {self.environment.source} with {self.environment.world_size} processes,"
                f" but `workers`={workers}. Pass `workers={self.environment.world_size}` (or leave it unset), or start"
                f" {workers} processes."
            )
        self.workers = self.environment.world_size if self.environment else check_int("workers", workers, low=1)
        if inner is not None and not isinstance(inner, ClientExecutor):
            raise TypeError(f"Expected `inner` to be a ClientExecutor, got {type(inner).__name__}.")
        self.inner = SequentialExecutor() if inner is None else inner
        self.workers_per_device = check_int("workers_per_device", workers_per_device, low=1)
        self.timeout = check_real("timeout", timeout, low=1.0)
        self.answer_timeout = check_real("answer_timeout", answer_timeout, low=1.0)
        self.exchange_mb = check_real("exchange_mb", exchange_mb, low=0.0)
        self._env: WorkerEnvironment | None = self.environment
        self._group: WorkerGroup | None = None
        self._launched = 0.0
        self._shards: dict[int, tuple[Any, str | None]] = {}  # per validation data: its share, or why none
        self._unshared: frozenset[str] = frozenset()  # entries no worker needs from another (frozen, local)
        self._training = ClientTraining()  # how clients train (their cost): set by `setup`
        #: Seconds per phase of the last fit, one dict per rank (see :class:`~lightning_fedmut.distributed.timers.PhaseTimes`).
        self.rank_times: list[dict[str, float]] = []
        #: Why the last fit's global model was evaluated by rank 0 alone (``None``: every worker evaluated a share).
        self.evaluation_fallback: str | None = None
        self.times = PhaseTimes()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workers={self.workers}, inner={self.inner!r})"

    # ----------------------------------------------------------- processes
    @property
    def world_size(self) -> int:
        return self.workers

    @property
    def rank(self) -> int:
        return 0 if self._env is None else self._env.rank

    def launch(self, fn: Callable[[], T]) -> T:
        self.times, self.rank_times, self._launched = PhaseTimes(), [], time.perf_counter()
        if self.environment is None:
            threads = max(1, torch.get_num_threads() // self.workers)
            return fork_workers(self.workers, threads, lambda env, watch: self._connected(env, fn, watch),
                                answer_timeout_s=self.answer_timeout)
        return self._connected(self.environment, fn)

    def _connected(self, env: WorkerEnvironment, fn: Callable[[], T], watch: Callable[..., None] | None = None) -> T:
        self._env = env
        self._group = WorkerGroup(env, self.timeout, watch)
        # forked workers inherit `_launched` (a system-wide monotonic clock): their start-up includes the fork
        self.times.add("startup", time.perf_counter() - self._launched)
        self.evaluation_fallback = None
        try:
            out = fn()
            summary = self.times.summary(time.perf_counter() - self._launched)
            # nobody leaves while another still exchanges: the gather is the last barrier
            self.rank_times = self._group.all_gather_object(summary)
            return out
        finally:
            self._group.close()
            self._group = None
            self._env = self.environment
            self._shards = {}

    # -------------------------------------------------------------- training
    def setup(self, module: LightningModule, training: ClientTraining) -> None:
        from lightning.fabric.plugins.environments import LightningEnvironment

        kwargs = dict(training.trainer_kwargs)
        # client Trainers are single-process: never let them see torchrun's or srun's world and start a DDP
        plugins = kwargs.get("plugins") or []
        kwargs["plugins"] = [*(plugins if isinstance(plugins, (list, tuple)) else [plugins]), LightningEnvironment()]
        accelerator = kwargs.get("accelerator", "auto")
        gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        if gpu and "devices" not in training.trainer_kwargs:
            local_rank = 0 if self._env is None else self._env.local_rank
            kwargs["devices"] = [local_rank // self.workers_per_device]
        self._unshared = frozen_keys(module)  # the fit's federation policy is set before the executor
        self._training = training
        self.inner.setup(module, replace(training, trainer_kwargs=kwargs))

    def run(self, tasks: Iterable[ClientTask], hooks: TaskHooks) -> Iterator[ClientResult]:
        """The round's results in slot order, in every worker, a bounded number at a time.

        The round goes in chunks of ``workers * c`` clients (``c = exchange_mb // model size``, at least 1, at most
        a rank's share of the round); a chunk's clients are dealt to the ranks by their cost (local steps, see
        :func:`balanced_owners`), each rank holding at most ``exchange_mb // model size`` of them, then every rank's
        results of that chunk are gathered and yielded in slot order; the loop feeds each to the aggregator before
        asking for the next. A worker thus holds a bounded number of trained states of its own and ``workers`` times
        as many received ones, whatever ``clients_per_round``: one for a model above ``exchange_mb``, and a whole
        round's (one exchange per round) for the small models simulations use.
        """
        tasks = list(tasks)
        if self._group is None:  # one process: nothing to exchange
            yield from self.inner.run(tasks, hooks)
            return
        if not tasks:
            return
        per, room = self._per_exchange(tasks)
        chunk = self.world_size * per
        for start in range(0, len(tasks), chunk):
            group = tasks[start:start + chunk]
            owners = balanced_owners([self._cost(task) for task in group], self.world_size,
                                     max(per, min(room, len(group))))
            with self.times("train"):
                mine = [_pack(next(iter(self.inner.run([task], hooks))), self._unshared)
                        for task, owner in zip(group, owners) if owner == self.rank]
            with self.times("exchange"):
                received = {record["slot"]: record for records in self._group.all_gather_object(mine)
                            for record in records}
            del mine
            for task in group:
                yield _unpack(task, received.pop(task.slot))

    def _per_exchange(self, tasks: list[ClientTask]) -> tuple[int, int]:
        """How many of its own clients a worker trains before an exchange when the round is dealt evenly, and how
        many of its own trained states it may hold at most (see ``exchange_mb``)."""
        share = -(-len(tasks) // self.world_size)
        size = sum(t.numel() * t.element_size() for k, t in tasks[0].start_state.items()
                   if isinstance(t, Tensor) and k not in self._unshared)
        room = max(1, int(self.exchange_mb * 2**20 // max(size, 1)))
        return min(share, room), room

    def _cost(self, task: ClientTask) -> float:
        """A client's work in the round, in optimizer steps (its batches times the local epochs, or the local
        steps), plus one for its Trainer (see :func:`loader_cost`)."""
        epochs, local_steps = self._training.local_epochs, self._training.local_steps
        client = task.client
        return loader_cost(getattr(client, "data", None), getattr(client, "num_examples", None),
                           lambda batches: batches * epochs if local_steps is None else local_steps)

    def teardown(self) -> None:
        self.inner.teardown()

    def evaluate(self, evaluator: Evaluator, module: LightningModule, dataloaders: Any) -> dict[str, float]:
        """The global model's metrics in every worker, each worker evaluating a share of the batches.

        Rank ``r`` validates batches ``r, r + N ...`` of each loader (see
        :mod:`~lightning_fedmut.distributed.sharding`) and sends, per metric, what each of its batches added to
        Lightning's running sum; every rank adds all the terms in batch order, as one process does, so a
        batch-size-weighted mean (Lightning's ``self.log`` default) or a ``reduce_fx="sum"`` metric equals the
        one-process value bit for bit; a torchmetrics object with integer states (accuracy, precision, recall ...
        keep counts) is computed from the sum of every rank's states, also the one-process value. Rank 0 evaluates
        the whole data alone, and the others wait for its metrics, when the data cannot be split (see
        :func:`~lightning_fedmut.distributed.sharding.unshardable_reason`) or a metric cannot be combined (a
        torchmetrics object with floating-point states, ``reduce_fx="max"``, one logged at the epoch's end): the
        first evaluation finds out, the fit's later ones go to rank 0 at once.
        :attr:`evaluation_fallback` says why.
        """
        if self._group is None:  # a single process, rank 0
            return evaluator.evaluate(module, dataloaders)
        shard, reason = self._share(evaluator, dataloaders)
        if reason is None:
            rank, world = self.rank, self.world_size
            with self.times("evaluate"):
                terms, reason = evaluator.evaluate_terms(module, shard, lambda i: rank + i * world)
            with self.times("evaluate_exchange"):
                parts = self._group.all_gather_object([terms, reason])
            reasons = [r for _, r in parts if r is not None]
            if not reasons:
                return reduce_metric_terms([t for t, _ in parts], evaluator.metric_objects)
            reason = reasons[0]
            self._shards[id(dataloaders)] = (None, reason)
        self.evaluation_fallback = reason
        with self.times("evaluate"):
            metrics = evaluator.evaluate(module, dataloaders) if self.is_global_zero else None
        with self.times("evaluate_exchange"):
            return cast("dict[str, float]", self._group.broadcast_object(metrics, src=0))

    def _share(self, evaluator: Evaluator, dataloaders: Any) -> tuple[Any, str | None]:
        """This rank's share of ``dataloaders`` (made once per fit), or why the evaluation is not shared."""
        if id(dataloaders) not in self._shards:
            reason = unshardable_reason(dataloaders, self.world_size, evaluator.trainer_kwargs)
            shard = None if reason else shard_dataloaders(dataloaders, self.rank, self.world_size)
            self._shards[id(dataloaders)] = (shard, reason)
        return self._shards[id(dataloaders)]

    # ----------------------------------------------------------- collectives
    def all_reduce_(self, tensors: list[Tensor]) -> None:
        if self._group is not None:
            with self.times("state_exchange"):
                self._group.all_reduce_(tensors)

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self._group is None:
            return [obj]
        with self.times("state_exchange"):
            return self._group.all_gather_object(obj)


def _pack(result: ClientResult, leave_out: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A client's result as it travels between workers: CPU tensors and plain data, nothing else.

    A failed client's error travels as its type name, message and traceback text. The trained state travels
    without the entries in ``leave_out`` (those the federation policy keeps frozen or local: nothing aggregates
    them, and a client's local entries travel in its client state); the receiving worker reads them from the
    task's start state (see ``_unpack``), so an adapter-only run exchanges the adapters, not the base model.

    Examples:
        >>> from lightning_fedmut.tasks import ClientTask
        >>> task = ClientTask(round=0, slot=1, client=None, seed=0, start_state={})
        >>> record = _pack(ClientResult(task=task, num_examples=5, error=ValueError("bad batch")))
        >>> record["slot"], record["error"][:2], _unpack(task, record).error_type
        (1, ('ValueError', 'bad batch'), 'ValueError')
    """
    error = None
    if result.error is not None:
        text = "".join(traceback.format_exception(result.error))
        error = (result.error_type or "Exception", str(result.error), text)
    state = None if result.state is None else {k: v.detach().cpu().clone() for k, v in result.state.items()
                                               if k not in leave_out}
    return {"slot": result.task.slot, "num_examples": result.num_examples, "state": state,
            "metrics": dict(result.metrics), "payload": result.payload, "client_state": result.client_state,
            "error": error, "num_steps": result.num_steps}


def _unpack(task: ClientTask, record: dict[str, Any]) -> ClientResult:
    error = None if record["error"] is None else RemoteClientError(*record["error"])
    state = record["state"]
    if state is not None and len(state) < len(task.start_state):  # entries left out: the start state's, in order
        state = {**{k: state.get(k, v) for k, v in task.start_state.items()}, **state}
    return ClientResult(task=task, num_examples=record["num_examples"], state=state,
                        metrics=record["metrics"], payload=record["payload"], client_state=record["client_state"],
                        error=error, num_steps=record["num_steps"])
