"""The aggregator interface: a streaming accumulator over client models."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.nn import Module


class Aggregator:
    """Accumulates client models one at a time and computes the new global state.

    The loop calls :meth:`reset` at the start of a round, :meth:`update` once per client that trained,
    and :meth:`compute` once; it then copies the returned tensors into the global module in place.
    Subclasses override these three verbs, and :meth:`state_dict` / :meth:`load_state_dict` if they keep
    state across rounds.

    Examples:
        A coordinate-wise median (robust to a few bad clients); it keeps every client's state, so its
        memory grows with the number of clients, unlike :class:`~lightning_fedmut.aggregators.FedAvg`:

        >>> import torch
        >>> class Median(Aggregator):
        ...     def reset(self):
        ...         self.states = []
        ...     def update(self, module, weight):
        ...         self.states.append({k: v.detach().clone() for k, v in module.state_dict().items()
        ...                             if v.is_floating_point()})
        ...     def compute(self):
        ...         return {k: torch.stack([s[k] for s in self.states]).median(dim=0).values for k in self.states[0]}
        >>> agg = Median()
        >>> agg.reset()
        >>> for w in (1.0, 2.0, 10.0):
        ...     m = torch.nn.Linear(1, 1)
        ...     _ = m.weight.data.fill_(w)
        ...     agg.update(m, weight=1)
        >>> agg.compute()["weight"]
        tensor([[2.]])
    """

    def setup(self, module: Module) -> None:
        """Called once per ``fit`` with the global module, before any round."""

    def reset(self) -> None:
        """Forget the clients of the previous round."""
        raise NotImplementedError

    def update(self, module: Module, weight: float) -> None:
        """Add one client's trained ``module`` with ``weight`` (its number of examples)."""
        raise NotImplementedError

    def compute(self) -> dict[str, Tensor]:
        """The aggregated state, keyed like the module's ``state_dict``; may be a subset of its keys."""
        raise NotImplementedError

    @property
    def hparams(self) -> dict[str, Any]:
        """The constructor arguments, for run configs."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State to keep across rounds (none by default: an accumulator is reset every round)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""
