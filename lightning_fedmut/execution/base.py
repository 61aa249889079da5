"""The executor interface: client tasks in, client results out."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.loggers import Logger
from torch import Tensor

from lightning_fedmut.tasks import ClientResult, ClientTask
from lightning_fedmut.utilities.trainer import QUIET_TRAINER_DEFAULTS
from lightning_fedmut.utilities.warnings import warn_user

if TYPE_CHECKING:
    from lightning_fedmut.execution.evaluation import Evaluator

__all__ = ["ClientExecutor", "ClientTraining", "TaskHooks"]

T = TypeVar("T")


@dataclass(frozen=True)
class ClientTraining:
    """How every client trains, from the loop's arguments: local epochs or steps, the Trainer arguments, and
    the longest a client may train (``client_timeout``, seconds; ``None``: no limit).

    Examples:
        >>> plan = ClientTraining(local_epochs=5, trainer_kwargs={"gradient_clip_val": 1.0})
        >>> kwargs = plan.trainer_kwargs_for([])
        >>> kwargs["max_epochs"], kwargs["gradient_clip_val"], kwargs["logger"], kwargs["limit_val_batches"]
        (5, 1.0, False, 0)
        >>> from lightning_fedmut.execution.client_logger import ClientLogger
        >>> kwargs = plan.trainer_kwargs_for([], logger=ClientLogger(), validate=True)
        >>> type(kwargs["logger"]).__name__, "limit_val_batches" in kwargs
        ('ClientLogger', False)
    """

    local_epochs: int = 1
    local_steps: int | None = None
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    client_timeout: float | None = None

    @property
    def callbacks(self) -> list[Callback]:
        """The Lightning callbacks of ``trainer_kwargs``, as a list (every client Trainer gets them)."""
        user = self.trainer_kwargs.get("callbacks") or []
        return [user] if isinstance(user, Callback) else list(user)

    def trainer_kwargs_for(
        self, extra_callbacks: list[Callback], logger: Logger | None = None, validate: bool = False
    ) -> dict[str, Any]:
        """Arguments of one client's ``Trainer``: quiet defaults, the user's, the length, and the task's callbacks.

        Args:
            extra_callbacks: the task's own Lightning callbacks, added after the user's.
            logger: the client Trainer's logger instead of ``logger=False``, unless ``trainer_kwargs`` sets one.
            validate: the client has validation data: Lightning's default ``limit_val_batches`` instead of 0,
                unless ``trainer_kwargs`` sets it.
        """
        kwargs = {**QUIET_TRAINER_DEFAULTS, **self.trainer_kwargs}
        if logger is not None and "logger" not in self.trainer_kwargs:
            kwargs["logger"] = logger
        if validate and "limit_val_batches" not in self.trainer_kwargs:
            del kwargs["limit_val_batches"]
        if self.local_steps is not None:
            kwargs.update(max_steps=self.local_steps, max_epochs=-1)
        else:
            kwargs.update(max_epochs=self.local_epochs)
        if extra_callbacks:
            kwargs["callbacks"] = [*self.callbacks, *extra_callbacks]
        return kwargs


class TaskHooks:
    """What the loop runs where a client trains: just before it trains, and as soon as its result is ready.

    The loop hands an instance to :meth:`ClientExecutor.run`. ``on_task_start`` calls the callbacks'
    ``on_client_fit_start`` (FedMut writes the start model there); ``on_task_end`` calls
    ``on_client_fit_end`` or ``on_client_fit_failure`` and the sampler's ``observe``, which may fill the
    result's ``payload`` and ``client_state``. The executor calls both in the process that trains the client.

    Examples:
        >>> TaskHooks().on_task_start(None) is None
        True
    """

    def on_task_start(self, task: ClientTask) -> None:
        """Called just before the client of ``task`` trains, with ``task.start_state`` holding its tensors."""

    def on_task_end(self, result: ClientResult) -> None:
        """Called with a client's result (success or failure) before it leaves the process that trained it."""


class ClientExecutor:
    """Turns a round's :class:`~lightning_fedmut.tasks.ClientTask` objects into results.

    The loop calls :meth:`setup` once per ``fit`` (after any checkpoint is restored), :meth:`run` once per
    round and :meth:`teardown` at the end, also after an exception. It hands over nothing but tasks and
    takes back nothing but :class:`~lightning_fedmut.tasks.ClientResult` objects, so an executor may train
    clients wherever it likes. ``run`` must call ``hooks.on_task_start(task)`` just before a client trains,
    with ``task.start_state`` holding the client model's own tensors (FedMut writes its start model there),
    and ``hooks.on_task_end(result)`` where it trained, as soon as the result is ready; it yields one result
    per task, in task order, each as soon as it can: the loop aggregates it before asking for the next one.
    A client that fails is a result with ``error`` set, never an exception out of ``run``; exceptions raised
    by the hooks and ``KeyboardInterrupt`` propagate.

    Examples:
        >>> ClientExecutor().run([], TaskHooks())
        Traceback (most recent call last):
        ...
        NotImplementedError
    """

    def setup(self, module: LightningModule, training: ClientTraining) -> None:
        """Called once per ``fit`` with the global module and how clients train."""

    def run(self, tasks: Iterable[ClientTask], hooks: TaskHooks) -> Iterator[ClientResult]:
        """Train every task's client; yield one result per task, in task order."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Called when ``fit`` ends, also after an exception; release what ``setup`` made."""

    def launch(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (the body of one ``fit``) in this executor's processes and return this process's result.

        One process: call it. An executor with worker processes starts or joins them here.
        """
        return fn()

    def evaluate(self, evaluator: Evaluator, module: LightningModule, dataloaders: Any) -> dict[str, float]:
        """Evaluate the global ``module`` with ``evaluator``; every process gets the same metrics."""
        return evaluator.evaluate(module, dataloaders)

    # Which process this is. Collectives are not part of this interface: the loop reduces the components' declared
    # round state once per round through :mod:`lightning_fedmut.distributed`, whose executor owns them.
    @property
    def world_size(self) -> int:
        """How many processes train clients (1: this one)."""
        return 1

    @property
    def rank(self) -> int:
        """This process's rank among them (0: the one that logs, shows progress and writes checkpoints)."""
        return 0

    @property
    def is_global_zero(self) -> bool:
        """Whether this process logs, shows progress and writes checkpoints."""
        return self.rank == 0

    def all_reduce_(self, tensors: list[Tensor]) -> None:
        """Deprecated: declare the state with ``add_state(..., reduce="sum", scope="round")`` instead; the loop
        reduces it across workers. Does nothing in one process."""
        _deprecated_collective("all_reduce_")

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Deprecated: declare the state with ``add_state(..., reduce="cat", scope="round")`` instead; the loop
        gathers it across workers. ``[obj]`` in one process."""
        _deprecated_collective("all_gather_object")
        return [obj]


def _deprecated_collective(name: str) -> None:
    warn_user(f"`ClientExecutor.{name}` is deprecated and will be removed in the next release: declare what a"
              " component combines across workers with `add_state(name, default, reduce=..., scope=\"round\")`;"
              " the loop reduces it once per round.", DeprecationWarning)
