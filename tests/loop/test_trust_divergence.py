"""The divergence monitor: a rising evaluation loss while training goes well is not divergence; a collapse to
chance is said."""

from __future__ import annotations

import re
import warnings
from types import SimpleNamespace

import pytest
import torch
from helpers import Crash, TinyModule
from torch.utils.data import DataLoader, Subset, TensorDataset

from lightning_fedmut import FedAvg, FederatedCallback, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.data import partition_dirichlet, partition_iid
from lightning_fedmut.divergence import DivergenceMonitor
from lightning_fedmut.exceptions import DivergenceError

RISING = "but the clients' `train_loss` is"
CHANCE = "fell to chance"


def _run(train, val, monitor, rounds, callbacks=(), checkpoint_dir=None, ckpt_path=None):
    torch.manual_seed(0)
    model = TinyModule(lr=0.1)
    loop = FederatedLoop(rounds=rounds, clients_per_round=4, aggregator=FedAvg(weighted=False),
                         callbacks=list(callbacks), enable_progress_bar=False, seed=0, divergence=monitor,
                         checkpoint_dir=checkpoint_dir)
    clients = make_clients(train, partition_iid(len(train), 8, seed=0), batch_size=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=60), ckpt_path=ckpt_path)
    return result, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def _shifted(val):
    """The evaluation set with every label moved to the next class: the better the model fits, the worse here."""
    x, y = val.tensors
    return TensorDataset(x, (y + 1) % 3)


def test_a_rising_evaluation_loss_with_a_falling_training_loss_warns_once_and_goes_on(synthetic):
    train, val = synthetic
    result, said = _run(train, _shifted(val), DivergenceMonitor(loss_factor=3.0), rounds=16)
    history = result.history
    assert len(history) == 16  # not stopped (the earlier rule stopped it at the crossing round)
    first_val, first_train = history[0]["val_loss"], history[0]["clients/train_loss"]
    crossing = next(h for h in history if h["val_loss"] > 3.0 * first_val)
    assert crossing["round"] < 15 and crossing["clients/train_loss"] < first_train
    assert all(h["val_loss"] > 3.0 * first_val for h in history[crossing["round"]:])  # one episode
    rising = [m for m in said if RISING in m]
    assert rising == [(
        f"Round {crossing['round']}: the global model's `val_loss` is {crossing['val_loss']:.4g}, more than 3 times"
        f" its first value ({first_val:.4g}), but the clients' `train_loss` is {crossing['clients/train_loss']:.4g},"
        f" at or below its first value ({first_train:.4g}), and the weights are finite: the model fits its training"
        " data and does worse on the evaluation data (overfitting, or an evaluation set unlike the clients' data),"
        f" which is not divergence. The run goes on; this is said again after `val_loss` is back under"
        f" {3.0 * first_val:.4g}."
    )]
    # accuracy far below chance is learnt, not collapsed: nothing said about chance
    assert min(h["val_acc"] for h in history) < 0.1 and not [m for m in said if CHANCE in m]


def test_resuming_in_a_rising_episode_neither_stops_nor_warns_again(synthetic, tmp_path):
    train, val = synthetic
    shifted = _shifted(val)
    with pytest.raises(RuntimeError, match="crash at round 14"):
        _run(train, shifted, DivergenceMonitor(loss_factor=3.0), rounds=16, callbacks=[Crash(14)],
             checkpoint_dir=tmp_path)
    result, said = _run(train, shifted, DivergenceMonitor(loss_factor=3.0), rounds=16, checkpoint_dir=tmp_path,
                        ckpt_path="last")
    assert len(result.history) == 16 and not [m for m in said if RISING in m]
    uninterrupted, _ = _run(train, shifted, DivergenceMonitor(loss_factor=3.0), rounds=16)
    assert [h["val_loss"] for h in result.history] == [h["val_loss"] for h in uninterrupted.history]


