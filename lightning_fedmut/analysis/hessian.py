"""Curvature of the loss: Hessian-vector products, top eigenvalues by power iteration, trace by Hutchinson."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_fedmut.analysis._objective import (
    LossFn,
    check_data,
    check_direction,
    check_loss_fn,
    check_max_batches,
    check_module,
    check_seed,
    dot,
    draw,
    norm,
    objective,
    trainable,
)
from lightning_fedmut.utilities.validation import check_int

__all__ = ["hessian_eigenvalues", "hessian_trace", "hessian_vector_product"]

#: Hutchinson's estimator draws at least this many probes before its stopping rule may end it.
MIN_TRACE_SAMPLES = 10


def _check_common(module: Any, dataloader: Any, loss_fn: Any, max_batches: Any) -> tuple[Any, Any]:
    check_module(module)
    check_data(dataloader)
    return check_loss_fn(loss_fn, module), check_max_batches(max_batches)


def _check_tol(tol: Any) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (0.0 <= float(tol) < math.inf):
        raise ValueError(f"Expected `tol` to be a finite float >= 0, got {tol!r}.")
    return float(tol)


def hessian_vector_product(
    module: nn.Module,
    dataloader: Iterable[Any],
    vector: dict[str, Tensor],
    *,
    loss_fn: LossFn | None = None,
    max_batches: int | None = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """The Hessian of the data's loss with respect to the trainable weights, times ``vector``.

    Computed by double backward (``torch.autograd.grad`` of ``grad(loss) . vector``), batch by batch,
    weighted by batch size, on the module's device, in eval mode; the module is left bit for bit as it was.
    The loss is as in :func:`~lightning_fedmut.analysis.loss_landscape_1d`.

    Args:
        module: the model.
        dataloader: the data (read once, kept on the module's device).
        vector: a dict ``{parameter name: tensor}`` over the trainable parameters.
        loss_fn: ``loss_fn(module, batch) -> scalar tensor`` instead of ``training_step``.
        max_batches: read at most this many batches.
        seed: the global generators are seeded with it (inside a fork) while the batches are read, so a
            shuffling loader gives the same batches for the same seed.

    Returns:
        ``H @ vector`` as a dict ``{parameter name: tensor}``.

    Examples:
        >>> import torch
        >>> class Quadratic(torch.nn.Module):  # loss = w0^2 + 3 w1^2: the Hessian is diag(2, 6)
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
        >>> loss = lambda module, batch: module.w[0] ** 2 + 3 * module.w[1] ** 2
        >>> hessian_vector_product(Quadratic(), [0], {"w": torch.tensor([1.0, 1.0])}, loss_fn=loss)
        {'w': tensor([2., 6.])}
    """
    loss_fn, max_batches = _check_common(module, dataloader, loss_fn, max_batches)
    seed = check_seed(seed)
    named = trainable(module)
    v = check_direction(vector, named, "vector")
    with objective(module, dataloader, loss_fn, max_batches, seed) as session:
        hv = session.hvp(v)
    return {name: t for (name, _), t in zip(named, hv)}


def _orthonormalise(v: list[Tensor], basis: list[list[Tensor]]) -> float:
    """Remove from ``v`` (in place) its components along the orthonormal ``basis``; normalise; return its norm."""
    for u in basis:
        torch._foreach_add_(v, u, alpha=-dot(v, u))
    size = norm(v)
    if size > 0.0:
        torch._foreach_div_(v, size)
    return size


def hessian_eigenvalues(
    module: nn.Module,
    dataloader: Iterable[Any],
    k: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    *,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    max_batches: int | None = None,
    return_eigenvectors: bool = False,
) -> list[float] | tuple[list[float], list[dict[str, Tensor]]]:
    """The ``k`` largest eigenvalues (in magnitude) of the Hessian of the data's loss, by power iteration.

    For each eigenvalue, power iteration on Hessian-vector products (:func:`hessian_vector_product`) from a
    random start (a generator seeded with ``seed``), deflated: the vector is kept orthogonal to the
    eigenvectors found before. The eigenvalue is the Rayleigh quotient ``v . Hv``; the iteration stops when
    it changes by at most ``tol`` times its size, or after ``max_iter`` products (with a warning). Each
    product is one pass over the data. Power iteration finds the eigenvalues of largest magnitude: near a
    minimum those are the largest positive ones; a large negative eigenvalue (a saddle) is returned as it is.

    Everything runs on the module's device, in eval mode; the module is left bit for bit as it was.

    Args:
        module: the model.
        dataloader: the data (read once, kept on the module's device).
        k: how many eigenvalues.
        max_iter: the most Hessian-vector products per eigenvalue.
        tol: the relative change of the eigenvalue between two iterations that ends the iteration.
        seed: seed of the start vectors and of a shuffling loader's order.
        loss_fn: ``loss_fn(module, batch) -> scalar tensor`` instead of ``training_step``.
        max_batches: read at most this many batches.
        return_eigenvectors: also return the unit eigenvectors, as dicts ``{parameter name: tensor}``.

    Returns:
        The eigenvalues (floats, largest magnitude first), and with ``return_eigenvectors`` the
        eigenvectors: ``(values, vectors)``.

    Examples:
        >>> import torch
        >>> class Quadratic(torch.nn.Module):  # loss = 1/2 w^T diag(5, 2, 1) w
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
        >>> scale = torch.tensor([5.0, 2.0, 1.0], dtype=torch.float64)
        >>> loss = lambda module, batch: 0.5 * (scale * module.w ** 2).sum()
        >>> [round(v, 4) for v in hessian_eigenvalues(Quadratic(), [0], k=2, tol=1e-9, loss_fn=loss)]
        [5.0, 2.0]
    """
    loss_fn, max_batches = _check_common(module, dataloader, loss_fn, max_batches)
    k = check_int("k", k, low=1)
    max_iter = check_int("max_iter", max_iter, low=1)
    tol = _check_tol(tol)
    seed = check_seed(seed)
    if not isinstance(return_eigenvectors, bool):
        raise TypeError(f"Expected `return_eigenvectors` to be a bool, got {return_eigenvectors!r}.")
    named = trainable(module)
    size = sum(p.numel() for _, p in named)
    if k > size:
        raise ValueError(f"Expected `k` to be at most the number of trainable weights ({size}), got {k}.")
    generator = torch.Generator().manual_seed(seed)
    values: list[float] = []
    vectors: list[list[Tensor]] = []
    with objective(module, dataloader, loss_fn, max_batches, seed) as session:
        for index in range(k):
            v = [draw(p.shape, generator, p) for p in session.params]
            _orthonormalise(v, vectors)
            value, converged = None, False
            for _ in range(max_iter):
                hv = session.hvp(v)
                new = dot(hv, v)
                v = hv
                if _orthonormalise(v, vectors) == 0.0:  # H v = 0 on what is left: the eigenvalue is 0
                    value, converged = 0.0, True
                    break
                if value is not None and abs(new - value) <= tol * abs(value):
                    value, converged = new, True
                    break
                value = new
            if not converged:
                warnings.warn(
                    f"hessian_eigenvalues: eigenvalue {index} did not converge to `tol`={tol} in `max_iter`={max_iter}"
                    f" iterations (last estimate {value:.6g}); raise `max_iter` or `tol`.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            assert value is not None  # max_iter >= 1: the loop ran and set it
            values.append(float(value))
            vectors.append(v)
    if return_eigenvectors:
        return values, [{name: t for (name, _), t in zip(named, vec)} for vec in vectors]
    return values


def hessian_trace(
    module: nn.Module,
    dataloader: Iterable[Any],
    max_iter: int = 100,
    tol: float = 1e-3,
    *,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    max_batches: int | None = None,
) -> float:
    """The trace of the Hessian of the data's loss, by Hutchinson's estimator.

    The mean of ``z . Hz`` over Rademacher probes ``z`` (entries +1 or -1, from a generator seeded with
    ``seed``): unbiased, with variance ``2 * sum_{i != j} H_ij^2`` per probe (exact when the Hessian is
    diagonal). It stops when the standard error of the mean falls to ``tol`` times its size (after at least
    ``MIN_TRACE_SAMPLES`` = 10 probes), or after ``max_iter`` probes. Each probe is one Hessian-vector product,
    one pass over the data, on the module's device; the module is left bit for bit as it was.

    Args:
        module: the model.
        dataloader: the data (read once, kept on the module's device).
        max_iter: the most probes.
        tol: the relative standard error that ends the estimate.
        seed: seed of the probes and of a shuffling loader's order.
        loss_fn: ``loss_fn(module, batch) -> scalar tensor`` instead of ``training_step``.
        max_batches: read at most this many batches.

    Returns:
        The estimated trace (a float).

    Examples:
        >>> import torch
        >>> class Quadratic(torch.nn.Module):  # loss = 1/2 w^T diag(5, 2, 1) w: the trace is 8
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
        >>> scale = torch.tensor([5.0, 2.0, 1.0], dtype=torch.float64)
        >>> loss = lambda module, batch: 0.5 * (scale * module.w ** 2).sum()
        >>> hessian_trace(Quadratic(), [0], loss_fn=loss)
        8.0
    """
    loss_fn, max_batches = _check_common(module, dataloader, loss_fn, max_batches)
    max_iter = check_int("max_iter", max_iter, low=1)
    tol = _check_tol(tol)
    seed = check_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    samples: list[float] = []
    with objective(module, dataloader, loss_fn, max_batches, seed) as session:
        for _ in range(max_iter):
            z = [draw(p.shape, generator, p, rademacher=True) for p in session.params]
            samples.append(dot(z, session.hvp(z)))
            n = len(samples)
            if n >= MIN_TRACE_SAMPLES:
                mean = sum(samples) / n
                variance = sum((s - mean) ** 2 for s in samples) / (n - 1)
                if math.sqrt(variance / n) <= tol * abs(mean):
                    break
    return sum(samples) / len(samples)
