"""Sharpness: how much the loss can rise when the weights are perturbed within a small ball."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lightning_fedmut.analysis._objective import (
    LossFn,
    check_data,
    check_loss_fn,
    check_max_batches,
    check_module,
    check_seed,
    norm,
    objective,
)
from lightning_fedmut.analysis.directions import filter_normalised
from lightning_fedmut.utilities.validation import check_int

__all__ = ["sharpness"]

_METHODS = ("sam", "random")


def sharpness(
    module: nn.Module,
    dataloader: Iterable[Any],
    rho: float = 0.05,
    *,
    method: str = "sam",
    num_directions: int = 10,
    seed: int = 0,
    ignore_bias_bn: bool = True,
    loss_fn: LossFn | None = None,
    max_batches: int | None = None,
) -> float:
    """The worst rise of the data's loss within a ball of radius ``rho`` around the weights, one of two ways.

    - ``method="sam"`` (default): one step of sharpness-aware minimisation's inner ascent (Foret et al.
      2021), ``L(w + rho * g / ||g||) - L(w)`` with ``g`` the gradient of the data's loss and ``||.||`` the
      Euclidean norm over all trainable weights: the ball is absolute, of radius ``rho``. A first-order
      estimate of the worst case; 0 where the gradient is 0.
    - ``method="random"``: ``max_k L(w + rho * d_k) - L(w)`` over ``num_directions`` filter-normalised random
      directions ``d_k`` (:func:`~lightning_fedmut.analysis.random_direction`, from one generator seeded with
      ``seed``): every filter moves by ``rho`` times its own norm, so the ball is relative and the figure does
      not change when a layer is rescaled. A lower bound of the worst case over that ball.

    The loss, the eval mode and the restored module are as in
    :func:`~lightning_fedmut.analysis.loss_landscape_1d`.

    Args:
        module: the model.
        dataloader: the data (read once, kept on the module's device).
        rho: the radius, a float > 0.
        method: ``"sam"`` or ``"random"``.
        num_directions: the number of random directions (``method="random"``).
        seed: seed of the random directions (``method="random"``) and of a shuffling loader's order.
        ignore_bias_bn: zero the random directions on biases and normalisation weights (``method="random"``).
        loss_fn: ``loss_fn(module, batch) -> scalar tensor`` instead of ``training_step``.
        max_batches: read at most this many batches.

    Returns:
        The rise of the loss (a float; with ``"random"`` it may be negative where every direction descends).

    Examples:
        >>> import torch
        >>> class Quadratic(torch.nn.Module):  # loss = w^2 at w = 1: g = 2, one step of 0.1 gives 1.1^2 - 1
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
        >>> loss = lambda module, batch: (module.w ** 2).sum()
        >>> round(sharpness(Quadratic(), [0], rho=0.1, loss_fn=loss), 6)
        0.21
    """
    check_module(module)
    check_data(dataloader)
    loss_fn = check_loss_fn(loss_fn, module)
    max_batches = check_max_batches(max_batches)
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not (0.0 < float(rho) < math.inf):
        raise ValueError(f"Expected `rho` to be a float > 0, got {rho!r}.")
    rho = float(rho)
    if method not in _METHODS:
        raise ValueError(f"Expected `method` to be one of {list(_METHODS)}, got {method!r}.")
    num_directions = check_int("num_directions", num_directions, low=1)
    seed = check_seed(seed)
    if not isinstance(ignore_bias_bn, bool):
        raise TypeError(f"Expected `ignore_bias_bn` to be a bool, got {ignore_bias_bn!r}.")

    with objective(module, dataloader, loss_fn, max_batches, seed) as session:
        if method == "sam":
            grad, base = session.gradient()
            size = norm(grad)
            if size == 0.0:
                return 0.0
            session.move_to((rho / size, grad))
            return session.loss()[0] - base
        base = session.loss()[0]
        generator = torch.Generator().manual_seed(seed)
        worst = -math.inf
        for _ in range(num_directions):
            session.move_to()  # normalise each direction by the model's own filters
            direction = filter_normalised(session.named, generator, ignore_bias_bn)
            session.move_to((rho, list(direction.values())))
            worst = max(worst, session.loss()[0] - base)
        return worst
