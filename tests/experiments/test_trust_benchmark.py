"""The benchmark runner under a hostile user: a killed parent leaves no cell process and no semaphore behind, a
finished cell whose ``history.json`` is truncated or wrong-shaped runs again, and a misspelled ``metric`` or a
``json:`` partition that does not parse is one line before any cell starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lightning_fedmut.callbacks import FederatedCallback
from lightning_fedmut.cli import main
from lightning_fedmut.experiments import run_benchmark

HERE = Path(__file__).parents[1]
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


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_cells_exit_once_saved_when_the_parent_is_killed(tmp_path):
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    slow = {"class_path": "test_trust_benchmark.SlowRounds", "init_args": {"folder": str(pids_dir)}}
    config = write_config(tmp_path / "tiny.yaml", {**TINY, "seeds": 2, "methods": ["FedAvg"], "fit": {
        **TINY["fit"], "loop": {**TINY["fit"]["loop"], "rounds": 200}, "callbacks": [slow]}})
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(HERE), str(ROOT)]), "OMP_NUM_THREADS": "1"}
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
        _end(below)


def _end(pids: set[int]) -> None:
    """End the processes a failed run left, the cells first: the resource tracker, once they are gone, removes
    their semaphores and exits by itself."""
    def tracker(pid: int) -> bool:
        try:
            return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    trackers = {pid for pid in pids if tracker(pid)}
    for pid in sorted(pids - trackers):
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in trackers) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in sorted(trackers):
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------- a broken finished cell
def _table_numbers(summary: dict) -> dict:
    return {(m, p): (c["values"], c["seeds"], c["mean"], c["std"]) for m, row in summary["cells"].items()
            for p, c in row.items()}


CORRUPT = {
    "truncated": lambda text: text[: len(text) // 2],
    "a round short": lambda text: json.dumps({**json.loads(text), "history": json.loads(text)["history"][:1]}),
    "history not a list": lambda text: json.dumps({**json.loads(text), "history": {"round": 0}}),
    "rows out of order": lambda text: json.dumps({**json.loads(text), "history": json.loads(text)["history"][::-1]}),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny benchmark, run once: its folder, its numbers and its table."""
    out = tmp_path_factory.mktemp("finished") / "out"
    result = run_benchmark(TINY, out, echo=None)
    assert result.complete and result.ran == 2
    return out, _table_numbers(result.summary), (out / "results.md").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(CORRUPT))
def test_a_broken_history_file_reruns_its_cell(finished, tmp_path, damage):
    import shutil

    source, numbers, table = finished
    out = tmp_path / "out"
    shutil.copytree(source, out)
    history = out / "cells/fedmut/iid/seed-0/history.json"
    history.write_text(CORRUPT[damage](history.read_text(encoding="utf-8")), encoding="utf-8")

    report = run_benchmark(TINY, out, report_only=True, echo=None)  # the table leaves it out, naming the file
    assert [r["status"] for r in report.records] == ["ok", "failed"]
    assert report.records[1]["error"].startswith(f"{history} ")
    assert report.records[1]["error"].endswith(": run the benchmark again to rerun the cell")

    lines: list[str] = []
    run_benchmark(TINY, out, dry_run=True, echo=lines.append)
    assert lines[1] == "  finished  FedAvg | IID | seed 0"
    assert lines[2].startswith("  to run    FedMut | IID | seed 0 (history.json ")
    assert history.is_file()  # a dry run moves nothing

    lines = []
    result = run_benchmark(TINY, out, echo=lines.append)
    assert result.ran == 1 and result.complete
    assert "1 finished, 1 to run" in lines[0]
    assert lines[1].startswith(f"FedMut | IID | seed 0: runs again: {history} ")
    assert lines[1].endswith(" (kept as history.json.invalid)")
    assert _table_numbers(result.summary) == numbers
    assert (out / "results.md").read_text(encoding="utf-8") == table
    assert (out / "cells/fedmut/iid/seed-0/history.json.invalid").is_file()


