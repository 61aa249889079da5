"""FedSMOO against a float64 hand computation of the reference code's client and server updates on a quadratic, its
convergence where FedAvg stalls, the refusals, a bit-for-bit resume and two workers equal to one process."""

from __future__ import annotations

import sys

import pytest
import torch
from global_sharpness_runs import check_resume, check_workers
from test_baselines_quadratic import LR, STEPS, W0, A, B, Quadratic, quadratic_clients, weights

from lightning_fedmut import FederatedCallback, FederatedLoop
from lightning_fedmut import algorithms as algos
from lightning_fedmut.aggregators.fedsmoo import FedSMOO as FedSMOOAggregator
from lightning_fedmut.callbacks.fedsmoo import FedSMOO as FedSMOOCallback

distributed = pytest.importorskip("lightning_fedmut.distributed")
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="workers are forked; tested on Linux")


def fit(algorithm, rounds=2, a=A, b=B, steps=STEPS, lr=LR, start=W0, callbacks=()):
    module = Quadratic(start=start, lr=lr)
    loop = FederatedLoop(rounds=rounds, clients_per_round=len(a), algorithm=algorithm, callbacks=list(callbacks),
                         enable_progress_bar=False, seed=0)
    return module, loop.fit(module, quadratic_clients(a, b, steps)), loop


def reference(rounds, alpha, rho, a=A, b=B, steps=STEPS, lr=LR, start=W0):
    """FL-Simulator's FedSMOO (client/fedsmoo.py, optimizer/DRegSAM.py, server/FedSMOO.py) in float64, every client
    every round: the global w, each client's h_i and mu_i, and the global correction s."""
    n = len(a)
    w = start.clone()
    h = [torch.zeros(2, dtype=torch.float64) for _ in range(n)]
    mu = [torch.zeros(2, dtype=torch.float64) for _ in range(n)]
    s = torch.zeros(2, dtype=torch.float64)
    for _ in range(rounds):
        trained = []
        for i in range(n):
            v = w.clone()
            for _ in range(steps):
                g = a[i] * (v - b[i])
                corrected = g - (mu[i] + s)
                e = corrected * (rho / (corrected.norm() + 1e-7))
                mu[i] = mu[i] + e - s
                # gradient at v + e, then lamb * (h_i - w) from the loss and lamb * v from the weight decay
                v = v - lr * (a[i] * (v + e - b[i]) + alpha * (h[i] - w) + alpha * v)
            h[i] = h[i] + (v - w)
            trained.append(v)
        mean_mu = torch.stack(mu).mean(0)
        s = mean_mu / (mean_mu.norm() + 1e-7) * rho
        w = torch.stack(trained).mean(0) + torch.stack(h).mean(0)
    return w, h, mu, s


class Peek(FederatedCallback):
    def on_fit_end(self, loop, module):
        self.stored = {i: loop.client_states.get(i) for i in range(len(A))}


def test_fedsmoo_matches_the_reference_code_in_float64():
    peek = Peek()
    algorithm = algos.FedSMOO(alpha=0.1, rho=0.05)
    module, result, _ = fit(algorithm, rounds=3, callbacks=[peek])
    w, h, mu, s = reference(3, alpha=0.1, rho=0.05)
    torch.testing.assert_close(weights(module), w, rtol=0, atol=1e-12)
    correction = algorithm.aggregator.correction
    torch.testing.assert_close(torch.cat([correction["u"], correction["v"]]), s, rtol=0, atol=1e-12)
    for i in range(len(A)):
        dual, linear = peek.stored[i]["FedSMOO/dual"], peek.stored[i]["FedSMOO/gradient"]
        torch.testing.assert_close(torch.cat([dual["u"], dual["v"]]), mu[i], rtol=0, atol=1e-12)
        torch.testing.assert_close(torch.cat([linear["u"], linear["v"]]), -0.1 * h[i], rtol=0, atol=1e-12)
    assert result.history[-1]["fedsmoo/correction_norm"] == pytest.approx(float(s.norm()), rel=1e-10)


def test_the_dual_correction_changes_the_steps():
    """Against FedDyn's clients taking plain SAM steps (mu = s = 0 throughout): FedSMOO's second round differs."""
    module, _, _ = fit(algos.FedSMOO(alpha=0.1, rho=0.5), rounds=2)
    w, _, _, _ = reference(2, alpha=0.1, rho=0.5)
    torch.testing.assert_close(weights(module), w, rtol=0, atol=1e-12)
    no_dual = W0.clone()
    hs = [torch.zeros(2, dtype=torch.float64) for _ in range(3)]
    for _ in range(2):
        trained = []
        for i in range(3):
            v = no_dual.clone()
            for _ in range(STEPS):
                g = A[i] * (v - B[i])
                e = g * (0.5 / (g.norm() + 1e-7))
                v = v - LR * (A[i] * (v + e - B[i]) + 0.1 * (hs[i] - no_dual) + 0.1 * v)
            hs[i] = hs[i] + (v - no_dual)
            trained.append(v)
        no_dual = torch.stack(trained).mean(0) + torch.stack(hs).mean(0)
    assert float((w - no_dual).abs().max()) > 1e-3


def test_fedsmoo_reaches_the_optimum_of_a_drifting_quadratic_where_fedavg_stalls():
    a = torch.tensor([[10.0, 1.0], [1.0, 10.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    optimum = (a * b).sum(0) / a.sum(0)
    zero = torch.zeros(2, dtype=torch.float64)
    kwargs = dict(rounds=20, a=a, b=b, steps=20, lr=0.05, start=zero)
    fedavg, _, _ = fit(algos.FedAvg(weighted=False), **kwargs)
    fedsmoo, _, _ = fit(algos.FedSMOO(alpha=1.0, rho=0.01), **kwargs)
    assert float((weights(fedavg) - optimum).norm()) > 0.5
    assert float((weights(fedsmoo) - optimum).norm()) < 0.02  # within the radius of the optimum
    torch.testing.assert_close(weights(fedsmoo), reference(20, 1.0, 0.01, a=a, b=b, steps=20, lr=0.05, start=zero)[0],
                               rtol=0, atol=1e-10)


def test_mismatched_settings_are_refused_before_training():
    loop = FederatedLoop(rounds=1, clients_per_round=3, aggregator=FedSMOOAggregator(alpha=0.1, rho=0.2),
                         callbacks=[FedSMOOCallback(alpha=0.1, rho=0.1)], enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"^Expected the FedSMOO aggregator's `rho` to be the clients' 0.1, got 0.2\.$"):
        loop.fit(Quadratic(), quadratic_clients())
    with pytest.raises(ValueError, match=r"rho"):
        algos.FedSMOO(rho=0.0)


def test_fedsmoo_resumes_bit_for_bit_after_a_crash_at_round_2(synthetic, tmp_path):
    check_resume(synthetic, tmp_path, lambda: algos.FedSMOO(alpha=0.1, rho=0.05))


@linux_only
@pytest.mark.slow
def test_two_workers_equal_one_process_bit_for_bit(synthetic):
    check_workers(synthetic, lambda: algos.FedSMOO(alpha=0.1, rho=0.05), distributed)
