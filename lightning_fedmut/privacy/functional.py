"""The arithmetic of central differential privacy, as pure functions over lists of floating tensors.

Clipping a client's update, adding Gaussian noise from a generator the caller owns, the noise split of adaptive
clipping and its geometric update of the clipping norm (Andrew et al., NeurIPS 2021). Every function works in
place where its name ends in ``_`` (``torch._foreach_*`` where the tensors allow) and reads nothing but its arguments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["adaptive_clip_norm", "add_gaussian_noise_", "clip_update_", "global_norm", "update_noise_multiplier"]


def global_norm(tensors: Sequence[Tensor]) -> float:
    """The L2 norm of ``tensors`` taken as one flat vector, accumulated in float64.

    Examples:
        >>> global_norm([torch.tensor([3.0]), torch.tensor([[4.0]])])
        5.0
    """
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


@torch.no_grad()
def clip_update_(update: Sequence[Tensor], clip_norm: float) -> float:
    """Scale ``update`` in place to L2 norm at most ``clip_norm`` (``min(1, clip_norm / norm)``); return its norm.

    The norm is that of the whole update (every tensor of the list, one flat vector), measured before clipping.

    Examples:
        >>> update = [torch.tensor([3.0, 0.0]), torch.tensor([4.0])]
        >>> clip_update_(update, 1.0), [t.tolist() for t in update]
        (5.0, [[0.6000000238418579, 0.0], [0.800000011920929]])
        >>> round(clip_update_(update, 2.0), 6)  # already within the norm: unchanged
        1.0
    """
    norm = global_norm(update)
    if norm > clip_norm:
        torch._foreach_mul_(list(update), clip_norm / norm)
    return norm


@torch.no_grad()
def add_gaussian_noise_(tensors: Sequence[Tensor], std: float, generator: torch.Generator) -> None:
    """Add independent ``N(0, std^2)`` noise to every entry of ``tensors``, in place, drawn from ``generator``.

    The draws are made on the generator's device (the CPU for a CPU generator) in float32, tensor by tensor in list
    order, so the same generator state gives the same noise wherever the tensors live.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = [torch.zeros(2)]
        >>> add_gaussian_noise_(x, 0.0, g); x[0].tolist()
        [0.0, 0.0]
        >>> a, b = [torch.zeros(3)], [torch.zeros(3)]
        >>> add_gaussian_noise_(a, 1.0, torch.Generator().manual_seed(1))
        >>> add_gaussian_noise_(b, 1.0, torch.Generator().manual_seed(1))
        >>> bool(torch.equal(a[0], b[0]))
        True
    """
    if std == 0.0:
        return
    for t in tensors:
        noise = torch.randn(t.shape, generator=generator, dtype=torch.float32, device=generator.device)
        t.add_(noise.to(device=t.device, dtype=t.dtype), alpha=std)


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """The noise multiplier left for the updates when the clipped count takes noise ``count_stddev``.

    Andrew et al. (NeurIPS 2021, Theorem 1): releasing the sum of clipped updates with noise ``z_delta * C`` and the
    count of unclipped updates with noise ``count_stddev`` (each client's bit of sensitivity 1/2 once centred) is
    the Gaussian mechanism with noise multiplier ``z = (z_delta^-2 + (2 count_stddev)^-2)^(-1/2)``; so
    ``z_delta = (z^-2 - (2 count_stddev)^-2)^(-1/2)``, defined when ``count_stddev > z / 2``.

    Examples:
        >>> round(update_noise_multiplier(1.0, 5.0), 6)  # (1 - 1/100)^-1/2
        1.005038
        >>> update_noise_multiplier(1.0, 0.5)
        Traceback (most recent call last):
        ...
        ValueError: Expected `count_stddev` > noise_multiplier / 2 = 0.5 (the count's noise must leave some budget for the updates), got 0.5.
    """
    if not count_stddev > noise_multiplier / 2:
        raise ValueError(f"Expected `count_stddev` > noise_multiplier / 2 = {noise_multiplier / 2:g} (the count's noise"
                         f" must leave some budget for the updates), got {count_stddev:g}.")
    return (noise_multiplier ** -2 - (2 * count_stddev) ** -2) ** -0.5


def adaptive_clip_norm(clip_norm: float, unclipped_fraction: float, target_quantile: float, learning_rate: float) -> float:
    """Andrew et al.'s geometric update: ``C * exp(-learning_rate * (unclipped_fraction - target_quantile))``.

    ``unclipped_fraction`` is the (noised) fraction of the round's updates whose norm was at most ``C``; the norm
    shrinks when more than ``target_quantile`` of them fit, and grows otherwise.

    Examples:
        >>> round(adaptive_clip_norm(1.0, 0.5, 0.5, 0.2), 6)
        1.0
        >>> round(adaptive_clip_norm(1.0, 1.0, 0.5, 0.2), 6)  # exp(-0.1)
        0.904837
    """
    return clip_norm * math.exp(-learning_rate * (unclipped_fraction - target_quantile))
