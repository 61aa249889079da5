"""A federated callback that measures how flat the global model's minimum is, every few rounds."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from lightning_fedmut.analysis._objective import (
    LossFn,
    check_data,
    check_loss_fn,
    check_max_batches,
    check_seed,
    objective,
)
from lightning_fedmut.analysis.hessian import hessian_eigenvalues, hessian_trace
from lightning_fedmut.analysis.perturbation import sharpness
from lightning_fedmut.callbacks import FederatedCallback
from lightning_fedmut.utilities.validation import check_int

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from lightning_fedmut.loop import FederatedLoop

__all__ = ["FlatnessCallback"]

#: The figures FlatnessCallback can log, each as ``flatness/<name>``.
FLATNESS_METRICS = ("hessian_top", "hessian_trace", "loss", "sharpness")


class FlatnessCallback(FederatedCallback):
    """Log flatness figures of the global model every ``every_n_rounds`` rounds, as ``flatness/<name>``.

    The figures are measured in ``on_after_aggregate``, on the global module that now holds the round's
    new weights, of rounds ``r`` with ``(r + 1) % every_n_rounds == 0`` (a round skipped for too few
    clients has no aggregate and no figures). :meth:`metrics` returns them and the loop adds them to
    ``loop.round_metrics``, so they are in that round's row of the history and logged to the run's logger with the validation metrics, at
    ``step=round``. The figures:

    - ``hessian_top``: the Hessian's top eigenvalue (:func:`~lightning_fedmut.analysis.hessian_eigenvalues`);
    - ``hessian_trace``: its trace (:func:`~lightning_fedmut.analysis.hessian_trace`);
    - ``sharpness``: the loss rise within ``rho`` (:func:`~lightning_fedmut.analysis.sharpness`);
    - ``loss``: the loss on ``data`` itself, to read the others against.

    Every measurement uses the same seed every round (the same start vector, probes and directions), so
    the change of a figure from one round to the next is the model's change, not the draw's. The run is
    untouched: the global module is restored bit for bit and its mode kept, and the global random state
    is forked, so a run with this callback ends with the same weights as the run without it. It works with
    any aggregator, with or without :class:`~lightning_fedmut.MutationCallback`. Each measurement costs
    about ``max_iter`` (top eigenvalue) plus up to ``max_iter`` (trace) passes over ``data`` with double
    backward: keep ``data`` small (a few batches).

    Args:
        every_n_rounds: measure every this many rounds.
        data: the data to measure the loss on (a ``DataLoader`` or any iterable of batches), e.g. a
            subset of the clients' training data.
        metrics: which figures, from ``"hessian_top"``, ``"hessian_trace"``, ``"sharpness"``, ``"loss"``.
        loss_fn: ``loss_fn(module, batch) -> scalar tensor``; by default the module's ``training_step``.
        seed: the seed of every measurement's random draws (and of a shuffling loader's order).
        rho: the sharpness radius.
        sharpness_method: ``"sam"`` or ``"random"`` (see :func:`~lightning_fedmut.analysis.sharpness`).
        max_iter: the most Hessian-vector products of the top eigenvalue, and of the trace.
        tol: the relative tolerance of both.
        max_batches: read at most this many batches of ``data``.

    Examples:
        >>> import torch
        >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
        >>> callback = FlatnessCallback(every_n_rounds=5, data=data, metrics=("hessian_top", "loss"))
        >>> callback.hparams["metrics"]
        ['hessian_top', 'loss']
        >>> FlatnessCallback(every_n_rounds=5, data=data, metrics=("hessian",))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Expected every entry of `metrics` to be one of ['hessian_top', ...], got 'hessian'.
    """

    rho: float
    sharpness_method: str
    max_iter: int
    tol: float
    max_batches: int | None

    def __init__(
        self,
        every_n_rounds: int,
        data: Iterable[Any],
        metrics: Sequence[str] = ("hessian_top", "sharpness"),
        *,
        loss_fn: LossFn | None = None,
        seed: int = 0,
        rho: float = 0.05,
        sharpness_method: str = "sam",
        max_iter: int = 100,
        tol: float = 1e-3,
        max_batches: int | None = None,
    ) -> None:
        self.every_n_rounds = check_int("every_n_rounds", every_n_rounds, low=1)
        self.data = check_data(data)
        if isinstance(metrics, str) or not isinstance(metrics, Sequence) or not metrics:
            raise ValueError(f"Expected `metrics` to be a non-empty list of names from {list(FLATNESS_METRICS)},"
                             f" got {metrics!r}.")
        for name in metrics:
            if name not in FLATNESS_METRICS:
                raise ValueError(
                    f"Expected every entry of `metrics` to be one of {list(FLATNESS_METRICS)}, got {name!r}."
                )
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"Expected `metrics` to name each figure once, got {list(metrics)!r}.")
        self.measures = list(metrics)  # the names of the figures (``metrics()`` returns the round's values)
        self._figures: dict[str, float]
        self.add_state("_figures", {}, scope="round")
        self.loss_fn = check_loss_fn(loss_fn)
        self.seed = check_seed(seed)
        if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not (0.0 < float(rho) < math.inf):
            raise ValueError(f"Expected `rho` to be a float > 0, got {rho!r}.")
        self.rho = float(rho)
        if sharpness_method not in ("sam", "random"):
            raise ValueError(f"Expected `sharpness_method` to be one of ['sam', 'random'], got {sharpness_method!r}.")
        self.sharpness_method = sharpness_method
        self.max_iter = check_int("max_iter", max_iter, low=1)
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (0.0 <= float(tol) < math.inf):
            raise ValueError(f"Expected `tol` to be a finite float >= 0, got {tol!r}.")
        self.tol = float(tol)
        self.max_batches = check_max_batches(max_batches)

    @property
    def hparams(self) -> dict[str, Any]:
        """The callback's arguments (but the data and the loss function), for run configs."""
        return {"every_n_rounds": self.every_n_rounds, "metrics": list(self.measures), "seed": self.seed,
                "rho": self.rho, "sharpness_method": self.sharpness_method, "max_iter": self.max_iter,
                "tol": self.tol, "max_batches": self.max_batches}

    def should_measure(self, round_index: int) -> bool:
        """Whether the round ``round_index`` (0-based) is measured; override for another schedule."""
        return (round_index + 1) % self.every_n_rounds == 0

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        """Check that ``module`` gives a loss: a ``training_step``, unless ``loss_fn`` was given."""
        check_loss_fn(self.loss_fn, module)

    def on_after_aggregate(self, loop: FederatedLoop, module: LightningModule) -> None:
        """Measure the new global model on the rounds :meth:`should_measure` picks."""
        if self.should_measure(loop.round):
            self._figures = {f"flatness/{name}": value for name, value in self.measure(module).items()}

    def metrics(self) -> dict[str, float]:
        """The round's ``flatness/<name>`` figures (none on the rounds not measured)."""
        return dict(self._figures)

    def measure(self, module: LightningModule) -> dict[str, float]:
        """The figures of ``module`` now, by name (without the ``flatness/`` prefix)."""
        common: dict[str, Any] = {"loss_fn": self.loss_fn, "max_batches": self.max_batches}
        out: dict[str, float] = {}
        for name in self.measures:
            if name == "hessian_top":
                top = hessian_eigenvalues(module, self.data, k=1, max_iter=self.max_iter, tol=self.tol,
                                          seed=self.seed, **common)
                out[name] = cast(list[float], top)[0]  # the eigenvalues alone: no return_eigenvectors
            elif name == "hessian_trace":
                out[name] = hessian_trace(module, self.data, max_iter=self.max_iter, tol=self.tol, seed=self.seed,
                                          **common)
            elif name == "sharpness":
                out[name] = sharpness(module, self.data, rho=self.rho, method=self.sharpness_method, seed=self.seed,
                                      **common)
            else:
                with objective(module, self.data, self.loss_fn, self.max_batches, self.seed) as session:
                    out[name] = session.loss()[0]
        return out
