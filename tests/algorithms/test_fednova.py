"""FedNova against a float64 hand computation, with clients of different step counts, in one process and two workers.

Tolerance: the aggregator works in float32 (the model's dtype); the reference is float64 from the same client
states. Weights are O(1) and each entry goes through a handful of float32 operations, so agreement within
``atol=1e-6, rtol=1e-5`` (about ten float32 units in the last place) is float32 rounding, not a formula error.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
import torch
from helpers import TinyModule, make_result, state_of

from lightning_fedmut import FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut.aggregators import FedAvg, FedNova
from lightning_fedmut.algorithms import build_algorithm
from lightning_fedmut.algorithms.fednova import FedNova as FedNovaMethod

distributed = pytest.importorskip("lightning_fedmut.distributed")
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="workers are forked; tested on Linux")
WORKERS = [None, pytest.param(2, marks=[linux_only, pytest.mark.slow])]
ATOL, RTOL = 1e-6, 1e-5
SIZES = (13, 40, 60, 29)  # 2, 5, 8 and 4 batches of 8: four different step counts


class Recording(FedNova):
    """FedNova that keeps, in the process that aggregates, float64 copies of what each update saw."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rounds: list[dict] = []

    def reset(self) -> None:
        super().reset()
        self.rounds.append({"global": None, "clients": []})

    def update(self, result) -> None:
        record = self.rounds[-1]
        if record["global"] is None:
            record["global"] = float64(self._module.state_dict())
        record["clients"].append((float64(result.state),
                                  result.num_examples, result.num_steps))
        super().update(result)


def float64(state) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().double() if v.is_floating_point() else v.detach().clone() for k, v in state.items()}


class Globals(FederatedCallback):
    def __init__(self) -> None:
        self.after: list[dict[str, torch.Tensor]] = []

    def on_after_aggregate(self, loop, module) -> None:
        self.after.append({k: v.detach().clone() for k, v in module.state_dict().items()})


def a_of(steps: int, rho: float) -> float:
    """Sum over the steps of each gradient's total coefficient in heavy-ball SGD: sum_{m=1..tau} (1-rho^m)/(1-rho)."""
    return sum((1 - rho**m) / (1 - rho) for m in range(1, steps + 1))


def expected(record: dict, parameters: set[str], weighted: bool, rho: float) -> dict[str, torch.Tensor]:
    glob, clients = record["global"], record["clients"]
    weights = np.array([float(n) if weighted else 1.0 for _, n, _ in clients])
    p = weights / weights.sum()
    a = [a_of(steps, rho) for _, _, steps in clients]
    tau_eff = float(sum(pi * ai for pi, ai in zip(p, a)))
    out = {}
    for k, g in glob.items():
        if k in parameters:
            out[k] = g + tau_eff * sum(pi * (s[k] - g) / ai for pi, ai, (s, _, _) in zip(p, a, clients))
        elif g.is_floating_point():
            out[k] = sum(pi * s[k] for pi, (s, _, _) in zip(p, clients))
        else:
            out[k] = torch.stack([s[k] for s, _, _ in clients]).max(dim=0).values
    return out


def clients(synthetic):
    train, _ = synthetic
    starts = np.cumsum((0, *SIZES))
    return make_clients(train, [np.arange(a, b) for a, b in itertools.pairwise(starts)], batch_size=8)


