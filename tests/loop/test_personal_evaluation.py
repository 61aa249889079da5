"""Personalised evaluation: each client's own model (global federated entries, its local ones) on its own data."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from helpers import TinyModule, make_synthetic, state_of
from torch.utils.data import DataLoader

from lightning_fedmut import FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut import algorithms as algos
from lightning_fedmut.data import partition_iid
from lightning_fedmut.execution import evaluate
from lightning_fedmut.federation import local_key
from lightning_fedmut.loop.connectors import personal
from lightning_fedmut.loop.connectors.personal import EvaluationResult, personal_metrics


class NoTraining(FederatedCallback):
    """Fails the test if any client starts training."""

    def on_client_fit_start(self, loop, module, task):
        raise AssertionError("a client trained")


def run(algorithm, rounds=3, val_fraction=0.25, workers=None, evaluate_every=1, extra=(), **kwargs):
    train, val = make_synthetic()
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True)
    clients = make_clients(train, partition_iid(len(train), 6, seed=0), batch_size=16, val_fraction=val_fraction)
    loop = FederatedLoop(rounds=rounds, clients_per_round=2, local_epochs=1, seed=3, enable_progress_bar=False,
                         algorithm=algorithm, workers=workers, evaluate_every=evaluate_every, callbacks=list(extra),
                         **kwargs)
    result = loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=60))
    return model, clients, loop, result


def by_hand(model, clients, loop):
    """Every client's metrics, from a fresh module holding the global state with the client's stored entries."""
    rows = []
    for client in clients:
        own = loop.client_states.get(client.id) if client.id in loop.client_states else {}
        state = {k: own.get(local_key(k), v) for k, v in state_of(model).items()}
        fresh = TinyModule(batch_norm=True)
        fresh.load_state_dict(state)
        rows.append(evaluate(fresh, client.val_data))
    return rows


def summary(rows, name):
    values = np.array([r[name] for r in rows], dtype=np.float64)
    k = math.ceil(len(values) / 10)
    worst = np.sort(values)[-k:] if "loss" in name else np.sort(values)[:k]
    return {f"personal/{name}_mean": values.mean(), f"personal/{name}_std": values.std(ddof=1),
            f"personal/{name}_worst10": worst.mean(), f"personal/{name}_n": len(values)}


def personal_of(row):
    return {k: v for k, v in row.items() if k.startswith("personal/")}


def test_fedbn_is_evaluated_with_each_clients_own_batchnorm_on_its_own_data():
    model, clients, loop, result = run(algos.FedBN(), rounds=2)
    trained = {r["client_id"] for r in result.client_history}
    assert 0 < len(trained) < len(clients)  # some clients never trained: they use the global model's BatchNorm
    rows = by_hand(model, clients, loop)
    assert personal_of(result.history[-1]) == {**summary(rows, "val_loss"), **summary(rows, "val_acc")}
    assert len({r["val_loss"] for r in rows}) == len(rows)  # each client its own model and data
    assert all(personal_of(row) for row in result.history)


def test_the_evaluation_leaves_the_global_model_and_the_run_unchanged():
    model_on, _, loop_on, on = run(algos.FedBN(), rounds=3)
    model_off, _, _, off = run(algos.FedBN(), rounds=3, personal_evaluation=False)
    assert all(torch.equal(a, b) for a, b in zip(state_of(model_on).values(), state_of(model_off).values()))
    assert [{k: v for k, v in row.items() if not k.startswith("personal/")} for row in on.history] == off.history
    assert not any(personal_of(row) for row in off.history)
    assert all(p.requires_grad for p in model_on.parameters())


def test_evaluated_every_evaluate_every_rounds_and_after_the_last():
    _, _, _, result = run(algos.FedPer(head="net.3"), rounds=3, evaluate_every=2)
    assert [bool(personal_of(row)) for row in result.history] == [False, True, True]


def test_on_by_default_only_with_local_entries_and_client_validation_data():
    _, _, _, fedavg = run(algos.FedAvg(), rounds=1)
    assert not personal_of(fedavg.history[0])
    model, clients, loop, forced = run(algos.FedAvg(), rounds=1, personal_evaluation=True)
    rows = by_hand(model, clients, loop)  # no local entry: the global model on each client's data
    assert personal_of(forced.history[0]) == {**summary(rows, "val_loss"), **summary(rows, "val_acc")}
    with pytest.warns(RuntimeWarning, match="no client has validation data"):
        _, _, _, silent = run(algos.FedBN(), rounds=1, val_fraction=None)
    assert not personal_of(silent.history[0])


def test_asking_for_it_without_client_validation_data_is_refused_before_training():
    with pytest.raises(ValueError, match=r"Expected some client with validation data for `personal_evaluation=True`,"
                                         r" got none of the 6 clients"):
        run(algos.FedBN(), val_fraction=None, personal_evaluation=True, extra=[NoTraining()])
    with pytest.raises(TypeError, match="Expected `personal_evaluation` to be True, False or None"):
        FederatedLoop(rounds=1, clients_per_round=1, personal_evaluation="yes")


def test_the_summary_is_float64_sample_spread_and_the_worst_tenth():
    values = [0.1 * i for i in range(1, 12)]  # 11 clients: the worst 10 % are two
    rows = [EvaluationResult(i, i, {"val_acc": v, "val_loss": 2 * v, "train_loss": 1.0}) for i, v in enumerate(values)]
    out = personal_metrics(rows)
    assert out["personal/val_acc_worst10"] == (0.1 + 0.2) / 2
    assert out["personal/val_loss_worst10"] == (2 * 1.1 + 2 * 1.0) / 2
    assert out["personal/val_acc_std"] == float(np.std(values, ddof=1))
    assert out["personal/val_acc_n"] == 11 and "personal/train_loss_mean" not in out
    assert personal_metrics(rows[:1]) == {"personal/val_acc_mean": 0.1, "personal/val_acc_worst10": 0.1,
                                          "personal/val_acc_n": 1, "personal/val_loss_mean": 0.2,
                                          "personal/val_loss_worst10": 0.2, "personal/val_loss_n": 1}


@pytest.mark.slow
def test_two_workers_share_the_clients_and_give_the_one_process_numbers(tmp_path, monkeypatch):
    original = personal.evaluate_task

    def recorded(evaluator, module, task):
        with open(tmp_path / "evaluated.txt", "a") as f:
            f.write(f"{os.getpid()} {task.slot}\n")
        return original(evaluator, module, task)

    _, _, _, one = run(algos.FedBN(), rounds=2)
    monkeypatch.setattr(personal, "evaluate_task", recorded)  # the forked workers inherit it
    _, _, _, two = run(algos.FedBN(), rounds=2, workers=2)
    assert one.history == two.history
    assert personal_of(two.history[-1])
    seen = [line.split() for line in (tmp_path / "evaluated.txt").read_text().splitlines()]
    slots_of = {}
    for pid, slot in seen:
        slots_of.setdefault(pid, []).append(int(slot))
    assert len(slots_of) == 2  # both workers evaluated clients
    parities = sorted(tuple(sorted({s % 2 for s in slots})) for slots in slots_of.values())
    # six clients of one validation batch each: equal costs are dealt alternately, each client once per round
    assert parities == [(0,), (1,)]
    assert sorted(s for slots in slots_of.values() for s in slots) == sorted(list(range(6)) * 2)