def test_a_run_whose_training_loss_explodes_too_still_stops_naming_both(synthetic):
    train, val = synthetic
    parts = partition_dirichlet(train.tensors[1].numpy(), 10, alpha=0.1, min_size=5, seed=0)
    torch.manual_seed(0)
    loop = FederatedLoop(rounds=25, clients_per_round=6, local_epochs=2, aggregator=FedAvg(weighted=False),
                         callbacks=[MutationCallback(radius=4.0)], enable_progress_bar=False, seed=0,
                         on_client_failure="isolate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DivergenceError) as info:
            loop.fit(TinyModule(lr=0.5, momentum=0.9), make_clients(train, parts, batch_size=8),
                     val_dataloaders=DataLoader(val, 60))
    message = str(info.value)
    stopped = int(re.match(r"Round (\d+): ", message).group(1))
    assert 0 < stopped < 25 and len(loop.history) == stopped
    train_now = sum(r["num_examples"] * r["train_loss"] for r in loop.client_history if r["round"] == stopped) / sum(
        r["num_examples"] for r in loop.client_history if r["round"] == stopped)
    first = loop.history[0]
    assert (f"more than 10 times its first value ({first['val_loss']:.4g}). The clients' `train_loss` rose too,"
            f" from {first['clients/train_loss']:.4g} to {train_now:.4g}: training diverged. Likely causes: a"
            " mutation radius too large") in message


class ZeroAt(FederatedCallback):
    """Zeroes the global model after aggregating round ``at``: it predicts one class from then on."""

    def __init__(self, at):
        self.at = at

    def on_after_aggregate(self, loop, module):
        if loop.round == self.at:
            with torch.no_grad():
                for p in module.parameters():
                    p.zero_()


def _balanced(val, per_class=15):
    y = val.tensors[1]
    return Subset(val, [i for c in range(3) for i in torch.nonzero(y == c).flatten()[:per_class].tolist()])


@pytest.mark.parametrize(("chance", "source"), [(None, "3 classes, read from the model's output layer"),
                                                (1 / 3, "`chance`")])
def test_a_collapse_to_chance_is_said_once_naming_the_round(synthetic, chance, source):
    train, val = synthetic
    monitor = DivergenceMonitor() if chance is None else DivergenceMonitor(chance=chance)
    result, said = _run(train, _balanced(val), monitor, rounds=7, callbacks=[ZeroAt(3)])
    history = result.history
    assert len(history) == 7 and [h["val_acc"] for h in history[3:]] == [pytest.approx(1 / 3)] * 4
    best = max(h["val_acc"] for h in history[:3])
    best_round = next(h["round"] for h in history if h["val_acc"] == best)
    assert best > 0.5  # clearly above chance: at least 1/3 + 0.2 * 2/3
    collapse = [m for m in said if CHANCE in m]
    assert collapse == [(
        f"Round 3: the global model fell to chance: `val_acc` is 0.3333 (chance 0.3333: {source}) after {best:.4g}"
        f" in round {best_round}, with finite weights. Likely causes: a learning rate too high. Pass"
        " `DivergenceMonitor(chance=...)` if chance is another value."
    )]


def _loop(round_index, rows=()):
    return SimpleNamespace(round=round_index, client_history=list(rows), callbacks=[], is_global_zero=True)


def _rows(round_index, *losses):
    return [{"round": round_index, "client_id": i, "num_examples": 10, "train_loss": v} for i, v in enumerate(losses)]


def test_the_rules_at_their_bounds():
    state = {"out.weight": torch.zeros(4, 2)}  # 4 classes: chance 0.25, at chance 0.2125 to 0.2875, above >= 0.4
    monitor = DivergenceMonitor(loss_factor=2.0)
    monitor.on_evaluation(_loop(0, _rows(0, 1.0, 3.0)), {"val_loss": 1.0, "val_acc": 0.39}, state)
    assert (monitor.reference_loss, monitor.reference_train) == (1.0, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # at the bounds: nothing said
        monitor.on_evaluation(_loop(1, _rows(1, 2.0, 2.0)), {"val_loss": 2.0, "val_acc": 0.25}, state)
    with pytest.warns(RuntimeWarning, match=r"^Round 2: the global model's `val_loss` is 2\.01,.* is 2, at or below"):
        monitor.on_evaluation(_loop(2, _rows(2, 1.0, 3.0)), {"val_loss": 2.01, "val_acc": 0.41}, state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a skipped round (no client trained) in the episode: nothing new
        monitor.on_evaluation(_loop(3, _rows(2, 1.0, 3.0)), {"val_loss": 2.01, "val_acc": 0.41}, state)
    with pytest.raises(DivergenceError, match=r"^Round 4: .* `train_loss` rose too, from 2 to 2\.5: training diverged"):
        monitor.on_evaluation(_loop(4, _rows(4, 2.5)), {"val_loss": 2.5, "val_acc": 0.4}, state)
    with pytest.raises(DivergenceError, match=r"The clients log no `train_loss` to tell a diverging run from an"
                                              r" overfitting one; set `DivergenceMonitor\(train_monitor=...\)`"):
        monitor.on_evaluation(_loop(5, [{"round": 5, "num_examples": 1, "loss": 0.1}]), {"val_loss": 3.0}, state)
    with pytest.warns(RuntimeWarning, match=r"^Round 6: the global model fell to chance: `val_acc` is 0\.287"
                                            r" \(chance 0\.25: 4 classes.*\) after 0\.41 in round 2"):
        monitor.on_evaluation(_loop(6, _rows(6, 1.0)), {"val_loss": 1.0, "val_acc": 0.287}, state)
    # the evaluation loss alone decides without a training metric, as before
    alone = DivergenceMonitor(loss_factor=2.0, train_monitor=None, accuracy_monitor=None)
    alone.on_evaluation(_loop(0, _rows(0, 1.0)), {"val_loss": 1.0}, state)
    with pytest.raises(DivergenceError, match=r"^Round 1: .* \(1\)\. Likely causes"):
        alone.on_evaluation(_loop(1, _rows(1, 0.1)), {"val_loss": 2.5}, state)


def test_a_model_never_above_chance_is_not_said_to_collapse_and_arguments_are_checked():
    monitor = DivergenceMonitor(chance=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for r, acc in enumerate((0.52, 0.59, 0.5, 0.5)):  # never clearly above 0.6
            monitor.on_evaluation(_loop(r), {"val_acc": acc}, {})
    with pytest.raises(ValueError, match=r"Expected `chance` in \(0\.0, 1\.0\), got 0\.0"):
        DivergenceMonitor(chance=0.0)
    with pytest.raises(TypeError, match=r"Expected `train_monitor` to be a metric name or None \(e\.g\. 'train_loss'\),"
                                        r" got 3"):
        DivergenceMonitor(train_monitor=3)
