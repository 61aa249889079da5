"""The global model's evaluation shared by the workers: each evaluates a share of the validation batches.

Rank ``r`` of ``N`` takes batches ``r, r + N, r + 2N ...`` of every validation loader, a deterministic split that
keeps the user's ``DataLoader`` settings (workers, collate function, pinning ...). Each rank returns, per metric,
the term each of its batches added to Lightning's running sum (for a batch-size-weighted mean, the batch's value
times its size) and the batch size; :func:`reduce_metric_terms` adds all the terms in the order of the batches,
in the running sum's dtype, as one process does: the metrics equal the one-process values bit for bit. A
torchmetrics object with integer states (the classification metrics' counts) sends its states instead: their
sum is exact in any order, and the object computes the one-process value from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Sampler, SequentialSampler
from torchmetrics import Metric

__all__ = ["ShardBatchSampler", "reduce_metric_terms", "shard_dataloaders", "unshardable_reason"]

#: The DataLoader arguments a shard keeps from the user's loader (besides the data set).
_LOADER_SETTINGS = ("num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn",
                    "multiprocessing_context", "generator", "prefetch_factor", "persistent_workers",
                    "pin_memory_device", "in_order")


class ShardBatchSampler(Sampler[list[int]]):
    """The batches ``rank, rank + world_size, ...`` of ``batch_sampler``, each batch as it is.

    Examples:
        >>> batches = BatchSampler(SequentialSampler(range(7)), batch_size=2, drop_last=False)
        >>> list(ShardBatchSampler(batches, rank=0, world_size=2)), list(ShardBatchSampler(batches, 1, 2))
        ([[0, 1], [4, 5]], [[2, 3], [6]])
        >>> len(ShardBatchSampler(batches, rank=1, world_size=2))
        2
    """

    def __init__(self, batch_sampler: Any, rank: int, world_size: int) -> None:
        self.batch_sampler = batch_sampler
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.batch_sampler):
            if i % self.world_size == self.rank:
                yield batch

    def __len__(self) -> int:
        return len(range(self.rank, len(self.batch_sampler), self.world_size))


def unshardable_reason(dataloaders: Any, world_size: int, trainer_kwargs: dict[str, Any]) -> str | None:
    """Why the evaluation of ``dataloaders`` cannot be shared by ``world_size`` workers, or ``None`` if it can.

    Shared: plain ``DataLoader`` objects over a map-style data set, batched in order (no shuffling, no custom
    sampler), each with at least ``world_size`` batches, and no ``limit_val_batches`` in ``trainer_kwargs``.

    Examples:
        >>> data = list(range(10))
        >>> unshardable_reason(DataLoader(data, batch_size=4), 2, {}) is None
        True
        >>> unshardable_reason(DataLoader(data, batch_size=10), 2, {})
        'a validation loader has fewer batches (1) than workers (2)'
        >>> unshardable_reason(DataLoader(data, batch_size=2, shuffle=True), 2, {})
        'a validation loader shuffles or has its own sampler'
    """
    if "limit_val_batches" in trainer_kwargs:
        return "`limit_val_batches` is set"
    loaders = dataloaders if isinstance(dataloaders, Sequence) else [dataloaders]
    for loader in loaders:
        if type(loader) is not DataLoader:
            return "a validation loader is not a plain torch DataLoader"
        if type(loader.batch_sampler) is not BatchSampler or type(loader.batch_sampler.sampler) is not SequentialSampler:
            return "a validation loader shuffles or has its own sampler"
        if len(loader.batch_sampler) < world_size:
            return f"a validation loader has fewer batches ({len(loader.batch_sampler)}) than workers ({world_size})"
    return None


def shard_dataloaders(dataloaders: Any, rank: int, world_size: int) -> Any:
    """Rank ``rank``'s share of ``dataloaders`` (one loader or a list, as given): see :class:`ShardBatchSampler`.

    Examples:
        >>> loader = DataLoader(list(range(5)), batch_size=2)
        >>> [b.tolist() for b in shard_dataloaders(loader, rank=1, world_size=2)]
        [[2, 3]]
        >>> [[b.tolist() for b in dl] for dl in shard_dataloaders([loader, loader], rank=0, world_size=2)]
        [[[0, 1], [4]], [[0, 1], [4]]]
    """
    if isinstance(dataloaders, Sequence):
        return [shard_dataloaders(loader, rank, world_size) for loader in dataloaders]
    settings = {name: getattr(dataloaders, name) for name in _LOADER_SETTINGS if hasattr(dataloaders, name)}
    if not settings.get("num_workers"):
        settings.pop("prefetch_factor", None)
        settings.pop("persistent_workers", None)
    return DataLoader(dataloaders.dataset, batch_sampler=ShardBatchSampler(dataloaders.batch_sampler, rank, world_size),
                      **settings)


def reduce_metric_terms(parts: list[dict[str, tuple[str, list[Any]]]],
                        objects: Mapping[str, Metric] | None = None) -> dict[str, float]:
    """The metrics of the workers' ``parts``, each mapping a metric to ``(reduce, terms)``, as one process has them.

    A term is ``(batch, value, dtype, count)``: what Lightning added to the metric's running sum for that batch of
    the whole data. The terms of every worker are added in batch order, in their dtype, starting from zero, as
    Lightning's ``_ResultMetric`` does; ``"mean"`` then divides by the summed counts (the number of examples),
    ``"sum"`` does not. A worker whose share never logged a metric sends no terms for it.

    A torchmetrics object's entry is ``("states", [states])``: each worker's integer state tensors (see
    :func:`~lightning_fedmut.execution.evaluation.states_reason`). ``objects[name]``, this worker's object, is
    reset, given every worker's states (``Metric.merge_state``: exact sums of counts) and computed, as the one
    process's object computes from the states of all batches; it is left reset.

    Examples:
        >>> parts = [{"loss": ("mean", [(0, 4.0, "float32", 2), (2, 3.0, "float32", 1)])},
        ...          {"loss": ("mean", [(1, 1.0, "float32", 2)])}]
        >>> reduce_metric_terms(parts)
        {'loss': 1.600000023841858}
        >>> reduce_metric_terms([{"n": ("sum", [(1, 2.0, "float64", 0)])}, {"n": ("sum", [(0, 3.0, "float64", 0)])}])
        {'n': 5.0}
    """
    out: dict[str, float] = {}
    for name in dict.fromkeys(name for part in parts for name in part):
        entries = [part[name] for part in parts if name in part]
        kinds = {kind for kind, _ in entries}
        if kinds == {"states"}:
            if objects is None or name not in objects:
                raise ValueError(f"Expected the torchmetrics object of metric {name!r} in `objects`, got"
                                 f" {sorted(objects or {})}.")
            out[name] = _merged_value(objects[name], [states for _, (states,) in entries])
            continue
        if len(kinds) != 1 or next(iter(kinds)) not in ("mean", "sum"):
            raise ValueError(f"Expected metric {name!r} to be reduced by 'mean', 'sum' or 'states' on every worker, got"
                             f" {sorted(kinds)}.")
        terms = sorted((term for _, ts in entries for term in ts), key=lambda term: term[0])
        total = torch.tensor(0.0, dtype=getattr(torch, terms[0][2]))
        count = torch.tensor(0)
        for _, value, dtype, n in terms:  # Lightning's `self.value = self.value + value * batch_size`, replayed
            total = total + torch.tensor(value, dtype=getattr(torch, dtype))
            count = count + n
        out[name] = float(total / count if entries[0][0] == "mean" else total)
    return out


def _merged_value(metric: Metric, states: list[dict[str, Tensor]]) -> float:
    """``metric`` computed from the sum of the workers' ``states``; the object is left reset.

    Examples:
        >>> from torchmetrics.classification import MulticlassAccuracy
        >>> acc = MulticlassAccuracy(num_classes=2, average="micro")
        >>> acc.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
        >>> first = {k: v.clone() for k, v in acc.metric_state.items()}
        >>> acc.reset(); acc.update(torch.tensor([1]), torch.tensor([1]))
        >>> _merged_value(acc, [first, acc.metric_state])  # 2 of 3 right, as one object over the three examples
        0.6666666865348816
    """
    incoming = [{k: v.to(metric.device) for k, v in part.items()} for part in states]
    metric.reset()
    for part in incoming:
        metric.merge_state(part)
    # the class's compute, not the wrapped one: the states are already every worker's, nothing is to be synced
    value = type(metric).compute(metric)
    metric.reset()
    return float(value)
