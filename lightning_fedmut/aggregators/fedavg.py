"""FedAvg: the (example-weighted or uniform) mean of the client models, streamed client by client."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import Module

from lightning_fedmut.aggregators.base import Aggregator
from lightning_fedmut.functional.aggregation import accumulate_, finalize_mean_, integer_max_
from lightning_fedmut.functional.state import is_floating


class FedAvg(Aggregator):
    r"""Federated averaging, with memory of one model whatever the number of clients.

    Floating state is averaged: ``sum_i n_i w_i / sum_i n_i`` with ``weighted=True`` (McMahan et al.),
    ``mean_i w_i`` with ``weighted=False`` (the uniform mean of FedMut's reference code). Sums are
    kept in at least float32. Integer state (e.g. BatchNorm's ``num_batches_tracked``) is never averaged:
    it takes the element-wise maximum over clients and keeps its dtype.

    Args:
        weighted: weight each client by its number of examples.

    Examples:
        >>> a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
        >>> _ = a.weight.data.fill_(1.0), b.weight.data.fill_(4.0)
        >>> agg = FedAvg(weighted=True)
        >>> agg.reset(); agg.update(a, 2); agg.update(b, 1)
        >>> agg.compute()["weight"]
        tensor([[2.]])
    """

    def __init__(self, weighted: bool = True) -> None:
        if not isinstance(weighted, bool):
            raise TypeError(f"Expected `weighted` to be a bool, got {weighted!r}.")
        self.weighted = weighted
        self._keys: set[str] = set()
        self._float_keys: list[str] = []
        self._int_keys: list[str] = []
        self._sums: list[Tensor] = []
        self._ints: list[Tensor] = []
        self._total = 0.0
        self._count = 0

    @property
    def hparams(self) -> dict[str, Any]:
        return {"weighted": self.weighted}

    @property
    def num_updates(self) -> int:
        """Clients accumulated since the last :meth:`reset`."""
        return self._count

    def reset(self) -> None:
        self._total = 0.0
        self._count = 0

    @torch.no_grad()
    def update(self, module: Module, weight: float) -> None:
        weight = float(weight) if self.weighted else 1.0
        if weight <= 0:
            raise ValueError(f"Expected a client weight > 0, got {weight}.")
        state = module.state_dict()
        if not self._sums or state.keys() != self._keys:
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

    def compute(self) -> dict[str, Tensor]:
        if self._count == 0:
            raise RuntimeError("FedAvg.compute() called before any update(): no client has been aggregated.")
        finalize_mean_(self._sums, self._total)
        out = dict(zip(self._float_keys, self._sums))
        out.update(zip(self._int_keys, self._ints))
        return out

    def _allocate(self, state: dict[str, Tensor]) -> None:
        self._keys = set(state)
        self._float_keys = [k for k, v in state.items() if is_floating(v)]
        self._int_keys = [k for k, v in state.items() if not is_floating(v)]
        self._sums = [
            torch.zeros_like(state[k], dtype=torch.promote_types(state[k].dtype, torch.float32))
            for k in self._float_keys
        ]
        self._ints = [state[k].detach().clone() for k in self._int_keys]
