"""The client-side baselines on a two-parameter quadratic problem, against float64 references written out here.

Client ``i`` minimises ``1/2 * sum_d a_id (w_d - b_id)^2`` over ``w = (u, v)`` (two parameters, two state keys)
with plain SGD; its data are identical rows ``(a_i, b_i)``, one optimizer step per row, so every local step is
known exactly and the whole federation can be replayed by hand in float64.
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader, TensorDataset

from lightning_fedmut import Client, FedAvg, FederatedCallback, FederatedLoop, MutationCallback
from lightning_fedmut.callbacks import FedMR, FedProx, Scaffold
from lightning_fedmut.callbacks.fedprox import ProximalTerm
from lightning_fedmut.callbacks.scaffold import CLIENT_CONTROL_KEY, step_size

A = torch.tensor([[1.0, 3.0], [4.0, 0.5], [2.0, 1.0]], dtype=torch.float64)
B = torch.tensor([[1.0, -2.0], [-1.0, 2.0], [0.5, 0.5]], dtype=torch.float64)
W0 = torch.tensor([0.3, -0.2], dtype=torch.float64)
LR, STEPS = 0.1, 4


class Quadratic(LightningModule):
    """``w = (u, v)``; the loss of a batch of rows ``(a, b)`` is ``mean_rows 1/2 sum_d a_d (w_d - b_d)^2``."""

    def __init__(self, start=W0, lr: float = LR, momentum: float = 0.0):
        super().__init__()
        self.u = torch.nn.Parameter(start[:1].clone())
        self.v = torch.nn.Parameter(start[1:].clone())
        self.lr, self.momentum = lr, momentum

    def training_step(self, batch, batch_idx):
        a, b = batch
        w = torch.cat([self.u, self.v])
        return (0.5 * a * (w - b) ** 2).sum(-1).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


def quadratic_clients(a=A, b=B, steps: int = STEPS) -> list[Client]:
    return [Client(id=i, data=DataLoader(TensorDataset(a[i].repeat(steps, 1), b[i].repeat(steps, 1)), batch_size=1))
            for i in range(len(a))]


def weights(module) -> torch.Tensor:
    return torch.cat([module.u.detach(), module.v.detach()])


def fit(callbacks=(), aggregator=None, rounds=2, a=A, b=B, steps=STEPS, lr=LR, start=W0, **kwargs):
    """Every client trains every round (``clients_per_round`` = all); returns the module and the result."""
    module = Quadratic(start=start, lr=lr)
    loop = FederatedLoop(rounds=rounds, clients_per_round=len(a), aggregator=aggregator or FedAvg(weighted=False),
                         callbacks=list(callbacks), enable_progress_bar=False, seed=0, **kwargs)
    result = loop.fit(module, quadratic_clients(a, b, steps))
    return module, result


def slot_order(result, round_index):
    """The client trained in each slot of a round, as the run recorded it."""
    rows = sorted((r for r in result.client_history if r["round"] == round_index), key=lambda r: r["slot"])
    return [r["client_id"] for r in rows]


def local_sgd(w, i, steps=STEPS, lr=LR, extra=lambda w: 0.0, a=A, b=B):
    """Client ``i``'s plain SGD from ``w``, with ``extra(w)`` added to each gradient."""
    w = w.clone()
    for _ in range(steps):
        w = w - lr * (a[i] * (w - b[i]) + extra(w))
    return w


class Recorder(FederatedCallback):
    """Float64 copies of each slot's start model and trained model, by round."""

    def __init__(self):
        self.starts, self.trained, self.clients = {}, {}, {}

    def on_client_fit_start(self, loop, module, task):
        self.clients[(loop.round, task.slot)] = task.client.id
        self.starts[(loop.round, task.slot)] = torch.cat([task.start_state["u"], task.start_state["v"]]).clone()

    def on_client_fit_end(self, loop, module, result):
        self.trained[(loop.round, result.task.slot)] = torch.cat([result.state["u"], result.state["v"]]).clone()


# ------------------------------------------------------------------------------------------- FedAvg
def test_the_harness_replays_uniform_fedavg_by_hand():
    module, result = fit()
    w = W0.clone()
    for _ in range(2):
        w = torch.stack([local_sgd(w, i) for i in range(3)]).mean(0)
    torch.testing.assert_close(weights(module), w, rtol=0, atol=1e-12)
    assert len(result.client_history) == 6


# ------------------------------------------------------------------------------------------ FedProx
def test_fedprox_matches_the_float64_reference():
    mu = 0.5
    module, result = fit(callbacks=[FedProx(mu=mu)])
    w = W0.clone()
    for _ in range(2):
        start = w
        w = torch.stack([local_sgd(start, i, extra=lambda x, s=start: mu * (x - s)) for i in range(3)]).mean(0)
    torch.testing.assert_close(weights(module), w, rtol=0, atol=1e-12)
    assert result.history[-1]["fedprox/mu"] == mu


