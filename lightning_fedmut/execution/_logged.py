"""What a module logs with ``self.log`` while a client trains without a Trainer, reduced as Lightning reduces it."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

#: Reductions of values logged with ``on_epoch=True`` that the capture implements (Lightning's names and functions).
REDUCTIONS = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min",
              torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min"}


class LoggedMetrics:
    """The values of ``self.log`` during one client's training, as Lightning's ``callback_metrics`` hold them.

    A value logged ``on_step`` keeps its last value under its name; one logged ``on_epoch`` is reduced over the
    epoch (``"mean"`` weighted by the batch size, ``"sum"``, ``"max"``, ``"min"``) and, at the end of the epoch,
    stored under its name; logged both ways it is also stored as ``name_step`` and ``name_epoch``. A torchmetrics
    ``Metric`` logged ``on_epoch`` is computed at the end of the epoch and then reset, as Lightning does.

    Examples:
        >>> logged = LoggedMetrics()
        >>> logged.log("loss", torch.tensor(2.0), on_step=False, on_epoch=True, reduce_fx="mean", batch_size=1)
        >>> logged.log("loss", torch.tensor(4.0), on_step=False, on_epoch=True, reduce_fx="mean", batch_size=3)
        >>> logged.log("lr", 0.1, on_step=True, on_epoch=False, reduce_fx="mean", batch_size=None)
        >>> logged.end_epoch()
        >>> {k: round(float(v), 4) for k, v in logged.metrics.items()}
        {'lr': 0.1, 'loss': 3.5}
    """

    def __init__(self) -> None:
        self.metrics: dict[str, Tensor] = {}
        self._epoch: dict[str, tuple[str, Any, Any, bool]] = {}  # name -> (reduction, value, weight, forked)

    def log(self, name: str, value: Any, *, on_step: bool, on_epoch: bool, reduce_fx: Any,
            batch_size: int | None) -> None:
        """Record one logged value; ``batch_size`` weighs an ``on_epoch`` mean."""
        forked = on_step and on_epoch
        if on_step:
            step_value = _step_value(name, value)
            self.metrics[f"{name}_step" if forked else name] = step_value
            if forked:
                self.metrics[name] = step_value
        if not on_epoch:
            return
        reduction = REDUCTIONS.get(reduce_fx)
        if reduction is None:
            raise ValueError(f"`self.log({name!r}, ..., reduce_fx={reduce_fx!r})`: FabricExecutor reduces epoch"
                             f" values with one of {sorted(k for k in REDUCTIONS if isinstance(k, str))}; use"
                             " SequentialExecutor for other reductions.")
        if isinstance(value, Metric):
            self._epoch[name] = ("metric", value, None, forked)
            return
        tensor = _as_tensor(name, value)
        previous = self._epoch.get(name)
        if reduction == "mean":
            weight = torch.tensor(float(batch_size or 1))
            weighted = tensor * weight
            if previous is not None:
                weighted, weight = previous[1] + weighted, previous[2] + weight
            self._epoch[name] = (reduction, weighted, weight, forked)
        elif previous is None:
            self._epoch[name] = (reduction, tensor.clone(), None, forked)
        else:
            combined = (torch.add(previous[1], tensor) if reduction == "sum" else
                        torch.maximum(previous[1], tensor) if reduction == "max" else torch.minimum(previous[1], tensor))
            self._epoch[name] = (reduction, combined, None, forked)

    def end_epoch(self) -> None:
        """Store each ``on_epoch`` value's reduction over the epoch that ends, and start the next epoch empty."""
        for name, (reduction, value, weight, forked) in self._epoch.items():
            if reduction == "metric":
                result = value.compute()
                value.reset()
            elif reduction == "mean":
                result = value / weight
            else:
                result = value
            self.metrics[name] = result
            if forked:
                self.metrics[f"{name}_epoch"] = result
        self._epoch = {}


def _as_tensor(name: str, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"`self.log({name!r}, value)` must be a scalar; received a tensor of shape"
                             f" {tuple(value.shape)}.")
        tensor = value.detach().squeeze()
        return tensor if tensor.is_floating_point() else tensor.to(torch.get_default_dtype())
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return torch.tensor(float(value))
    raise ValueError(f"`self.log({name!r}, value)` takes a number, a scalar tensor or a torchmetrics Metric;"
                     f" received {type(value).__name__}.")


def _step_value(name: str, value: Any) -> Tensor:
    if isinstance(value, Metric):
        cached = getattr(value, "_forward_cache", None)
        if cached is None:
            raise ValueError(f"`self.log({name!r}, metric, on_step=True)`: call the metric (its forward) before"
                             " logging it per step.")
        return _as_tensor(name, cached)
    return _as_tensor(name, value)
