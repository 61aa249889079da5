"""What a federated run prints from the Python API: one line per round when the console is not a terminal, W&B
quiet unless WANDB_SILENT says otherwise, and each warning once with two workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import TinyModule, make_synthetic
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader

from lightning_fedmut import FederatedLoop
from lightning_fedmut.data import make_clients, partition_iid


def _fit(tmp_path, logger=None, **loop_kwargs):
    train, val = make_synthetic()
    clients = make_clients(train, partition_iid(len(train), 4, seed=0), batch_size=20)
    torch.manual_seed(0)
    loop = FederatedLoop(rounds=3, clients_per_round=2, local_steps=1, seed=0, logger=logger, **loop_kwargs)
    return loop.fit(TinyModule(), clients, val_dataloaders=DataLoader(val, batch_size=60))


def _round_lines(history, rounds=3) -> list[str]:
    return [re.escape(f"round {r['round']} ({r['round'] + 1}/{rounds}): val_loss {r['val_loss']:.4f},"
                      f" val_acc {r['val_acc']:.4f}, ") + r"\d+\.\d s" for r in history]


def test_a_run_logged_to_a_file_prints_one_line_per_round_and_no_wandb_banner(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    result = _fit(tmp_path, WandbLogger(project="console", save_dir=str(tmp_path), offline=True))
    out, err = capfd.readouterr()
    assert out == "" and "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 4, err
    for line, pattern in zip(lines, _round_lines(result.history)):
        assert re.fullmatch(pattern, line), (line, pattern)
    (folder,) = Path(tmp_path, "wandb").glob("offline-run-*")
    assert lines[3] == f"W&B: the run was logged offline in {folder}; upload it with: wandb sync {folder}"

    # an explicit WANDB_SILENT=false keeps W&B's own lines; without the progress bar no round lines
    monkeypatch.setenv("WANDB_SILENT", "false")
    logger = WandbLogger(project="console", save_dir=str(tmp_path), offline=True)
    _fit(tmp_path, logger, enable_progress_bar=False)
    err = capfd.readouterr().err
    assert "settings" not in logger._wandb_init and "anonymous" not in logger._wandb_init  # W&B decides
    assert "W&B: the run was logged offline" not in err and not re.search(r"^round \d", err, re.MULTILINE)


def test_an_online_run_the_loop_silenced_names_its_url_once(tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    from lightning_fedmut.loop.connectors import tracking

    monkeypatch.delenv("WANDB_SILENT", raising=False)
    logger = WandbLogger(project="console", save_dir=str(tmp_path))
    tracking.quiet_wandb(logger)
    assert logger._wandb_init["settings"].silent is True and "anonymous" not in logger._wandb_init
    calls = []
    logger._experiment = SimpleNamespace(  # the started run, as W&B returns it online (no network here)
        settings=SimpleNamespace(mode="online"), url="https://wandb.ai/me/console/runs/abc123",
        config=SimpleNamespace(update=lambda *a, **k: calls.append("config")),
        define_metric=lambda *a, **k: calls.append("metric"))
    tracking.start_run(logger, {"seed": 0})
    assert calls == ["config", "metric", "metric"]
    assert capsys.readouterr().err == "W&B: the run is at https://wandb.ai/me/console/runs/abc123\n"


def test_the_progress_is_a_bar_on_a_terminal_and_lines_elsewhere():
    from lightning_fedmut.progress import progress_mode, round_line

    class Terminal:
        def isatty(self):
            return True

    assert progress_mode(True, True, Terminal()) == "bar"
    with open(os.devnull, "w") as log_file:
        assert progress_mode(True, True, log_file) == "lines"
    assert progress_mode(True, False, Terminal()) is None and progress_mode(False, True, Terminal()) is None
    assert round_line(9, 10, {"val_acc": 0.8125}, 12.34, failed=2) == (
        "round 9 (10/10): val_acc 0.8125, 2 clients failed, 12.3 s")


SCRIPT = """
import sys, warnings
sys.path.insert(0, {tests!r})
import pytest
import torch
from helpers import TinyModule, make_synthetic
from lightning_fedmut import FederatedLoop
from lightning_fedmut.data import make_clients, partition_iid

class Warns(TinyModule):
    def training_step(self, batch, batch_idx):
        warnings.warn("check the learning rate", UserWarning)
        return super().training_step(batch, batch_idx)

train, _ = make_synthetic()
clients = make_clients(train, partition_iid(len(train), 4, seed=0), batch_size=20)
torch.manual_seed(0)
loop = FederatedLoop(rounds=2, clients_per_round=4, local_steps=1, seed=0, workers=2, enable_progress_bar=False)
loop.fit(Warns(), clients)
print("done")
"""


@pytest.mark.slow
def test_with_two_workers_a_warning_is_printed_once(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(Path(__file__).parents[1]))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    assert done.stderr.count("UserWarning: check the learning rate") == 1, done.stderr


def test_a_components_progress_bar_metrics_are_in_each_round_line(tmp_path, capfd):
    from lightning_fedmut import FederatedCallback

    class Budget(FederatedCallback):
        progress_bar_metrics = ("demo/spent",)

        def metrics(self):
            return {"demo/spent": 0.125, "demo/hidden": 7.0}

    result = _fit(tmp_path, callbacks=[Budget()])
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 3
    for line, r in zip(lines, result.history):
        assert re.fullmatch(re.escape(f"round {r['round']} ({r['round'] + 1}/3): val_loss {r['val_loss']:.4f},"
                                      f" val_acc {r['val_acc']:.4f}, demo/spent 0.1250, ") + r"\d+\.\d s", line), line
