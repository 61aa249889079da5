"""`lightning-fedmut validate` and `test`: a saved global model evaluated as Lightning's own Trainer evaluates it,
on the server's data and per client, and bad checkpoints refused in one line before any evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TinyModule, make_synthetic
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from torch.utils.data import DataLoader, Subset

from lightning_fedmut.checkpoint import load_checkpoint
from lightning_fedmut.cli import main
from lightning_fedmut.data import partition_dirichlet, partition_iid, train_val_split
from lightning_fedmut.datasets import labels_of, load_dataset
from lightning_fedmut.models import DigitsCNN, default_model

CLIENTS = 12  # the worst 10 % of 12 clients are 2 of them
TINY = [
    "--data=synthetic", f"--partition.num_clients={CLIENTS}", "--loop.clients_per_round=2", "--loop.rounds=2",
    "--loop.local_steps=1", "--loop.enable_progress_bar=false", "--logger=none",
]


class EvalModule(TinyModule):
    """TinyModule with a test_step."""

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("test_loss", F.cross_entropy(logits, y))
        self.log("test_acc", (logits.argmax(-1) == y).float().mean())


class NoTestCNN(DigitsCNN):
    """The built-in CNN without its test_step."""

    test_step = LightningModule.test_step


class EvalData(LightningDataModule):
    """Synthetic points with train, validation and test splits that differ."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.train, self.val = make_synthetic(seed=seed)
        self.test = make_synthetic(n_train=10, n_val=90, seed=seed + 1)[1]

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=25)

    def test_dataloader(self):
        return DataLoader(self.test, batch_size=25)


DATAMODULE = [
    f"--data={__name__}.EvalData", f"--model={__name__}.EvalModule", "--partition.scheme=iid",
    "--partition.num_clients=5", "--loop.clients_per_round=2", "--loop.rounds=2", "--loop.local_steps=1",
    "--loop.enable_progress_bar=false", "--logger=none", "--eval_batch_size=7",
]


def quiet_trainer() -> Trainer:
    """A plain Lightning Trainer on the command's device (the default accelerator), without logger or bars."""
    return Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   devices=1)


def floats(results: list[dict]) -> dict[str, float]:
    return {k: float(v) for k, v in results[0].items()}


