"""The one reduction of declared round state across workers, once per round, after the clients trained.

Every callback, aggregator and sampler declares its round state with
:meth:`~lightning_fedmut.state.DeclaredState.add_state`; no component calls a collective. The loop calls
:func:`reduce_round_state` with its components and executor after the round's clients trained and before the
aggregation: each worker then holds the federation's values, as one process would.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from lightning_fedmut.state import DeclaredState

__all__ = ["barrier", "combine", "reduce_round_state"]


def combine(parts: list[Any], reduce: str) -> Any:
    """The workers' values ``parts`` (in rank order) combined by ``reduce``.

    ``"sum"`` adds in float64 and returns the first part's type; ``"max"`` takes the largest (element-wise for
    tensors); ``"cat"`` concatenates lists in rank order and merges dicts keyed by slot, in slot order.

    Examples:
        >>> combine([{2: "b"}, {0: "a", 1: "c"}], "cat")
        {0: 'a', 1: 'c', 2: 'b'}
        >>> combine([[1, 2], [3]], "cat"), combine([2, 5, 3], "max"), combine([0.1, 0.2], "sum")
        ([1, 2, 3], 5, 0.30000000000000004)
    """
    first = parts[0]
    if reduce == "cat":
        if isinstance(first, dict):
            merged = {k: v for part in parts for k, v in part.items()}
            return {k: merged[k] for k in sorted(merged)}
        return [v for part in parts for v in part]
    if reduce == "max":
        if isinstance(first, Tensor):
            return torch.stack([p.to(first.device) for p in parts]).amax(dim=0)
        return max(parts)
    if reduce == "sum":
        if isinstance(first, Tensor):
            total = torch.stack([p.to(first.device, torch.float64) for p in parts]).sum(dim=0)
            return total.to(first.dtype)
        total_number = sum(float(p) for p in parts)
        return type(first)(total_number) if isinstance(first, int) and not isinstance(first, bool) else total_number
    raise ValueError(f"Expected `reduce` in ['sum', 'max', 'cat'], got {reduce!r}.")


def reduce_round_state(components: Iterable[Any], executor: Any) -> None:
    """Combine the declared round state of ``components`` across the workers of ``executor``, in place.

    Sums of tensors go through one ``all_reduce_`` in float64 (exact for integer counts and for float32
    values summed over a few workers); ``"max"`` and ``"cat"`` states through one ``all_gather_object``. One
    process: nothing to do.

    Examples:
        >>> from lightning_fedmut.execution import SequentialExecutor
        >>> class Seen(DeclaredState):
        ...     def __init__(self):
        ...         self.add_state("slots", {}, reduce="cat", scope="round")
        >>> seen = Seen(); seen.slots[1] = 0.5
        >>> reduce_round_state([seen], SequentialExecutor()); seen.slots
        {1: 0.5}
    """
    if executor.world_size <= 1:
        return
    declared = [(c, name, value, reduce) for c in components if isinstance(c, DeclaredState)
                for name, (value, reduce) in c.round_state().items()]
    sums = [(c, name, value) for c, name, value, reduce in declared if reduce == "sum" and isinstance(value, Tensor)]
    gathered = [(c, name, value, reduce) for c, name, value, reduce in declared
                if not (reduce == "sum" and isinstance(value, Tensor))]
    if sums:
        buffers = [value.detach().to(torch.float64).cpu() for _, _, value in sums]
        executor.all_reduce_(buffers)
        for (_component, _name, value), total in zip(sums, buffers):
            with torch.no_grad():
                value.copy_(total.to(value.dtype))
    if gathered:
        parts = executor.all_gather_object([value for _, _, value, _ in gathered])
        for i, (component, name, _, reduce) in enumerate(gathered):
            setattr(component, name, combine([part[i] for part in parts], reduce))


def barrier(executor: Any) -> None:
    """Wait until every worker of ``executor`` is here (nothing to wait for in one process)."""
    if executor.world_size > 1:
        executor.all_gather_object(None)
