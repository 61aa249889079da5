"""A worker never holds the round's K trained models: what it keeps alive does not grow with K."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pytest
import torch
from helpers import TinyModule, make_synthetic
from torch import nn

from lightning_fedmut import FederatedLoop, make_clients
from lightning_fedmut.aggregators import FedAvg
from lightning_fedmut.data import partition_iid
from lightning_fedmut.distributed import DistributedExecutor

SHAPE = (29, 31)  # a weight shape no other tensor of the run has


class Wide(TinyModule):
    def __init__(self) -> None:
        super().__init__(features=8, classes=3, hidden=29)
        self.net = nn.Sequential(nn.Linear(8, 31), nn.ReLU(), nn.Linear(31, 29), nn.ReLU(), nn.Linear(29, 3))


class CountingFedAvg(FedAvg):
    """FedAvg that counts, at each update, the live tensors of ``SHAPE`` in this process (models it holds)."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out
        self.most = 0

    def update(self, result):
        gc.collect()
        live = sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and tuple(o.shape) == SHAPE)
        self.most = max(self.most, live)
        super().update(result)

    def compute(self, global_state):
        Path(self.out, f"{os.getpid()}.json").write_text(json.dumps(self.most))
        return super().compute(global_state)


def most_live_models(tmp_path: Path, k: int, exchange_mb: float = 0.0) -> list[int]:
    out = tmp_path / f"k{k}-{exchange_mb}"
    out.mkdir()
    train, _ = make_synthetic(n_train=20 * k)
    clients = make_clients(train, partition_iid(len(train), k, seed=0), batch_size=10)
    torch.manual_seed(0)
    loop = FederatedLoop(rounds=1, clients_per_round=k, local_steps=1, aggregator=CountingFedAvg(str(out)),
                         executor=DistributedExecutor(workers=2, exchange_mb=exchange_mb), enable_progress_bar=False,
                         seed=0)
    loop.fit(Wide(), clients)
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


@pytest.mark.slow
def test_live_models_per_worker_do_not_grow_with_clients_per_round(tmp_path: Path) -> None:
    # a model above `exchange_mb` (here any model: 0 MB) is exchanged one client per worker at a time
    small, large = most_live_models(tmp_path, 4), most_live_models(tmp_path, 12)
    assert len(small) == len(large) == 2  # both workers reported
    # the same few copies (global, working copy and its gradient, the aggregator's sum, one trained state and the
    # two gathered), whatever K; the all-gather of a whole round that came before held 13 at K=4 and 25 at K=12
    assert large == small
    assert max(large) <= 8


@pytest.mark.slow
def test_small_models_are_exchanged_once_a_round(tmp_path: Path) -> None:
    # this model is a few KB, far below the default 16 MB: a whole round's states travel in one exchange
    small, large = most_live_models(tmp_path, 4, 16.0), most_live_models(tmp_path, 12, 16.0)
    assert [b - a for a, b in zip(small, large)] == [8, 8]  # 8 more clients, 8 more states held at the exchange