def run(synthetic, aggregator, workers=None, rounds=2, momentum=0.0, **loop_args):
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True, momentum=momentum)
    globals_ = Globals()
    executor = None if workers is None else distributed.DistributedExecutor(workers=workers, timeout=60.0)
    loop = FederatedLoop(rounds=rounds, clients_per_round=len(SIZES), aggregator=aggregator, callbacks=[globals_],
                         seed=0, enable_progress_bar=False, executor=executor, **loop_args)
    loop.fit(model, clients(synthetic))
    return model, globals_.after


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize(("weighted", "rho"), [(True, 0.0), (False, 0.0), (True, 0.5)])
def test_fednova_equals_a_float64_hand_computation(synthetic, workers, weighted, rho):
    agg = Recording(weighted=weighted, momentum=rho)
    model, after = run(synthetic, agg, workers, momentum=rho, local_epochs=2)
    parameters = {k for k, _ in model.named_parameters()}
    for record, got in zip(agg.rounds, after, strict=True):
        steps = [s for _, _, s in record["clients"]]
        assert sorted(steps) == [4, 8, 10, 16]  # 2 epochs of 2, 4, 5 and 8 batches: different step counts
        want = expected(record, parameters, weighted, rho)
        assert set(got) == set(want)
        for k in want:
            if want[k].is_floating_point():
                torch.testing.assert_close(got[k].double(), want[k], atol=ATOL, rtol=RTOL, msg=k)
            else:
                assert torch.equal(got[k], want[k]) and got[k].dtype == torch.int64, k
    assert agg.metrics["fednova/tau_eff"] == pytest.approx(
        float(np.dot(*zip(*[((n if weighted else 1.0), a_of(s, rho)) for _, n, s in agg.rounds[-1]["clients"]])))
        / sum((n if weighted else 1.0) for _, n, _ in agg.rounds[-1]["clients"]), rel=1e-12)


@pytest.mark.parametrize("workers", WORKERS)
def test_fednova_with_equal_steps_is_fedavg(synthetic, workers):
    nova, _ = run(synthetic, FedNova(weighted=True), workers, local_steps=3)
    avg, _ = run(synthetic, FedAvg(weighted=True), workers, local_steps=3)
    nova_state, avg_state = state_of(nova), state_of(avg)
    for k in avg_state:
        torch.testing.assert_close(nova_state[k], avg_state[k], atol=ATOL, rtol=RTOL, msg=k)


def test_fednova_differs_from_fedavg_when_steps_differ(synthetic):
    nova, _ = run(synthetic, FedNova(weighted=True), rounds=1, local_epochs=2)
    avg, _ = run(synthetic, FedAvg(weighted=True), rounds=1, local_epochs=2)
    gap = max((state_of(nova)[k] - state_of(avg)[k]).abs().max().item() for k, _ in nova.named_parameters())
    assert gap > 1e-3


def test_the_preset_runs_the_aggregator_and_is_registered(synthetic):
    algo = build_algorithm("fednova", {"momentum": 0.5, "weighted": False})
    assert isinstance(algo, FedNovaMethod) and isinstance(algo.aggregator, FedNova)
    assert algo.aggregator.hparams == {"momentum": 0.5, "weighted": False}
    torch.manual_seed(0)
    by_preset = TinyModule(batch_norm=True)
    FederatedLoop(rounds=1, clients_per_round=len(SIZES), algorithm=FedNovaMethod(), seed=0,
                  enable_progress_bar=False).fit(by_preset, clients(synthetic))
    by_component, _ = run(synthetic, FedNova(), rounds=1)
    assert all(torch.equal(v, state_of(by_component)[k]) for k, v in state_of(by_preset).items())


def test_one_aggregation_by_hand():
    """Two one-parameter clients: 1.0 after 1 step and 8.0 after 4 steps, uniform: 2.5 * (1/1 + 8/4) / 2."""

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    agg = FedNova(weighted=False)
    agg.setup(One())
    agg.reset()
    for w, steps in ((1.0, 1), (8.0, 4)):
        result = make_result({"w": torch.tensor([w])})
        result.num_steps = steps
        agg.update(result)
    assert agg.compute({"w": torch.tensor([0.0])})["w"].item() == 3.75


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"momentum": 1.0}, ValueError, r"`momentum`.*got 1.0"),
    ({"momentum": -0.1}, ValueError, r"`momentum`.*got -0.1"),
    ({"weighted": "yes"}, TypeError, r"`weighted` to be a bool, got 'yes'"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        FedNova(**kwargs)


def test_a_result_without_num_steps_is_refused():
    agg = FedNova()
    agg.setup(torch.nn.Linear(1, 1))
    agg.reset()
    with pytest.raises(ValueError, match=r"`num_steps` to be an integer >= 0 .*got None"):
        agg.update(make_result({"weight": torch.zeros(1, 1), "bias": torch.zeros(1)}))
