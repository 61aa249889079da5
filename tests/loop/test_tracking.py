"""What a federated run leaves in W&B (offline, read back from disk), in a CSV, and on the console."""

import csv
import json
import sys

import pytest
import torch
from helpers import TinyModule
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch.utils.data import DataLoader
from wandb_records import offline_runs, summarize

from lightning_fedmut import FedAvg, FederatedCallback, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.data import partition_iid
from lightning_fedmut.loop.connectors import tracking


def _fit(synthetic, logger, rounds=4, callbacks=(), **kwargs):
    train, val = synthetic
    torch.manual_seed(0)
    model = TinyModule()
    clients = make_clients(train, partition_iid(len(train), 8, seed=0), batch_size=16)
    loop = FederatedLoop(rounds=rounds, clients_per_round=3, aggregator=FedAvg(weighted=False),
                         callbacks=[MutationCallback(radius=3.0, acceleration=0.2, acceleration_rounds=10),
                                    *callbacks],
                         logger=logger, seed=0, enable_progress_bar=False, **kwargs)
    return loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=60))


def test_wandb_offline_run_holds_rounds_metrics_table_and_config(synthetic, tmp_path):
    logger = WandbLogger(project="fedmut-test", save_dir=str(tmp_path), offline=True)
    result = _fit(synthetic, logger, client_table_every=2)
    runs = offline_runs(tmp_path)
    assert len(runs) == 1  # client Trainers never open runs of their own
    run = summarize(runs[0])

    # `round` is the step axis of every metric
    assert {"name": "round", "options": {"defined": True}} in run["metrics"]
    star = [m for m in run["metrics"] if m.get("glob_name") == "*"]
    assert star[-1]["step_metric"] == "round"

    # the round-by-round metrics equal result.history
    rows = [h for h in run["history"] if "val_acc" in h]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    for logged, expected, timing in zip(rows, result.history, result.timings):
        for key, value in expected.items():
            assert logged[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
        assert logged["round_time"] == pytest.approx(timing["round_time"])
        assert logged["clients_per_second"] == pytest.approx(timing["clients_per_second"])
        for key in ("fedmut/beta", "fedmut/radius", "fedmut/delta_norm", "fedmut/start_model_distance",
                    "clients/trained", "clients/failed", "clients/train_loss"):
            assert key in logged
    assert [r["fedmut/beta"] for r in rows] == pytest.approx([0.2 * (1 - t / 10) for t in range(4)])

    # Lightning's duplicate step counter is not logged: `round` is the step
    assert not any("trainer/global_step" in h for h in run["history"])

    # the per-client table, logged in increments: each holds only the rows since the previous one
    increments = _table_increments(runs[0], run["history"])
    assert [(i["increment_num"], i["round"]) for i in increments] == [(0, 1), (1, 3)]
    assert [len(i["previous_increments_paths"]) for i in increments] == [0, 1]
    columns = increments[0]["columns"]
    assert columns[:4] == ["round", "client_id", "slot", "num_examples"]
    expected_rows = [[c[k] for k in columns] for c in result.client_history]
    assert [i["data"] for i in increments] == [expected_rows[:6], expected_rows[6:]]  # JSON keeps floats exactly
    assert len(expected_rows) == 4 * 3

    # the config: the loop's arguments, aggregator, callbacks and the model's hyperparameters
    config = run["config"]
    assert config["rounds"] == 4 and config["clients_per_round"] == 3 and config["seed"] == 0
    assert config["aggregator"] == {"class_path": "lightning_fedmut.aggregators.fedavg.FedAvg",
                                    "init_args": {"weighted": False}}
    mutation = config["callbacks"][0]
    assert mutation["class_path"].endswith("MutationCallback")
    assert mutation["init_args"] == {"radius": 3, "acceleration": 0.2, "acceleration_rounds": 10,
                                     "mutate_buffers": False, "seed": None}
    assert config["model"]["init_args"]["hidden"] == 16 and config["model"]["init_args"]["lr"] == 0.1


def _table_increments(run_dir, history):
    """The logged ``clients/table`` increments, in order: their history entry merged with their JSON file."""
    out = []
    for item in history:
        if "clients/table.path" in item:
            entry = {k.split(".", 1)[1]: v for k, v in item.items() if k.startswith("clients/table.")}
            entry.update(json.loads((run_dir / "files" / entry["path"]).read_text()), round=item["round"])
            out.append(entry)
    return out


def test_client_table_calls_log_only_their_rows_and_new_columns_go_on_in_increments(tmp_path):
    logger = WandbLogger(project="fedmut-test", save_dir=str(tmp_path), offline=True)
    tracking.start_run(logger, {})
    tracking.log_client_table(logger, [{"round": 0, "client_id": "a", "loss": 0.5}], 0)
    tracking.log_client_table(logger, [], 1)  # nothing new: nothing logged
    tracking.log_client_table(logger, [{"round": 2, "client_id": "b", "loss": 0.25, "local_acc": 0.75},
                                       {"round": 2, "client_id": "c", "loss": 1.0}], 2)
    tracking.log_client_table(logger, [{"round": 3, "client_id": "a", "loss": 0.125, "local_acc": 1.0}], 3)
    tracking.finish_run(logger, "success")
    (run_dir,) = offline_runs(tmp_path)
    increments = _table_increments(run_dir, summarize(run_dir)["history"])
    assert [(i["increment_num"], i["round"], len(i["previous_increments_paths"])) for i in increments] == [
        (0, 0, 0), (1, 2, 1), (2, 3, 2)]
    assert [i["columns"] for i in increments] == [["round", "client_id", "loss"]] + 2 * [
        ["round", "client_id", "loss", "local_acc"]]
    assert [i["data"] for i in increments] == [[[0, "a", 0.5]], [[2, "b", 0.25, 0.75], [2, "c", 1.0, None]],
                                               [[3, "a", 0.125, 1.0]]]


def test_wandb_resume_continues_the_same_run(synthetic, tmp_path):
    class Crash(FederatedCallback):
        def on_round_start(self, loop, module):
            if loop.round == 2:
                raise RuntimeError("crash")

    first = WandbLogger(project="fedmut-test", save_dir=str(tmp_path), offline=True)
    with pytest.raises(RuntimeError):
        _fit(synthetic, first, callbacks=[Crash()], checkpoint_dir=tmp_path / "ckpt")
    run_id = first.version
    second = WandbLogger(project="fedmut-test", save_dir=str(tmp_path), offline=True)
    train, val = synthetic
    torch.manual_seed(0)
    loop = FederatedLoop(rounds=4, clients_per_round=3, aggregator=FedAvg(weighted=False),
                         callbacks=[MutationCallback(radius=3.0, acceleration=0.2, acceleration_rounds=10)],
                         logger=second, seed=0, enable_progress_bar=False, checkpoint_dir=tmp_path / "ckpt")
    loop.fit(TinyModule(), make_clients(train, partition_iid(len(train), 8, seed=0), batch_size=16),
             val_dataloaders=DataLoader(val, batch_size=60), ckpt_path="last")
    assert second.version == run_id
    resumed = summarize(offline_runs(tmp_path)[-1])
    assert resumed["run_id"] == run_id
    assert [h["round"] for h in resumed["history"] if "val_acc" in h] == [2, 3]


def test_csv_logger_has_every_round_metric(synthetic, tmp_path):
    logger = CSVLogger(tmp_path, name="csv")
    result = _fit(synthetic, logger)
    with open(logger.experiment.metrics_file_path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    for row, expected in zip(rows, result.history):
        for key, value in expected.items():
            assert float(row[key]) == pytest.approx(value, rel=1e-6), key


def test_progress_bar_on_and_off(synthetic, capsys, monkeypatch):
    train, val = synthetic
    clients = make_clients(train, partition_iid(len(train), 8, seed=0), batch_size=16)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal gets the bar (elsewhere: a line per round)
    FederatedLoop(rounds=2, clients_per_round=2, local_steps=1, seed=0).fit(
        TinyModule(), clients, val_dataloaders=DataLoader(val, batch_size=60))
    err = capsys.readouterr().err
    assert "round 1: 100%" in err and "4/4" in err and "val_acc=" in err
    FederatedLoop(rounds=2, clients_per_round=2, local_steps=1, seed=0, enable_progress_bar=False).fit(
        TinyModule(), clients, val_dataloaders=DataLoader(val, batch_size=60))
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
