"""The federated hook menu: a plain class of no-op hooks, named like Lightning's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.nn import Module

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from lightning_fedmut.aggregators.base import Aggregator
    from lightning_fedmut.data.client import Client
    from lightning_fedmut.loop import FederatedLoop


class FederatedCallback:
    r"""Base class of federated callbacks: override the hooks you need; every hook returns nothing.

    Hooks receive the :class:`~lightning_fedmut.FederatedLoop` and the *global* module first, as
    Lightning's hooks receive the ``Trainer`` and the ``LightningModule``. The round in progress is
    ``loop.round`` (0-based). Order within a round::

        on_round_start
        for each sampled client:
            on_client_fit_start   (working module holds the global weights; change them in place)
            ... client Trainer.fit ...
            on_client_fit_end     (or on_client_fit_failure: the client is left out of the aggregate)
        on_before_aggregate   (skipped, with on_after_aggregate, when too few clients succeeded)
        on_after_aggregate        (global module holds the new global weights)
        on_validation_start / on_validation_end   (every ``evaluate_every`` rounds)
        on_round_end              (may set ``loop.should_stop = True``)

    Examples:
        >>> class CountRounds(FederatedCallback):
        ...     def __init__(self):
        ...         self.rounds = 0
        ...     def on_round_end(self, loop, module):
        ...         self.rounds += 1
        ...     def state_dict(self):
        ...         return {"rounds": self.rounds}
        ...     def load_state_dict(self, state_dict):
        ...         self.rounds = state_dict["rounds"]
        >>> CountRounds().state_key
        'CountRounds'
    """

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

    def on_client_fit_start(
        self, loop: FederatedLoop, module: LightningModule, client_module: Module, client: Client, slot: int
    ) -> None:
        """Called before a client trains; ``client_module`` holds the global weights and may be changed in place.

        ``slot`` is the client's position among this round's sampled clients.
        """

    def on_client_fit_end(
        self, loop: FederatedLoop, module: LightningModule, client_module: Module, client: Client, slot: int
    ) -> None:
        """Called after a client trained; ``client_module`` holds its trained weights."""

    def on_client_fit_failure(
        self, loop: FederatedLoop, module: LightningModule, client: Client, slot: int, exception: BaseException
    ) -> None:
        """Called instead of ``on_client_fit_end`` when a client's training raised or returned non-finite weights.

        The client is not aggregated; the round goes on with the others.
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

    def state_dict(self) -> dict[str, Any]:
        """The callback's state to save in a federated checkpoint."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""
