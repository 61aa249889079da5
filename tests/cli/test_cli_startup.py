"""The command's start-up path: `--help` and `--version` import neither Lightning, torch nor jsonargparse, and
`python -m lightning_fedmut` is the same command. (Timings: benchmarks/startup.py.)"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import lightning_fedmut

pytestmark = pytest.mark.slow  # each test starts the command in a new Python process

PACKAGE = Path(lightning_fedmut.__file__).parent
# the package root replaced by an empty module, so that only what the command itself imports is loaded
PROBE = """
import json, sys, types
root = types.ModuleType("lightning_fedmut"); root.__path__ = [{path!r}]; root.__version__ = "9.9"
sys.modules["lightning_fedmut"] = root
from lightning_fedmut.cli import main
code = main({argv!r})
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"lightning", "torch", "jsonargparse", "wandb", "numpy"}})
print(json.dumps({{"code": code, "heavy": heavy}}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"], []], ids=["help", "version", "no-arguments"])
def test_help_and_version_import_nothing_heavy(argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE.format(path=str(PACKAGE), argv=argv)], capture_output=True,
                          text=True, env=env, timeout=60, check=True)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"code": 0 if argv else 2, "heavy": []}, proc.stderr
    if argv == ["--version"]:
        assert proc.stdout.splitlines()[0] == "lightning-fedmut 9.9"


@pytest.mark.parametrize("module", ["lightning_fedmut", "lightning_fedmut.cli"])
def test_python_m_lightning_fedmut_is_the_command(monkeypatch, capsys, module):
    import gc

    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))  # this test process keeps its collector
    monkeypatch.setattr(sys, "argv", [module, "--version"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert exit_.value.code == 0 and frozen == [True]
    assert capsys.readouterr().out == f"lightning-fedmut {lightning_fedmut.__version__}\n"


def test_the_program_freezes_what_is_alive_only_after_the_command_is_done(monkeypatch):
    """`console` (the installed script, `python -m lightning_fedmut.cli`): main's exit code, then `gc.freeze`, so
    the interpreter's exit skips tracing the command's objects; never before main returned, never in `main`."""
    import gc

    import lightning_fedmut.cli as cli

    calls = []
    monkeypatch.setattr(cli, "main", lambda: calls.append("main") or 3)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    assert cli.console() == 3 and calls == ["main", "freeze"]
    calls.clear()
    monkeypatch.undo()
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    assert cli.main(["--version"]) == 0 and calls == []  # tests and programs that call `main` keep their collector
