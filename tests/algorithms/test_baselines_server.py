"""Server-side baselines: the FedOpt family, FedExP and ServerReport, against float64 references written here."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from helpers import TinyModule, make_result, state_of
from test_baselines_quadratic import W0, Quadratic, fit, local_sgd, quadratic_clients, weights
from torch.utils.data import DataLoader, TensorDataset

from lightning_fedmut import FedAvg, FederatedLoop, make_clients
from lightning_fedmut.aggregators import FedAdagrad, FedAdam, FedAvgM, FedExP, FedYogi
from lightning_fedmut.callbacks import ServerReport
from lightning_fedmut.data import partition_iid
from lightning_fedmut.functional import extrapolated_lr

F64 = torch.float64


def run_rounds(aggregator, client_weights, start):
    """Feed ``aggregator`` rounds of client states ``{"w": ...}`` from a global ``start``; the globals after each."""
    glb, out = start.clone(), []
    for clients in client_weights:
        aggregator.reset()
        for w in clients:
            aggregator.update(SimpleNamespace(state={"w": w.clone()}, num_examples=1))
        glb = aggregator.compute({"w": glb})["w"].clone()
        out.append(glb)
    return out


ROUNDS = [  # three rounds of two clients' weights, 3 coordinates
    [torch.tensor([0.5, -0.2, 0.1], dtype=F64), torch.tensor([0.3, 0.4, 0.0], dtype=F64)],
    [torch.tensor([0.2, 0.9, -0.4], dtype=F64), torch.tensor([0.6, 0.1, 0.2], dtype=F64)],
    [torch.tensor([1.0, 0.0, 0.3], dtype=F64), torch.tensor([-0.2, 0.5, 0.3], dtype=F64)],
]
START = torch.tensor([0.1, 0.1, 0.1], dtype=F64)


def adaptive_reference(rule, server_lr, beta1, beta2, tau, bias_correction=False, v0=None):
    """Reddi et al.'s Algorithm 2, written out coordinate by coordinate in float64 (Python floats)."""
    x = START.tolist()
    m, v = [0.0] * 3, [tau**2 if v0 is None else v0] * 3
    out = []
    for t, clients in enumerate(ROUNDS, start=1):
        mean = [sum(float(c[j]) for c in clients) / len(clients) for j in range(3)]
        for j in range(3):
            d = mean[j] - x[j]
            m[j] = beta1 * m[j] + (1 - beta1) * d
            if rule == "adagrad":
                v[j] = v[j] + d * d
            elif rule == "adam":
                v[j] = beta2 * v[j] + (1 - beta2) * d * d
            else:
                v[j] = v[j] - (1 - beta2) * d * d * math.copysign(1.0, v[j] - d * d) * (v[j] != d * d)
            lr = server_lr * math.sqrt(1 - beta2**t) / (1 - beta1**t) if bias_correction else server_lr
            x[j] = x[j] + lr * m[j] / (math.sqrt(v[j]) + tau)
        out.append(torch.tensor(x, dtype=F64))
    return out


# ------------------------------------------------------------------------------------------ FedOpt
def test_fedadam_first_steps_match_a_hand_written_reference():
    got = run_rounds(FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3), ROUNDS, START)
    want = adaptive_reference("adam", 0.1, 0.9, 0.99, 1e-3)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)
    # the very first step by hand: d = 0.4 - 0.1 = 0.3, m = 0.03, v = 0.99e-6 + 0.01 * 0.09 = 0.00090099
    assert float(got[0][0]) == pytest.approx(0.1 + 0.1 * 0.03 / (math.sqrt(0.00090099) + 1e-3), abs=1e-15)


def test_fedadam_bias_correction_is_adams_at_server_step_t():
    got = run_rounds(FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3, bias_correction=True,
                             initial_accumulator=0.0), ROUNDS, START)
    want = adaptive_reference("adam", 0.1, 0.9, 0.99, 1e-3, bias_correction=True, v0=0.0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("cls", "rule", "kwargs"), [
    (FedAdagrad, "adagrad", {"server_lr": 0.1, "beta1": 0.5, "tau": 1e-2}),
    (FedYogi, "yogi", {"server_lr": 0.05, "beta1": 0.9, "beta2": 0.9, "tau": 1e-3}),
])
def test_fedadagrad_and_fedyogi_match_the_reference(cls, rule, kwargs):
    got = run_rounds(cls(**kwargs), ROUNDS, START)
    want = adaptive_reference(rule, kwargs["server_lr"], kwargs["beta1"], kwargs.get("beta2", 0.0), kwargs["tau"])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


