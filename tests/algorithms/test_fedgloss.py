"""FedGloSS against a float64 hand computation of the authors' server and client updates on a quadratic, the server
step alone, the refusals, a bit-for-bit resume and two workers equal to one process."""

from __future__ import annotations

import sys

import pytest
import torch
from global_sharpness_runs import check_resume, check_workers
from helpers import make_result
from test_baselines_quadratic import LR, STEPS, W0, A, B, Quadratic, quadratic_clients, weights

from lightning_fedmut import FederatedCallback, FederatedLoop
from lightning_fedmut import algorithms as algos
from lightning_fedmut.aggregators import FedAvg
from lightning_fedmut.aggregators.fedgloss import FedGloSS as FedGloSSAggregator
from lightning_fedmut.callbacks.fedgloss import FedGloSS as FedGloSSClient
from lightning_fedmut.callbacks.fedgloss import GlobalPerturbation

distributed = pytest.importorskip("lightning_fedmut.distributed")
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="workers are forked; tested on Linux")


def fit(algorithm, rounds=3, callbacks=()):
    module = Quadratic()
    loop = FederatedLoop(rounds=rounds, clients_per_round=len(A), algorithm=algorithm, callbacks=list(callbacks),
                         enable_progress_bar=False, seed=0)
    return module, loop.fit(module, quadratic_clients()), loop


def grad(w, i):
    return A[i] * (w - B[i])


def reference(rounds, rho, rho_l, beta, server_lr=1.0, momentum=0.0, m=3, rho0=0.0, warmup=0):
    """models/servers/fedgloss_server.py and FedGloSSOpt of pietrocagnasso/fedgloss in float64, every client every
    round (uniform mean): the global w, sigma, the saved pseudo-gradient d and each client's dual."""
    n = len(A)
    w, v = W0.clone(), torch.zeros(2, dtype=torch.float64)
    sigma, d = torch.zeros(2, dtype=torch.float64), None
    duals = [torch.zeros(2, dtype=torch.float64) for _ in range(n)]
    starts = []
    for t in range(rounds):
        rho_t = rho if warmup <= 1 else rho0 + (rho - rho0) / warmup * min(t, warmup)
        rho_lt = rho_l if warmup <= 1 else rho0 + (rho_l - rho0) / warmup * min(t, warmup)
        perturbed = w if d is None else w + d * (rho_t / (d.norm() + 1e-12))  # ascent_step
        starts.append(perturbed)
        trained = []
        for i in range(n):
            x = perturbed.clone()
            for _ in range(STEPS):
                g = grad(x, i)
                e = g * (rho_lt / (g.norm() + 1e-12)) if rho_lt else torch.zeros(2, dtype=torch.float64)
                step_grad = grad(x + e, i)
                if beta is not None:
                    step_grad = step_grad - duals[i] + (x - perturbed) / beta
                x = x - LR * step_grad
            if beta is not None:
                duals[i] = duals[i] - (x - perturbed) / beta
            trained.append(x)
        delta = torch.stack(trained).mean(0) - perturbed  # pseudo-gradients against the perturbed model
        if beta is not None:
            sigma = sigma - delta / (beta * m)
        v = momentum * v + delta  # torch SGD on grad = -delta, from the unperturbed w
        w = w + server_lr * v
        d = -delta
        if beta is not None:
            w = w - beta * sigma
    return w, sigma, d, duals, starts


class Starts(FederatedCallback):
    def __init__(self):
        self.starts = {}

    def on_client_fit_start(self, loop, module, task):
        self.starts[(loop.round, task.slot)] = torch.cat([task.start_state["u"], task.start_state["v"]]).clone()


def test_fedgloss_matches_the_authors_code_in_float64():
    starts = Starts()
    algorithm = algos.FedGloSS(rho=0.2, rho_l=0.05, beta=2.0, weighted=False)
    module, result, loop = fit(algorithm, callbacks=[starts])
    w, sigma, d, duals, expected_starts = reference(3, rho=0.2, rho_l=0.05, beta=2.0)
    torch.testing.assert_close(weights(module), w, rtol=0, atol=1e-12)
    buffers = algorithm.aggregator.buffers()
    torch.testing.assert_close(torch.cat([buffers["sigma"]["u"], buffers["sigma"]["v"]]), sigma, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([buffers["direction"]["u"], buffers["direction"]["v"]]), d, rtol=0,
                               atol=1e-12)
    for (r, _slot), start in starts.starts.items():
        torch.testing.assert_close(start, expected_starts[r], rtol=0, atol=1e-12)
    for i in range(3):
        dual = loop.client_states.get(i)["FedGloSS/dual"]
        torch.testing.assert_close(torch.cat([dual["u"], dual["v"]]), duals[i], rtol=0, atol=1e-12)
    assert float((expected_starts[1] - expected_starts[0]).norm()) > 0.1  # the ascent moved the clients' start
    assert [row["fedgloss/rho"] for row in result.history] == [0.2, 0.2, 0.2]


