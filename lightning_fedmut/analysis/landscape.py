"""The loss along a line and over a plane through the model's weights (Li et al. 2018)."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_fedmut.analysis._objective import (
    LossFn,
    MetricFn,
    check_data,
    check_direction,
    check_loss_fn,
    check_max_batches,
    check_metric_fn,
    check_module,
    check_seed,
    objective,
    trainable,
)
from lightning_fedmut.analysis.directions import filter_normalised
from lightning_fedmut.utilities.validation import check_int

__all__ = ["loss_landscape_1d", "loss_landscape_2d"]


def _check_span(span: Any) -> tuple[float, float]:
    ok = (
        isinstance(span, (tuple, list))
        and len(span) == 2
        and all(isinstance(s, numbers.Real) and not isinstance(s, bool) and np.isfinite(s)  # type: ignore[call-overload]
                for s in span)
        and span[0] < span[1]
    )
    if not ok:
        raise ValueError(f"Expected `span` to be a pair (low, high) of finite numbers with low < high, got {span!r}.")
    return float(span[0]), float(span[1])


def _check_options(module: Any, dataloader: Any, loss_fn: Any, metric_fn: Any, recompute_bn: Any,
                   max_batches: Any, seed: Any) -> tuple[Any, ...]:
    check_module(module)
    check_data(dataloader)
    if not isinstance(recompute_bn, bool):
        raise TypeError(f"Expected `recompute_bn` to be a bool, got {recompute_bn!r}.")
    return (check_loss_fn(loss_fn, module), check_metric_fn(metric_fn), check_max_batches(max_batches),
            check_seed(seed))


def _evaluate(session: Any, steps: tuple[tuple[float, list[Tensor]], ...], metric_fn: MetricFn | None,
              recompute_bn: bool) -> tuple[float, float | None]:
    session.move_to(*steps)
    if recompute_bn:
        session.recompute_batch_norm()
    return session.loss(metric_fn)


def loss_landscape_1d(
    module: nn.Module,
    dataloader: Iterable[Any],
    direction: dict[str, Tensor] | None = None,
    span: tuple[float, float] = (-1.0, 1.0),
    steps: int = 21,
    *,
    loss_fn: LossFn | None = None,
    metric_fn: MetricFn | None = None,
    seed: int = 0,
    recompute_bn: bool = False,
    max_batches: int | None = None,
) -> dict[str, np.ndarray]:
    """The loss at ``w + alpha * direction`` for ``steps`` values of ``alpha`` evenly spaced over ``span``.

    The loss of a batch is what ``module.training_step(batch, batch_idx)`` returns (or ``loss_fn(module,
    batch)``); the loss of the data is the mean over batches weighted by batch size. The module is in eval
    mode throughout (dropout off, BatchNorm on its running statistics), with no ``Trainer`` attached: a
    ``self.log`` in ``training_step`` does nothing. The module's ``on_train_epoch_start`` is called once
    first, as a Trainer would, when the loss comes from ``training_step``. Afterwards every parameter and
    buffer is bit for bit what it was, each submodule is back in its mode, and the global random state is
    untouched.

    With the default span and an odd number of steps the curve passes through the model itself:
    ``loss[steps // 2]`` is the model's loss (the weights at ``alpha = 0`` are the model's exactly).

    Args:
        module: the model, on any device; the batches are moved to it.
        dataloader: the data (a ``DataLoader`` or any iterable of batches). Its batches are read once and
            kept on the module's device for the call: pass a loader over the subset you want measured.
        direction: a dict ``{parameter name: tensor}`` over the trainable parameters; by default
            ``random_direction(module, seed)``, filter-normalised with biases and BatchNorm zeroed.
        span: the range of ``alpha``.
        steps: the number of points, at least 2.
        loss_fn: ``loss_fn(module, batch) -> scalar tensor`` instead of ``training_step``.
        metric_fn: ``metric_fn(module, batch) -> number`` (e.g. accuracy), averaged like the loss.
        seed: seed of the default direction and of a shuffling loader's order.
        recompute_bn: at every point, reset the BatchNorm running statistics and re-estimate them on the
            data (as at the end of training at those weights) before measuring.
        max_batches: read at most this many batches.

    Returns:
        A dict of float arrays of length ``steps``: ``"alpha"``, ``"loss"`` and, with ``metric_fn``,
        ``"metric"``.

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Linear(4, 3)
        >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(2)]
        >>> ce = lambda module, batch: F.cross_entropy(module(batch[0]), batch[1])
        >>> curve = loss_landscape_1d(model, data, loss_fn=ce, steps=5)
        >>> curve["alpha"].tolist()
        [-1.0, -0.5, 0.0, 0.5, 1.0]
        >>> at_model = sum(ce(model, b).item() * 8 for b in data) / 16
        >>> bool(abs(curve["loss"][2] - at_model) < 1e-6)
        True
    """
    loss_fn, metric_fn, max_batches, seed = _check_options(module, dataloader, loss_fn, metric_fn, recompute_bn,
                                                           max_batches, seed)
    low, high = _check_span(span)
    steps = check_int("steps", steps, low=2)
    named = trainable(module)
    if direction is None:
        direction = filter_normalised(named, torch.Generator().manual_seed(seed))
    d = check_direction(direction, named, "direction")
    alphas = np.linspace(low, high, steps)
    losses, metrics = np.empty(steps), np.empty(steps)
    with objective(module, dataloader, loss_fn, max_batches, seed) as session:
        for i, alpha in enumerate(alphas):
            losses[i], metric = _evaluate(session, ((float(alpha), d),), metric_fn, recompute_bn)
            metrics[i] = np.nan if metric is None else metric
    out = {"alpha": alphas, "loss": losses}
    if metric_fn is not None:
        out["metric"] = metrics
    return out


def loss_landscape_2d(
    module: nn.Module,
    dataloader: Iterable[Any],
    directions: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None,
    span: tuple[float, float] = (-1.0, 1.0),
    steps: int = 11,
    *,
    loss_fn: LossFn | None = None,
    metric_fn: MetricFn | None = None,
    seed: int = 0,
    recompute_bn: bool = False,
    max_batches: int | None = None,
) -> dict[str, np.ndarray]:
    """The loss on the plane ``w + x * d1 + y * d2``, over a ``steps x steps`` grid of ``span x span``.

    Everything else is as in :func:`loss_landscape_1d`: the loss, the eval mode, the restored weights.

    Args:
        module: the model.
        dataloader: the data (read once, kept on the module's device).
        directions: two dicts ``(d1, d2)`` over the trainable parameters; by default two filter-normalised
            directions drawn one after the other from one generator seeded with ``seed`` (``d1`` is
            ``random_direction(module, seed)``). In many dimensions two random directions are nearly
            orthogonal.
        span: the range of ``x`` and of ``y``.
        steps: the number of points along each axis, at least 2.
        loss_fn: ``loss_fn(module, batch) -> scalar tensor`` instead of ``training_step``.
        metric_fn: ``metric_fn(module, batch) -> number``, averaged like the loss.
        seed: seed of the default directions and of a shuffling loader's order.
        recompute_bn: re-estimate the BatchNorm running statistics at every point.
        max_batches: read at most this many batches.

    Returns:
        A dict: ``"x"`` and ``"y"`` (length ``steps``), ``"loss"`` and, with ``metric_fn``, ``"metric"``, of
        shape ``(steps, steps)`` with ``loss[j, i]`` at ``(x[i], y[j])``: rows follow ``y``, as
        matplotlib's ``contour(x, y, loss)`` expects.

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Linear(4, 3)
        >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
        >>> ce = lambda module, batch: F.cross_entropy(module(batch[0]), batch[1])
        >>> surface = loss_landscape_2d(model, data, loss_fn=ce, steps=3)
        >>> surface["loss"].shape, surface["x"].tolist()
        ((3, 3), [-1.0, 0.0, 1.0])
        >>> bool(abs(surface["loss"][1, 1] - ce(model, data[0]).item()) < 1e-6)
        True
    """
    loss_fn, metric_fn, max_batches, seed = _check_options(module, dataloader, loss_fn, metric_fn, recompute_bn,
                                                           max_batches, seed)
    low, high = _check_span(span)
    steps = check_int("steps", steps, low=2)
    named = trainable(module)
    if directions is None:
        generator = torch.Generator().manual_seed(seed)
        directions = (filter_normalised(named, generator), filter_normalised(named, generator))
    if not isinstance(directions, (tuple, list)) or len(directions) != 2:
        raise TypeError(
            f"Expected `directions` to be a pair (d1, d2) of direction dicts, got {type(directions).__name__}."
        )
    d1 = check_direction(directions[0], named, "directions[0]")
    d2 = check_direction(directions[1], named, "directions[1]")
    grid = np.linspace(low, high, steps)
    losses, metrics = np.empty((steps, steps)), np.empty((steps, steps))
    with objective(module, dataloader, loss_fn, max_batches, seed) as session:
        for j, y in enumerate(grid):
            for i, x in enumerate(grid):
                losses[j, i], metric = _evaluate(session, ((float(x), d1), (float(y), d2)), metric_fn, recompute_bn)
                metrics[j, i] = np.nan if metric is None else metric
    out = {"x": grid.copy(), "y": grid.copy(), "loss": losses}
    if metric_fn is not None:
        out["metric"] = metrics
    return out
