"""Small traps, each refused with one clear line before any round trains: output paths that cannot be written,
a full disk while saving, a read-only checkpoint folder, bad worker counts and bad sweep configurations."""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

import pytest
import torch
from helpers import TinyModule, state_of
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut import checkpoint as ckpt
from lightning_fedmut.checkpoint import list_checkpoints
from lightning_fedmut.cli import main
from lightning_fedmut.cli import sweep as sweep_cli
from lightning_fedmut.cli._parser import CLIError
from lightning_fedmut.data import partition_iid

TINY = ["fit", "--data=synthetic", "--partition.num_clients=4", "--loop.clients_per_round=2", "--loop.rounds=2",
        "--loop.local_steps=1", "--loop.enable_progress_bar=false", "--logger=none", "--model_checkpoint=null"]


def _run(synthetic, checkpoint_dir, rounds=3, ckpt_path=None, callbacks=()):
    train, val = synthetic
    torch.manual_seed(0)
    model = TinyModule()
    clients = make_clients(train, partition_iid(len(train), 8, seed=0), batch_size=16)
    loop = FederatedLoop(rounds=rounds, clients_per_round=4, aggregator=FedAvg(weighted=False), seed=3,
                         callbacks=list(callbacks), checkpoint_dir=checkpoint_dir, enable_progress_bar=False)
    result = loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=60), ckpt_path=ckpt_path)
    return model, result


