"""A benchmark's flatness columns: how flat the final global model of every cell is, next to its accuracy.

A benchmark file's optional ``flatness:`` section names the figures and how they are measured::

    flatness: {metrics: [hessian_top, hessian_trace, sharpness], batches: 4, batch_size: 64, rho: 0.05,
               trace_samples: 20, seed: 0}

When a cell's ``fit`` ends, its final global model is measured on a fixed batch set: ``batches`` batches of
``batch_size`` training examples drawn without replacement by a generator seeded with ``seed``. The examples are
drawn from the training set, which is the union of the clients' data whatever the partition, so every method,
partition and seed of the benchmark is measured on the same examples, on the objective the clients minimise
(the server's evaluation data is the held-out test split, where flatness would mix in the generalisation gap,
and not every data set has one). The figures:

- ``hessian_top``: the Hessian's largest eigenvalue (:func:`~lightning_fedmut.analysis.hessian_eigenvalues`,
  ``k=1``, at most ``max_iter`` power iterations to a relative change ``tol``);
- ``hessian_trace``: its trace (:func:`~lightning_fedmut.analysis.hessian_trace`, exactly ``trace_samples``
  Rademacher probes);
- ``sharpness``: the rise of the loss after one SAM ascent step of radius ``rho``
  (:func:`~lightning_fedmut.analysis.sharpness`);
- ``loss``: the loss on the batches itself, to read the others against.

Every figure's random draws come from generators seeded with ``seed``, so two runs of one cell give the same
numbers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from lightning_fedmut.callbacks import FederatedCallback

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from lightning_fedmut.loop import FederatedLoop

__all__ = ["FLATNESS_KEYS", "FLATNESS_METRICS", "FinalFlatness", "FlatnessSettings", "flatness_batches", "flatness_settings",
           "measure_flatness"]

#: The figures a benchmark can measure, in the order its tables show them.
FLATNESS_METRICS = ("hessian_top", "hessian_trace", "sharpness", "loss")
#: The keys of a benchmark's ``flatness:`` section.
FLATNESS_KEYS = ("metrics", "batches", "batch_size", "rho", "trace_samples", "max_iter", "tol", "seed")


@dataclass(frozen=True)
class FlatnessSettings:
    """How a benchmark measures the flatness of each cell's final global model (see the module's text).

    Attributes:
        metrics: the figures, from :data:`FLATNESS_METRICS`.
        batches: how many batches of training examples.
        batch_size: the examples per batch.
        rho: the sharpness radius.
        trace_samples: the Rademacher probes of the trace.
        max_iter: the most power iterations of the top eigenvalue.
        tol: the relative change of the eigenvalue that ends its iteration.
        seed: the seed of the examples drawn and of every figure's random draws.
    """

    metrics: tuple[str, ...] = ("hessian_top", "hessian_trace", "sharpness")
    batches: int = 4
    batch_size: int = 64
    rho: float = 0.05
    trace_samples: int = 20
    max_iter: int = 100
    tol: float = 1e-3
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain data (what a cell's record stores with its values)."""
        out = asdict(self)
        out["metrics"] = list(self.metrics)
        return out


def _integer(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise ValueError(f"flatness.{key}: expected an integer >= {low}, got {value!r}")
    return int(value)


def _real(key: str, value: Any, low: float, low_open: bool) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(float(value))
          and (float(value) > low if low_open else float(value) >= low))
    if not ok:
        raise ValueError(f"flatness.{key}: expected a finite number {'>' if low_open else '>='} {low:g}, got {value!r}")
    return float(value)


