"""FedDyn against a float64 hand computation of Algorithm 1 (Acar et al.) on a quadratic, its convergence where FedAvg
stalls, its client and server state, the refusals, a bit-for-bit resume and two workers equal to one process."""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import TinyModule, state_of
from test_baselines_quadratic import LR, STEPS, W0, A, B, Quadratic, local_sgd, quadratic_clients, weights
from torch.utils.data import DataLoader

from lightning_fedmut import FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut import algorithms as algos
from lightning_fedmut.aggregators import FedAvg
from lightning_fedmut.aggregators import FedDyn as FedDynAggregator
from lightning_fedmut.callbacks import FedDyn as FedDynCallback
from lightning_fedmut.callbacks.feddyn import CLIENT_GRADIENT_KEY
from lightning_fedmut.data import partition_dirichlet

distributed = pytest.importorskip("lightning_fedmut.distributed")
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="workers are forked; tested on Linux")


def fit(algorithm, rounds=2, a=A, b=B, steps=STEPS, lr=LR, start=W0, callbacks=()):
    """Every client trains every round; returns the module, the result and the loop."""
    module = Quadratic(start=start, lr=lr)
    loop = FederatedLoop(rounds=rounds, clients_per_round=len(a), algorithm=algorithm, callbacks=list(callbacks),
                         enable_progress_bar=False, seed=0)
    return module, loop.fit(module, quadratic_clients(a, b, steps)), loop


def reference(rounds, alpha, a=A, b=B, steps=STEPS, lr=LR, start=W0, m=None):
    """Algorithm 1 of Acar et al. in float64, every client every round: the global w, h and each client's g_i."""
    n = len(a)
    m = m or n
    w, h = start.clone(), torch.zeros(2, dtype=torch.float64)
    g = [torch.zeros(2, dtype=torch.float64) for _ in range(n)]
    for _ in range(rounds):
        trained = []
        for i in range(n):
            # the gradient of L_i(v) - <g_i, v> + alpha/2 |v - w|^2 is grad L_i(v) - g_i + alpha (v - w)
            wi = local_sgd(w, i, steps, lr, extra=lambda v, i=i, w=w: alpha * (v - w) - g[i], a=a, b=b)
            g[i] = g[i] - alpha * (wi - w)
            trained.append(wi)
        h = h - alpha / m * torch.stack([wi - w for wi in trained]).sum(0)
        w = torch.stack(trained).mean(0) - h / alpha
    return w, h, g


class Peek(FederatedCallback):
    def __init__(self):
        self.stored = {}

    def on_fit_end(self, loop, module):
        self.stored = {i: loop.client_states.get(i)[CLIENT_GRADIENT_KEY] for i in range(len(A))}


def test_feddyn_matches_algorithm_1_in_float64():
    peek = Peek()
    algorithm = algos.FedDyn(alpha=0.1)
    module, result, _ = fit(algorithm, rounds=3, callbacks=[peek])
    w, h, g = reference(3, alpha=0.1)
    torch.testing.assert_close(weights(module), w, rtol=0, atol=1e-12)
    server = algorithm.aggregator.h
    torch.testing.assert_close(torch.cat([server["u"], server["v"]]), h, rtol=0, atol=1e-12)
    for i in range(len(A)):
        torch.testing.assert_close(torch.cat([peek.stored[i]["u"], peek.stored[i]["v"]]), g[i], rtol=0, atol=1e-12)
    assert result.history[-1]["feddyn/h_norm"] == pytest.approx(float(h.norm()), rel=1e-10)


def test_the_server_update_divides_by_the_federation_size():
    """With ``num_clients = 6`` (m) and 3 clients a round, h moves by alpha * 3/6 * (mean - w) a round."""
    module, _, _ = fit(algos.FedDyn(alpha=0.1, num_clients=6), rounds=2)
    w, _, _ = reference(2, alpha=0.1, m=6)
    torch.testing.assert_close(weights(module), w, rtol=0, atol=1e-12)
    assert float((w - reference(2, alpha=0.1)[0]).abs().max()) > 1e-4


