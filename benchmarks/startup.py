"""Start-up time of the ``lightning-fedmut`` command: ``--help``, ``--version``, ``fit --help``, a 1-round fit.

Each command runs ``--repeats`` times in a fresh interpreter (alternating the commands, so a change in the
machine's load touches them all alike); the best-of and median wall times are printed, with two baselines
measured in the same process: an empty interpreter (``python -c pass``) and ``import lightning.pytorch``,
the floor of any command that builds a Trainer. ``--help`` and ``--version`` need neither Lightning nor
jsonargparse; the ``lazy root`` rows run them with the package root replaced by an empty module, which is
what they cost once ``lightning_fedmut/__init__.py`` imports its names lazily. Run from the repository
root::

    OMP_NUM_THREADS=1 python benchmarks/startup.py              # 5 repeats, about a minute
    OMP_NUM_THREADS=1 python benchmarks/startup.py --repeats 2  # smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the package root as an empty module: what `--help` costs when `lightning_fedmut/__init__.py` is lazy
_LAZY_ROOT = (
    "import sys, types; m = types.ModuleType('lightning_fedmut'); m.__path__ = [{path!r}];"
    " m.__version__ = '0'; sys.modules['lightning_fedmut'] = m;"
    " from lightning_fedmut.cli import main; raise SystemExit(main({argv!r}))"
)
_FIT = ["fit", "--data=synthetic", "--partition.num_clients=4", "--loop.clients_per_round=2", "--loop.rounds=1",
        "--loop.local_steps=1", "--loop.enable_progress_bar=false", "--logger=none"]


def command() -> list[str]:
    """The installed console script, or ``python -m lightning_fedmut`` without one."""
    script = Path(sys.executable).with_name("lightning-fedmut")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lightning_fedmut"]


def cases() -> dict[str, list[str]]:
    cli = command()
    package = str(ROOT / "lightning_fedmut")
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import lightning.pytorch": [sys.executable, "-c", "import lightning.pytorch"],
        "--version": [*cli, "--version"],
        "--help": [*cli, "--help"],
        "--version, lazy root": [sys.executable, "-c", _LAZY_ROOT.format(path=package, argv=["--version"])],
        "--help, lazy root": [sys.executable, "-c", _LAZY_ROOT.format(path=package, argv=["--help"])],
        "fit --help": [*cli, "fit", "--help"],
        "fit, 1 round": [*cli, *_FIT],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONDONTWRITEBYTECODE": "1"}
    todo = cases()
    times: dict[str, list[float]] = {name: [] for name in todo}
    workdir = tempfile.mkdtemp(prefix="fedmut-startup-")
    try:
        for argv in todo.values():  # one untimed run each: bytecode caches and the disk cache warm
            subprocess.run(argv, cwd=workdir, env=env, capture_output=True, check=True, timeout=600)
        for _ in range(args.repeats):
            for name, argv in todo.items():
                start = time.perf_counter()
                subprocess.run(argv, cwd=workdir, env=env, capture_output=True, check=True, timeout=600)
                times[name].append(time.perf_counter() - start)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    floor = min(times["import lightning.pytorch"])
    print(f"{'command':28}{'best s':>9}{'median s':>10}{'best / import lightning':>26}")
    for name, values in times.items():
        print(f"{name:28}{min(values):>9.3f}{statistics.median(values):>10.3f}{min(values) / floor:>26.2f}")
    print(f"{args.repeats} repeats each; {' '.join(command())}")


if __name__ == "__main__":
    main()
