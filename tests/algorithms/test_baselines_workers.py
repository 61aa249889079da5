"""The baselines that accumulate over clients give, with two worker processes, exactly what one process gives."""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import TinyModule, state_of
from test_baselines_resume import METHODS
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedLoop, make_clients
from lightning_fedmut.data import partition_dirichlet

distributed = pytest.importorskip("lightning_fedmut.distributed")
pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="workers are forked; tested on Linux"),
              pytest.mark.slow]


def run(method, synthetic, workers):
    train, val = synthetic
    parts = partition_dirichlet(train.tensors[1].numpy(), num_clients=8, alpha=0.5, min_size=8, seed=0)
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True, momentum=0.5)
    plugins = METHODS[method]()
    plugins.setdefault("aggregator", FedAvg(weighted=False))
    executor = None if workers is None else distributed.DistributedExecutor(workers=workers, timeout=60.0)
    loop = FederatedLoop(rounds=3, clients_per_round=3, local_steps=2, seed=0, enable_progress_bar=False,
                         executor=executor, **plugins)
    result = loop.fit(model, make_clients(train, parts, batch_size=8), val_dataloaders=DataLoader(val, batch_size=60))
    return state_of(model), result


@pytest.mark.parametrize("method", ["FedMut+FedProx", "SCAFFOLD", "FedExP", "ClusteredSampling", "FedMR"])
def test_two_workers_equal_one_process_bit_for_bit(method, synthetic):
    (one, one_result), (two, two_result) = run(method, synthetic, None), run(method, synthetic, 2)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert one_result.history == two_result.history  # the methods' own figures included
    assert one_result.client_history == two_result.client_history