def test_feddyn_reaches_the_optimum_of_a_drifting_quadratic_where_fedavg_stalls():
    """Clients with opposite curvatures and many local steps: FedAvg stops near the mean of the local optima,
    FedDyn's dynamic regulariser reaches the minimiser of the sum of the client losses."""
    a = torch.tensor([[10.0, 1.0], [1.0, 10.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    optimum = (a * b).sum(0) / a.sum(0)
    zero = torch.zeros(2, dtype=torch.float64)
    kwargs = dict(rounds=20, a=a, b=b, steps=20, lr=0.05, start=zero)
    fedavg, _, _ = fit(algos.FedAvg(weighted=False), **kwargs)
    feddyn, _, _ = fit(algos.FedDyn(alpha=1.0), **kwargs)
    assert float((weights(fedavg) - optimum).norm()) > 0.5
    assert float((weights(feddyn) - optimum).norm()) < 1e-3
    torch.testing.assert_close(weights(feddyn), reference(20, 1.0, a=a, b=b, steps=20, lr=0.05, start=zero)[0],
                               rtol=0, atol=1e-10)


def test_the_server_state_round_trips_and_refuses_another_model():
    algorithm = algos.FedDyn(alpha=0.1)
    fit(algorithm, rounds=1)
    saved = algorithm.aggregator.state_dict()
    assert sorted(saved) == ["h", "names"] and saved["names"] == ["u", "v"]
    other = FedDynAggregator(alpha=0.1, num_clients=3)
    other.setup(Quadratic())
    other.load_state_dict(saved)
    assert all(torch.equal(x, y) for x, y in zip(other.h.values(), algorithm.aggregator.h.values()))
    stranger = FedDynAggregator(alpha=0.1, num_clients=3)
    stranger.setup(torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match=r"^Expected FedDyn's server state over the parameters \['weight', 'bias'\]"):
        stranger.load_state_dict(saved)


def test_mismatched_alphas_and_an_unknown_federation_are_refused_before_training():
    loop = FederatedLoop(rounds=1, clients_per_round=3, aggregator=FedDynAggregator(alpha=0.1),
                         callbacks=[FedDynCallback(alpha=0.2)], enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"^Expected the FedDyn aggregator's `alpha` to be the clients' 0.2, got 0.1\.$"):
        loop.fit(Quadratic(), quadratic_clients())
    alone = FederatedLoop(rounds=1, clients_per_round=3, aggregator=FedDynAggregator(alpha=0.1),
                          enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"^Expected FedDyn's aggregator to know the federation size m"):
        alone.fit(Quadratic(), quadratic_clients())


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_a_non_positive_alpha_is_refused_when_built(alpha):
    with pytest.raises(ValueError, match=r"alpha"):
        algos.FedDyn(alpha=alpha)


def test_the_aggregator_alone_with_num_clients_is_the_paper_server_step():
    """Without the client terms (FedAvg's clients), the server still applies h: a hand computation."""
    agg = FedDynAggregator(alpha=0.5, num_clients=2)
    loop = FederatedLoop(rounds=1, clients_per_round=3, aggregator=agg, enable_progress_bar=False, seed=0)
    module = Quadratic()
    loop.fit(module, quadratic_clients())
    trained = torch.stack([local_sgd(W0, i) for i in range(3)])
    h = -0.5 / 2 * (trained - W0).sum(0)
    torch.testing.assert_close(weights(module), trained.mean(0) - h / 0.5, rtol=0, atol=1e-12)


# -------------------------------------------------------------------------- resume and workers
class Crash(FederatedCallback):
    def on_round_start(self, loop, module):
        if loop.round == 2:
            raise RuntimeError("crash at round 2")


def run(synthetic, checkpoint_dir=None, ckpt_path=None, extra=(), executor=None, rounds=4):
    train, val = synthetic
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True, momentum=0.5)
    parts = partition_dirichlet(train.tensors[1].numpy(), num_clients=8, alpha=0.5, min_size=8, seed=0)
    loop = FederatedLoop(rounds=rounds, clients_per_round=3, local_steps=2, seed=0, enable_progress_bar=False,
                         checkpoint_dir=checkpoint_dir, callbacks=list(extra), algorithm=algos.FedDyn(alpha=0.1),
                         executor=executor)
    result = loop.fit(model, make_clients(train, parts, batch_size=8), val_dataloaders=DataLoader(val, batch_size=60),
                      ckpt_path=ckpt_path)
    return state_of(model), result


def test_feddyn_resumes_bit_for_bit_after_a_crash_at_round_2(synthetic, tmp_path):
    expected, result = run(synthetic)
    with pytest.raises(RuntimeError, match="crash at round 2"):
        run(synthetic, checkpoint_dir=tmp_path, extra=[Crash()])
    resumed, resumed_result = run(synthetic, checkpoint_dir=tmp_path, ckpt_path="last")
    assert all(torch.equal(v, expected[k]) for k, v in resumed.items())
    assert resumed_result.history == result.history and [r["round"] for r in result.history] == [0, 1, 2, 3]
    assert resumed_result.client_history == result.client_history


@linux_only
@pytest.mark.slow
def test_two_workers_equal_one_process_bit_for_bit(synthetic):
    one, one_result = run(synthetic, rounds=3)
    two, two_result = run(synthetic, rounds=3, executor=distributed.DistributedExecutor(workers=2, timeout=60.0))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert one_result.history == two_result.history
    assert one_result.client_history == two_result.client_history


def test_feddyn_with_a_user_aggregator_keeps_its_clients_terms():
    """The client side alone with FedAvg: in round 0 (g_i = 0, w_start = w) each client's extra gradient is
    alpha (v - w), as written out."""
    module = Quadratic()
    loop = FederatedLoop(rounds=1, clients_per_round=3, aggregator=FedAvg(weighted=False),
                         callbacks=[FedDynCallback(alpha=0.3)], enable_progress_bar=False, seed=0)
    loop.fit(module, quadratic_clients())
    expected = torch.stack([local_sgd(W0, i, extra=lambda v: 0.3 * (v - W0)) for i in range(3)]).mean(0)
    torch.testing.assert_close(weights(module), expected, rtol=0, atol=1e-12)