def test_the_history_problems_are_named(finished, tmp_path):
    from lightning_fedmut.experiments import load_benchmark
    from lightning_fedmut.experiments.runner import history_problem

    source, _, _ = finished
    bench = load_benchmark(TINY)
    text = (source / "cells/fedmut/iid/seed-0/history.json").read_text(encoding="utf-8")
    path = tmp_path / "history.json"
    expected = {
        "a round short": "holds 1 round, expected 2 (loop.rounds)",
        "history not a list": "has `history` {'round': 0}, expected a non-empty list of rounds",
        "rows out of order": "has {'round': 1, ",
    }
    for damage, start in expected.items():
        path.write_text(CORRUPT[damage](text), encoding="utf-8")
        assert history_problem(path, bench.cells[1], bench).startswith(start), damage
    path.write_text(text, encoding="utf-8")
    assert history_problem(path, bench.cells[1], bench) is None
    assert history_problem(path, bench.cells[0], bench) == "is the record of method 'FedMut', expected 'FedAvg'"
    record = json.loads(text)
    path.write_text(json.dumps({**record, "history": [{k: v for k, v in row.items() if k != "val_acc"}
                                                      for row in record["history"]]}), encoding="utf-8")
    assert history_problem(path, bench.cells[1], bench) == "holds no val_acc (the benchmark's metric) in any round"
    path.write_text(json.dumps({**record, "history": record["history"][:1], "stopped_early": True}), encoding="utf-8")
    assert history_problem(path, bench.cells[1], bench) is None  # a run a callback stopped early


# ------------------------------------------------------------------------------------- checked up front
def _cli_error(tmp_path, monkeypatch, capsys, *argv: str) -> str:
    write_config(tmp_path / "tiny.yaml", TINY)
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", "tiny.yaml", "--output", "out", *argv]) == 2
    assert not (tmp_path / "out").exists()  # no cell folder, nothing written
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err.removeprefix("lightning-fedmut benchmark: error: ").rstrip("\n")


def test_a_misspelled_metric_is_one_line_before_any_cell(tmp_path, monkeypatch, capsys):
    assert _cli_error(tmp_path, monkeypatch, capsys, "--set", "metric=val_acx") == (
        "metric: expected one of the names the cells' history holds, got 'val_acx' (did you mean val_acc?): the"
        " model's validation logs val_acc, val_loss (a dry evaluation of the first cell's model), and every round"
        " has clients/trained, clients/failed, round_skipped; a client training mean (clients/<name>) or a method's"
        " figure (fedmut/...) is taken as given")
    assert _cli_error(tmp_path, monkeypatch, capsys, "--set", "metric=accuracy").startswith(
        "metric: expected one of the names the cells' history holds, got 'accuracy': the model's validation logs"
        " val_acc, val_loss ")


@pytest.mark.slow
def test_a_misspelled_metric_leaves_a_finished_benchmark_as_it_is(finished, tmp_path):
    import shutil

    source, _, _ = finished
    out = tmp_path / "out"
    shutil.copytree(source, out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(ValueError, match=r"^metric: expected one of the names the cells' history holds, got 'val_acx'"):
        run_benchmark({**TINY, "metric": "val_acx"}, out, echo=None)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


@pytest.mark.slow
def test_the_metric_of_a_model_without_validation_is_refused(tmp_path):
    config = {**TINY, "model": {"class_path": "helpers.NoValidationModule", "init_args": {"features": 64, "classes": 10}}}
    with pytest.raises(ValueError, match=r"^metric: expected one of the names the cells' history holds, got 'val_acc':"
                                         r" the cells evaluate nothing \(the model has no validation_step"):
        run_benchmark(config, tmp_path / "out", echo=None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("content", "reason"), [
    ("{not json", ("'parts.json' is not valid JSON: Expecting property name enclosed in double quotes at line 1,"
                   " column 2")),
    ('{"0": [0, 1.5]}', "Expected the indices of client '0' in 'parts.json' to be integers, got 1.5 at position 1"),
    ("[[0, 1]]", "Expected a JSON object {client_id: [indices]} in 'parts.json', got list"),
    (None, "no such file"),
])
def test_a_json_partition_that_does_not_parse_is_one_line_before_any_cell(tmp_path, monkeypatch, capsys, content,
                                                                          reason):
    if content is not None:
        (tmp_path / "parts.json").write_text(content, encoding="utf-8")
    assert _cli_error(tmp_path, monkeypatch, capsys, "--set", "partitions=[iid, 'json:parts.json']") == (
        "tiny.yaml: partitions.parts.json: path: expected a JSON file of {client: [indices]} (such as the FedMut"
        f" reference code's partition files), got 'parts.json': {reason}")