def digits_cnn(state_dict: dict) -> torch.nn.Module:
    model_class, kwargs = default_model("synthetic")
    model = model_class(**kwargs)
    model.load_state_dict(state_dict)
    return model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished 2-round fit on synthetic data: last.ckpt and round-00001/00002.ckpt."""
    folder = tmp_path_factory.mktemp("fit") / "run"
    assert main(["fit", *TINY, f"--loop.checkpoint_dir={folder}"]) == 0
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["last.ckpt", "round-00001.ckpt", "round-00002.ckpt"]
    return folder


def evaluate(command: str, args: list[str], tmp_path: Path, capsys) -> tuple[dict, str]:
    output = tmp_path / f"{command}-{len(list(tmp_path.iterdir()))}.json"
    assert main([command, *args, "--output", str(output)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    return json.loads(output.read_text()), out


def test_validate_equals_trainer_validate_for_lightning_and_federated_checkpoints(run_dir, tmp_path, capsys):
    server = DataLoader(load_dataset("synthetic").test, batch_size=500)
    lightning_state = torch.load(run_dir / "last.ckpt", weights_only=True)["state_dict"]
    expected = floats(quiet_trainer().validate(digits_cnn(lightning_state), server, verbose=False))
    federated_state = load_checkpoint(run_dir / "round-00002.ckpt")["model"]
    assert floats(quiet_trainer().validate(digits_cnn(federated_state), server, verbose=False)) == expected
    assert sorted(expected) == ["val_acc", "val_loss"]

    flags = [*TINY, f"--loop.checkpoint_dir={run_dir}"]
    for ckpt, used in [(run_dir / "last.ckpt", "last.ckpt"), (run_dir / "round-00002.ckpt", "round-00002.ckpt"),
                       (run_dir, "round-00002.ckpt"), ("last", "round-00002.ckpt")]:
        result, out = evaluate("validate", [*flags, "--ckpt_path", str(ckpt)], tmp_path, capsys)
        assert result["metrics"] == expected, ckpt
        assert (result["stage"], Path(result["ckpt_path"]).name, result["rounds"]) == ("validate", used, 2)
        assert (result["num_examples"], result["clients"], result["summary"]) == (200, None, None)
        assert out == (f"validate: DigitsCNN from {used}, after 2 rounds, on synthetic (200 examples): val_loss"
                       f" {expected['val_loss']:.4f}, val_acc {expected['val_acc']:.4f}\n")

    # the earlier round's federated checkpoint holds other weights, and is evaluated as such
    earlier = digits_cnn(load_checkpoint(run_dir / "round-00001.ckpt")["model"])
    expected_1 = floats(quiet_trainer().validate(earlier, server, verbose=False))
    result, _ = evaluate("validate", [*flags, "--ckpt_path", str(run_dir / "round-00001.ckpt")], tmp_path, capsys)
    assert result["metrics"] == expected_1 != expected and result["rounds"] == 1


def test_per_client_rows_and_summary_match_numpy(run_dir, tmp_path, capsys):
    train = load_dataset("synthetic").train
    parts = partition_dirichlet(labels_of(train), CLIENTS, 0.1, min_size=2, seed=0)  # fit's default partition
    model = digits_cnn(torch.load(run_dir / "last.ckpt", weights_only=True)["state_dict"])
    rows = [floats(quiet_trainer().validate(model, DataLoader(Subset(train, list(p)), batch_size=500), verbose=False))
            for p in parts]

    result, out = evaluate("validate", [*TINY, "--ckpt_path", str(run_dir / "last.ckpt"), "--per_client"], tmp_path,
                           capsys)
    got = result["clients"]
    assert [r["client"] for r in got] == list(range(CLIENTS))
    assert [r["num_examples"] for r in got] == [len(p) for p in parts]
    assert {r["part"] for r in got} == {"training"}
    assert [{"val_loss": r["val_loss"], "val_acc": r["val_acc"]} for r in got] == rows

    for name, lower in (("val_loss", True), ("val_acc", False)):
        values = np.array([r[name] for r in rows], dtype=np.float64)
        worst = np.sort(values)[-2:] if lower else np.sort(values)[:2]
        assert result["summary"][name] == {
            "mean": float(values.mean()), "std": float(values.std(ddof=1)), "n": CLIENTS,
            "worst_10pct": float(worst.mean()), "worst_count": 2, "lower_is_better": lower,
        }
    s = result["summary"]
    assert out.splitlines()[1] == (
        f"per client ({CLIENTS} clients, training part of each): val_loss mean {s['val_loss']['mean']:.4f} std"
        f" {s['val_loss']['std']:.4f} (n={CLIENTS}), worst 10% (2 clients) {s['val_loss']['worst_10pct']:.4f};"
        f" val_acc mean {s['val_acc']['mean']:.4f} std {s['val_acc']['std']:.4f} (n={CLIENTS}), worst 10% (2"
        f" clients) {s['val_acc']['worst_10pct']:.4f}")


def test_per_client_with_val_fraction_evaluates_each_clients_validation_part(run_dir, tmp_path, capsys):
    train = load_dataset("synthetic").train
    parts = partition_dirichlet(labels_of(train), CLIENTS, 0.1, min_size=2, seed=0)
    held_out = [val for _, val in train_val_split(parts, 0.25, seed=0).values()]
    model = digits_cnn(torch.load(run_dir / "last.ckpt", weights_only=True)["state_dict"])
    rows = [floats(quiet_trainer().validate(model, DataLoader(Subset(train, v.tolist()), batch_size=4), verbose=False))
            for v in held_out]

    args = [*TINY, "--val_fraction=0.25", "--eval_batch_size=4", "--ckpt_path", str(run_dir / "last.ckpt"),
            "--per_client"]
    result, out = evaluate("validate", args, tmp_path, capsys)
    assert [(r["part"], r["num_examples"]) for r in result["clients"]] == [("val", len(v)) for v in held_out]
    assert [{"val_loss": r["val_loss"], "val_acc": r["val_acc"]} for r in result["clients"]] == rows
    assert f"per client ({CLIENTS} clients, val part of each): " in out


def test_test_runs_trainer_test_on_the_datamodules_test_split(tmp_path, capsys):
    folder = tmp_path / "run"
    assert main(["fit", *DATAMODULE, f"--loop.checkpoint_dir={folder}"]) == 0
    capsys.readouterr()
    data = EvalData()
    model = EvalModule()
    model.load_state_dict(load_checkpoint(folder / "round-00002.ckpt")["model"])
    expected = floats(quiet_trainer().test(model, data.test_dataloader(), verbose=False))
    expected_val = floats(quiet_trainer().validate(model, data.val_dataloader(), verbose=False))
    parts = partition_iid(len(data.train), 5, seed=0)
    rows = [floats(quiet_trainer().test(model, DataLoader(Subset(data.train, list(p)), batch_size=7), verbose=False))
            for p in parts]

    result, out = evaluate("test", [*DATAMODULE, "--ckpt_path", str(folder), "--per_client"], tmp_path, capsys)
    assert result["metrics"] == expected and sorted(expected) == ["test_acc", "test_loss"]
    assert result["num_examples"] == 90
    assert [{"test_loss": r["test_loss"], "test_acc": r["test_acc"]} for r in result["clients"]] == rows
    values = np.array([r["test_acc"] for r in rows], dtype=np.float64)
    assert result["summary"]["test_acc"] == {"mean": float(values.mean()), "std": float(values.std(ddof=1)), "n": 5,
                                             "worst_10pct": float(values.min()), "worst_count": 1,
                                             "lower_is_better": False}
    assert out.startswith("test: EvalModule from round-00002.ckpt, after 2 rounds, on EvalData (90 examples):")

    result, _ = evaluate("validate", [*DATAMODULE, "--ckpt_path", str(folder / "last.ckpt")], tmp_path, capsys)
    assert result["metrics"] == expected_val and result["num_examples"] == 60


def test_summary_of_hand_made_rows():
    from lightning_fedmut.cli.evaluate import summarize, worst_count

    # 11 clients, so the worst 10 % are 2; mean 5.5 / 11 = 0.5, squared deviations 0.625 / 10 = 0.25 ** 2
    acc = [0.5, 1.0, 0.5, 0.25, 0.5, 0.5, 0.0, 0.5, 0.75, 0.5, 0.5]
    rows = [{"client": i, "num_examples": 10, "val_acc": a, "val_loss": 1.0 - a} for i, a in enumerate(acc)]
    out = summarize(rows)
    assert list(out) == ["val_acc", "val_loss"]  # numbers only, not the client id or its size
    assert out["val_acc"] == {"mean": 0.5, "std": 0.25, "n": 11, "worst_10pct": 0.125, "worst_count": 2,
                              "lower_is_better": False}
    assert out["val_loss"] == {"mean": 0.5, "std": 0.25, "n": 11, "worst_10pct": 0.875, "worst_count": 2,
                               "lower_is_better": True}
    assert summarize([{"val_acc": 0.25}])["val_acc"]["std"] is None
    assert [worst_count(n) for n in (1, 9, 10, 11, 20, 21, 30, 100)] == [1, 1, 1, 2, 2, 3, 3, 10]


def _error(args: list[str], capsys, command: str = "validate") -> str:
    assert main([command, *args]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.fixture
def no_evaluation(monkeypatch):
    """Fail the test if anything is evaluated: errors come before."""
    def refuse(*args, **kwargs):
        raise AssertionError("evaluated before refusing")

    monkeypatch.setattr(Trainer, "validate", refuse)
    monkeypatch.setattr(Trainer, "test", refuse)


def test_bad_checkpoints_are_refused_in_one_line_before_evaluating(run_dir, tmp_path, capsys, no_evaluation):
    missing = tmp_path / "nope.ckpt"
    assert _error([*TINY, "--ckpt_path", str(missing)], capsys) == (
        f"lightning-fedmut validate: error: --ckpt_path: expected last, a checkpoint file (last.ckpt,"
        f" round-NNNNN.ckpt) or a folder of checkpoints, got {str(missing)!r}: no such file\n")
    assert _error(TINY, capsys) == (
        "lightning-fedmut validate: error: --ckpt_path: expected last, a checkpoint file (last.ckpt,"
        " round-NNNNN.ckpt) or a folder of checkpoints, got none\n")
    assert _error([*TINY, "--ckpt_path", "last"], capsys, "test") == (
        "lightning-fedmut test: error: --ckpt_path last: expected --loop.checkpoint_dir, the folder of the run,"
        " got none\n")
    assert _error([*TINY, "--ckpt_path", str(tmp_path)], capsys) == (
        f"lightning-fedmut validate: error: --ckpt_path: {tmp_path}: expected a folder holding round-NNNNN.ckpt or"
        " last.ckpt, got one holding neither\n")
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    err = _error([*TINY, "--ckpt_path", str(text)], capsys)
    assert err.startswith(f"lightning-fedmut validate: error: --ckpt_path: {str(text)!r} is neither a federated nor"
                          " a Lightning checkpoint that loads as data: ")

    # another model: a wider CNN (shapes differ), one with a layer more (keys differ)
    for ckpt in (run_dir / "last.ckpt", run_dir / "round-00002.ckpt"):
        err = _error([*TINY, "--model.width=8", "--ckpt_path", str(ckpt)], capsys)
        assert err.startswith("lightning-fedmut validate: error: --ckpt_path: the checkpoint does not fit DigitsCNN: ")
        assert "has shape (16, 1, 3, 3) in the checkpoint, (8, 1, 3, 3) in the model" in err
        assert err.endswith(". Pass the --model and --data flags of the fit that wrote it\n")
    err = _error([*TINY, "--model=helpers.TinyModule", "--ckpt_path", str(run_dir / "last.ckpt")], capsys)
    assert err == ("lightning-fedmut validate: error: --ckpt_path: the checkpoint does not fit TinyModule: missing"
                   " keys net.2.weight, net.2.bias; unexpected keys net.1.weight, net.1.bias, net.1.running_mean (and"
                   " 11 more); net.0.weight has shape (16, 1, 3, 3) in the checkpoint, (16, 8) in the model. Pass the"
                   " --model and --data flags of the fit that wrote it\n")


def test_a_module_without_the_stages_step_is_refused(run_dir, capsys, no_evaluation):
    assert _error([*TINY, f"--model={__name__}.NoTestCNN", "--ckpt_path", str(run_dir / "last.ckpt")], capsys,
                  "test") == (
        "lightning-fedmut test: error: --model: expected a LightningModule with a test_step for test, got NoTestCNN,"
        " which has none (validate runs validation_step)\n")


def test_the_built_in_models_test_equals_trainer_test(run_dir, tmp_path, capsys):
    server = DataLoader(load_dataset("synthetic").test, batch_size=500)
    model = digits_cnn(torch.load(run_dir / "last.ckpt", weights_only=True)["state_dict"])
    expected = floats(quiet_trainer().test(model, server, verbose=False))
    assert sorted(expected) == ["test_acc", "test_loss"]
    result, _ = evaluate("test", [*TINY, "--ckpt_path", str(run_dir / "last.ckpt")], tmp_path, capsys)
    assert result["metrics"] == expected


def test_help_and_usage_name_the_commands(capsys):
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: lightning-fedmut {fit,validate,test,demo,sweep,benchmark}")
    assert "\n  validate  evaluate a saved global model" in usage and "\n  test      the same with Trainer.test" in usage
    for command in ("validate", "test"):
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert text.startswith(f"usage: lightning-fedmut {command} ")
        assert f"Evaluate a saved global model with Lightning's Trainer.{command}" in text
        assert "--per_client [{true,false}]" in text and "--output OUTPUT" in text and "``" not in text
