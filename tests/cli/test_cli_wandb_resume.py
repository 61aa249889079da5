"""A run resumed from the command line (`fit --ckpt_path last`, or a sweep's command) goes on in the same W&B run."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from lightning_fedmut.checkpoint import load_checkpoint
from lightning_fedmut.cli import main
from lightning_fedmut.models import DigitsCNN

FIXTURES = Path(__file__).parents[1] / "fixtures_cli"
sys.path.insert(0, str(FIXTURES))
from wandb_offline_run import offline_runs, read_run  # noqa: E402 - from FIXTURES, put on the path above

# 4 synthetic clients, 2 per round, 2 local steps: 4 training steps per round
TINY = ["--data=synthetic", "--partition.num_clients=4", "--loop.clients_per_round=2", "--loop.local_steps=2",
        "--loop.enable_progress_bar=false", "--logger=wandb", "--model_checkpoint=null"]


def _run_id(folder: str) -> str:
    """The run id in an offline run folder's name: offline-run-<time>-<id>, with -1 ... after a start in the same
    second as an earlier one."""
    return re.fullmatch(r"offline-run-\d{8}_\d{6}-([a-z0-9]+)(-\d+)?", Path(folder).name).group(1)


def test_ctrl_c_then_ckpt_path_last_logs_to_the_same_wandb_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    ckpt = tmp_path / "ckpt"
    args = ["fit", *TINY, "--loop.rounds=3", f"--loop.checkpoint_dir={ckpt}", "--run_name=r", "--seed=1"]
    original, steps = DigitsCNN.training_step, []

    def training_step(self, batch, batch_idx):  # Ctrl+C during round 1, once round 0 is saved
        steps.append(batch_idx)
        if len(steps) == 4 + 2:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DigitsCNN, "training_step", training_step)
    assert main(args) == 130
    monkeypatch.setattr(DigitsCNN, "training_step", original)
    (first,) = offline_runs(tmp_path)
    saved = load_checkpoint(ckpt / "round-00001.ckpt")["run_id"]
    assert saved == _run_id(first)

    assert main([*args, "--ckpt_path", "last"]) == 0
    assert "; resuming from last" in capsys.readouterr().out
    folders = offline_runs(tmp_path)
    assert len(folders) == 2 and {_run_id(f) for f in folders} == {saved}  # W&B's folder per start, one run id
    assert load_checkpoint(ckpt / "round-00003.ckpt")["run_id"] == saved
    resumed = read_run(next(f for f in folders if f != first))
    assert resumed["id"] == saved and resumed["name"] == "r"
    assert resumed["config"]["seed"] == 1 and resumed["config"]["loop.rounds"] == 3  # the CLI's config, logged again
    assert [h["round"] for h in resumed["history"] if "val_acc" in h] == [1, 2]
    assert [h["round"] for h in read_run(first)["history"] if "val_acc" in h] == [0]


@pytest.mark.slow  # the sweep starts `lightning-fedmut fit` in a subprocess per configuration
def test_a_sweep_rerun_with_ckpt_path_last_goes_on_in_the_checkpoints_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE")  # the sweep runs its configurations offline by itself
    ckpt = tmp_path / "ckpt"
    sweep = {
        "method": "grid",
        "parameters": {"loop.rounds": {"values": [1]}},
        "command": ["${env}", "lightning-fedmut", "fit", *TINY, f"--loop.checkpoint_dir={ckpt}", "--ckpt_path=last",
                    "${args}"],
    }
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(file), "--group", "g"]) == 0
    (first,) = offline_runs(tmp_path)
    sweep["parameters"]["loop.rounds"]["values"] = [2]  # the same configuration, for one more round
    file.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(file), "--group", "g"]) == 0  # the sweep gives each run a new WANDB_RUN_ID
    assert capsys.readouterr().out.count("    ok, val_acc ") == 2
    folders = offline_runs(tmp_path)
    assert len(folders) == 2 and {_run_id(f) for f in folders} == {_run_id(first)}
    assert load_checkpoint(ckpt / "round-00002.ckpt")["run_id"] == _run_id(first)
    second = read_run(next(f for f in folders if f != first))
    assert [h["round"] for h in second["history"] if "val_acc" in h] == [1]
