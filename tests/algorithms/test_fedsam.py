"""FedSAM and FedASAM: each client step against a float64 hand computation on a quadratic, the Lightning closure
the step relies on, the refusals, a bit-for-bit resume and two workers equal to one process."""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import TinyModule, state_of
from lightning.pytorch import Callback, LightningModule
from torch.utils.data import DataLoader, TensorDataset

from lightning_fedmut import Client, FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut import algorithms as algos
from lightning_fedmut.callbacks import SAM
from lightning_fedmut.callbacks.sam import SharpnessAwareStep
from lightning_fedmut.data import partition_dirichlet

distributed = pytest.importorskip("lightning_fedmut.distributed")
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="workers are forked; tested on Linux")

A = torch.tensor([[1.0, 3.0, 2.0], [4.0, 0.5, 1.0]], dtype=torch.float64)
B = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 2.0, -0.5]], dtype=torch.float64)
W0 = torch.tensor([0.3, -0.8, 0.2], dtype=torch.float64)
LR, STEPS = 0.1, 3


class Quadratic(LightningModule):
    """``w = (weight_0, weight_1, bias)``; a batch of rows ``(a, b)`` has the loss ``mean 1/2 sum_d a_d (w_d - b_d)^2``."""

    def __init__(self, start=W0):
        super().__init__()
        self.weight = torch.nn.Parameter(start[:2].clone())
        self.bias = torch.nn.Parameter(start[2:].clone())

    def training_step(self, batch, batch_idx):
        a, b = batch
        loss = (0.5 * a * (torch.cat([self.weight, self.bias]) - b) ** 2).sum(-1).mean()
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def clients():
    return [Client(id=i, data=DataLoader(TensorDataset(A[i].repeat(STEPS, 1), B[i].repeat(STEPS, 1)), batch_size=1))
            for i in range(len(A))]


def fit(algorithm, rounds=2, callbacks=(), **kwargs):
    module = Quadratic()
    loop = FederatedLoop(rounds=rounds, clients_per_round=len(A), algorithm=algorithm, callbacks=list(callbacks),
                         enable_progress_bar=False, seed=0, **kwargs)
    return module, loop.fit(module, clients())


def weights(module):
    return torch.cat([module.weight.detach(), module.bias.detach()])


def grad(w, i):
    return A[i] * (w - B[i])


def sam_client(w, i, rho, eta=None, clip=None):
    """Client ``i``'s SAM (``eta=None``) or ASAM steps from ``w`` in float64, written out."""
    w = w.clone()
    for _ in range(STEPS):
        g = grad(w, i)
        if eta is None:
            e = rho * g / (g.norm() + 1e-12)
        else:
            t = torch.cat([w[:2].abs() + eta, torch.ones(1, dtype=torch.float64)])  # the bias has T = 1
            e = rho * t * t * g / ((t * g).norm() + 1e-12)
        g_perturbed = grad(w + e, i)
        if clip is not None:
            g_perturbed = g_perturbed * min(1.0, clip / (float(g_perturbed.norm()) + 1e-6))
        w = w - LR * g_perturbed
    return w


def reference(rounds, **client_kwargs):
    w = W0.clone()
    for _ in range(rounds):
        w = torch.stack([sam_client(w, i, **client_kwargs) for i in range(len(A))]).mean(0)
    return w


def test_fedsam_matches_the_float64_hand_computation():
    module, _ = fit(algos.FedSAM(rho=0.05, weighted=False))
    torch.testing.assert_close(weights(module), reference(2, rho=0.05), rtol=0, atol=1e-12)


def test_fedsam_steps_differ_from_plain_sgd():
    """The perturbation matters: one round of FedSAM with a large rho is not FedAvg."""
    sam, _ = fit(algos.FedSAM(rho=0.5, weighted=False), rounds=1)
    fedavg, _ = fit(algos.FedAvg(weighted=False), rounds=1)
    assert float((weights(sam) - weights(fedavg)).abs().max()) > 1e-3
    torch.testing.assert_close(weights(sam), reference(1, rho=0.5), rtol=0, atol=1e-12)


def test_fedasam_scales_weights_and_leaves_the_bias_unscaled():
    module, _ = fit(algos.FedASAM(rho=0.5, eta=0.2, weighted=False))
    expected = reference(2, rho=0.5, eta=0.2)
    torch.testing.assert_close(weights(module), expected, rtol=0, atol=1e-12)
    assert float((expected - reference(2, rho=0.5)).abs().max()) > 1e-3  # ASAM is not SAM here


def test_norm_clipping_applies_to_the_gradient_at_the_perturbed_point():
    module, _ = fit(algos.FedSAM(rho=0.05, weighted=False), trainer_kwargs={"gradient_clip_val": 0.5})
    torch.testing.assert_close(weights(module), reference(2, rho=0.05, clip=0.5), rtol=0, atol=1e-12)


class CountHooks(Callback):
    """Counts Lightning's per-step hooks and records the SAM step's view of the closure."""

    def __init__(self, counts):
        self.counts = counts

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.counts["before_step"] += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.counts["losses"].append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module):
        step = next(cb for cb in trainer.callbacks if isinstance(cb, SharpnessAwareStep))
        self.counts["split"].append(step.split_closure)
        self.counts["sam_steps"] += step.steps


class AddCounter(FederatedCallback):
    def __init__(self):
        self.counts = {"before_step": 0, "losses": [], "split": [], "sam_steps": 0}

    def on_client_fit_start(self, loop, module, task):
        task.callbacks.append(CountHooks(self.counts))