def test_fedprox_with_mu_zero_is_fedavg_bit_for_bit(synthetic):
    from helpers import TinyModule, state_of

    from lightning_fedmut import make_clients
    from lightning_fedmut.data import partition_iid

    train, _ = synthetic
    clients = make_clients(train, partition_iid(len(train), 6, seed=0), batch_size=16)
    finals = []
    for callbacks in ([], [FedProx(mu=0.0)]):
        torch.manual_seed(0)
        model = TinyModule(momentum=0.5)
        FederatedLoop(rounds=2, clients_per_round=3, local_steps=3, aggregator=FedAvg(weighted=False),
                      callbacks=callbacks, enable_progress_bar=False, seed=0).fit(model, clients)
        finals.append(state_of(model))
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


def test_a_large_mu_keeps_each_client_near_its_start_model():
    drifts = {}
    for mu in (0.0, 10.0):
        recorder = Recorder()
        _, result = fit(callbacks=[FedProx(mu=mu), recorder], rounds=1)
        drifts[mu] = [float((recorder.trained[(0, s)] - recorder.starts[(0, s)]).norm()) for s in range(3)]
        logged = result.history[0]["fedprox/client_drift"]
        assert logged == pytest.approx(sum(drifts[mu]) / 3, rel=1e-12)
    assert all(strong < 0.5 * free for strong, free in zip(drifts[10.0], drifts[0.0]))


def test_fedprox_pulls_back_to_the_mutated_start_model():
    """With FedMut, w_start is the client's own (mutated) start, whatever the order of the two callbacks."""
    mu = 0.5
    recorder = Recorder()
    module, _ = fit(callbacks=[FedProx(mu=mu), MutationCallback(radius=2.0, acceleration=0.0), recorder])
    for r in range(2):
        trained = []
        for s in range(3):
            start = recorder.starts[(r, s)]
            trained.append(local_sgd(start, recorder.clients[(r, s)], extra=lambda x, st=start: mu * (x - st)))
        w = torch.stack(trained).mean(0)
    assert not torch.allclose(recorder.starts[(1, 0)], recorder.starts[(1, 1)])  # mutated starts
    torch.testing.assert_close(weights(module), w, rtol=0, atol=1e-12)


def test_fedprox_refuses_a_negative_mu():
    with pytest.raises(ValueError, match=r"Expected `mu` in \[0.0, inf\), got -1.0"):
        FedProx(mu=-1)
    with pytest.raises(ValueError, match="`mu`"):
        ProximalTerm(mu=float("nan"))


# ----------------------------------------------------------------------------------------- SCAFFOLD
def scaffold_reference(rounds, a=A, b=B, steps=STEPS, lr=LR, start=W0, order=None):
    """Karimireddy et al.'s option II, every client every round (|S| = N), in float64."""
    n = len(a)
    x, c = start.clone(), torch.zeros(2, dtype=torch.float64)
    ci = [torch.zeros(2, dtype=torch.float64) for _ in range(n)]
    for _ in range(rounds):
        ys, deltas = [], []
        for i in range(n):
            y = local_sgd(x, i, steps, lr, extra=lambda w, i=i, c=c: c - ci[i], a=a, b=b)
            new = ci[i] - c + (x - y) / (steps * lr)
            deltas.append(new - ci[i])
            ci[i] = new
            ys.append(y)
        x = torch.stack(ys).mean(0)
        c = c + torch.stack(deltas).sum(0) / n
    return x, c, ci


def test_scaffold_matches_the_float64_reference():
    scaffold = Scaffold()
    module, result = fit(callbacks=[scaffold], rounds=2)
    x, c, _ = scaffold_reference(2)
    torch.testing.assert_close(weights(module), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([scaffold.control["u"], scaffold.control["v"]]), c, rtol=0, atol=1e-12)
    assert result.history[-1]["scaffold/control_norm"] == pytest.approx(float(c.norm()), rel=1e-10)


def test_scaffold_keeps_client_control_variates_in_the_client_state_store():
    stored = {}

    class Peek(FederatedCallback):
        def on_fit_end(self, loop, module):
            stored.update({i: loop.client_states.get(i)[CLIENT_CONTROL_KEY] for i in range(3)})

    fit(callbacks=[Scaffold(), Peek()], rounds=2)
    _, _, ci = scaffold_reference(2)
    for i in range(3):
        torch.testing.assert_close(torch.cat([stored[i]["u"], stored[i]["v"]]), ci[i], rtol=0, atol=1e-12)


def test_scaffold_with_zero_control_variates_is_fedavg_in_its_first_round():
    fedavg, _ = fit(rounds=1)
    scaffold, _ = fit(callbacks=[Scaffold()], rounds=1)
    assert torch.equal(weights(fedavg), weights(scaffold))


