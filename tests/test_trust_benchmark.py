"""The benchmark runner under a hostile user: a killed parent leaves no cell process and no semaphore behind, a
finished cell whose ``history.json`` is truncated or wrong-shaped runs again, and a misspelled ``metric`` or a
``json:`` partition that does not parse is one line before any cell starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lightning_fedmut.callbacks import FederatedCallback

HERE = Path(__file__).parent
ROOT = HERE.parent
TINY = {
    "name": "tiny",
    "data": "digits",
    "methods": ["FedAvg", "FedMut"],
    "partitions": ["iid"],
    "seeds": 1,
    "last": 2,
    "logger": "none",
    "fit": {"loop": {"rounds": 2, "clients_per_round": 3, "local_epochs": 1}, "partition": {"num_clients": 6}},
}


class SlowRounds(FederatedCallback):
    """Writes its process id into ``folder`` once its cell is in round 1, then makes every round last ``pause``
    seconds: a cell that is still running when the test acts."""

    def __init__(self, folder: str, pause: float = 0.3) -> None:
        self.folder = folder
        self.pause = pause

    def on_round_start(self, loop, module) -> None:
        if loop.round == 1:
            Path(self.folder, str(os.getpid())).write_text(str(loop.seed), encoding="utf-8")
        time.sleep(self.pause)


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------- a killed parent
def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descendants(root: int) -> set[int]:
    """Every living process below ``root``, from each process's parent in /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent_of(int(entry.name))
            if parent is not None:
                parents[int(entry.name)] = parent
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _semaphores(pids: set[int]) -> set[str]:
    """The named semaphores (``/dev/shm/sem.*``) that these processes have mapped."""
    found = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        found |= {line.split()[-1] for line in maps.splitlines() if "/dev/shm/sem." in line}
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_cells_exit_once_saved_when_the_parent_is_killed(tmp_path):
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    slow = {"class_path": "test_trust_benchmark.SlowRounds", "init_args": {"folder": str(pids_dir)}}
    config = write_config(tmp_path / "tiny.yaml", {**TINY, "seeds": 2, "methods": ["FedAvg"], "fit": {
        **TINY["fit"], "loop": {**TINY["fit"]["loop"], "rounds": 200}, "callbacks": [slow]}})
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-m", "lightning_fedmut.cli", "benchmark", str(config), "--output",
                               str(out), "--parallel", "2"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    below: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(list(pids_dir.iterdir())) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.2)
        cells = {int(p.name) for p in pids_dir.iterdir()}
        assert len(cells) == 2, "the two cells did not reach round 1"
        below = _descendants(parent.pid)
        assert cells <= below
        semaphores = _semaphores(below | {parent.pid})
        assert semaphores, "the pool's queues hold named semaphores"

        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in below) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [pid for pid in sorted(below) if _alive(pid)] == []
        deadline = time.monotonic() + 5
        while any(os.path.exists(s) for s in semaphores) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [s for s in sorted(semaphores) if os.path.exists(s)] == []
        run = below | {parent.pid}  # multiprocessing's (and loky's) semaphore names hold their creator's pid
        assert [n for n in os.listdir("/dev/shm") if any(f"-{pid}-" in n for pid in run)] == []
        for seed in (0, 1):  # each cell saved its last completed round on the way out
            folder = out / f"cells/fedavg/iid/seed-{seed}"
            assert not (folder / "history.json").exists()
            assert sorted((folder / "checkpoints").glob("round-*.ckpt")), seed
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in below:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