def _read_only(monkeypatch, folder: Path) -> None:
    """Make ``folder`` read-only; as root, where the mode bits do not stop writes, have ``os.access`` say so too."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = os.access

        def access(path, mode, *args, **kwargs):
            if Path(path).resolve() == folder.resolve() and mode & os.W_OK:
                return False
            return real(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------------------------------- --history_file
def test_history_file_that_is_a_folder_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    code = main([*TINY, f"--history_file={tmp_path / 'out'}", f"--loop.checkpoint_dir={tmp_path / 'ckpt'}"])
    assert code == 2
    assert _one_error_line(capsys) == (
        f"lightning-fedmut fit: error: --history_file: expected a file to write the history to, got"
        f" '{tmp_path / 'out'}', which is a folder: pass a file path such as {tmp_path / 'out' / 'history.json'}")
    assert not (tmp_path / "ckpt").exists()  # no round ran


def test_history_file_in_a_read_only_folder_is_refused_before_training(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    _read_only(monkeypatch, folder)
    try:
        code = main([*TINY, f"--history_file={folder / 'sub' / 'h.json'}", f"--loop.checkpoint_dir={tmp_path / 'ck'}"])
    finally:
        folder.chmod(0o755)
    assert code == 2
    line = _one_error_line(capsys)
    assert line == (f"lightning-fedmut fit: error: --history_file: cannot write '{folder / 'sub' / 'h.json'}': the"
                    f" folder '{folder}' is read-only; pass a --history_file in a writable folder")
    assert not (tmp_path / "ck").exists() and list(folder.iterdir()) == []


# ------------------------------------------------------------------------------------------- full disk
class _DiskFillsAt(FederatedCallback):
    """From round ``at`` on, every write of a checkpoint's body fails as on a full disk."""

    def __init__(self, monkeypatch, at):
        self.monkeypatch, self.at = monkeypatch, at

    def on_round_start(self, loop, module):
        if loop.round == self.at:
            def write(self, data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            self.monkeypatch.setattr(ckpt._HashingWriter, "write", write)


def test_disk_full_while_saving_names_the_file_the_round_and_the_safe_rounds(synthetic, tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    with pytest.raises(ckpt.CheckpointWriteError) as caught:
        _run(synthetic, folder, rounds=4, callbacks=[_DiskFillsAt(monkeypatch, at=2)])
    assert caught.value.errno == errno.ENOSPC
    assert str(caught.value) == (
        f"Cannot save the checkpoint after 3 completed rounds to '{folder / 'round-00003.ckpt'}': No space left on"
        f" device (ENOSPC). The checkpoint of the first 2 completed rounds, '{folder / 'round-00002.ckpt'}', is safe;"
        " a resume trains the rounds after it again. Free space on that disk, then resume with ckpt_path='last'.")
    assert sorted(p.name for p in folder.iterdir()) == [  # no temporary file left
        "history.jsonl", "last.ckpt", "round-00001.ckpt", "round-00002.ckpt"]
    monkeypatch.undo()  # space is freed: the resume ends where an uninterrupted run does
    model, result = _run(synthetic, folder, rounds=4, ckpt_path="last")
    ref_model, reference = _run(synthetic, None, rounds=4)
    assert result.history == reference.history
    assert all(torch.equal(v, state_of(ref_model)[k]) for k, v in state_of(model).items())


def test_disk_full_in_the_cli_is_one_line_with_exit_code_1(tmp_path, capsys, monkeypatch):
    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt._HashingWriter, "write", write)
    assert main([*TINY, f"--loop.checkpoint_dir={tmp_path / 'ckpt'}"]) == 1
    line = _one_error_line(capsys)
    assert line.startswith(f"lightning-fedmut fit: error: --loop.checkpoint_dir: Cannot save the checkpoint after 1"
                           f" completed round to '{tmp_path / 'ckpt' / 'round-00001.ckpt'}': No space left on device")
    assert "no round is saved yet" in line


# -------------------------------------------------------------------------------- read-only checkpoint_dir
def test_a_read_only_folder_is_resumed_from_to_extend_the_run_elsewhere(synthetic, tmp_path, monkeypatch):
    kept = tmp_path / "kept"
    _run(synthetic, kept, rounds=2)
    before = _listing(kept)
    _read_only(monkeypatch, kept)
    try:
        model, result = _run(synthetic, tmp_path / "more", rounds=4, ckpt_path=kept)
    finally:
        kept.chmod(0o755)
    ref_model, reference = _run(synthetic, None, rounds=4)
    assert result.history == reference.history
    assert all(torch.equal(v, state_of(ref_model)[k]) for k, v in state_of(model).items())
    assert _listing(kept) == before  # no lock, no checkpoint, nothing written there
    assert [p.name for p in list_checkpoints(tmp_path / "more")] == ["round-00003.ckpt", "round-00004.ckpt"]


def test_a_read_only_checkpoint_dir_to_save_in_is_refused_before_training(synthetic, tmp_path, monkeypatch):
    kept = tmp_path / "kept"
    _run(synthetic, kept, rounds=2)
    before = _listing(kept)
    _read_only(monkeypatch, kept)
    try:
        with pytest.raises(ckpt.CheckpointWriteError) as caught:
            _run(synthetic, kept, rounds=4, ckpt_path="last")
    finally:
        kept.chmod(0o755)
    assert str(caught.value).startswith(f"Cannot write to `checkpoint_dir`='{kept}' (Permission denied), where this"
                                        " run saves its checkpoints.")
    assert "pass that folder (or one of its files) as `ckpt_path` with a new `checkpoint_dir`" in str(caught.value)
    assert _listing(kept) == before


def test_cli_extends_a_read_only_run_from_its_folder(tmp_path, capsys, monkeypatch):
    kept = tmp_path / "kept"
    assert main([*TINY, f"--loop.checkpoint_dir={kept}"]) == 0
    before = _listing(kept)
    _read_only(monkeypatch, kept)
    try:
        assert main([*TINY, "--loop.rounds=3", f"--loop.checkpoint_dir={kept}", "--ckpt_path=last"]) == 2
        line = _one_error_line(capsys)
        assert main([*TINY, "--loop.rounds=3", f"--loop.checkpoint_dir={tmp_path / 'more'}",
                     f"--ckpt_path={kept}"]) == 0
    finally:
        kept.chmod(0o755)
    assert line == (f"lightning-fedmut fit: error: --loop.checkpoint_dir: cannot save checkpoints in '{kept}': the"
                    f" folder '{kept}' is read-only. Pass a writable folder; to extend a run kept in a read-only"
                    " folder, pass that folder as --ckpt_path with a new --loop.checkpoint_dir")
    assert _listing(kept) == before
    assert [p.name for p in list_checkpoints(tmp_path / "more")] == ["round-00003.ckpt"]


# ------------------------------------------------------------------------ checkpoint_dir naming a file
def test_checkpoint_dir_naming_a_file_is_refused(tmp_path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    with pytest.raises(ValueError) as caught:
        FederatedLoop(rounds=1, clients_per_round=1, checkpoint_dir=file)
    assert str(caught.value) == (
        f"Expected `checkpoint_dir` to be a folder (created if missing), got '{file}', which is a file. Pass a folder"
        " path; to resume from a checkpoint file, pass it as `ckpt_path`.")
    assert main([*TINY, f"--loop.checkpoint_dir={file}"]) == 2
    assert _one_error_line(capsys).startswith(
        f"lightning-fedmut fit: error: --loop.checkpoint_dir: cannot save checkpoints in '{file}': '{file}' is a file,"
        " not a folder.")
    assert file.read_text() == "mine"


# -------------------------------------------------------------------------------------------- workers
def test_workers_that_is_not_a_number_is_one_line_naming_the_flag(capsys):
    assert main(["fit", "--loop.workers", "abc", "--logger=none"]) == 2
    assert _one_error_line(capsys) == "lightning-fedmut fit: error: --loop.workers: expected an integer or null, got 'abc'"


@pytest.mark.slow
def test_more_workers_than_clients_per_round_warns_and_starts_no_more_than_slots():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop = FederatedLoop(rounds=1, clients_per_round=10, workers=64)
    assert [str(w.message) for w in caught] == [
        ("`workers`=64 is more than `clients_per_round`=10, the most clients a round trains at once: starting 10"
         " workers.")]
    assert caught[0].filename == __file__  # said at the user's line
    assert loop.executor.workers == 10 and loop.hparams["workers"] == 10


# ---------------------------------------------------------------------------------------------- sweeps
SWEEP = """
method: grid
command: ["${{env}}", "lightning-fedmut", "fit", "${{args}}"]
parameters:
  loop.rounds: {{value: 1}}
  {name}: {{values: {values}}}
"""


@pytest.mark.parametrize(
    ("name", "values", "message"),
    [
        ("loop.workers", "[1, abc]",
         ("configuration 2 of 2 (loop.rounds=1 loop.workers=abc): --loop.workers: expected an integer or null, got"
          " 'abc'; nothing was run")),
        ("loop.min_clients_per_round", "[1, 2, 99]",
         ("configuration 3 of 3 (loop.rounds=1 loop.min_clients_per_round=99): --loop: Expected"
          " `min_clients_per_round` to be an integer <= 10, got 99; nothing was run")),
        ("mutation.radus", "[1.0]",
         ("configuration 1 of 1 (loop.rounds=1 mutation.radus=1.0): --mutation.radus: MutationCallback has no"
          " argument 'radus' (did you mean --mutation.radius?)")),
    ],
)
def test_every_sweep_configuration_is_checked_before_the_first_runs(tmp_path, monkeypatch, name, values, message):
    file = tmp_path / "sweep.yaml"
    file.write_text(SWEEP.format(name=name, values=values))
    ran = []
    monkeypatch.setattr(sweep_cli, "_run_one", lambda *args: ran.append(args) or 0)
    with pytest.raises(CLIError) as caught:
        sweep_cli.run_sweep(str(file))
    assert caught.value.message.startswith(f"{file}: {message}"), caught.value.message
    assert ran == []


def test_a_good_sweep_passes_the_check_and_runs_every_configuration(tmp_path, monkeypatch):
    file = tmp_path / "sweep.yaml"
    file.write_text(SWEEP.format(name="mutation.radius", values="[1.0, 2.0]"))
    ran = []
    monkeypatch.setattr(sweep_cli, "_run_one", lambda command, *args: ran.append(command) or 0)
    rows = sweep_cli.run_sweep(str(file))
    assert [r["returncode"] for r in rows] == [0, 0]
    assert [c[c.index("fit") + 1:-1] for c in ran] == [["--loop.rounds=1", "--mutation.radius=1.0"],
                                                        ["--loop.rounds=1", "--mutation.radius=2.0"]]
