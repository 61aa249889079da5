"""FedMut's server-side mutation (Hu et al., AAAI 2024), as pure functions.

Round ``t`` aggregates ``w_glb(t)``; with ``g = w_glb(t) - w_glb(t-1)`` the next round's start model of
slot ``i`` is ``w_glb(t)[j] + radius * c[j, i] * g[j]`` for every state key ``j``, where each row
``c[j]`` is a uniformly random permutation of ``K//2`` times ``+1`` and ``K//2`` times ``-1 + beta_t``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def acceleration_at(round_index: int, acceleration: float, acceleration_rounds: int) -> float:
    """The acceleration ``beta_t = beta_0 * max(0, 1 - t / T_b)`` after aggregating round ``t`` (0-based).

    Examples:
        >>> [acceleration_at(t, 0.3, 50) for t in (0, 25, 50, 80)]
        [0.3, 0.15, 0.0, 0.0]
    """
    return acceleration * max(0.0, 1.0 - round_index / acceleration_rounds)


def mutation_coefficients(
    num_keys: int,
    num_slots: int,
    beta: float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Draw FedMut's coefficient table, shape ``(num_keys, num_slots)``.

    Each row is an independent uniformly random permutation of ``num_slots // 2`` entries ``+1`` and
    ``num_slots // 2`` entries ``-1 + beta``. With an odd ``num_slots`` the last column is ``0``: that
    slot starts from the un-mutated global model. With one slot the table is all zeros (FedAvg).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> c = mutation_coefficients(3, 4, 0.0, generator=g)
        >>> c.sum(dim=1).tolist()
        [0.0, 0.0, 0.0]
        >>> sorted(c[0].tolist())
        [-1.0, -1.0, 1.0, 1.0]
    """
    if num_slots < 1:
        raise ValueError(f"Expected `num_slots` >= 1, got {num_slots}.")
    half = num_slots // 2
    table = torch.zeros(num_keys, num_slots, dtype=dtype)
    if half == 0 or num_keys == 0:
        return table
    values = torch.tensor([1.0] * half + [beta - 1.0] * half, dtype=dtype)
    order = torch.rand(num_keys, 2 * half, generator=generator).argsort(dim=1)
    table[:, : 2 * half] = values[order]
    return table


@torch.no_grad()
def global_delta_(buffer: Sequence[Tensor], current: Sequence[Tensor]) -> None:
    """Turn ``buffer`` (holding the previous global weights) into ``current - buffer``, in place.

    Examples:
        >>> buf = [torch.tensor([1.0, 2.0])]
        >>> global_delta_(buf, [torch.tensor([1.5, 1.0])]); buf
        [tensor([ 0.5000, -1.0000])]
    """
    for b, c in zip(buffer, current):
        b.neg_().add_(c.to(b.device))


@torch.no_grad()
def mutate_(tensors: Sequence[Tensor], deltas: Sequence[Tensor], coefficients: Sequence[float], radius: float) -> None:
    """Add ``radius * coefficients[j] * deltas[j]`` to ``tensors[j]`` in place (one client's start model).

    Entries whose scaled coefficient is exactly zero are left untouched, so ``radius=0`` and the odd slot
    reproduce the global model bit for bit.

    Examples:
        >>> w = [torch.tensor([1.0]), torch.tensor([2.0])]
        >>> mutate_(w, [torch.tensor([0.5]), torch.tensor([0.5])], [1.0, -0.7], radius=4.0); w
        [tensor([3.]), tensor([0.6000])]
    """
    for t, d, c in zip(tensors, deltas, coefficients):
        scale = radius * float(c)
        if scale != 0.0:
            t.add_(d.to(device=t.device, dtype=t.dtype), alpha=scale)
