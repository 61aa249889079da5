"""SCAFFOLD's options that follow the reference code of the FedMut authors' lab, against float64 replays.

The reference (zenghui9977/FLLIB_develop, ``fllib/server/scaffold.py`` and ``fllib/client/scaffold.py``) weights
client ``i`` by ``p_i = N n_i / n``: it corrects the local steps by ``c / p_i - c_i`` and updates
``c += (1 / N) sum_i p_i (c_i+ - c_i)``; it clips the raw gradients to a norm of 10 before the correction. The
replays below write those rules out on the two-parameter quadratic of ``test_baselines_quadratic.py`` with three
clients of 2, 4 and 6 examples (one plain SGD step per example), every client in every round, so every number is
known in float64.
"""

from __future__ import annotations

import pytest
import torch
from test_baselines_quadratic import LR, W0, A, B, Quadratic, weights
from torch.utils.data import DataLoader, TensorDataset

from lightning_fedmut import Client, FedAvg, FederatedLoop
from lightning_fedmut.algorithms import SCAFFOLD
from lightning_fedmut.callbacks import Scaffold

SIZES = (2, 4, 6)


def clients(a=A, b=B, sizes=SIZES):
    return [Client(id=i, data=DataLoader(TensorDataset(a[i].repeat(n, 1), b[i].repeat(n, 1)), batch_size=1))
            for i, n in enumerate(sizes)]


def fit(scaffold: Scaffold, rounds: int, a=A, b=B, lr=LR, start=W0):
    module = Quadratic(start=start, lr=lr)
    FederatedLoop(rounds=rounds, clients_per_round=3, aggregator=FedAvg(weighted=False), callbacks=[scaffold],
                  enable_progress_bar=False, seed=0).fit(module, clients(a, b))
    return module


def replay(rounds, data_weights: bool, clip: float | None = None, a=A, b=B, lr=LR, start=W0):
    """The reference's rules (``data_weights``) or the paper's, in float64, with each client's own step count."""
    n_total, n_clients = sum(SIZES), len(SIZES)
    p = [n_clients * n / n_total if data_weights else 1.0 for n in SIZES]
    x, c = start.clone(), torch.zeros(2, dtype=torch.float64)
    ci = [torch.zeros(2, dtype=torch.float64) for _ in SIZES]
    for _ in range(rounds):
        trained, delta_sum = [], torch.zeros(2, dtype=torch.float64)
        for i, steps in enumerate(SIZES):
            y = x.clone()
            for _ in range(steps):
                g = a[i] * (y - b[i])
                if clip is not None and float(g.norm()) > clip:
                    g = g * (clip / (float(g.norm()) + 1e-6))  # torch's clip_grad_norm_ scale
                y = y - lr * (g + c / p[i] - ci[i])
            new = ci[i] - c + (x - y) / (steps * lr)
            delta_sum += p[i] * (new - ci[i])
            ci[i] = new
            trained.append(y)
        c = c + delta_sum / n_clients
        x = torch.stack(trained).mean(0)
    return x, c


def test_data_weighted_controls_match_the_references_rule_with_unequal_clients():
    scaffold = Scaffold(control_weights="data")
    module = fit(scaffold, rounds=3)
    x, c = replay(3, data_weights=True)
    torch.testing.assert_close(weights(module), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([scaffold.control["u"], scaffold.control["v"]]), c, rtol=0, atol=1e-12)
    paper, _ = replay(3, data_weights=False)
    assert float((x - paper).abs().max()) > 1e-3  # the two rules differ with unequal client sizes


def test_gradient_clip_clips_the_raw_gradient_before_the_correction():
    a = A * 40.0  # gradients of norm up to ~150 at the start: clipped to 10
    scaffold = Scaffold(control_weights="data", gradient_clip=10.0)
    module = fit(scaffold, rounds=2, a=a, lr=0.002)
    x, c = replay(2, data_weights=True, clip=10.0, a=a, lr=0.002)
    torch.testing.assert_close(weights(module), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([scaffold.control["u"], scaffold.control["v"]]), c, rtol=0, atol=1e-12)
    unclipped, _ = replay(2, data_weights=True, a=a, lr=0.002)
    assert float((x - unclipped).abs().max()) > 1e-3


def test_the_preset_takes_the_references_settings_and_names_bad_values():
    algorithm = SCAFFOLD(weighted=False, control_weights="data", gradient_clip=10.0)
    assert algorithm.hparams == {"num_clients": None, "weighted": False, "control_weights": "data",
                                 "gradient_clip": 10.0}
    with pytest.raises(ValueError, match=r"`control_weights` in \('uniform', 'data'\), got 'share'"):
        Scaffold(control_weights="share")
    with pytest.raises(ValueError, match="gradient_clip"):
        Scaffold(gradient_clip=0.0)
