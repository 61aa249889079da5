"""Evaluating a module on data with a short-lived, quiet Trainer: for the loop and for analysis code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from lightning_fedmut.execution._calls import interruptible, merged_scalars
from lightning_fedmut.utilities.trainer import QUIET_TRAINER_DEFAULTS, quiet_lightning

__all__ = ["Evaluator", "MetricSums", "evaluate"]

#: What :meth:`Evaluator.evaluate_sums` returns per metric: ``(reduce, sum, count, dtype)``.
MetricSum = tuple[str, float, float, str]

#: Evaluation Trainers are as quiet as client ones but do validate.
EVAL_TRAINER_DEFAULTS = {k: v for k, v in QUIET_TRAINER_DEFAULTS.items() if k != "limit_val_batches"}


class Evaluator:
    """Runs ``Trainer.validate`` on a module and returns its logged metrics as floats.

    One Trainer per call, as quiet as the client ones (no logger, checkpointing, progress bar or model
    summary unless ``trainer_kwargs`` asks). The entry-point scan of ``Trainer.__init__`` is done once per
    evaluator.

    Args:
        trainer_kwargs: passed to the Trainer (accelerator, precision ...); they win over the quiet defaults.
        prepare_data: whether each evaluation calls the module's ``prepare_data``, as ``Trainer.validate`` does.
            The federated loop's evaluator does not: the loop calls it once per ``fit``.

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> class Model(LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = torch.nn.Linear(1, 1)
        ...     def validation_step(self, batch, batch_idx):
        ...         self.log("val_mean", self.layer(batch[0]).mean())
        >>> model = Model()
        >>> _ = torch.nn.init.zeros_(model.layer.weight), torch.nn.init.constant_(model.layer.bias, 2.0)
        >>> Evaluator().evaluate(model, DataLoader(TensorDataset(torch.ones(4, 1)), batch_size=2))
        {'val_mean': 2.0}
    """

    def __init__(self, trainer_kwargs: dict[str, Any] | None = None, prepare_data: bool = True) -> None:
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.prepare_data = prepare_data
        self._entry_points: dict[str, list[Any]] = {}

    def evaluate(self, module: LightningModule, dataloaders: DataLoader | Sequence[DataLoader]) -> dict[str, float]:
        """Validate ``module`` on ``dataloaders``; the metrics of several loaders are merged into one dict."""
        with quiet_lightning(self._entry_points, prepare_data=self.prepare_data):
            trainer = Trainer(**{**EVAL_TRAINER_DEFAULTS, **self.trainer_kwargs})
            results = interruptible(trainer, trainer.validate, module, dataloaders=dataloaders, verbose=False)
        return merged_scalars(results)

    def evaluate_sums(self, module: LightningModule, dataloaders: DataLoader | Sequence[DataLoader]
                      ) -> tuple[dict[str, MetricSum], str | None]:
        """Validate ``module`` on ``dataloaders`` and return each metric's sum and count instead of its value.

        What a worker that evaluates a share of the data sends (see
        :func:`~lightning_fedmut.distributed.sharding.reduce_metric_sums`). Returns ``(sums, reason)``: ``reason``
        names a metric that cannot be combined from sums (see :class:`MetricSums`), else ``None``.
        """
        recorder = MetricSums()
        kwargs = {**EVAL_TRAINER_DEFAULTS, **self.trainer_kwargs}
        user = kwargs.get("callbacks") or []
        kwargs["callbacks"] = [*([user] if isinstance(user, Callback) else user), recorder]
        with quiet_lightning(self._entry_points, prepare_data=self.prepare_data):
            trainer = Trainer(**kwargs)
            results = interruptible(trainer, trainer.validate, module, dataloaders=dataloaders, verbose=False)
        return recorder.sums(merged_scalars(results))


class MetricSums(Callback):
    """Records, at the end of a validation, the sum and count Lightning accumulated behind each logged metric.

    Combinable across workers: a tensor logged in ``validation_step`` and reduced by ``"mean"`` (Lightning weights
    it by the batch size: its sum is the weighted sum, its count the number of examples) or by ``"sum"``. Not: a
    torchmetrics object, a metric logged in an epoch-end hook (it would be computed from one worker's share), any
    other ``reduce_fx`` (``"max"``, ``"min"``, a function). Lightning clears its accumulators when the validation
    ends, so they are read in ``on_validation_end``, its last hook.
    """

    def __init__(self) -> None:
        self.recorded: dict[str, MetricSum | str] = {}  # each metric's sum, or why it has none

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        collection = trainer.validate_loop._results
        for metric in collection.values():
            if metric.has_reset:
                continue
            name = collection._forked_name(metric, False)[1]
            hook = metric.meta.fx.split(".")[0]
            if not metric.is_tensor:
                self.recorded[name] = f"metric {name!r} is a torchmetrics object"
            elif hook != "validation_step":
                self.recorded[name] = f"metric {name!r} is logged in `{hook}`"
            elif metric.meta.is_mean_reduction:
                self.recorded[name] = ("mean", float(metric.value), float(metric.cumulated_batch_size),
                                       str(metric.value.dtype).removeprefix("torch."))
            elif metric.meta.is_sum_reduction:
                self.recorded[name] = ("sum", float(metric.value), 0.0, str(metric.value.dtype).removeprefix("torch."))
            else:
                reduce = getattr(metric.meta.reduce_fx, "__name__", metric.meta.reduce_fx)
                self.recorded[name] = f"metric {name!r} is reduced with `reduce_fx={reduce}`"

    def sums(self, returned: dict[str, float]) -> tuple[dict[str, MetricSum], str | None]:
        """The sums behind the metrics ``returned`` by ``Trainer.validate``, or why one has none."""
        sums: dict[str, MetricSum] = {}
        for name in returned:
            entry = self.recorded.get(name, f"metric {name!r} is not one Lightning accumulated")
            if isinstance(entry, str):
                return {}, entry
            sums[name] = entry
        return sums, None


def evaluate(
    module: LightningModule, dataloaders: DataLoader | Sequence[DataLoader], trainer_kwargs: dict[str, Any] | None = None
) -> dict[str, float]:
    """Validate ``module`` on ``dataloaders`` once; see :class:`Evaluator`."""
    return Evaluator(trainer_kwargs).evaluate(module, dataloaders)
