"""`lightning-fedmut fit --ckpt_path`: Ctrl+C prints how to resume, the resumed run ends equal to an uninterrupted
one, and a rerun never overwrites the checkpoints of an earlier run."""

from __future__ import annotations

import json
import shlex

import pytest
import torch

from lightning_fedmut.cli import main
from lightning_fedmut.cli._parser import CLIError
from lightning_fedmut.cli.fit import resume_checkpoint, resume_command
from lightning_fedmut.models import DigitsCNN

# 4 synthetic clients, 2 per round, 4 rounds of 2 local steps: 4 training steps per round
TINY = ["--data=synthetic", "--partition.num_clients=4", "--loop.clients_per_round=2", "--loop.rounds=4",
        "--loop.local_steps=2", "--loop.enable_progress_bar=false", "--logger=none",
        "--model_checkpoint.monitor=val_acc", "--model_checkpoint.mode=max", "--model_checkpoint.save_top_k=2"]
STEPS_PER_ROUND = 4


def _state(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _lightning_files(folder) -> list[str]:
    return sorted(p.name for p in folder.glob("*.ckpt") if not p.name.startswith("round-"))


def test_ctrl_c_then_the_printed_command_ends_equal_to_an_uninterrupted_run(tmp_path, capsys, monkeypatch):
    reference = [*TINY, f"--loop.checkpoint_dir={tmp_path / 'ref'}", f"--history_file={tmp_path / 'ref.json'}"]
    assert main(["fit", *reference]) == 0
    capsys.readouterr()

    # Ctrl+C in the middle of round 2's client training
    original = DigitsCNN.training_step
    steps = []

    def training_step(self, batch, batch_idx):
        steps.append(batch_idx)
        if len(steps) == 2 * STEPS_PER_ROUND + 3:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DigitsCNN, "training_step", training_step)
    run = [*TINY, f"--loop.checkpoint_dir={tmp_path / 'run'}", f"--history_file={tmp_path / 'run.json'}"]
    assert main(["fit", *run]) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[-2] == f"Interrupted. The completed rounds are saved in {tmp_path / 'run'}; resume with:"
    command = shlex.split(err[-1])
    assert command[:2] == ["lightning-fedmut", "fit"] and command[2:] == [*run, "--ckpt_path", "last"]
    assert sorted(p.name for p in (tmp_path / "run").glob("round-*.ckpt")) == ["round-00001.ckpt", "round-00002.ckpt"]
    monkeypatch.setattr(DigitsCNN, "training_step", original)

    # the same command again is refused: the checkpoints are never overwritten silently
    assert main(["fit", *run]) == 2
    refused = capsys.readouterr().err
    assert refused.startswith(f"lightning-fedmut fit: error: --loop.checkpoint_dir={tmp_path / 'run'} already holds"
                              " checkpoints (")
    assert "pass --ckpt_path last to resume that run" in refused

    # the printed command resumes, and ends where the uninterrupted run ended
    assert main(command[1:]) == 0
    out = capsys.readouterr().out
    assert "; resuming from last" in out and "Finished 4 rounds" in out
    ref_history = json.loads((tmp_path / "ref.json").read_text())["history"]
    run_history = json.loads((tmp_path / "run.json").read_text())["history"]
    assert [r["round"] for r in run_history] == [0, 1, 2, 3]
    assert run_history == ref_history
    assert _lightning_files(tmp_path / "run") == _lightning_files(tmp_path / "ref")
    for name in _lightning_files(tmp_path / "ref"):
        ref, resumed = _state(tmp_path / "ref" / name), _state(tmp_path / "run" / name)
        assert all(torch.equal(ref[k], resumed[k]) for k in ref), name
    # the final global model, bit for bit, loaded the Lightning way
    final = DigitsCNN.load_from_checkpoint(tmp_path / "run" / "last.ckpt")
    assert all(torch.equal(v, _state(tmp_path / "ref" / "last.ckpt")[k]) for k, v in final.state_dict().items())


def test_interrupt_without_a_checkpoint_dir_says_how_to_make_runs_resumable(capsys, monkeypatch):
    def interrupt(self, batch, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(DigitsCNN, "training_step", interrupt)
    assert main(["fit", *TINY]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "Interrupted. No checkpoint was written: set --loop.checkpoint_dir=DIR to make a run resumable"
        " (--ckpt_path last then continues it).")


def test_resume_from_a_file_and_more_rounds(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    short = [*TINY, "--loop.rounds=2", f"--loop.checkpoint_dir={folder}", f"--history_file={tmp_path / 'a.json'}"]
    assert main(["fit", *short]) == 0
    # a finished run goes on for more rounds from its last checkpoint file, into another folder
    longer = [*TINY, f"--loop.checkpoint_dir={tmp_path / 'more'}", f"--ckpt_path={folder / 'round-00002.ckpt'}",
              f"--history_file={tmp_path / 'b.json'}"]
    assert main(["fit", *longer]) == 0
    assert main(["fit", *TINY, f"--history_file={tmp_path / 'c.json'}"]) == 0
    capsys.readouterr()
    resumed = json.loads((tmp_path / "b.json").read_text())["history"]
    uninterrupted = json.loads((tmp_path / "c.json").read_text())["history"]
    assert resumed == uninterrupted


def test_resume_of_another_run_names_the_mismatch(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    assert main(["fit", *TINY, "--loop.rounds=1", f"--loop.checkpoint_dir={folder}"]) == 0
    capsys.readouterr()
    assert main(["fit", *TINY, "--seed=5", f"--loop.checkpoint_dir={folder}", "--ckpt_path", "last"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lightning-fedmut fit: error: --ckpt_path: Cannot resume: the checkpoint was made with"
                          " other settings.")
    assert "seed: checkpoint has 0, this run has 5" in err


def test_the_rerun_rule(tmp_path):
    empty, fresh = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    assert resume_checkpoint(None, None) is None
    assert resume_checkpoint(None, str(fresh)) is None and resume_checkpoint("last", str(fresh)) is None
    assert resume_checkpoint("last", str(empty)) is None  # nothing yet: start at round 0

    federated = tmp_path / "fed"
    federated.mkdir()
    (federated / "round-00003.ckpt").write_bytes(b"")
    (federated / ".tmp-1.ckpt").write_bytes(b"")  # a temporary file is not a checkpoint
    assert resume_checkpoint("last", str(federated)) == "last"
    with pytest.raises(CLIError, match=r"already holds checkpoints \(round-00003.ckpt\): pass --ckpt_path last"):
        resume_checkpoint(None, str(federated))

    only_model = tmp_path / "model"
    only_model.mkdir()
    (only_model / "last.ckpt").write_bytes(b"")
    with pytest.raises(CLIError, match=r"already holds checkpoints \(last.ckpt\)"):
        resume_checkpoint(None, str(only_model))
    with pytest.raises(CLIError, match=r"holds no federated checkpoint \(round-NNNNN.ckpt\) to resume, only last.ckpt"):
        resume_checkpoint("last", str(only_model))

    with pytest.raises(CLIError, match=r"--ckpt_path last: expected --loop.checkpoint_dir"):
        resume_checkpoint("last", None)
    with pytest.raises(CLIError, match=r"--ckpt_path: expected last or a checkpoint file, got 'nope.ckpt'"):
        resume_checkpoint("nope.ckpt", None)


def test_resume_command_replaces_an_earlier_ckpt_path():
    assert resume_command(["--ckpt_path=a.ckpt", "--seed=1"]) == "lightning-fedmut fit --seed=1 --ckpt_path last"
    assert resume_command([]) == "lightning-fedmut fit --ckpt_path last"
