"""Streaming weighted mean over lists of tensors, and the rule for integer state."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_fedmut.functional.state import _groups


@torch.no_grad()
def accumulate_(acc: Sequence[Tensor], tensors: Sequence[Tensor], weight: float) -> None:
    """``acc[i] += weight * tensors[i]`` in place.

    Examples:
        >>> acc = [torch.zeros(2)]
        >>> accumulate_(acc, [torch.tensor([1.0, 2.0])], 3.0); acc
        [tensor([3., 6.])]
    """
    if _groups(acc, tensors):
        torch._foreach_add_(list(acc), list(tensors), alpha=weight)
        return
    for a, t in zip(acc, tensors):
        a.add_(t.to(device=a.device, dtype=a.dtype), alpha=weight)


@torch.no_grad()
def finalize_mean_(acc: Sequence[Tensor], total_weight: float) -> None:
    """Divide every accumulated sum by ``total_weight`` in place.

    Examples:
        >>> acc = [torch.tensor([3.0, 6.0])]
        >>> finalize_mean_(acc, 3.0); acc
        [tensor([1., 2.])]
    """
    if total_weight <= 0:
        raise ValueError(f"Expected `total_weight` > 0, got {total_weight}.")
    if acc:
        torch._foreach_div_(list(acc), float(total_weight))


@torch.no_grad()
def integer_max_(acc: Sequence[Tensor], tensors: Sequence[Tensor]) -> None:
    """Aggregate integer state (e.g. ``num_batches_tracked``) by element-wise maximum, in place.

    Integer state is a count, never a weight: averaging it would turn it into a float. The maximum keeps
    its dtype and is independent of client order.

    Examples:
        >>> acc = [torch.tensor(3)]
        >>> integer_max_(acc, [torch.tensor(5)]); acc
        [tensor(5)]
    """
    for a, t in zip(acc, tensors):
        torch.maximum(a, t.to(a.device), out=a)
