"""Sharing the global model's evaluation among workers, in one process: the split, the sums, their reduction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchmetrics
from helpers import TinyModule
from torch.utils.data import DataLoader, TensorDataset

from lightning_fedmut.distributed.sharding import (
    ShardBatchSampler,
    reduce_metric_terms,
    shard_dataloaders,
    unshardable_reason,
)
from lightning_fedmut.execution import Evaluator


def _collate(batch):
    return torch.stack([x for x, _ in batch]) * 10, torch.stack([y for _, y in batch])


def test_shards_take_every_nth_batch_and_keep_the_loader_settings():
    data = TensorDataset(torch.arange(11.0).unsqueeze(1), torch.arange(11))
    loader = DataLoader(data, batch_size=3, collate_fn=_collate, drop_last=True)
    shards = [shard_dataloaders(loader, rank, 2) for rank in range(2)]
    assert [[y.tolist() for _, y in shard] for shard in shards] == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5]]]
    assert [x[0, 0].item() for x, _ in shards[1]] == [30.0]  # the user's collate_fn
    assert all(shard.batch_sampler.batch_sampler is loader.batch_sampler for shard in shards)
    assert list(ShardBatchSampler([[0], [1], [2]], rank=2, world_size=3)) == [[2]]


@pytest.mark.parametrize(("loader", "kwargs", "reason"), [
    (DataLoader(list(range(8)), batch_size=2, shuffle=True), {}, "a validation loader shuffles or has its own sampler"),
    (DataLoader(list(range(8)), batch_size=8), {}, "a validation loader has fewer batches (1) than workers (2)"),
    (DataLoader(list(range(8)), batch_size=2), {"limit_val_batches": 2}, "`limit_val_batches` is set"),
    ([DataLoader(list(range(8)), batch_size=2), type("Loader", (DataLoader,), {})(list(range(8)), batch_size=2)], {},
     "a validation loader is not a plain torch DataLoader"),
])
def test_what_cannot_be_split_is_named(loader, kwargs, reason):
    assert unshardable_reason(loader, 2, kwargs) == reason


def test_terms_are_added_in_batch_order_in_their_dtype():
    # in float32, 1 + 2**-24 + 2**-24 is 1 added left to right, and 1 + 2**-23 in the other order
    tiny = 2.0**-24
    parts = [{"m": ("sum", [(0, 1.0, "float32", 0), (2, tiny, "float32", 0)])}, {"m": ("sum", [(1, tiny, "float32", 0)])}]
    assert reduce_metric_terms(parts) == {"m": 1.0} == reduce_metric_terms(parts[::-1])
    first = [{"m": ("sum", [(2, 1.0, "float32", 0), (0, tiny, "float32", 0)])}, {"m": ("sum", [(1, tiny, "float32", 0)])}]
    assert reduce_metric_terms(first) == {"m": 1.0 + 2 * tiny}  # the small terms come first now
    means = [{"a": ("mean", [(0, 7.5, "float64", 3)]), "b": ("mean", [(0, 1.0, "float32", 3)])},
             {"a": ("mean", [(1, 1.25, "float64", 2)])}]
    assert reduce_metric_terms(means) == {"a": 8.75 / 5.0, "b": float(torch.tensor(1.0 / 3.0, dtype=torch.float32))}
    with pytest.raises(ValueError, match="Expected metric 'a' to be reduced by 'mean', 'sum' or 'states' on every worker"):
        reduce_metric_terms([{"a": ("mean", [(0, 1.0, "float64", 1)])}, {"a": ("sum", [(1, 1.0, "float64", 0)])}])


class Weighted(TinyModule):
    """Logs the per-example loss mean (weighted by the batch size) and the number of examples (a sum)."""

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))
        self.log("val_examples", float(len(y)), reduce_fx="sum")


class Maximum(TinyModule):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_worst", F.cross_entropy(self(x), y), reduce_fx="max")


class Metric(TinyModule):
    def __init__(self):
        super().__init__()
        self.accuracy = torchmetrics.classification.MulticlassAccuracy(num_classes=3)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.accuracy(self(x), y)
        self.log("val_acc", self.accuracy)


class FloatMetric(TinyModule):
    """A torchmetrics mean: a floating-point state, whose sum over workers depends on their order."""

    def __init__(self):
        super().__init__()
        self.mean_loss = torchmetrics.aggregation.MeanMetric()

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.mean_loss(F.cross_entropy(self(x), y))
        self.log("val_mean_loss", self.mean_loss)


class EpochEnd(TinyModule):
    def on_validation_epoch_end(self):
        self.log("val_epoch", 1.0)


def _float64_data(n=37, batch_size=8):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(n, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)
    return x, y, DataLoader(TensorDataset(x, y), batch_size=batch_size)


def test_terms_are_lightnings_and_their_replay_is_lightnings_value_bit_for_bit():
    torch.manual_seed(0)
    model = Weighted()
    x, y, loader = _float64_data()  # batches of 8, 8, 8, 8, 5
    loader = DataLoader(TensorDataset(x.float(), y), batch_size=8)
    expected = Evaluator().evaluate(model, loader)
    terms, reason = Evaluator().evaluate_terms(model, loader, batch_index=lambda i: 10 + i)
    with torch.no_grad():
        losses = [F.cross_entropy(model(bx), by) for bx, by in loader]
    assert reason is None and sorted(terms) == ["val_examples", "val_loss"]
    assert terms["val_loss"] == ("mean", [(10 + i, float(loss * len(by)), "float32", len(by))
                                          for i, (loss, (_, by)) in enumerate(zip(losses, loader))])
    assert terms["val_examples"] == ("sum", [(10 + i, float(n), "float32", 0) for i, n in enumerate([8, 8, 8, 8, 5])])
    # split between two workers (odd and even batches), the replay is Lightning's one-process value
    halves = [{k: (kind, [t for t in ts if t[0] % 2 == r]) for k, (kind, ts) in terms.items()} for r in (0, 1)]
    assert reduce_metric_terms(halves) == expected


@pytest.mark.parametrize(("module", "reason"), [
    (Maximum, "metric 'val_worst' is reduced with `reduce_fx=max`"),
    (FloatMetric, "metric 'val_mean_loss' is a torchmetrics object with the floating-point state 'mean_value',"
                  " whose sum over workers depends on their order"),
    (EpochEnd, "metric 'val_epoch' is logged in `on_validation_epoch_end`"),
])
def test_metrics_that_are_no_sum_are_named(module, reason):
    torch.manual_seed(0)
    _, _, loader = _float64_data()
    loader = DataLoader(TensorDataset(loader.dataset.tensors[0].float(), loader.dataset.tensors[1]), batch_size=8)
    assert Evaluator().evaluate_terms(module(), loader) == ({}, reason)


def test_a_torchmetrics_object_with_counts_is_merged_from_the_shares_into_one_processs_value():
    """Accuracy keeps integer counts: each share's states, summed, compute the one-process value exactly."""
    torch.manual_seed(0)
    model = Metric()
    _, _, loader = _float64_data(n=53, batch_size=8)  # 7 batches: 8 x 6 and 5
    loader = DataLoader(TensorDataset(loader.dataset.tensors[0].float(), loader.dataset.tensors[1]), batch_size=8)
    expected = Evaluator().evaluate(model, loader)["val_acc"]
    with torch.no_grad():  # by hand: torchmetrics' macro accuracy over the 53 examples, class by class
        pred, y = model(loader.dataset.tensors[0]).argmax(-1), loader.dataset.tensors[1]
    by_hand = sum(float(((pred == c) & (y == c)).sum()) / float((y == c).sum()) for c in range(3)) / 3
    assert expected == pytest.approx(by_hand, abs=1e-7)
    parts, objects = [], {}
    for rank in range(3):  # three workers: batches r, r + 3 ...
        evaluator = Evaluator()
        terms, reason = evaluator.evaluate_terms(model, shard_dataloaders(loader, rank, 3), lambda i, r=rank: r + 3 * i)
        assert reason is None and list(terms) == ["val_acc"] and terms["val_acc"][0] == "states"
        parts.append(terms)
        objects = evaluator.metric_objects
    # the states are the share's counts: true positives over the three shares add up to the whole data's
    tp = sum(int(p["val_acc"][1][0]["tp"].sum()) for p in parts)
    assert tp == int((pred == y).sum())
    assert reduce_metric_terms(parts, objects) == {"val_acc": expected}
    assert reduce_metric_terms(parts[::-1], objects) == {"val_acc": expected}  # any order: the sums are exact
    assert int(model.accuracy.tp.sum()) == 0  # the object is left reset
    with pytest.raises(ValueError, match="Expected the torchmetrics object of metric 'val_acc' in `objects`"):
        reduce_metric_terms(parts)
