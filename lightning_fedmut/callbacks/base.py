"""The federated hook menu: a plain class of no-op hooks, named like Lightning's, and the roles a method's
callbacks play (start-model and local components)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from lightning_fedmut.aggregators.base import Aggregator
    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientResult, ClientTask

from lightning_fedmut.state import DeclaredState


class FederatedCallback(DeclaredState):
    r"""Base class of federated callbacks: override the hooks you need; every hook returns nothing.

    Hooks receive the :class:`~lightning_fedmut.FederatedLoop` and the *global* module first, as
    Lightning's hooks receive the ``Trainer`` and the ``LightningModule``. The round in progress is
    ``loop.round`` (0-based). Hooks about one client receive its
    :class:`~lightning_fedmut.tasks.ClientTask` or :class:`~lightning_fedmut.tasks.ClientResult`, so they
    work wherever the client trains. The order (the documentation's call-order tree is printed by a real
    run)::

        setup
        on_fit_start
        for each round:
            on_round_start
            for each sampled client:
                on_client_fit_start(task)     task.start_state holds the client's start model: change it in
                                              place (FedMut); add Lightning callbacks to task.callbacks
                ... client Trainer.fit ...
                on_client_fit_end(result)     or on_client_fit_failure(result): not aggregated
            on_before_aggregate               (skipped, with on_after_aggregate, when too few clients succeeded)
            on_after_aggregate                module holds the new global weights
            on_validation_start / on_validation_end   (every ``evaluate_every`` rounds)
            on_round_end                      may set ``loop.should_stop = True``
        on_fit_end
        teardown                              also after an exception, which first calls on_exception

    State is declared once with :meth:`add_state` (see :mod:`lightning_fedmut.state`): server state is saved in
    the federated checkpoints, round state is reset every round and combined across workers before
    ``on_before_aggregate``. A callback's figures for the round are what :meth:`metrics` returns; the loop adds
    them to ``loop.round_metrics`` and the history after the evaluation. ``hparams`` are the ``__init__``
    arguments, read from the attributes of the same name.

    Examples:
        >>> class CountRounds(FederatedCallback):
        ...     def __init__(self, every: int = 1):
        ...         self.every = every
        ...         self.add_state("rounds", 0)
        ...     def on_round_end(self, loop, module):
        ...         self.rounds += 1
        ...     def metrics(self):
        ...         return {"count/rounds": float(self.rounds)}
        >>> counter = CountRounds(every=2)
        >>> counter.state_key, counter.hparams, counter.state_dict()
        ('CountRounds', {'every': 2}, {'rounds': 0})
    """

    #: Names of this callback's figures (from :meth:`metrics`) to show beside the validation metrics on the
    #: progress bar and in each round's line (``("dp/epsilon",)``, say).
    progress_bar_metrics: tuple[str, ...] = ()

    @property
    def state_key(self) -> str:
        """Key of this callback's state in a federated checkpoint; override when two instances coexist."""
        return type(self).__qualname__

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        """Called when ``fit`` begins, before anything else; checks that need the run belong here."""

    def teardown(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        """Called when ``fit`` ends, also after an exception."""

    def on_fit_start(self, loop: FederatedLoop, module: LightningModule) -> None:
        """Called when the first round is about to start."""

    def on_fit_end(self, loop: FederatedLoop, module: LightningModule) -> None:
        """Called after the last round."""

    def on_round_start(self, loop: FederatedLoop, module: LightningModule) -> None:
        """Called at the start of round ``loop.round``, before clients are sampled."""

    def on_round_end(self, loop: FederatedLoop, module: LightningModule) -> None:
        """Called at the end of a round, after evaluation and logging."""

    def on_client_fit_start(self, loop: FederatedLoop, module: LightningModule, task: ClientTask) -> None:
        """Called just before a client trains, where it trains.

        ``task.start_state`` holds the client model's own tensors, loaded with the global weights: change
        them in place to give the client another start model. Append Lightning callbacks to
        ``task.callbacks`` to add them to this client's Trainer.
        """

    def on_client_fit_end(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        """Called after a client trained, before the aggregator sees it; ``result.state`` holds its weights.

        Fill ``result.payload`` for the aggregator and ``result.client_state`` for the client's next task.
        """

    def on_client_fit_failure(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        """Called instead of ``on_client_fit_end`` when a client's training raised or returned non-finite weights.

        ``result.error`` is the exception. The client is not aggregated; the round goes on with the others.
        """

    def on_before_aggregate(self, loop: FederatedLoop, module: LightningModule, aggregator: Aggregator) -> None:
        """Called after all clients of the round trained; ``module`` still holds the previous global weights."""

    def on_after_aggregate(self, loop: FederatedLoop, module: LightningModule) -> None:
        """Called once the aggregate has been written into the global ``module``."""

    def on_validation_start(self, loop: FederatedLoop, module: LightningModule) -> None:
        """Called before the global module is evaluated."""

    def on_validation_end(self, loop: FederatedLoop, module: LightningModule) -> None:
        """Called after the global module was evaluated; the metrics are in ``loop.round_metrics``."""

    def on_exception(self, loop: FederatedLoop, module: LightningModule, exception: BaseException) -> None:
        """Called when ``fit`` is interrupted by an exception."""

    def divergence_hint(self, loop: FederatedLoop) -> str | None:
        """A likely cause of divergence this callback knows of, for the loop's error messages (or ``None``)."""
        return None

class StartModelCallback(FederatedCallback):
    r"""A federated callback that gives the clients start models other than the global one.

    FedMut's :class:`~lightning_fedmut.MutationCallback` and :class:`~lightning_fedmut.callbacks.FedMR` are
    start-model components: each writes every client's ``task.start_state`` in ``on_client_fit_start``. Two of
    them would overwrite each other, so a loop takes at most one: the role is the class, not a list of
    names. A :class:`~lightning_fedmut.algorithms.FederatedAlgorithm` holds it as ``start_model``.

    Examples:
        >>> class Shrink(StartModelCallback):
        ...     def on_client_fit_start(self, loop, module, task):
        ...         for tensor in task.start_state.values():
        ...             if tensor.is_floating_point():
        ...                 tensor.mul_(0.5)
        >>> isinstance(Shrink(), FederatedCallback)
        True
    """


class LocalCallback(FederatedCallback):
    r"""A federated callback that changes how each client trains, and may keep state per client.

    FedProx's proximal term and SCAFFOLD's correction are local components: each adds a Lightning callback
    to the client's Trainer (``task.callbacks``) and may keep per-client state in the loop's client-state
    store. A loop takes any number of them, after its start-model component, if any. A
    :class:`~lightning_fedmut.algorithms.FederatedAlgorithm` holds them as ``local``.

    Examples:
        >>> from lightning.pytorch.callbacks import LearningRateMonitor
        >>> class WatchLearningRate(LocalCallback):
        ...     def on_client_fit_start(self, loop, module, task):
        ...         task.callbacks.append(LearningRateMonitor())
        >>> isinstance(WatchLearningRate(), FederatedCallback)
        True
    """