def test_scaffold_corrects_client_drift_on_a_non_iid_quadratic():
    """Karimireddy et al.'s setting: clients with opposite curvatures and many local steps. FedAvg drifts to
    the mean of the local optima; SCAFFOLD's corrected steps reach the global optimum."""
    a = torch.tensor([[10.0, 1.0], [1.0, 10.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    optimum = (a * b).sum(0) / a.sum(0)  # the minimiser of sum_i 1/2 a_i (w - b_i)^2
    zero = torch.zeros(2, dtype=torch.float64)
    distance = {}
    for name, callbacks in (("fedavg", []), ("scaffold", [Scaffold()])):
        module, _ = fit(callbacks=callbacks, rounds=10, a=a, b=b, steps=20, lr=0.05, start=zero)
        distance[name] = float((weights(module) - optimum).norm())
    assert distance["fedavg"] > 0.5  # FedAvg stops near the mean of the local optima (0, 0)
    assert distance["scaffold"] < 0.05 * distance["fedavg"]


def test_scaffold_option_ii_step_size_reads_the_optimizer():
    assert step_size({"lr": 0.1}) == 0.1
    assert step_size({"lr": 0.1, "momentum": 0.0, "dampening": 0.0}) == 0.1
    assert step_size({"lr": 0.01, "momentum": 0.5, "dampening": 0.0}) == pytest.approx(0.02)
    assert step_size({"lr": 0.01, "momentum": 0.5, "dampening": 0.0, "nesterov": True}) == pytest.approx(0.02)
    assert step_size({"lr": 1e-3, "betas": (0.9, 0.999)}) == 1e-3  # Adam: the learning rate


def test_scaffold_refuses_a_federation_smaller_than_a_round():
    with pytest.raises(ValueError, match=r"Expected `num_clients` >= clients_per_round=3, got 2"):
        fit(callbacks=[Scaffold(num_clients=2)], rounds=1)
    with pytest.raises(ValueError, match=r"Expected `num_clients` to be an integer >= 1, got 0"):
        Scaffold(num_clients=0)


# -------------------------------------------------------------------------------------------- FedMR
def test_fedmr_start_models_are_per_key_permutations_of_the_trained_models():
    fedmr, recorder = FedMR(), Recorder()
    fit(callbacks=[fedmr, recorder], rounds=3)
    for r in (1, 2):
        trained = torch.stack([recorder.trained[(r - 1, s)] for s in range(3)])  # (slots, keys)
        starts = torch.stack([recorder.starts[(r, s)] for s in range(3)])
        for key in range(2):  # u and v: the multiset of each key's values is the trained models'
            assert sorted(starts[:, key].tolist()) == sorted(trained[:, key].tolist())
        assert not torch.equal(starts, trained)  # recombined, not handed back as they were (for this seed)


def test_fedmr_matches_the_float64_reference_with_its_recorded_permutations():
    tables = []

    class Tables(FederatedCallback):
        def on_after_aggregate(self, loop, module):
            tables.append(fedmr.permutations.clone())

    fedmr, recorder = FedMR(), Recorder()
    module, result = fit(callbacks=[fedmr, Tables(), recorder], rounds=2)
    starts = [W0.clone() for _ in range(3)]
    for r in range(2):
        trained = [local_sgd(starts[s], slot_order(result, r)[s]) for s in range(3)]
        glb = torch.stack(trained).mean(0)
        table = tables[r]  # slot s of the next round gets key j of slot table[j, s]
        starts = [torch.stack([trained[table[j, s]][j] for j in range(2)]) for s in range(3)]
    torch.testing.assert_close(weights(module), glb, rtol=0, atol=1e-12)
    assert result.history[0]["fedmr/recombined"] == 1.0


def test_fedmr_first_stage_starts_from_the_global_model():
    recorder = Recorder()
    _, result = fit(callbacks=[FedMR(first_stage_bound=1), recorder], rounds=3)
    glb_after_0 = torch.stack([recorder.trained[(0, s)] for s in range(3)]).mean(0)
    assert all(torch.equal(recorder.starts[(1, s)], glb_after_0) for s in range(3))  # round 0 < bound: global
    assert [row["fedmr/recombined"] for row in result.history] == [0.0, 1.0, 1.0]
    trained_1 = torch.stack([recorder.trained[(1, s)] for s in range(3)])
    starts_2 = torch.stack([recorder.starts[(2, s)] for s in range(3)])
    assert sorted(starts_2[:, 0].tolist()) == sorted(trained_1[:, 0].tolist())


def test_fedmr_refuses_to_run_with_fedmut():
    with pytest.raises(ValueError, match="FedMR and MutationCallback both replace"):
        fit(callbacks=[FedMR(), MutationCallback()], rounds=1)
