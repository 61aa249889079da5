"""Evaluating a module on data with a short-lived, quiet Trainer: for the loop and for analysis code."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader
from torchmetrics import Metric

from lightning_fedmut.execution._calls import interruptible, merged_scalars
from lightning_fedmut.utilities.trainer import QUIET_TRAINER_DEFAULTS, quiet_lightning

__all__ = ["BatchTerms", "Evaluator", "evaluate", "states_reason"]

#: What :meth:`Evaluator.evaluate_terms` returns per metric: its reduction (``"mean"`` or ``"sum"``) and its terms,
#: one ``(batch, term, dtype, count)`` per batch of the data: the value Lightning added to its running sum
#: (for a mean, the batch's value times its size), the sum's dtype and the batch size. For a torchmetrics object,
#: ``("states", [states])``: the object's state tensors after the share's batches (CPU copies).
MetricTerms = tuple[str, list[Any]]

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
        #: The torchmetrics objects behind the ``"states"`` terms of the last :meth:`evaluate_terms`, by metric
        #: name: :func:`~lightning_fedmut.distributed.sharding.reduce_metric_terms` computes them from the
        #: workers' merged states.
        self.metric_objects: dict[str, Metric] = {}

    def evaluate(self, module: LightningModule, dataloaders: DataLoader | Sequence[DataLoader]) -> dict[str, float]:
        """Validate ``module`` on ``dataloaders``; the metrics of several loaders are merged into one dict."""
        with quiet_lightning(self._entry_points, prepare_data=self.prepare_data):
            trainer = Trainer(**{**EVAL_TRAINER_DEFAULTS, **self.trainer_kwargs})
            results = interruptible(trainer, trainer.validate, module, dataloaders=dataloaders, verbose=False)
        return merged_scalars(results)

    def evaluate_terms(self, module: LightningModule, dataloaders: DataLoader | Sequence[DataLoader],
                       batch_index: Callable[[int], int] = lambda i: i) -> tuple[dict[str, MetricTerms], str | None]:
        """Validate ``module`` on ``dataloaders`` and return, per metric, the terms of Lightning's running sum.

        What a worker that evaluates a share of the data sends (see
        :func:`~lightning_fedmut.distributed.sharding.reduce_metric_terms`); ``batch_index`` maps a batch's index
        in the share to its index in the whole data. Returns ``(terms, reason)``: ``reason`` names a metric that
        cannot be combined from terms (see ``BatchTerms`` in this module), else ``None``. The evaluation Trainer's own
        metrics are not meaningful here: its running sums are emptied after every batch.
        """
        recorder = BatchTerms(batch_index)
        kwargs = {**EVAL_TRAINER_DEFAULTS, **self.trainer_kwargs}
        user = kwargs.get("callbacks") or []
        kwargs["callbacks"] = [*([user] if isinstance(user, Callback) else user), recorder]
        with quiet_lightning(self._entry_points, prepare_data=self.prepare_data):
            trainer = Trainer(**kwargs)
            results = interruptible(trainer, trainer.validate, module, dataloaders=dataloaders, verbose=False)
        self.metric_objects = recorder.objects
        return recorder.terms(merged_scalars(results))


class BatchTerms(Callback):
    """Records, batch by batch, what Lightning adds to the running sum behind each logged metric.

    After each validation batch it reads every running sum (which then holds that batch's term alone, exactly)
    and empties it. Replaying the terms of all batches in their order
    (:func:`~lightning_fedmut.distributed.sharding.reduce_metric_terms`) gives Lightning's one-process value bit
    for bit, whoever evaluated which batch.

    Recorded: a tensor logged in ``validation_step`` and reduced by ``"mean"`` (Lightning weights it by the batch
    size) or ``"sum"``; a torchmetrics object logged in ``validation_step`` whose states are integer tensors (counts,
    as the classification metrics keep): its states after the last batch, which add up exactly in any order, so
    the object computes one process's value from the workers' merged states. Named as not combinable: a
    torchmetrics object with a floating-point or list state (their sum or concatenation over workers would
    not equal one process's bit for bit) or with ``full_state_update``, a metric logged in an epoch-end hook (it
    would be computed from one worker's share), any other ``reduce_fx`` (``"max"``, ``"min"``, a function).

    Args:
        batch_index: maps a batch's index among those this Trainer sees to its index in the whole data.
    """

    def __init__(self, batch_index: Callable[[int], int] = lambda i: i) -> None:
        self.batch_index = batch_index
        self.recorded: dict[str, MetricTerms] = {}
        self.reasons: dict[str, str] = {}  # why a metric has no terms
        self.objects: dict[str, Metric] = {}  # the torchmetrics objects recorded as states

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._read(trainer, self.batch_index(batch_idx))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._read(trainer, None)  # what the epoch-end hooks logged: named, never combined

    def _read(self, trainer: Trainer, batch: int | None) -> None:
        collection = trainer.validate_loop._results
        for metric in collection.values():
            name = collection._forked_name(metric, False)[1]
            hook = metric.meta.fx.split(".")[0]
            if metric.has_reset or name in self.reasons:
                continue
            if hook != "validation_step":
                self.reasons[name] = f"metric {name!r} is logged in `{hook}`"
            elif not metric.is_tensor:
                if batch is None:  # after the last batch: the object's states, which the workers' add up
                    self._read_states(name, metric.value)
            elif batch is None:
                continue
            elif not (metric.meta.is_mean_reduction or metric.meta.is_sum_reduction):
                reduce = getattr(metric.meta.reduce_fx, "__name__", metric.meta.reduce_fx)
                self.reasons[name] = f"metric {name!r} is reduced with `reduce_fx={reduce}`"
            else:
                mean = metric.meta.is_mean_reduction
                count = int(metric.cumulated_batch_size) if mean else 0
                term = (batch, float(metric.value), str(metric.value.dtype).removeprefix("torch."), count)
                self.recorded.setdefault(name, ("mean" if mean else "sum", []))[1].append(term)
                metric.value = torch.zeros_like(metric.value)  # the next batch's term alone, exactly
                if mean:
                    metric.cumulated_batch_size = torch.zeros_like(metric.cumulated_batch_size)

    def _read_states(self, name: str, metric: Metric) -> None:
        reason = states_reason(metric)
        if reason is not None:
            self.reasons[name] = f"metric {name!r} is a torchmetrics object {reason}"
            return
        states = {k: v.detach().cpu().clone() for k, v in metric.metric_state.items() if isinstance(v, torch.Tensor)}
        self.recorded[name] = ("states", [states])
        self.objects[name] = metric

    def terms(self, returned: dict[str, float]) -> tuple[dict[str, MetricTerms], str | None]:
        """The terms behind the metrics ``returned`` by ``Trainer.validate``, or why one has none."""
        for name in returned:
            if name in self.reasons:
                return {}, self.reasons[name]
            if name not in self.recorded:
                return {}, f"metric {name!r} is not one Lightning accumulated"
        return {name: self.recorded[name] for name in returned}, None


def evaluate(
    module: LightningModule, dataloaders: DataLoader | Sequence[DataLoader], trainer_kwargs: dict[str, Any] | None = None
) -> dict[str, float]:
    """Validate ``module`` on ``dataloaders`` once; see :class:`Evaluator`."""
    return Evaluator(trainer_kwargs).evaluate(module, dataloaders)


def states_reason(metric: Metric) -> str | None:
    """Why the states of ``metric`` from several workers cannot be merged into one process's, or ``None``.

    Merged: integer (or boolean) tensor states, added (or maxed, minned) exactly in any order, of a metric whose
    update does not need the whole state (``full_state_update=False``, what ``Metric.merge_state`` requires).

    Examples:
        >>> from torchmetrics.aggregation import MeanMetric
        >>> from torchmetrics.classification import MulticlassAccuracy
        >>> states_reason(MulticlassAccuracy(num_classes=3)) is None
        True
        >>> states_reason(MeanMetric())
        "with the floating-point state 'mean_value', whose sum over workers depends on their order"
    """
    if metric.full_state_update is not False or metric.dist_sync_on_step:
        return "that needs its full state to update (`full_state_update`)"
    for key, value in metric.metric_state.items():
        if not isinstance(value, torch.Tensor):
            return f"with the list state {key!r}, which workers would concatenate out of order"
        if value.is_floating_point() or value.is_complex():
            return f"with the floating-point state {key!r}, whose sum over workers depends on their order"
    return None