def flatness_settings(value: Any) -> FlatnessSettings | None:
    """A benchmark's ``flatness:`` section checked: ``None`` when absent, else :class:`FlatnessSettings`; a bad key
    or value is one ``ValueError`` naming the key, what it expects and what it got.

    Examples:
        >>> flatness_settings({"metrics": ["hessian_top", "sharpness"], "batches": 2}).as_dict()
        {'metrics': ['hessian_top', 'sharpness'], 'batches': 2, 'batch_size': 64, 'rho': 0.05, 'trace_samples': 20, 'max_iter': 100, 'tol': 0.001, 'seed': 0}
        >>> flatness_settings({"batch": 2})
        Traceback (most recent call last):
        ...
        ValueError: flatness: unknown key `batch` (did you mean `batches`?); expected keys among metrics, batches, batch_size, rho, trace_samples, max_iter, tol, seed
        >>> flatness_settings({"metrics": ["hessian"]})
        Traceback (most recent call last):
        ...
        ValueError: flatness.metrics: expected a non-empty list of distinct names among hessian_top, hessian_trace, sharpness, loss, got ['hessian']
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"flatness: expected a mapping of {', '.join(FLATNESS_KEYS)} (or null for none), got {value!r}")
    for key in value:
        if key not in FLATNESS_KEYS:
            import difflib

            close = difflib.get_close_matches(str(key), FLATNESS_KEYS, n=1, cutoff=0.6)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            raise ValueError(f"flatness: unknown key `{key}`{hint}; expected keys among {', '.join(FLATNESS_KEYS)}")
    default = FlatnessSettings()
    metrics = value.get("metrics", list(default.metrics))
    if (isinstance(metrics, str) or not isinstance(metrics, Sequence) or not metrics
            or any(m not in FLATNESS_METRICS for m in metrics) or len(set(metrics)) != len(metrics)):
        raise ValueError(f"flatness.metrics: expected a non-empty list of distinct names among"
                         f" {', '.join(FLATNESS_METRICS)}, got {metrics!r}")
    return FlatnessSettings(
        metrics=tuple(str(m) for m in metrics),
        batches=_integer("batches", value.get("batches", default.batches), 1),
        batch_size=_integer("batch_size", value.get("batch_size", default.batch_size), 1),
        rho=_real("rho", value.get("rho", default.rho), 0.0, low_open=True),
        trace_samples=_integer("trace_samples", value.get("trace_samples", default.trace_samples), 1),
        max_iter=_integer("max_iter", value.get("max_iter", default.max_iter), 1),
        tol=_real("tol", value.get("tol", default.tol), 0.0, low_open=False),
        seed=_integer("seed", value.get("seed", default.seed), 0),
    )


def flatness_batches(dataset: Any, settings: FlatnessSettings, collate_fn: Any = None) -> list[Any]:
    """The batches every cell is measured on: ``settings.batches`` batches of ``settings.batch_size`` examples of
    ``dataset``, drawn without replacement by a generator seeded with ``settings.seed`` (the global random state
    untouched), collated by ``collate_fn`` (torch's default when None).

    Examples:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.arange(10.0), torch.arange(10))
        >>> batches = flatness_batches(data, FlatnessSettings(batches=2, batch_size=3, seed=0))
        >>> [b[1].tolist() for b in batches]
        [[4, 1, 7], [5, 3, 9]]
        >>> flatness_batches(data, FlatnessSettings(batches=4, batch_size=3))
        Traceback (most recent call last):
        ...
        ValueError: flatness: expected batches x batch_size at most the 10 training examples, got 4 x 3 = 12
    """
    from torch.utils.data import default_collate

    size = len(dataset)
    wanted = settings.batches * settings.batch_size
    if wanted > size:
        raise ValueError(f"flatness: expected batches x batch_size at most the {size} training examples, got"
                         f" {settings.batches} x {settings.batch_size} = {wanted}")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(settings.seed))[:wanted].tolist()
    collate = collate_fn or default_collate
    return [collate([dataset[i] for i in order[b * settings.batch_size:(b + 1) * settings.batch_size]])
            for b in range(settings.batches)]


def measure_flatness(module: torch.nn.Module, batches: Sequence[Any], settings: FlatnessSettings
                     ) -> dict[str, float]:
    """The figures of ``settings.metrics`` of ``module`` on ``batches``, by name; ``module`` is left bit for bit as
    it was (see :mod:`lightning_fedmut.analysis`).

    Examples:
        >>> class Quadratic(torch.nn.Module):  # loss = w^2 at w = 1: the Hessian is 2, one SAM step of 0.1 rises 0.21
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
        ...     def training_step(self, batch, batch_idx):
        ...         return (self.w ** 2).sum()
        >>> figures = measure_flatness(Quadratic(), [0], FlatnessSettings(rho=0.1, metrics=("hessian_top", "sharpness", "loss")))
        >>> {k: round(v, 6) for k, v in figures.items()}
        {'hessian_top': 2.0, 'sharpness': 0.21, 'loss': 1.0}
    """
    from lightning_fedmut.analysis import hessian_eigenvalues, hessian_trace, sharpness
    from lightning_fedmut.analysis._objective import objective

    out: dict[str, float] = {}
    for name in settings.metrics:
        if name == "hessian_top":
            top = hessian_eigenvalues(module, batches, k=1, max_iter=settings.max_iter, tol=settings.tol,
                                      seed=settings.seed)
            out[name] = float(cast(list[float], top)[0])
        elif name == "hessian_trace":  # tol 0: exactly trace_samples probes
            out[name] = float(hessian_trace(module, batches, max_iter=settings.trace_samples, tol=0.0,
                                            seed=settings.seed))
        elif name == "sharpness":
            out[name] = float(sharpness(module, batches, rho=settings.rho, seed=settings.seed))
        else:
            with objective(module, batches, None, None, settings.seed) as session:
                out[name] = float(session.loss()[0])
    return out


class FinalFlatness(FederatedCallback):
    """Measure the global model once, when the last round has ended (``on_fit_end``), and log the figures as
    ``flatness/<name>`` to the run's logger: into a W&B run's summary, or as metrics of the last round for
    another logger. ``figures`` then holds ``settings``, ``values`` and ``seconds``.

    Args:
        settings: what to measure and how.
        batches: the batches to measure on (:func:`flatness_batches`).

    Examples:
        >>> FinalFlatness(FlatnessSettings(), [0]).figures is None
        True
    """

    def __init__(self, settings: FlatnessSettings, batches: Sequence[Any]) -> None:
        self.settings = settings
        self.batches = list(batches)
        self.figures: dict[str, Any] | None = None

    def on_fit_end(self, loop: FederatedLoop, module: LightningModule) -> None:
        """Measure the final global model (in the process that logs) and log the figures."""
        if not loop.is_global_zero:
            return
        values = self.measure(module)["values"]
        logger = loop.logger
        if logger is None:
            return
        from lightning.pytorch.loggers import WandbLogger

        logged = {f"flatness/{name}": value for name, value in values.items()}
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(logged)
        else:
            logger.log_metrics(logged, step=max(loop.progress.rounds_done - 1, 0))

    def measure(self, module: torch.nn.Module) -> dict[str, Any]:
        """Measure ``module`` now; set and return ``figures``."""
        import time

        start = time.perf_counter()
        values = measure_flatness(module, self.batches, self.settings)
        self.figures = {"settings": self.settings.as_dict(), "values": values,
                        "seconds": round(time.perf_counter() - start, 3)}
        return self.figures
