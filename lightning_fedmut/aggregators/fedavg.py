"""FedAvg: the (example-weighted or uniform) mean of the client models, streamed client by client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.nn import Module

from lightning_fedmut.aggregators.base import Aggregator
from lightning_fedmut.functional.aggregation import accumulate_, finalize_mean_, integer_max_
from lightning_fedmut.functional.state import frozen_keys, is_floating

if TYPE_CHECKING:
    from lightning_fedmut.tasks import ClientResult


class FedAvg(Aggregator):
    r"""Federated averaging, with memory of one model whatever the number of clients.

    Floating state is averaged: ``sum_i n_i w_i / sum_i n_i`` with ``weighted=True`` (McMahan et al.),
    ``mean_i w_i`` with ``weighted=False`` (the uniform mean of FedMut's reference code). Sums are
    kept in at least float32. Integer state (e.g. BatchNorm's ``num_batches_tracked``) is never averaged:
    it takes the element-wise maximum over clients and keeps its dtype. Frozen parameters
    (``requires_grad=False`` on the module given to :meth:`setup`) are left out: the global copy stands bit
    for bit, where an example-weighted mean of identical tensors would come back a rounding step away.

    Args:
        weighted: weight each client by its number of examples.

    Examples:
        >>> from types import SimpleNamespace
        >>> def result(w, n):
        ...     return SimpleNamespace(state={"weight": torch.tensor([w])}, num_examples=n)
        >>> agg = FedAvg(weighted=True)
        >>> agg.reset(); agg.update(result(1.0, 2)); agg.update(result(4.0, 1))
        >>> agg.compute({"weight": torch.tensor([0.0])})["weight"]
        tensor([2.])

        A frozen parameter is not averaged (the loop keeps the global copy):

        >>> frozen = torch.nn.Linear(1, 1)
        >>> _ = frozen.bias.requires_grad_(False)
        >>> agg = FedAvg(weighted=True)
        >>> agg.setup(frozen); agg.reset()
        >>> agg.update(SimpleNamespace(state={"weight": torch.tensor([[1.0]]), "bias": torch.tensor([0.3])},
        ...                            num_examples=3))
        >>> sorted(agg.compute())
        ['weight']
    """

    def __init__(self, weighted: bool = True) -> None:
        if not isinstance(weighted, bool):
            raise TypeError(f"Expected `weighted` to be a bool, got {weighted!r}.")
        self.weighted = weighted
        self._frozen: frozenset[str] = frozenset()
        self._keys: set[str] = set()
        self._float_keys: list[str] = []
        self._int_keys: list[str] = []
        self._sums: list[Tensor] = []
        self._ints: list[Tensor] = []
        self._total: float
        self._count: int
        self.add_state("_total", 0.0, scope="round")
        self.add_state("_count", 0, scope="round")

    @property
    def num_updates(self) -> int:
        """Clients accumulated since the last :meth:`reset`."""
        return self._count

    @property
    def total_weight(self) -> float:
        """The sum of the accumulated clients' weights."""
        return self._total

    def setup(self, module: Module) -> None:
        """Read which parameters are frozen (never averaged) from the global module, once per fit."""
        self._frozen = frozen_keys(module)
        self._keys = set()  # allocated again at the first update, without the frozen keys

    def reset(self) -> None:
        self.reset_state("round")

    @torch.no_grad()
    def update(self, result: ClientResult) -> None:
        weight = float(result.num_examples) if self.weighted else 1.0
        if weight <= 0:
            raise ValueError(f"Expected a client weight > 0, got {weight}.")
        state = result.state
        assert state is not None, "only clients that trained are aggregated"
        if not self._keys or state.keys() != self._keys:
            self._allocate(state)
        floats = [state[k] for k in self._float_keys]
        ints = [state[k] for k in self._int_keys]
        if self._count == 0:
            for s in self._sums:
                s.zero_()
            for acc, t in zip(self._ints, ints):
                acc.copy_(t)
        else:
            integer_max_(self._ints, ints)
        accumulate_(self._sums, floats, weight)
        self._total += weight
        self._count += 1

    def compute(self, global_state: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        if self._count == 0:
            raise RuntimeError("FedAvg.compute() called before any update(): no client has been aggregated.")
        finalize_mean_(self._sums, self._total)
        out = dict(zip(self._float_keys, self._sums))
        out.update(zip(self._int_keys, self._ints))
        return out

    def _allocate(self, state: Mapping[str, Tensor]) -> None:
        self._keys = set(state)
        self._float_keys = [k for k, v in state.items() if is_floating(v) and k not in self._frozen]
        self._int_keys = [k for k, v in state.items() if not is_floating(v) and k not in self._frozen]
        self._sums = [
            torch.zeros_like(state[k], dtype=torch.promote_types(state[k].dtype, torch.float32))
            for k in self._float_keys
        ]
        self._ints = [state[k].detach().clone() for k in self._int_keys]
