"""Every baseline survives a crash: the resumed run ends bit for bit where the uninterrupted one does."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyModule, state_of
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedCallback, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.aggregators import FedAdagrad, FedAdam, FedAvgM, FedExP, FedExPReport, FedYogi
from lightning_fedmut.callbacks import FedMR, FedProx, Scaffold
from lightning_fedmut.data import partition_dirichlet
from lightning_fedmut.sampling import ClusteredSampler

METHODS = {
    "FedProx": lambda: {"callbacks": [FedProx(mu=0.1)]},
    "FedMut+FedProx": lambda: {"callbacks": [MutationCallback(radius=2.0), FedProx(mu=0.1)]},
    "SCAFFOLD": lambda: {"callbacks": [Scaffold()]},
    "FedAvgM": lambda: {"aggregator": FedAvgM(server_lr=1.0, momentum=0.9)},
    "FedAdagrad": lambda: {"aggregator": FedAdagrad(server_lr=0.05)},
    "FedAdam": lambda: {"aggregator": FedAdam(server_lr=0.05)},
    "FedMut+FedAdam": lambda: {"aggregator": FedAdam(server_lr=0.05), "callbacks": [MutationCallback(radius=2.0)]},
    "FedYogi": lambda: {"aggregator": FedYogi(server_lr=0.05)},
    "FedExP": lambda: {"aggregator": FedExP(), "callbacks": [FedExPReport()]},
    "ClusteredSampling": lambda: {"sampler": ClusteredSampler()},
    "FedMR": lambda: {"callbacks": [FedMR(first_stage_bound=1)]},
}


class Crash(FederatedCallback):
    def on_round_start(self, loop, module):
        if loop.round == 2:
            raise RuntimeError("crash at round 2")


def run(method, train, val, checkpoint_dir=None, crash=False, ckpt_path=None):
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True, momentum=0.5)
    plugins = METHODS[method]()
    plugins.setdefault("aggregator", FedAvg(weighted=False))
    plugins["callbacks"] = [*plugins.get("callbacks", []), *([Crash()] if crash else [])]
    parts = partition_dirichlet(train.tensors[1].numpy(), num_clients=8, alpha=0.5, min_size=8, seed=0)
    loop = FederatedLoop(rounds=4, clients_per_round=3, local_steps=2, seed=0, enable_progress_bar=False,
                         checkpoint_dir=checkpoint_dir, **plugins)
    result = loop.fit(model, make_clients(train, parts, batch_size=8), val_dataloaders=DataLoader(val, batch_size=60),
                      ckpt_path=ckpt_path)
    return model, result, loop


@pytest.mark.parametrize("method", list(METHODS))
def test_a_crashed_run_resumes_bit_for_bit(method, synthetic, tmp_path):
    train, val = synthetic
    model, result, loop = run(method, train, val)
    with pytest.raises(RuntimeError, match="crash at round 2"):
        run(method, train, val, checkpoint_dir=tmp_path, crash=True)
    resumed_model, resumed, resumed_loop = run(method, train, val, checkpoint_dir=tmp_path, ckpt_path="last")
    expected = state_of(model)
    assert all(torch.equal(v, expected[k]) for k, v in state_of(resumed_model).items())
    assert resumed.history == result.history
    assert resumed.client_history == result.client_history
    for cb, resumed_cb in zip(loop.callbacks, resumed_loop.callbacks):
        _assert_same(cb.state_dict(), resumed_cb.state_dict())
    _assert_same(loop.aggregator.state_dict(), resumed_loop.aggregator.state_dict())
    _assert_same(loop.client_states.state_dict(), resumed_loop.client_states.state_dict())


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b
