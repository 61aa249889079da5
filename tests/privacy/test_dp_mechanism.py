"""The mechanism without a federation: clipping where the client trains, the noise's spread, the fixed
denominator, adaptive clipping on a synthetic norm stream, and the refusals of bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_result

from lightning_fedmut.aggregators import FedAdam, FedAvg, FedNova
from lightning_fedmut.privacy import DifferentialPrivacy, DPAggregator
from lightning_fedmut.privacy.aggregator import UNCLIPPED_KEY
from lightning_fedmut.tasks import ClientResult, ClientTask


def linear(features: int = 3, outputs: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(features, outputs)


def set_up(aggregator: DPAggregator, module: torch.nn.Module, expected: float, seed: int = 0) -> None:
    """What DifferentialPrivacy.setup does for the aggregator, without a loop."""
    aggregator.expected_clients = expected
    aggregator.effective_noise_multiplier = aggregator.noise_multiplier
    aggregator.seed_generator(seed)
    aggregator.setup(module)


def client_half(module: torch.nn.Module, aggregator: DPAggregator) -> DifferentialPrivacy:
    dp = DifferentialPrivacy()
    dp._aggregator = aggregator
    dp._keys = list(module.state_dict())
    return dp


@pytest.mark.parametrize("factor", [3.0, 0.5])
def test_an_update_of_norm_3c_arrives_with_norm_c_and_a_small_one_unchanged(factor):
    """The client half clips w - s (s the start model it was handed, here a mutated one) to C, keeping its
    direction; an update within C arrives as it left, and the payload says which it was."""
    module, clip = linear(), 0.7
    aggregator = DPAggregator(noise_multiplier=1.0, clip_norm=clip)
    dp = client_half(module, aggregator)
    start = {k: v.detach().clone().double() + 0.25 for k, v in module.state_dict().items()}  # not the global model
    direction = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
                 for i, (k, v) in enumerate(start.items())}
    norm = math.sqrt(sum(float(d.pow(2).sum()) for d in direction.values()))
    update = {k: d * (factor * clip / norm) for k, d in direction.items()}
    task = ClientTask(round=0, slot=0, client=None, seed=0, start_state={k: v.clone() for k, v in start.items()})
    dp.on_client_fit_start(None, module, task)
    trained = {k: start[k] + update[k] for k in start}
    result = ClientResult(task=task, num_examples=1, state=trained)
    dp.on_client_fit_end(None, module, result)
    arrived = {k: result.state[k] - start[k] for k in start}
    arrived_norm = math.sqrt(sum(float(a.pow(2).sum()) for a in arrived.values()))
    if factor > 1:
        assert arrived_norm == pytest.approx(clip, rel=1e-12)
        for k in start:
            torch.testing.assert_close(arrived[k], update[k] / factor, rtol=0, atol=1e-15)
        assert result.payload[UNCLIPPED_KEY] == 0.0
    else:
        assert arrived_norm == pytest.approx(factor * clip, rel=1e-12)
        assert all(torch.equal(result.state[k], start[k] + update[k]) for k in start)
        assert result.payload[UNCLIPPED_KEY] == 1.0


def test_noise_on_zero_updates_has_std_zc_over_the_expected_clients():
    """Clients that return their start model: the release minus the global model is the noise over E alone. Its
    sample standard deviation over n = 20000 entries equals z C / E within 4 standard errors (sigma / sqrt(2(n-1)))."""
    module = torch.nn.Linear(200, 100)  # 20100 entries
    z, clip, expected = 1.3, 0.4, 2.5
    aggregator = DPAggregator(noise_multiplier=z, clip_norm=clip)
    set_up(aggregator, module, expected)
    glob = {k: v.detach().clone() for k, v in module.state_dict().items()}
    aggregator.reset()
    for slot in range(3):
        aggregator.update(make_result({k: v.clone() for k, v in glob.items()}, slot=slot, payload={UNCLIPPED_KEY: 1.0}))
    released = aggregator.compute(glob)
    noise = torch.cat([(released[k] - glob[k]).double().flatten() for k in glob])
    n, sigma = noise.numel(), z * clip / expected
    std = float(noise.std(correction=1))
    assert abs(std - sigma) < 4 * sigma / math.sqrt(2 * (n - 1))
    assert abs(float(noise.mean())) < 4 * sigma / math.sqrt(n)
    assert aggregator.metrics()["dp/noise_std"] == pytest.approx(sigma, rel=1e-12)


def test_the_sum_is_divided_by_the_expected_number_of_clients_not_the_count():
    """w + sum_i (w_i - w) / E, with E = 4 expected clients and 2 that trained (noise 1e-12 C: negligible)."""
    module = linear()
    aggregator = DPAggregator(noise_multiplier=1e-12, clip_norm=1.0)
    set_up(aggregator, module, expected=4.0)
    glob = {k: v.detach().clone() for k, v in module.state_dict().items()}
    ups = [{k: torch.full_like(v, 0.1 * (i + 1)) for k, v in glob.items()} for i in range(2)]
    aggregator.reset()
    for i, up in enumerate(ups):
        aggregator.update(make_result({k: glob[k] + up[k] for k in glob}, slot=i, payload={UNCLIPPED_KEY: 1.0}))
    released = aggregator.compute(glob)
    for k in glob:
        expected = glob[k].double() + (ups[0][k].double() + ups[1][k].double()) / 4.0
        torch.testing.assert_close(released[k].double(), expected, rtol=0, atol=1e-6)


def test_a_server_optimizer_steps_along_the_noised_mean_update():
    """DPAggregator(FedAdam): Adam's first step from the release's pseudo-gradient d = (u_1 + u_2) / E."""
    module = linear()
    aggregator = DPAggregator(FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3), noise_multiplier=1e-12)
    set_up(aggregator, module, expected=2.0)
    glob = {k: v.detach().clone() for k, v in module.state_dict().items()}
    aggregator.reset()
    for i in range(2):
        aggregator.update(make_result({k: v + 0.05 * (i + 1) for k, v in glob.items()}, slot=i,
                                      payload={UNCLIPPED_KEY: 1.0}))
    new = aggregator.compute(glob)
    d = 0.075  # (0.05 + 0.10) / 2
    m, v = 0.1 * d, 0.99 * 1e-6 + 0.01 * d**2
    for k in glob:
        torch.testing.assert_close(new[k].double(), glob[k].double() + 0.1 * m / (math.sqrt(v) + 1e-3), rtol=0, atol=1e-6)
    assert "fedadam/pseudo_gradient_norm" in aggregator.metrics()


@pytest.mark.parametrize(("quantile", "expected"), [(0.5, 1.0), (0.9, 1.8)])
def test_adaptive_clipping_tracks_the_quantile_of_a_synthetic_norm_stream(quantile, expected):
    """Update norms uniform on [0, 2] (quantile gamma: 2 gamma): 100 clients a round for 150 rounds, eta_C = 0.2,
    from C = 0.1; the last 50 rounds' clipping norms average to within 0.1 of the quantile."""
    module = torch.nn.Linear(1, 1, bias=False)
    aggregator = DPAggregator(noise_multiplier=0.01, clip_norm=0.1, target_quantile=quantile, count_stddev=0.5)
    set_up(aggregator, module, expected=100.0)
    glob = {"weight": torch.zeros(1, 1)}
    norms = torch.Generator().manual_seed(1)
    history = []
    for _ in range(150):
        aggregator.reset()
        for slot, u in enumerate((2 * torch.rand(100, generator=norms)).tolist()):
            aggregator.update(make_result({"weight": torch.full((1, 1), u)}, slot=slot,
                                          payload={UNCLIPPED_KEY: float(u <= aggregator.clip_norm)}))
        aggregator.compute(glob)
        history.append(aggregator.clip_norm)
    assert sum(history[-50:]) / 50 == pytest.approx(expected, abs=0.1)