def test_server_momentum_and_the_rho_warm_up_follow_the_authors_code():
    algorithm = algos.FedGloSS(rho=0.3, rho_l=0.1, beta=5.0, server_lr=0.5, momentum=0.9, rho0=0.01,
                               warmup_rounds=2, weighted=False)
    module, result, _ = fit(algorithm, rounds=4)
    w = reference(4, rho=0.3, rho_l=0.1, beta=5.0, server_lr=0.5, momentum=0.9, rho0=0.01, warmup=2)[0]
    torch.testing.assert_close(weights(module), w, rtol=0, atol=1e-12)
    assert [row["fedgloss/rho"] for row in result.history] == pytest.approx([0.01, 0.155, 0.3, 0.3], rel=1e-12)


def test_without_admm_and_client_sam_the_server_alone_is_sam_on_fedavg():
    """``beta=None``, ``rho_l=0``: plain local SGD from w + e, and w <- w + mean - (w + e)."""
    module, _, _ = fit(algos.FedGloSS(rho=0.2, rho_l=0.0, beta=None, weighted=False))
    torch.testing.assert_close(weights(module), reference(3, rho=0.2, rho_l=0.0, beta=None)[0], rtol=0, atol=1e-12)


def test_the_server_step_by_hand():
    """Two clients of 1 and 3 examples; sigma with m = 4, beta = 2; the second round removes e = 0.5 d / |d|."""
    agg = FedGloSSAggregator(rho=0.5, beta=2.0, num_clients=4)
    agg.setup(torch.nn.Linear(2, 1, bias=False))
    w = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    agg.reset()
    agg.update(make_result({"weight": torch.tensor([[2.0, 0.0]], dtype=torch.float64)}, num_examples=1))
    agg.update(make_result({"weight": torch.tensor([[0.0, -2.0]], dtype=torch.float64)}, num_examples=3))
    new = agg.compute({"weight": w})["weight"]
    delta = torch.tensor([[0.5, -1.5]], dtype=torch.float64) - w  # weighted mean - w
    sigma = -delta / (2.0 * 4)
    torch.testing.assert_close(new, w + delta - 2.0 * sigma, rtol=0, atol=1e-15)
    d = -delta
    assert agg.ascent_scale() == pytest.approx(0.5 / float(d.norm()), rel=1e-12)
    w2 = new.clone()
    agg.reset()
    agg.update(make_result({"weight": torch.tensor([[3.0, 3.0]], dtype=torch.float64)}, num_examples=2))
    new2 = agg.compute({"weight": w2})["weight"]
    delta2 = torch.tensor([[3.0, 3.0]], dtype=torch.float64) - (w2 + 0.5 * d / d.norm())
    sigma2 = sigma - delta2 / 8.0
    torch.testing.assert_close(new2, w2 + delta2 - 2.0 * sigma2, rtol=0, atol=1e-12)


def test_refusals_come_before_any_client_trains():
    loop = FederatedLoop(rounds=1, clients_per_round=3, aggregator=FedAvg(), callbacks=[GlobalPerturbation()],
                         enable_progress_bar=False)
    with pytest.raises(TypeError, match=r"^Expected the loop's aggregator to be aggregators.FedGloSS .*got FedAvg\.$"):
        loop.fit(Quadratic(), quadratic_clients())
    mismatch = FederatedLoop(rounds=1, clients_per_round=3, aggregator=FedGloSSAggregator(beta=1.0),
                             callbacks=[FedGloSSClient(beta=2.0)], enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"^Expected the FedGloSS aggregator's `beta` to be the clients' 2.0, got 1.0\.$"):
        mismatch.fit(Quadratic(), quadratic_clients())
    alone = FederatedLoop(rounds=1, clients_per_round=3, aggregator=FedGloSSAggregator(beta=1.0),
                          enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"^Expected FedGloSS's aggregator to know the federation size m"):
        alone.fit(Quadratic(), quadratic_clients())
    with pytest.raises(ValueError, match=r"beta"):
        algos.FedGloSS(beta=0.0)


def test_fedgloss_resumes_bit_for_bit_after_a_crash_at_round_2(synthetic, tmp_path):
    check_resume(synthetic, tmp_path, lambda: algos.FedGloSS(rho=0.1, rho_l=0.05, beta=10.0))


@linux_only
@pytest.mark.slow
def test_two_workers_equal_one_process_bit_for_bit(synthetic):
    check_workers(synthetic, lambda: algos.FedGloSS(rho=0.1, rho_l=0.05, beta=10.0), distributed)
