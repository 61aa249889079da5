"""The aggregator interface: an accumulator over client results that computes the next global state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from torch import Tensor
from torch.nn import Module

from lightning_fedmut.state import DeclaredState

if TYPE_CHECKING:
    from lightning_fedmut.tasks import ClientResult


class Aggregator(DeclaredState):
    """Accumulates client results one at a time and computes the new global state.

    The loop calls :meth:`reset` at the start of a round, :meth:`update` once per client that trained (in
    slot order) and :meth:`compute` once with the current global state; it then copies the returned tensors
    into the global module in place. With parallel workers every process receives every client's result and
    runs these same calls in the same slot order, so an aggregator needs no reduction of its own. Subclasses
    override these verbs and declare what they keep across rounds (a server optimizer's moments, say) with
    :meth:`add_state`, which saves it in the federated checkpoints; the round's figures are what
    :meth:`metrics` returns.

    Examples:
        A coordinate-wise median (robust to a few bad clients); it keeps every client's state, so its
        memory grows with the number of clients, unlike :class:`~lightning_fedmut.aggregators.FedAvg`:

        >>> import torch
        >>> from types import SimpleNamespace
        >>> class Median(Aggregator):
        ...     def reset(self):
        ...         self.states = []
        ...     def update(self, result):
        ...         self.states.append({k: v.detach().clone() for k, v in result.state.items()
        ...                             if v.is_floating_point()})
        ...     def compute(self, global_state):
        ...         return {k: torch.stack([s[k] for s in self.states]).median(dim=0).values for k in self.states[0]}
        >>> agg = Median()
        >>> agg.reset()
        >>> for w in (1.0, 2.0, 10.0):
        ...     agg.update(SimpleNamespace(state={"weight": torch.tensor([w])}, num_examples=1))
        >>> agg.compute({"weight": torch.tensor([0.0])})["weight"]
        tensor([2.])
    """

    #: Whether clients are weighted by their number of examples (an aggregator that can weight sets it).
    weighted: bool = False

    def setup(self, module: Module) -> None:
        """Called once per ``fit`` with the global module, before any round."""

    def reset(self) -> None:
        """Forget the clients of the previous round."""
        raise NotImplementedError

    def update(self, result: ClientResult) -> None:
        """Add one client's :class:`~lightning_fedmut.tasks.ClientResult` (its ``state``, ``num_examples``,
        ``num_steps`` and ``payload``)."""
        raise NotImplementedError

    def compute(self, global_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The new global state, keyed like the module's ``state_dict`` (may be a subset of its keys).

        ``global_state`` is the global model before this round's update (server optimizers step from it).
        """
        raise NotImplementedError