def test_the_noise_generator_is_checkpointed():
    module = linear()
    aggregator = DPAggregator(noise_multiplier=1.0)
    set_up(aggregator, module, expected=1.0)
    saved = aggregator.state_dict()
    glob = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def release():
        aggregator.reset()
        aggregator.update(make_result({k: v.clone() for k, v in glob.items()}, payload={UNCLIPPED_KEY: 1.0}))
        return {k: v.clone() for k, v in aggregator.compute(glob).items()}  # the inner mean reuses its buffer

    first = release()
    aggregator.load_state_dict(saved)
    again = release()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(release()["weight"], first["weight"])


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"noise_multiplier": 0.0}, ValueError, r"Expected `noise_multiplier` in \(0.0, inf\), got 0.0."),
    ({"noise_multiplier": -1.0}, ValueError, r"Expected `noise_multiplier` in \(0.0, inf\), got -1.0."),
    ({"clip_norm": 0.0}, ValueError, r"Expected `clip_norm` in \(0.0, inf\), got 0.0."),
    ({"target_quantile": 1.5}, ValueError, r"Expected `target_quantile` in \[0.0, 1.0\], got 1.5."),
    ({"inner": FedAvg(weighted=True)}, ValueError, "got FedAvg with weighted=True: the clients' example counts"),
    ({"inner": FedNova()}, TypeError, "got FedNova: it must take the noised mean"),
])
def test_bad_aggregator_arguments_are_refused_naming_them(kwargs, error, message):
    with pytest.raises(error, match=message):
        DPAggregator(**kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"delta": 1.0}, r"Expected `delta` in \(0.0, 1.0\), got 1.0."),
    ({"delta": 0.0}, r"Expected `delta` in \(0.0, 1.0\), got 0.0."),
    ({"target_epsilon": 0.0}, r"Expected `target_epsilon` in \(0.0, inf\), got 0.0."),
    ({"accountant": "gdp"}, r"Expected `accountant` in \['rdp', 'pld'\], got 'gdp'."),
])
def test_bad_accounting_arguments_are_refused_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DifferentialPrivacy(**kwargs)


def test_a_result_without_the_client_half_is_refused():
    module = linear()
    aggregator = DPAggregator()
    set_up(aggregator, module, expected=1.0)
    aggregator.reset()
    with pytest.raises(RuntimeError, match="without a clipped update: add the client half"):
        aggregator.update(make_result({k: v.detach() for k, v in module.state_dict().items()}))
