"""MoFedSAM and FedLESAM: each client step against a float64 hand computation on the quadratic of test_fedsam.py,
the server direction each keeps, the refusals, SAM-family steps under bf16-mixed, a bit-for-bit resume and two
workers equal to one process."""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import TinyModule
from lightning.pytorch import Callback, LightningModule
from test_fedsam import LR, STEPS, W0, A, B, Crash, Manual, Quadratic, Trained, clients, fit, grad, run, weights
from torch.utils.data import DataLoader, TensorDataset

from lightning_fedmut import Client, FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut import algorithms as algos
from lightning_fedmut.algorithms import build_algorithm, names
from lightning_fedmut.callbacks.lesam import LESAM, FixedPerturbationStep
from lightning_fedmut.callbacks.mofedsam import MoSAM

distributed = pytest.importorskip("lightning_fedmut.distributed")
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="workers are forked; tested on Linux")


# ------------------------------------------------------------------------------------------- MoFedSAM
def mofedsam_reference(rounds, rho, alpha):
    """MoFedSAM by hand in float64: ``v = alpha grad F(w + e) + (1 - alpha) Delta``, ``w <- w - lr v``; the server
    takes the uniform mean and ``Delta = (w_old - w_new) / (K lr)``."""
    w, delta, deltas = W0.clone(), torch.zeros(3, dtype=torch.float64), []
    for _ in range(rounds):
        trained = []
        for i in range(len(A)):
            v = w.clone()
            for _ in range(STEPS):
                g = grad(v, i)
                e = rho * g / (g.norm() + 1e-12)
                v = v - LR * (alpha * grad(v + e, i) + (1 - alpha) * delta)
            trained.append(v)
        new = torch.stack(trained).mean(0)
        delta = (w - new) / (STEPS * LR)
        deltas.append(delta)
        w = new
    return w, deltas


def direction_of(result_loop_callbacks):
    momentum = next(cb for cb in result_loop_callbacks if isinstance(cb, MoSAM))
    d = momentum.direction
    return torch.cat([d["weight"], d["bias"]])