def test_lightning_passes_the_closure_the_sam_step_splits():
    """Fails if Lightning moves the closure's structure (``partial(Precision._wrap_closure, model, optimizer,
    closure)``): hooks then run twice a step and the step's outputs come from the perturbed point."""
    counter = AddCounter()
    _, result = fit(algos.FedSAM(rho=0.05, weighted=False), rounds=1, callbacks=[counter])
    assert counter.counts["split"] == [True, True]
    assert counter.counts["sam_steps"] == counter.counts["before_step"] == 2 * STEPS  # hooks once per step
    w, expected = W0.clone(), []
    for _ in range(STEPS):  # client 0's losses at w, not at w + e
        expected.append(float((0.5 * A[0] * (w - B[0]) ** 2).sum()))
        g = grad(w, 0)
        w = w - LR * grad(w + 0.05 * g / (g.norm() + 1e-12), 0)
    assert counter.counts["losses"][:STEPS] == pytest.approx(expected, rel=1e-12)
    client0 = next(r for r in result.client_history if r["client_id"] == 0)
    assert client0["train_loss"] == pytest.approx(sum(expected) / STEPS, rel=1e-12)  # logged in the first pass only


def test_the_optimizer_step_is_restored_after_training():
    module = Quadratic()
    optimizer = module.configure_optimizers()
    step = SharpnessAwareStep(rho=0.1)
    step._wrapped.append((optimizer, None))
    optimizer.step = lambda *a, **k: None
    step._unwrap()
    assert "step" not in optimizer.__dict__ and step._wrapped == []


def test_batchnorm_running_statistics_see_one_pass_a_step(synthetic):
    train, _ = synthetic
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True)
    loop = FederatedLoop(rounds=1, clients_per_round=1, local_steps=3, algorithm=algos.FedSAM(), seed=0,
                         enable_progress_bar=False)
    loop.fit(model, make_clients(train, [list(range(40))], batch_size=8))
    assert int(model.net[1].num_batches_tracked) == 3


class Manual(Quadratic):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False


class Trained(FederatedCallback):
    def __init__(self):
        self.clients = 0

    def on_client_fit_start(self, loop, module, task):
        self.clients += 1


@pytest.mark.parametrize(("module", "trainer_kwargs", "message"), [
    (Manual, {}, r"^Expected automatic optimization with SAM .*got a module with `automatic_optimization = False`\.$"),
    (Quadratic, {"accumulate_grad_batches": 2},
     r"^Expected `accumulate_grad_batches` = 1 with SAM \(each SAM step needs its own two gradients\), got 2\.$"),
    (Quadratic, {"precision": "16-mixed"}, r"^Expected a precision without a gradient scaler with SAM"),
])
def test_refusals_come_before_any_client_trains(module, trainer_kwargs, message):
    trained = Trained()
    loop = FederatedLoop(rounds=1, clients_per_round=2, algorithm=algos.FedSAM(), callbacks=[trained],
                         trainer_kwargs=trainer_kwargs, enable_progress_bar=False, seed=0)
    with pytest.raises(ValueError, match=message):
        loop.fit(module(), clients())
    assert trained.clients == 0


def test_the_lightning_callback_refuses_accumulation_in_its_own_trainer():
    from lightning.pytorch import Trainer

    trainer = Trainer(accumulate_grad_batches=2, callbacks=[SharpnessAwareStep(rho=0.05)], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"^Expected `accumulate_grad_batches` = 1 with SAM"):
        trainer.fit(Quadratic(), clients()[0].data)


@pytest.mark.parametrize(("value", "message"), [
    ({"rho": 0.0}, r"rho"), ({"rho": float("nan")}, r"rho"), ({"eta": -0.1}, r"eta"),
    ({"adaptive": 1}, r"^Expected `adaptive` to be a bool, got 1\.$"),
])
def test_bad_settings_are_refused_when_built(value, message):
    with pytest.raises((ValueError, TypeError), match=message):
        SAM(**value)


# -------------------------------------------------------------------------- resume and workers
PRESETS = {"FedSAM": lambda: algos.FedSAM(rho=0.05), "FedASAM": lambda: algos.FedASAM(rho=0.1)}


class Crash(FederatedCallback):
    def on_round_start(self, loop, module):
        if loop.round == 2:
            raise RuntimeError("crash at round 2")


def run(algorithm, synthetic, checkpoint_dir=None, ckpt_path=None, extra=(), executor=None, rounds=4):
    train, val = synthetic
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True, momentum=0.5)
    parts = partition_dirichlet(train.tensors[1].numpy(), num_clients=8, alpha=0.5, min_size=8, seed=0)
    loop = FederatedLoop(rounds=rounds, clients_per_round=3, local_steps=2, seed=0, enable_progress_bar=False,
                         checkpoint_dir=checkpoint_dir, callbacks=list(extra), algorithm=algorithm, executor=executor)
    result = loop.fit(model, make_clients(train, parts, batch_size=8), val_dataloaders=DataLoader(val, batch_size=60),
                      ckpt_path=ckpt_path)
    return state_of(model), result


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
def test_two_workers_equal_one_process_bit_for_bit(synthetic):
    one, one_result = run(algos.FedSAM(rho=0.05), synthetic, rounds=3)
    two, two_result = run(algos.FedSAM(rho=0.05), synthetic, rounds=3,
                          executor=distributed.DistributedExecutor(workers=2, timeout=60.0))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert one_result.history == two_result.history
    assert one_result.client_history == two_result.client_history