def test_fedavgm_matches_its_momentum_reference():
    got = run_rounds(FedAvgM(server_lr=0.7, momentum=0.9), ROUNDS, START)
    x, v = START.clone(), torch.zeros(3, dtype=F64)
    for clients, g in zip(ROUNDS, got):
        v = 0.9 * v + (torch.stack(clients).mean(0) - x)
        x = x + 0.7 * v
        torch.testing.assert_close(g, x, rtol=0, atol=1e-12)


def test_fedavgm_without_momentum_at_server_lr_one_is_fedavg(synthetic):
    train, _ = synthetic
    clients = make_clients(train, partition_iid(len(train), 6, seed=0), batch_size=16)
    finals = []
    for aggregator in (FedAvg(weighted=True), FedAvgM(server_lr=1.0, momentum=0.0, weighted=True)):
        torch.manual_seed(0)
        model = TinyModule(batch_norm=True)
        FederatedLoop(rounds=3, clients_per_round=3, local_steps=2, aggregator=aggregator,
                      enable_progress_bar=False, seed=0).fit(model, clients)
        finals.append(state_of(model))
    for key, value in finals[0].items():
        if value.is_floating_point():
            torch.testing.assert_close(finals[1][key], value, rtol=1e-6, atol=1e-7)
        else:  # num_batches_tracked: the maximum, as FedAvg's
            assert torch.equal(finals[1][key], value)


def test_fedadam_in_the_loop_steps_parameters_and_averages_buffers():
    """On the quadratic problem: server Adam on the pseudo-gradient of the clients' mean, by hand."""
    module, _ = fit(aggregator=FedAdam(server_lr=0.05), rounds=2)
    x, m, v = W0.clone(), torch.zeros(2, dtype=F64), torch.full((2,), 1e-6, dtype=F64)
    for _ in range(2):
        d = torch.stack([local_sgd(x, i) for i in range(3)]).mean(0) - x
        m = 0.9 * m + 0.1 * d
        v = 0.99 * v + 0.01 * d * d
        x = x + 0.05 * m / (v.sqrt() + 1e-3)
    torch.testing.assert_close(weights(module), x, rtol=0, atol=1e-12)

    agg = FedAdam()
    bn = TinyModule(batch_norm=True)
    agg.setup(bn)
    state = state_of(bn)
    agg.reset()
    for shift in (1.0, 3.0):
        agg.update(make_result({k: v + shift if v.is_floating_point() else v + int(shift) for k, v in state.items()}))
    new = agg.compute(state)
    torch.testing.assert_close(new["net.1.running_mean"], state["net.1.running_mean"] + 2.0)  # the plain mean
    assert torch.equal(new["net.1.num_batches_tracked"], state["net.1.num_batches_tracked"] + 3)  # the maximum
    assert set(agg.buffers()["exp_avg"]) == {k for k, _ in bn.named_parameters()}  # only parameters stepped


def test_server_optimizer_state_is_checkpointed_and_restored():
    first, second = FedYogi(server_lr=0.1), FedYogi(server_lr=0.1)
    run_rounds(first, ROUNDS[:2], START)
    second.load_state_dict(first.state_dict())
    after_two = run_rounds(FedYogi(server_lr=0.1), ROUNDS[:2], START)[-1]
    continued, resumed = run_rounds(first, ROUNDS[2:], after_two), run_rounds(second, ROUNDS[2:], after_two)
    assert torch.equal(continued[0], resumed[0])
    assert second.steps == 3 and second.metrics["fedyogi/step_norm"] > 0


