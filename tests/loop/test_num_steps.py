"""``ClientResult.num_steps`` is the client's real optimizer step count, in one process and with two workers."""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TinyModule

from lightning_fedmut import FederatedLoop, make_clients
from lightning_fedmut.aggregators import FedAvg

distributed = pytest.importorskip("lightning_fedmut.distributed")
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="workers are forked; tested on Linux")

SIZES = (13, 40, 60)  # 2, 5 and 8 batches of 8
BATCH = 8


class StepRecorder(FedAvg):
    """FedAvg that records, in the process that aggregates, every result's (client id, num_steps)."""

    def __init__(self) -> None:
        super().__init__(weighted=True)
        self.seen: list[tuple[int, int | None]] = []

    def update(self, result) -> None:
        self.seen.append((result.client.id, result.num_steps))
        super().update(result)


class ManualEveryOther(TinyModule):
    """Manual optimization that steps on even batch indices only."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        if batch_idx % 2 == 0:
            opt.step()
        return loss


def clients(synthetic):
    train, _ = synthetic
    starts = np.cumsum((0, *SIZES))
    parts = [np.arange(a, b) for a, b in itertools.pairwise(starts)]
    return make_clients(train, parts, batch_size=BATCH)


def steps_of(synthetic, workers=None, module=None, rounds=1, **loop_args):
    torch.manual_seed(0)
    agg = StepRecorder()
    executor = None if workers is None else distributed.DistributedExecutor(workers=workers, timeout=60.0)
    loop = FederatedLoop(rounds=rounds, clients_per_round=len(SIZES), aggregator=agg, seed=0,
                         enable_progress_bar=False, executor=executor, **loop_args)
    loop.fit(module or TinyModule(), clients(synthetic))
    return dict(agg.seen[-len(SIZES):]) if rounds == 1 else agg.seen


def batches(n):
    return math.ceil(n / BATCH)


WORKERS = [None, pytest.param(2, marks=[linux_only, pytest.mark.slow])]


@pytest.mark.parametrize("workers", WORKERS)
def test_num_steps_is_batches_times_epochs(synthetic, workers):
    got = steps_of(synthetic, workers, local_epochs=3)
    assert got == {i: batches(n) * 3 for i, n in enumerate(SIZES)} == {0: 6, 1: 15, 2: 24}


@pytest.mark.parametrize("workers", WORKERS)
def test_num_steps_with_gradient_accumulation_rounds_each_epoch_up(synthetic, workers):
    got = steps_of(synthetic, workers, local_epochs=2, trainer_kwargs={"accumulate_grad_batches": 2})
    # Lightning steps on the last batch of an epoch even when the window is not full: ceil(batches / 2) an epoch
    assert got == {i: math.ceil(batches(n) / 2) * 2 for i, n in enumerate(SIZES)} == {0: 2, 1: 6, 2: 8}


@pytest.mark.parametrize("workers", WORKERS)
def test_num_steps_is_local_steps_when_set(synthetic, workers):
    assert steps_of(synthetic, workers, local_steps=7) == {0: 7, 1: 7, 2: 7}


def test_num_steps_counts_manual_optimizer_steps(synthetic):
    got = steps_of(synthetic, module=ManualEveryOther(), local_epochs=2)
    assert got == {i: math.ceil(batches(n) / 2) * 2 for i, n in enumerate(SIZES)} == {0: 2, 1: 6, 2: 8}


def test_num_steps_every_round(synthetic):
    seen = steps_of(synthetic, rounds=2, local_epochs=1)
    assert sorted(seen) == sorted([(i, batches(n)) for i, n in enumerate(SIZES)] * 2)