def test_mofedsam_matches_the_float64_hand_computation():
    algorithm = algos.MoFedSAM(rho=0.05, alpha=0.3)
    module, _ = fit(algorithm, rounds=3)
    expected, deltas = mofedsam_reference(3, rho=0.05, alpha=0.3)
    torch.testing.assert_close(weights(module), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(direction_of(algorithm.local), deltas[-1], rtol=0, atol=1e-12)
    # the server momentum matters: without it (alpha = 1 is FedSAM) the model differs
    assert float((expected - mofedsam_reference(3, rho=0.05, alpha=1.0)[0]).abs().max()) > 1e-3


def test_mofedsam_with_alpha_one_is_fedsam_bit_for_bit():
    mo, _ = fit(algos.MoFedSAM(rho=0.05, alpha=1.0), rounds=2)
    sam, _ = fit(algos.FedSAM(rho=0.05, weighted=False), rounds=2)
    assert torch.equal(weights(mo), weights(sam))


def test_mofedsam_mixes_before_clipping():
    """``gradient_clip_val`` clips ``v``, the mixed gradient (the reference code clips it to 10)."""
    module, _ = fit(algos.MoFedSAM(rho=0.05, alpha=0.3), rounds=2, trainer_kwargs={"gradient_clip_val": 0.5})
    w, delta = W0.clone(), torch.zeros(3, dtype=torch.float64)
    for _ in range(2):
        trained = []
        for i in range(len(A)):
            v = w.clone()
            for _ in range(STEPS):
                g = grad(v, i)
                mixed = 0.3 * grad(v + 0.05 * g / (g.norm() + 1e-12), i) + 0.7 * delta
                v = v - LR * mixed * min(1.0, 0.5 / (float(mixed.norm()) + 1e-6))
            trained.append(v)
        new = torch.stack(trained).mean(0)
        delta, w = (w - new) / (STEPS * LR), new
    torch.testing.assert_close(weights(module), w, rtol=0, atol=1e-12)


class HalfRate(Quadratic):
    """Two parameter groups: the bias steps at half the rate."""

    def configure_optimizers(self):
        return torch.optim.SGD([{"params": [self.weight]}, {"params": [self.bias], "lr": LR / 2}], lr=LR)


def test_mofedsam_divides_each_parameter_by_its_own_step_sizes():
    algorithm = algos.MoFedSAM(rho=0.05, alpha=0.5)
    module = HalfRate()
    FederatedLoop(rounds=1, clients_per_round=2, algorithm=algorithm, enable_progress_bar=False, seed=0).fit(
        module, clients())
    lrs = torch.tensor([LR, LR, LR / 2], dtype=torch.float64)
    trained = []
    for i in range(len(A)):
        v = W0.clone()
        for _ in range(STEPS):
            g = grad(v, i)
            v = v - lrs * 0.5 * grad(v + 0.05 * g / (g.norm() + 1e-12), i)
        trained.append(v)
    new = torch.stack(trained).mean(0)
    torch.testing.assert_close(direction_of(algorithm.local), (W0 - new) / (STEPS * lrs), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------- FedLESAM
def lesam_client(w, i, e):
    w = w.clone()
    for _ in range(STEPS):
        w = w - LR * grad(w + e, i)
    return w


def lesam_reference(rounds, rho):
    """FedLESAM by hand: round 0 plain steps; then ``e = rho (w_old - w) / |w_old - w|`` for every step."""
    w, old = W0.clone(), None
    for _ in range(rounds):
        e = torch.zeros(3, dtype=torch.float64) if old is None else rho * (old - w) / ((old - w).norm() + 1e-12)
        new = torch.stack([lesam_client(w, i, e) for i in range(len(A))]).mean(0)
        old, w = w, new
    return w


@pytest.mark.parametrize("estimate", ["global", "client"])
def test_fedlesam_matches_the_float64_hand_computation(estimate):
    """With every client in every round, the two estimates of the previous global model are the same."""
    module, _ = fit(algos.FedLESAM(rho=0.2, estimate=estimate), rounds=3)
    expected = lesam_reference(3, rho=0.2)
    torch.testing.assert_close(weights(module), expected, rtol=0, atol=1e-12)
    assert float((expected - lesam_reference(3, rho=0.0)).abs().max()) > 1e-3  # the perturbation matters


def test_fedlesam_keeps_the_last_global_update_on_the_server():
    algorithm = algos.FedLESAM(rho=0.2)
    module, _ = fit(algorithm, rounds=2)
    previous = lesam_reference(1, rho=0.2)
    d = algorithm.local[0].direction
    torch.testing.assert_close(torch.cat([d["weight"], d["bias"]]), previous - weights(module), rtol=0, atol=0)


def three_clients():
    a = torch.cat([A, torch.tensor([[2.0, 1.0, 0.5]], dtype=torch.float64)])
    b = torch.cat([B, torch.tensor([[0.0, 1.0, 1.0]], dtype=torch.float64)])
    data = [Client(id=i, data=DataLoader(TensorDataset(a[i].repeat(STEPS, 1), b[i].repeat(STEPS, 1)), batch_size=1))
            for i in range(3)]
    return a, b, data


def test_fedlesam_client_estimate_uses_the_global_model_the_client_last_received():
    """One client of three per round: the paper's estimate differs from the server's last global update."""
    a, b, data = three_clients()

    def by_hand(estimate, order):
        w, old_global, received = W0.clone(), None, {}
        for i in order:
            old = old_global if estimate == "global" else received.get(i)
            e = torch.zeros(3, dtype=torch.float64) if old is None else 0.2 * (old - w) / ((old - w).norm() + 1e-12)
            v = w.clone()
            for _ in range(STEPS):
                v = v - LR * a[i] * (v + e - b[i])
            received[i], old_global, w = w, w, v
        return w

    results = {}
    for estimate in ("global", "client"):
        module = Quadratic()
        loop = FederatedLoop(rounds=6, clients_per_round=1, algorithm=algos.FedLESAM(rho=0.2, estimate=estimate),
                             enable_progress_bar=False, seed=0)
        result = loop.fit(module, data)
        order = [r["client_id"] for r in result.client_history]
        torch.testing.assert_close(weights(module), by_hand(estimate, order), rtol=0, atol=1e-12)
        results[estimate] = (weights(module), order)
    assert results["global"][1] == results["client"][1]
    assert float((results["global"][0] - results["client"][0]).abs().max()) > 1e-6


class CountSteps(Callback):
    def __init__(self, counts):
        self.counts = counts

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.counts["batches"] += 1

    def on_before_backward(self, trainer, pl_module, loss):
        self.counts["backward"] += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.counts["before_step"] += 1


class AddCounter(FederatedCallback):
    def __init__(self):
        self.counts = {"batches": 0, "backward": 0, "before_step": 0}

    def on_client_fit_start(self, loop, module, task):
        task.callbacks.append(CountSteps(self.counts))


def test_fedlesam_takes_one_forward_and_backward_pass_a_step():
    counter = AddCounter()
    fit(algos.FedLESAM(rho=0.2), rounds=2, callbacks=[counter])
    assert counter.counts == {"batches": 4 * STEPS, "backward": 4 * STEPS, "before_step": 4 * STEPS}


def test_the_fixed_perturbation_step_restores_the_weights_exactly():
    module = Quadratic()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.0)
    step = FixedPerturbationStep({"weight": torch.tensor([0.1, -0.3], dtype=torch.float64)})
    step._params = [module.weight]
    step._shifts = [torch.tensor([0.1, -0.3], dtype=torch.float64)]
    step._start = [module.weight.detach().clone()]
    seen = []

    def closure():
        seen.append(module.weight.detach().clone())
        optimizer.zero_grad()
        loss = (module.weight ** 2).sum()
        loss.backward()
        return loss

    step.wrapped_step(optimizer, optimizer.step, closure)
    assert seen[0].tolist() == (W0[:2] + torch.tensor([0.1, -0.3], dtype=torch.float64)).tolist()
    assert torch.equal(module.weight.detach(), W0[:2])  # lr 0: the step left w, restored bit for bit
    assert module.weight.grad.tolist() == (2 * seen[0]).tolist()  # the gradient at w + e


# ------------------------------------------------------------------------------------------- robustness
class Bf16Quadratic(LightningModule):
    """``loss = 1/2 |x w - y|^2 / n`` in float32: its matmul runs in bf16 under ``bf16-mixed`` on the CPU."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([0.3, -0.8, 0.2]))
        self.bias = torch.nn.Parameter(torch.tensor([0.1]))

    def training_step(self, batch, batch_idx):
        x, y = batch
        pred = x @ self.weight.unsqueeze(-1) + self.bias
        return 0.5 * ((pred.squeeze(-1).float() - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


X = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 2.0], [2.0, 0.0, 1.0], [-1.0, 1.0, 0.5]])
Y = torch.tensor([1.0, -2.0, 0.5, 3.0])


def bf16_reference(preset, rounds=2):
    x, y = X.double(), Y.double()

    def g(w):
        r = x @ w[:3] + w[3] - y
        return torch.cat([x.T @ r, r.sum(0, keepdim=True)]) / len(y)

    w, old, delta = torch.tensor([0.3, -0.8, 0.2, 0.1], dtype=torch.float64), None, torch.zeros(4, dtype=torch.float64)
    for _ in range(rounds):
        v = w.clone()
        for _ in range(2):  # two steps on the one client's full batch
            if preset == "FedSAM":
                s = g(v)
                v = v - 0.1 * g(v + 0.3 * s / s.norm())
            elif preset == "MoFedSAM":
                s = g(v)
                v = v - 0.1 * (0.5 * g(v + 0.05 * s / s.norm()) + 0.5 * delta)
            elif preset == "plain":
                v = v - 0.1 * g(v)
            else:
                e = torch.zeros(4, dtype=torch.float64) if old is None else 0.5 * (old - w) / (old - w).norm()
                v = v - 0.1 * g(v + e)
        delta, old, w = (w - v) / (2 * 0.1), w, v
    return w


BF16_ATOL = 5e-3
BF16 = {"FedSAM": lambda: algos.FedSAM(rho=0.3, weighted=False), "MoFedSAM": lambda: algos.MoFedSAM(alpha=0.5),
        "FedLESAM": lambda: algos.FedLESAM(rho=0.5)}


@pytest.mark.parametrize("preset", list(BF16))
def test_sam_family_steps_run_under_bf16_mixed_within_bf16_tolerance(preset):
    module = Bf16Quadratic()
    data = [Client(id=0, data=DataLoader(TensorDataset(X, Y), batch_size=4)), ]
    FederatedLoop(rounds=2, clients_per_round=1, local_steps=2, algorithm=BF16[preset](), seed=0,
                  trainer_kwargs={"precision": "bf16-mixed"}, enable_progress_bar=False).fit(module, data)
    got = torch.cat([module.weight.detach(), module.bias.detach()]).double()
    expected = bf16_reference(preset)
    assert float((got - expected).abs().max()) > 1e-5  # the matmuls did run in bf16 (float32 would agree to 1e-7)
    torch.testing.assert_close(got, expected, rtol=0, atol=BF16_ATOL)  # bf16 keeps 8 bits of mantissa
    assert float((expected - bf16_reference("plain")).abs().max()) > 5 * BF16_ATOL  # the method is not plain SGD


@pytest.mark.parametrize("preset", ["MoFedSAM", "FedLESAM"])
@pytest.mark.parametrize(("module", "trainer_kwargs", "message"), [
    (Manual, {}, r"^Expected automatic optimization with SAM .*got a module with `automatic_optimization = False`\.$"),
    (Quadratic, {"accumulate_grad_batches": 2},
     r"^Expected `accumulate_grad_batches` = 1 with SAM \(each SAM step needs its own two gradients\), got 2\.$"),
    (Quadratic, {"precision": "16-mixed"}, r"^Expected a precision without a gradient scaler with SAM"),
])
def test_refusals_come_before_any_client_trains(preset, module, trainer_kwargs, message):
    trained = Trained()
    loop = FederatedLoop(rounds=1, clients_per_round=2, algorithm=build_algorithm(preset), callbacks=[trained],
                         trainer_kwargs=trainer_kwargs, enable_progress_bar=False, seed=0)
    with pytest.raises(ValueError, match=message):
        loop.fit(module(), clients())
    assert trained.clients == 0


@pytest.mark.parametrize(("build", "message"), [
    (lambda: MoSAM(alpha=1.5), r"alpha"), (lambda: MoSAM(rho=0.0), r"rho"), (lambda: LESAM(rho=-1.0), r"rho"),
    (lambda: LESAM(estimate="server"), r"^Expected `estimate` in \['global', 'client'\], got 'server'\.$"),
])
def test_bad_settings_are_refused_when_built(build, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build()


def test_the_presets_are_registered():
    assert {"MoFedSAM", "FedLESAM"} <= set(names())
    assert build_algorithm("mofedsam", {"alpha": 0.2}).hparams == {"rho": 0.05, "alpha": 0.2, "weighted": False}
    assert build_algorithm("FedLESAM", {"estimate": "client"}).hparams == {"rho": 0.05, "estimate": "client",
                                                                            "weighted": False}


# -------------------------------------------------------------------------------------- resume and workers
PRESETS = {"MoFedSAM": lambda: algos.MoFedSAM(rho=0.05, alpha=0.5), "FedLESAM": lambda: algos.FedLESAM(rho=0.1),
           "FedLESAM-client": lambda: algos.FedLESAM(rho=0.1, estimate="client")}


@pytest.mark.parametrize("name", list(PRESETS))
def test_resumes_bit_for_bit_after_a_crash_at_round_2(name, synthetic, tmp_path):
    expected, result = run(PRESETS[name](), synthetic)
    with pytest.raises(RuntimeError, match="crash at round 2"):
        run(PRESETS[name](), synthetic, checkpoint_dir=tmp_path, extra=[Crash()])
    resumed, resumed_result = run(PRESETS[name](), synthetic, checkpoint_dir=tmp_path, ckpt_path="last")
    assert all(torch.equal(v, expected[k]) for k, v in resumed.items())
    assert resumed_result.history == result.history and [r["round"] for r in result.history] == [0, 1, 2, 3]
    assert resumed_result.client_history == result.client_history


@linux_only
@pytest.mark.slow
@pytest.mark.parametrize("name", list(PRESETS))
def test_two_workers_equal_one_process_bit_for_bit(name, synthetic):
    one, one_result = run(PRESETS[name](), synthetic, rounds=3)
    two, two_result = run(PRESETS[name](), synthetic, rounds=3,
                          executor=distributed.DistributedExecutor(workers=2, timeout=60.0))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert one_result.history == two_result.history
    assert one_result.client_history == two_result.client_history


def test_direction_memory_is_one_model_for_the_global_estimate(synthetic):
    """The server keeps one direction of the trainable parameters' size; no client state is stored."""
    train, _ = synthetic
    torch.manual_seed(0)
    model = TinyModule()
    algorithm = algos.FedLESAM(rho=0.1)
    loop = FederatedLoop(rounds=2, clients_per_round=2, local_steps=1, algorithm=algorithm, seed=0,
                         enable_progress_bar=False)
    loop.fit(model, make_clients(train, [list(range(40)), list(range(40, 80)), list(range(80, 120))],
                                 batch_size=8))
    direction = algorithm.local[0].direction
    assert {k: v.shape for k, v in direction.items()} == {k: p.shape for k, p in model.named_parameters()}
    assert len(loop.client_states) == 0