@pytest.mark.parametrize(("make", "message"), [
    (lambda: FedAdam(tau=0.0), r"Expected `tau` to be a float > 0, got 0.0."),
    (lambda: FedAvgM(server_lr=-1), r"Expected `server_lr` to be a float > 0, got -1.0."),
    (lambda: FedAvgM(momentum=1.0), r"Expected `momentum` in \[0.0, 1.0\), got 1.0."),
    (lambda: FedYogi(beta2=1.5), r"Expected `beta2` in \[0.0, 1.0\), got 1.5."),
    (lambda: FedExP(epsilon=-1), r"Expected `epsilon` in \[0.0, inf\), got -1.0."),
])
def test_bad_server_optimizer_arguments_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ------------------------------------------------------------------------------------------ FedExP
def test_fedexp_step_is_at_least_one_and_equals_the_formula():
    g = torch.Generator().manual_seed(0)
    module = torch.nn.Linear(4, 3)
    glb = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for spread in (0.01, 1.0, 10.0):  # clients that agree, and clients that disagree more and more
        agg = FedExP(epsilon=1e-3)
        agg.setup(module)
        agg.reset()
        updates = [{k: spread * torch.randn(v.shape, generator=g) + 0.1 for k, v in glb.items()} for _ in range(3)]
        for u in updates:
            agg.update(make_result({k: glb[k] + u[k] for k in glb}))
        new = agg.compute(glb)
        sq = [sum(float(u[k].double().pow(2).sum()) for k in glb) for u in updates]
        mean = {k: torch.stack([u[k].double() for u in updates]).mean(0) for k in glb}
        mean_sq = sum(float(m.pow(2).sum()) for m in mean.values())
        eta = max(1.0, (sum(sq) / 3) / (2 * (mean_sq + 1e-3)))
        assert agg.metrics["fedexp/server_lr"] == pytest.approx(eta, rel=1e-6) and eta >= 1.0
        for k, value in glb.items():
            torch.testing.assert_close(new[k].double(), value.double() + eta * mean[k], rtol=1e-5, atol=1e-6)
    assert eta > 1.0  # the clients that disagree most are extrapolated


def test_fedexp_in_the_loop_matches_the_float64_reference():
    module, result = fit(aggregator=FedExP(epsilon=1e-3), callbacks=[ServerReport()], rounds=2)
    x = W0.clone()
    for r in range(2):
        ws = torch.stack([local_sgd(x, i) for i in range(3)])
        d = ws - x
        eta = max(1.0, float((d * d).sum(1).mean()) / (2 * (float(d.mean(0).pow(2).sum()) + 1e-3)))
        x = x + eta * d.mean(0)
        assert result.history[r]["fedexp/server_lr"] == pytest.approx(eta, rel=1e-12)
    torch.testing.assert_close(weights(module), x, rtol=0, atol=1e-12)


def test_fedexp_needs_the_global_model():
    with pytest.raises(RuntimeError, match="call `setup\\(module\\)` first"):
        FedExP().update(make_result({"w": torch.zeros(1)}))


# ------------------------------------------------------------------------------------ ServerReport
class Probe(Quadratic):
    """Logs its own two weights as validation metrics."""

    def validation_step(self, batch, batch_idx):
        self.log("val_u", self.u[0])
        self.log("val_v", self.v[0])


def probe_run(callbacks, rounds=3):
    module = Probe()
    loop = FederatedLoop(rounds=rounds, clients_per_round=3, aggregator=FedExP(epsilon=1e-3), callbacks=callbacks,
                         enable_progress_bar=False, seed=0)
    val = DataLoader(TensorDataset(torch.zeros(1, 1)), batch_size=1)
    return module, loop.fit(module, quadratic_clients(), val_dataloaders=val)


def test_server_report_logs_fedexp_figures_and_evaluates_the_average_of_the_last_two_iterates():
    plain_module, plain = probe_run([ServerReport()])
    module, averaged = probe_run([ServerReport(average_last_two=True)])
    assert torch.equal(weights(module), weights(plain_module))  # training goes on from the iterates
    iterates = [(row["val_u"], row["val_v"]) for row in plain.history]
    reported = [(row["val_u"], row["val_v"]) for row in averaged.history]
    assert reported[0] == iterates[0]  # round 0: no earlier iterate, as in the authors' code
    for r in (1, 2):
        assert reported[r] == pytest.approx(((iterates[r][0] + iterates[r - 1][0]) / 2,
                                             (iterates[r][1] + iterates[r - 1][1]) / 2), abs=1e-12)
    assert all(row["fedexp/server_lr"] >= 1.0 for row in plain.history)
    assert [row["fedexp/server_lr"] for row in plain.history] == [row["fedexp/server_lr"] for row in averaged.history]


def test_extrapolated_lr_edge_cases():
    assert extrapolated_lr(0.0, 0.0, 0.0) == 1.0  # every client returned the global model
    assert extrapolated_lr(1.0, 0.0, 0.5) == 1.0
    assert extrapolated_lr(8.0, 1.0, 0.0) == 4.0
    with pytest.raises(ValueError, match="Expected `epsilon` >= 0"):
        extrapolated_lr(1.0, 1.0, -1.0)
