"""Two workers evaluate the global model together: each a share of the batches, the metrics as one process's."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyModule
from test_sharding import FloatMetric, Maximum, Metric
from torch.utils.data import DataLoader, TensorDataset

from lightning_fedmut import FedAvg, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.data import partition_dirichlet
from lightning_fedmut.distributed import DistributedExecutor

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="workers are forked; tested on Linux"),
              pytest.mark.slow]


class Recording(TinyModule):
    """Logs the loss mean (weighted by the batch size) and writes which process saw which batch size."""

    def __init__(self, log_file: str = ""):
        super().__init__(momentum=0.5)
        self.log_file = log_file

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("val_loss", loss)
        self.log("val_acc", (self(x).argmax(-1) == y).to(loss.dtype).mean())
        if self.log_file:
            with open(self.log_file, "a") as f:
                f.write(f"{os.getpid()} {len(y)}\n")


def _fit(synthetic, workers, module, val_batch=16, rounds=3, dtype=torch.float32):
    train, val = synthetic
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        train = TensorDataset(train.tensors[0].to(dtype), train.tensors[1])
        val = TensorDataset(val.tensors[0].to(dtype), val.tensors[1])
        clients = make_clients(train, partition_dirichlet(train.tensors[1].numpy(), 6, alpha=0.5, min_size=5, seed=0),
                               batch_size=16)
        torch.manual_seed(0)
        model = module()
        executor = None if workers is None else DistributedExecutor(workers=workers, timeout=60.0)
        loop = FederatedLoop(rounds=rounds, clients_per_round=4, local_epochs=1, aggregator=FedAvg(weighted=False),
                             callbacks=[MutationCallback(radius=2.0)], seed=7, enable_progress_bar=False,
                             executor=executor)
        result = loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=val_batch))
    finally:
        torch.set_default_dtype(previous)
    return model, result, executor


def _val(result):
    return [{k: v for k, v in row.items() if k.startswith("val_")} for row in result.history]


def test_each_worker_evaluates_its_share_and_the_mean_is_one_processs(synthetic, tmp_path):
    """float64 (Lightning's running sums too): the metrics are one process's, and the mean over the examples."""
    log_file = tmp_path / "batches.txt"
    model_1, one, _ = _fit(synthetic, None, Recording, dtype=torch.float64)
    model_2, two, executor = _fit(synthetic, 2, lambda: Recording(str(log_file)), dtype=torch.float64)
    assert executor.evaluation_fallback is None
    # 60 examples in batches of 16: 16, 16, 16, 12 (an uneven last batch); rank 0 has batches 0 and 2
    seen: dict[str, list[int]] = {}
    for line in log_file.read_text().split("\n")[:-1]:
        pid, size = line.split()
        seen.setdefault(pid, []).append(int(size))
    assert sorted(seen[str(os.getpid())]) == [16, 16] * 3
    (other,) = set(seen) - {str(os.getpid())}
    assert sorted(seen[other]) == [12] * 3 + [16] * 3
    # the models and the metrics are the same bit for bit
    assert all(torch.equal(a, b) for a, b in zip(model_1.state_dict().values(), model_2.state_dict().values()))
    val_1, val_2 = _val(one), _val(two)
    assert [sorted(r) for r in val_2] == [["val_acc", "val_loss"]] * 3 and val_1 == val_2
    # and the loss is the batch-size-weighted mean: the mean over the 60 examples, by hand in float64
    x, y = synthetic[1].tensors
    with torch.no_grad():
        by_hand = F.cross_entropy(model_1(x.double()), y, reduction="none").tolist()
    assert math.isclose(val_2[-1]["val_loss"], math.fsum(by_hand) / 60, rel_tol=1e-12)
    assert [set(t) >= {"train", "exchange", "evaluate", "evaluate_exchange", "total"} for t in executor.rank_times] == [
        True, True]


def test_history_with_two_workers_equals_one_process(synthetic):
    """float32, as the digests run: the terms are added in Lightning's order and dtype, so the history is equal."""
    _, one, _ = _fit(synthetic, None, TinyModule, val_batch=8)
    _, two, executor = _fit(synthetic, 2, TinyModule, val_batch=8)
    assert executor.evaluation_fallback is None and executor.rank_times[1]["evaluate"] > 0
    assert one.history == two.history and one.client_history == two.client_history


def test_a_torchmetrics_accuracy_is_shared_and_equals_one_process(synthetic):
    """The accuracy object's counts of both workers, merged, give the one-process history bit for bit."""
    _, one, _ = _fit(synthetic, None, Metric, val_batch=8)
    _, two, executor = _fit(synthetic, 2, Metric, val_batch=8)
    assert executor.evaluation_fallback is None and executor.rank_times[1]["evaluate"] > 0
    assert [sorted(k for k in row if k.startswith("val_")) for row in two.history] == [["val_acc"]] * 3
    assert one.history == two.history and one.client_history == two.client_history


@pytest.mark.parametrize(("module", "reason"), [
    (Maximum, "metric 'val_worst' is reduced with `reduce_fx=max`"),
    (FloatMetric, "metric 'val_mean_loss' is a torchmetrics object with the floating-point state 'mean_value', whose"
                  " sum over workers depends on their order")])
def test_metrics_that_are_no_sum_fall_back_to_rank_0(synthetic, module, reason):
    _, one, _ = _fit(synthetic, None, module)
    _, two, executor = _fit(synthetic, 2, module)
    assert executor.evaluation_fallback == reason
    assert one.history == two.history


def test_data_that_cannot_be_split_is_evaluated_by_rank_0(synthetic):
    _, one, _ = _fit(synthetic, None, TinyModule, val_batch=60)
    _, two, executor = _fit(synthetic, 2, TinyModule, val_batch=60)
    assert executor.evaluation_fallback == "a validation loader has fewer batches (1) than workers (2)"
    assert one.history == two.history
