"""Server-side SWA: the averaged rounds and the clients' cyclical learning rate against a float64 hand computation,
the averaged model as the evaluated and returned one, a bit-for-bit resume (the average included) and two workers."""

from __future__ import annotations

import sys

import pytest
import torch
from global_sharpness_runs import check_resume, check_workers, run
from lightning.pytorch import Trainer
from test_baselines_quadratic import LR, W0, Quadratic, local_sgd, quadratic_clients, weights
from torch.utils.data import DataLoader

from lightning_fedmut import FederatedCallback, FederatedLoop
from lightning_fedmut import algorithms as algos
from lightning_fedmut.callbacks.swa import SWA

distributed = pytest.importorskip("lightning_fedmut.distributed")
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="workers are forked; tested on Linux")


class Globals(FederatedCallback):
    def __init__(self):
        self.globals = []

    def on_after_aggregate(self, loop, module):
        self.globals.append(weights(module).clone())


def test_the_average_and_the_cyclical_rate_follow_the_reference_by_hand():
    """start=1, cycle=2 over 6 rounds: rounds 1..5 train at (1 - t) lr + t swa_lr with t = (r mod 2 + 1) / 2;
    the global models of rounds 3 and 5 are averaged; fit returns the average."""
    recorder = Globals()
    module = Quadratic()
    loop = FederatedLoop(rounds=6, clients_per_round=3, algorithm=algos.FedAvgSWA(weighted=False, start=1, cycle=2,
                                                                                   swa_lr=0.01),
                         callbacks=[recorder], enable_progress_bar=False, seed=0)
    result = loop.fit(module, quadratic_clients())
    w, expected = W0.clone(), []
    for r in range(6):
        lr = LR if r < 1 else (1 - (r % 2 + 1) / 2) * LR + (r % 2 + 1) / 2 * 0.01
        w = torch.stack([local_sgd(w, i, lr=lr) for i in range(3)]).mean(0)
        expected.append(w)
    for got, want in zip(recorder.globals, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    average = 0.5 * expected[3] + 0.5 * expected[5]  # update_swa_model(1), then update_swa_model(1/2)
    torch.testing.assert_close(weights(module), average, rtol=0, atol=1e-12)
    assert [row["swa/models"] for row in result.history] == [0.0, 0.0, 0.0, 1.0, 1.0, 2.0]
    assert float((expected[5] - average).abs().max()) > 1e-4


def test_the_rate_is_left_alone_with_cycle_1():
    module = Quadratic()
    loop = FederatedLoop(rounds=3, clients_per_round=3, algorithm=algos.FedAvgSWA(weighted=False, start=0, cycle=1),
                         enable_progress_bar=False, seed=0)
    loop.fit(module, quadratic_clients())
    w, kept = W0.clone(), []
    for _ in range(3):
        w = torch.stack([local_sgd(w, i) for i in range(3)]).mean(0)
        kept.append(w)
    torch.testing.assert_close(weights(module), 0.5 * kept[1] + 0.5 * kept[2], rtol=0, atol=1e-12)


def test_the_evaluated_model_is_the_average_and_training_goes_on_from_the_global_one(synthetic):
    def make():
        return algos.FedAvgSWA(start=0, cycle=1)

    state, result, loop = run(synthetic, make)
    swa = next(cb for cb in loop.callbacks if isinstance(cb, SWA))
    assert swa.count == 3 and not swa._swapped
    _, val = synthetic
    from helpers import TinyModule

    module = TinyModule(batch_norm=True, momentum=0.5)
    module.load_state_dict(state)
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    metrics = trainer.validate(module, DataLoader(val, batch_size=60), verbose=False)[0]
    assert result.history[-1]["val_acc"] == pytest.approx(metrics["val_acc"], abs=1e-6)
    plain, plain_result, _ = run(synthetic, lambda: algos.FedAvg())
    assert [r["train_loss"] for r in result.client_history] == [r["train_loss"] for r in plain_result.client_history]
    assert any(not torch.equal(plain[k], state[k]) for k in state)


def test_swa_resumes_bit_for_bit_after_a_crash_at_round_2_with_its_average(synthetic, tmp_path):
    loop = check_resume(synthetic, tmp_path, lambda: algos.FedASAMSWA(start=0, cycle=1))
    swa = next(cb for cb in loop.callbacks if isinstance(cb, SWA))
    assert swa.count == 3


def test_arguments_are_refused_when_built():
    with pytest.raises(ValueError, match=r"cycle"):
        SWA(cycle=0)
    with pytest.raises(ValueError, match=r"swa_lr"):
        SWA(swa_lr=0.0)
    with pytest.raises(TypeError, match=r"^Expected `average_buffers` to be a bool, got 1\.$"):
        SWA(average_buffers=1)


@linux_only
@pytest.mark.slow
def test_two_workers_equal_one_process_bit_for_bit(synthetic):
    check_workers(synthetic, lambda: algos.FedASAMSWA(start=1, cycle=2, swa_lr=0.01), distributed)
