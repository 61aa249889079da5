"""Frozen parameters (``requires_grad=False``) are neither averaged, stepped, mutated nor recombined by any method."""

from __future__ import annotations

import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
from helpers import TinyModule, make_result
from torch import nn
from torch.utils.data import TensorDataset

from lightning_fedmut import FedAvg, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.aggregators import Aggregator, FedAdam
from lightning_fedmut.callbacks import FedMR, FedProx, Scaffold
from lightning_fedmut.data import partition_dirichlet
from lightning_fedmut.functional import floating_keys, frozen_keys
from lightning_fedmut.sampling import UniformSampler


class FrozenFirstLayer(TinyModule):
    """The MLP with its first layer frozen, as a pretrained feature extractor is."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.net[0].requires_grad_(False)


class FrozenEmbedding(TinyModule):
    """Token ids through a frozen embedding, then the MLP: a frozen lookup table ahead of trainable layers."""

    def __init__(self):
        super().__init__(features=4, classes=3, hidden=8)
        self.embed = nn.Embedding(16, 4)
        self.embed.weight.requires_grad_(False)

    def forward(self, x):
        return self.net(self.embed(x).mean(dim=1))


def _token_data(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = (y[:, None] * 5 + torch.randint(0, 6, (n, 5), generator=g)) % 16
    return TensorDataset(x, y)


METHODS = {
    "fedavg_weighted": lambda: (FedAvg(weighted=True), []),
    "fedavg_uniform": lambda: (FedAvg(weighted=False), []),
    "fedmut_weighted": lambda: (FedAvg(weighted=True), [MutationCallback(radius=8.0, acceleration=0.5)]),
    "fedadam": lambda: (FedAdam(server_lr=0.01), []),
    "scaffold": lambda: (FedAvg(weighted=True), [Scaffold()]),
    "fedprox": lambda: (FedAvg(weighted=True), [FedProx(mu=0.01)]),
    "fedmr": lambda: (FedAvg(weighted=True), [FedMR()]),
}


def _fit(model, train, method, rounds=6, k=5):
    aggregator, callbacks = METHODS[method]()
    parts = partition_dirichlet(train.tensors[1].numpy(), 10, alpha=0.5, min_size=5, seed=0)
    clients = make_clients(train, parts, batch_size=8)
    assert len({len(p) for p in parts}) > 3  # unequal client sizes: the weighted mean has unequal weights
    loop = FederatedLoop(rounds=rounds, clients_per_round=k, local_steps=3, aggregator=aggregator,
                         callbacks=callbacks, enable_progress_bar=False, seed=0, divergence=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "MutationCallback runs with an example-weighted aggregator")
        loop.fit(model, clients)
    return loop


@pytest.mark.parametrize("method", list(METHODS))
def test_a_frozen_layer_stands_bit_for_bit_whatever_the_method(synthetic, method):
    train, _ = synthetic
    torch.manual_seed(0)
    model = FrozenFirstLayer(lr=0.1, momentum=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _fit(model, train, method)
    after = model.state_dict()
    for key in ("net.0.weight", "net.0.bias"):
        assert torch.equal(after[key], before[key]), f"{method} moved the frozen {key}"
    for key in ("net.2.weight", "net.2.bias"):
        assert not torch.equal(after[key], before[key]), f"{method} did not train {key}"


@pytest.mark.parametrize("method", ["fedavg_weighted", "fedmut_weighted", "fedadam"])
def test_a_frozen_embedding_stands_bit_for_bit(method):
    torch.manual_seed(0)
    model = FrozenEmbedding()
    before = model.embed.weight.detach().clone()
    trainable = model.net[0].weight.detach().clone()
    _fit(model, _token_data(), method)
    assert torch.equal(model.embed.weight, before)
    assert not torch.equal(model.net[0].weight, trainable)


def test_fedmut_start_models_hold_the_global_copy_of_a_frozen_layer(synthetic):
    """Every mutated start model keeps the frozen layer exactly; the trainable keys are mutated."""
    train, _ = synthetic
    seen = []

    class Spy(MutationCallback):
        def on_client_fit_start(self, loop, module, task):
            super().on_client_fit_start(loop, module, task)
            seen.append({k: v.detach().clone() for k, v in task.start_state.items()})

    torch.manual_seed(0)
    model = FrozenFirstLayer(lr=0.1)
    frozen = model.net[0].weight.detach().clone()
    parts = partition_dirichlet(train.tensors[1].numpy(), 10, alpha=0.5, min_size=5, seed=0)
    loop = FederatedLoop(rounds=3, clients_per_round=4, local_steps=2, aggregator=FedAvg(weighted=True),
                         callbacks=[Spy(radius=8.0, acceleration=0.5)], enable_progress_bar=False, seed=0)
    with pytest.warns(UserWarning, match="example-weighted aggregator"):
        loop.fit(model, make_clients(train, parts, batch_size=8))
    assert loop.callbacks[0].keys == ["net.2.weight", "net.2.bias"]
    assert len(seen) == 12
    assert all(torch.equal(s["net.0.weight"], frozen) for s in seen)
    mutated = seen[4:]  # rounds 1 and 2 start from mutated models
    assert len({float(s["net.2.weight"].sum()) for s in mutated}) > 1


def test_the_loop_keeps_frozen_parameters_whatever_a_custom_aggregator_returns(synthetic):
    """An aggregator that knows nothing of frozen parameters still cannot move them."""
    train, _ = synthetic

    class Shift(Aggregator):  # returns every key, moved by 1
        def reset(self):
            self.last = None

        def update(self, result):
            self.last = {k: v.detach().clone() for k, v in result.state.items()}

        def compute(self, global_state):
            return {k: v + 1 if v.is_floating_point() else v for k, v in self.last.items()}

    torch.manual_seed(0)
    model = FrozenFirstLayer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loop = FederatedLoop(rounds=2, clients_per_round=2, local_steps=1, aggregator=Shift(), enable_progress_bar=False)
    loop.fit(model, make_clients(train, partition_dirichlet(train.tensors[1].numpy(), 4, alpha=1.0, seed=0),
                                 batch_size=8))
    after = model.state_dict()
    assert torch.equal(after["net.0.weight"], before["net.0.weight"])
    assert torch.equal(after["net.0.bias"], before["net.0.bias"])
    assert not torch.equal(after["net.2.bias"], before["net.2.bias"])


def test_an_example_weighted_mean_leaves_frozen_keys_out():
    """The 1-ulp noise that a weighted mean of identical tensors carries never reaches a frozen key."""
    module = nn.Linear(3, 2)
    module.weight.requires_grad_(False)
    value = torch.tensor([[0.1, 0.7, 1 / 3], [2 / 3, -0.3, 0.9]])
    counts = [23, 17, 31, 11, 7]
    # the float32 weighted mean of five copies of `value` is not `value`: why frozen keys must stay out
    acc = torch.zeros_like(value)
    for n in counts:
        acc.add_(value, alpha=float(n))
    assert not torch.equal(acc / float(sum(counts)), value)

    agg = FedAvg(weighted=True)
    agg.setup(module)
    agg.reset()
    for n in counts:
        agg.update(make_result({"weight": value.clone(), "bias": torch.full((2,), float(n))}, n))
    out = agg.compute({})
    assert list(out) == ["bias"]
    expected = sum(float(n) * n for n in counts) / sum(counts)
    torch.testing.assert_close(out["bias"].double(), torch.full((2,), expected, dtype=torch.float64), rtol=0,
                               atol=1e-5)


def test_frozen_keys_names_parameters_only():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 2))
    net[0].requires_grad_(False)
    net[2].bias.requires_grad_(False)
    assert frozen_keys(net) == {"0.weight", "0.bias", "2.bias"}
    state = net.state_dict()
    assert floating_keys(state, frozen=frozen_keys(net)) == ["1.weight", "1.bias", "1.running_mean",
                                                             "1.running_var", "2.weight"]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked; tested on Linux")
def test_with_two_workers_a_frozen_layer_stands_and_the_run_equals_one_process(synthetic):
    from lightning_fedmut.distributed import DistributedExecutor

    train, _ = synthetic
    parts = partition_dirichlet(train.tensors[1].numpy(), 8, alpha=0.5, min_size=5, seed=0)
    finals = []
    for workers in (None, 2):
        torch.manual_seed(0)
        model = FrozenFirstLayer(lr=0.1, momentum=0.5)
        frozen = model.net[0].weight.detach().clone()
        executor = None if workers is None else DistributedExecutor(workers=workers, timeout=60.0)
        loop = FederatedLoop(rounds=4, clients_per_round=4, local_steps=3, aggregator=FedAvg(weighted=True),
                             callbacks=[MutationCallback(radius=8.0, acceleration=0.5)], executor=executor,
                             enable_progress_bar=False, seed=0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "MutationCallback runs with an example-weighted aggregator")
            loop.fit(model, make_clients(train, parts, batch_size=8))
        assert torch.equal(model.net[0].weight, frozen)
        finals.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


@pytest.mark.parametrize("callback", [MutationCallback, FedMR])
def test_a_checkpoint_that_moved_a_now_frozen_layer_is_refused_naming_it(callback):
    """State saved when the layer was still mutated (or recombined) is not loaded into a run that freezes it."""
    loop = SimpleNamespace(seed=0, clients_per_round=2, aggregator=FedAvg(weighted=False), callbacks=[],
                           sampler=UniformSampler())
    torch.manual_seed(0)
    saved = callback()
    saved.setup(loop, TinyModule(), "fit")
    resumed = callback()
    resumed.setup(loop, FrozenFirstLayer(), "fit")
    with pytest.raises(ValueError, match=r"The checkpoint holds state for frozen parameters \(\['net\.0\.weight',"
                                         r" 'net\.0\.bias'\]; requires_grad=False\), which are no longer mutated nor"
                                         r" recombined: .* start a new run\."):
        resumed.load_state_dict(saved.state_dict())
