"""FedMR's model recombination (Hu et al., IEEE TMC 2023), as pure functions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def recombination_table(num_keys: int, num_slots: int, generator: torch.Generator | None = None) -> Tensor:
    """One uniformly random permutation of the slots per state key: a ``(num_keys, num_slots)`` int64 table.

    Row ``j`` says which slot's tensor of key ``j`` each slot receives: slot ``i`` gets key ``j`` of slot
    ``table[j, i]``. Rows are independent.

    Examples:
        >>> table = recombination_table(3, 4, generator=torch.Generator().manual_seed(0))
        >>> table.shape, [sorted(row) for row in table.tolist()]
        (torch.Size([3, 4]), [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]])
    """
    if num_slots < 1:
        raise ValueError(f"Expected `num_slots` >= 1, got {num_slots}.")
    return torch.rand(num_keys, num_slots, generator=generator).argsort(dim=1)


def recombine(models: Sequence[Sequence[Tensor]], table: Tensor) -> list[list[Tensor]]:
    """The recombined models: ``out[i][j] = models[table[j, i]][j]``, the same tensors, re-dealt (no copy).

    ``models`` holds one list of tensors per slot, one tensor per state key, in the same key order.

    Examples:
        >>> a, b = [torch.tensor(1), torch.tensor(10)], [torch.tensor(2), torch.tensor(20)]
        >>> out = recombine([a, b], torch.tensor([[1, 0], [0, 1]]))
        >>> [[int(t) for t in model] for model in out]
        [[2, 10], [1, 20]]
    """
    num_slots = len(models)
    if table.shape != (len(models[0]) if models else 0, num_slots):
        raise ValueError(f"Expected a table of shape (num_keys, {num_slots}), got {tuple(table.shape)}.")
    rows = table.tolist()
    return [[models[rows[j][i]][j] for j in range(len(rows))] for i in range(num_slots)]
