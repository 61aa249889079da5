"""``lightning-fedmut benchmark``: every cell is the fit run it names, the outputs hold the histories' numbers,
a killed benchmark resumes to the uninterrupted one's numbers, finished cells are skipped, failures are marked,
and bad input is one line before anything runs.

The shared benchmark is tiny: FedAvg and FedMut x IID and Dirichlet(0.5) x seeds 0 and 1, two rounds of three
of six digits clients, one local epoch.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from lightning_fedmut.callbacks import FederatedCallback
from lightning_fedmut.cli import main
from lightning_fedmut.experiments import load_benchmark, run_benchmark

HERE = Path(__file__).parents[1]
ROOT = HERE.parent
TINY = {
    "name": "tiny",
    "data": "digits",
    "methods": ["FedAvg", "FedMut"],
    "partitions": ["iid", "dir0.5"],
    "seeds": 2,
    "last": 2,
    "fit": {"loop": {"rounds": 2, "clients_per_round": 3, "local_epochs": 1}, "partition": {"num_clients": 6}},
}
NAMES = [f"{m} | {p} | seed {s}" for m in ("FedAvg", "FedMut") for p in ("IID", "Dir(0.5)") for s in (0, 1)]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class KillOnce(FederatedCallback):
    """Kills its process (SIGKILL: nothing is saved on the way out) at the start of ``at_round``, once: the
    marker file says it already did."""

    def __init__(self, marker: str, at_round: int = 1) -> None:
        self.marker = marker
        self.at_round = at_round

    def on_round_start(self, loop, module) -> None:
        if loop.round == self.at_round and not os.path.exists(self.marker):
            Path(self.marker).write_text("killed", encoding="utf-8")
            os.kill(os.getpid(), signal.SIGKILL)


class FailAtRound(FederatedCallback):
    """Raises at the start of ``at_round`` in the runs of seed ``seed`` (every run when ``seed`` is None)."""

    def __init__(self, at_round: int = 1, seed: int | None = None) -> None:
        self.at_round = at_round
        self.seed = seed

    def on_round_start(self, loop, module) -> None:
        if loop.round == self.at_round and self.seed in (None, loop.seed):
            raise RuntimeError(f"planned failure in round {loop.round}")


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def history_of(out: Path, method: str, partition: str, seed: int) -> dict:
    folder = {"IID": "iid", "Dir(0.5)": "dir-0-5"}[partition]
    return json.loads((out / "cells" / method.lower() / folder / f"seed-{seed}" / "history.json").read_text())


def metric_rows(history: list[dict], key: str = "val_acc") -> list[tuple[int, float]]:
    return [(row["round"], row[key]) for row in history if key in row]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny benchmark run once through the command line, with offline W&B runs in its folder."""
    base = tmp_path_factory.mktemp("benchmark")
    config = write_config(base / "tiny.yaml", TINY)
    out = base / "out"
    previous = os.environ.get("WANDB_DIR")
    os.environ.pop("WANDB_DIR", None)  # the runs go to the benchmark's folder
    try:
        code = main(["benchmark", str(config), "--output", str(out)])
    finally:
        if previous is not None:
            os.environ["WANDB_DIR"] = previous
    return config, out, code


# ------------------------------------------------------------------------------------------ the outputs
def test_the_table_csv_and_summary_hold_the_histories_numbers(tiny_run):
    _, out, code = tiny_run
    assert code == 0
    expected = {}  # (method, partition, seed) -> mean of the last two val_acc of the cell's own history
    for method in ("FedAvg", "FedMut"):
        for partition in ("IID", "Dir(0.5)"):
            for seed in (0, 1):
                rows = metric_rows(history_of(out, method, partition, seed)["history"])
                assert [r for r, _ in rows] == [0, 1]
                expected[method, partition, seed] = (rows[0][1] + rows[1][1]) / 2

    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        csv_rows = list(csv.DictReader(f))
    assert [(r["method"], r["partition"], int(r["seed"])) for r in csv_rows] == list(expected)
    for row in csv_rows:
        key = (row["method"], row["partition"], int(row["seed"]))
        assert row["status"] == "ok" and row["error"] == ""
        assert float(row["value"]) == pytest.approx(expected[key], abs=1e-15)
        assert row["evaluated_rounds"] == "0 1"
        assert row["run_name"] == f"{key[0]} | {key[1]} | seed {key[2]}"
        assert row["wandb_run_id"] == history_of(out, *key)["run_id"] and len(row["wandb_run_id"]) == 8

    summary = json.loads((out / "summary.json").read_text())
    lines = []
    means = {}
    for method in ("FedAvg", "FedMut"):
        cells = []
        for partition in ("IID", "Dir(0.5)"):
            values = [expected[method, partition, s] for s in (0, 1)]
            mean, std = (values[0] + values[1]) / 2, abs(values[0] - values[1]) / 2**0.5  # sample std of two
            means[method, partition] = mean
            cell = summary["cells"][method][partition]
            assert cell["values"] == pytest.approx(values, abs=1e-15)
            assert cell["mean"] == pytest.approx(mean, abs=1e-15) and cell["std"] == pytest.approx(std, abs=1e-15)
            assert [run["history_file"] for run in cell["runs"]] == [
                f"cells/{method.lower()}/{'iid' if partition == 'IID' else 'dir-0-5'}/seed-{s}/history.json"
                for s in (0, 1)]
            cells.append((mean, std))
        lines.append((method, cells))
    table = ["| Method | IID | Dir(0.5) |", "| --- | ---: | ---: |"]
    for method, cells in lines:
        texts = []
        for (mean, std), partition in zip(cells, ("IID", "Dir(0.5)")):
            text = f"{100 * mean:.2f} ± {100 * std:.2f} (n = 2)"
            best = max(means[m, partition] for m in ("FedAvg", "FedMut"))
            texts.append(f"**{text}**" if mean == pytest.approx(best, abs=1e-12) else text)
        table.append(f"| {method} | {texts[0]} | {texts[1]} |")
    gains = []
    for partition in ("IID", "Dir(0.5)"):
        differences = [expected["FedMut", partition, s] - expected["FedAvg", partition, s] for s in (0, 1)]
        mean, std = np.mean(differences), np.std(differences, ddof=1)
        half = stats.t.ppf(0.975, 1) * std / np.sqrt(2)  # the paired 95 % interval, Student's t with 1 df
        gains.append(f"{100 * mean:+.2f} ± {100 * std:.2f} (n = 2; 95 % CI [{100 * (mean - half):+.2f},"
                     f" {100 * (mean + half):+.2f}])")
    table.append(f"| FedMut − FedAvg | {gains[0]} | {gains[1]} |")
    assert "\n".join(table) in (out / "results.md").read_text(encoding="utf-8")
    assert summary["table"] == "\n".join(table)
    assert (out / "curves.png").read_bytes()[:8] == PNG_SIGNATURE


def test_a_cell_is_the_fit_run_of_its_arguments(tiny_run, tmp_path):
    """FedMut | Dir(0.5) | seed 1 and FedAvg | IID | seed 0, against `lightning-fedmut fit` with the same flags."""
    _, out, _ = tiny_run
    common = ["--data=digits", "--partition.num_clients=6", "--loop.rounds=2", "--loop.clients_per_round=3",
              "--loop.local_epochs=1", "--logger=none", "--loop.enable_progress_bar=false"]
    for key, flags in (
        (("FedMut", "Dir(0.5)", 1), ["--seed=1", "--partition.scheme=dirichlet", "--partition.alpha=0.5",
                                     "--mutation.radius=4.0", "--mutation.acceleration=0.3"]),
        (("FedAvg", "IID", 0), ["--seed=0", "--partition.scheme=iid", "--mutation=null"]),
    ):
        history_file = tmp_path / f"{key[0]}.json"
        assert main(["fit", *common, *flags, f"--history_file={history_file}"]) == 0
        reference = json.loads(history_file.read_text())["history"]
        cell = history_of(out, *key)
        for name in ("val_acc", "val_loss"):
            assert metric_rows(cell["history"], name) == metric_rows(reference, name), (key, name)


def test_every_cell_is_one_wandb_run_of_one_group(tiny_run):
    sys.path.insert(0, str(HERE / "fixtures_cli"))
    from wandb_offline_run import offline_runs, read_run

    _, out, _ = tiny_run
    runs = [read_run(folder) for folder in offline_runs(str(out))]
    assert sorted(run["name"] for run in runs) == sorted(NAMES)
    for run in runs:
        assert run["group"] == "tiny"
        method, partition, seed = run["config"]["benchmark.method"], run["config"]["benchmark.partition"], \
            run["config"]["benchmark.seed"]
        assert run["name"] == f"{method} | {partition} | seed {seed}"
        assert run["config"]["benchmark.name"] == "tiny"
        cell = history_of(out, method, partition, seed)
        assert run["id"] == cell["run_id"]
        logged = [(row["round"], row["val_acc"]) for row in run["history"] if "val_acc" in row]
        assert logged == metric_rows(cell["history"])


def test_a_rerun_skips_the_finished_cells(tiny_run, capsys):
    config, out, _ = tiny_run
    files = sorted(out.glob("cells/*/*/*/history.json"))
    assert len(files) == 8
    before = {f: f.stat().st_mtime_ns for f in files}
    table = json.loads((out / "summary.json").read_text())["table"]
    capsys.readouterr()
    assert main(["benchmark", str(config), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8 cells; 8 finished, 0 to run" in printed and "[1/" not in printed
    assert {f: f.stat().st_mtime_ns for f in files} == before
    assert json.loads((out / "summary.json").read_text())["table"] == table
    assert not list(out.glob("cells/*/*/*/checkpoints"))  # a finished cell keeps its history, not its checkpoints


def test_a_changed_config_is_refused_before_anything_runs(tiny_run, capsys):
    config, out, _ = tiny_run
    before = (out / "summary.json").read_text()
    assert main(["benchmark", str(config), "--output", str(out), "--set", "fit.loop.rounds=3"]) == 2
    err = capsys.readouterr().err
    assert err == (f"lightning-fedmut benchmark: error: {out / 'cells/fedavg/iid/seed-0'} holds a run of other"
                   " arguments (loop.rounds: 2 there, 3 now): delete that folder to run the cell again, or choose"
                   " another output folder\n")
    assert (out / "summary.json").read_text() == before


def test_a_cell_run_before_a_setting_existed_still_counts_at_its_default(tiny_run, capsys):
    """A cell whose stored arguments lack a setting added since (left unset) is finished; one set is not."""
    config, out, _ = tiny_run
    stored = out / "cells/fedavg/iid/seed-0/cell.json"
    cell = json.loads(stored.read_text())
    del cell["config"]["loop"]["personal_evaluation"]
    stored.write_text(json.dumps(cell))
    capsys.readouterr()
    assert main(["benchmark", str(config), "--output", str(out)]) == 0
    assert "8 cells; 8 finished, 0 to run" in capsys.readouterr().out
    assert main(["benchmark", str(config), "--output", str(out), "--set", "fit.loop.personal_evaluation=false"]) == 2
    assert "(loop.personal_evaluation: None there, False now)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ kill, resume
@pytest.mark.slow
def test_a_killed_benchmark_resumes_to_the_uninterrupted_numbers_in_parallel(tiny_run, tmp_path):
    """SIGKILL in round 1 of the first cell; the rerun (two cells at a time) resumes it from its checkpoint of
    round 0 and runs the others: every history equals the uninterrupted sequential run's."""
    _, reference, _ = tiny_run
    marker = tmp_path / "killed"
    killer = {"class_path": "test_cli_benchmark.KillOnce", "init_args": {"marker": str(marker), "at_round": 1}}
    config = write_config(tmp_path / "tiny.yaml", {**TINY, "logger": "none",
                                                   "fit": {**TINY["fit"], "callbacks": [killer]}})
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(HERE), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lightning_fedmut.cli", "benchmark", str(config), "--output", str(out)]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == -signal.SIGKILL, first.stderr
    killed = out / "cells/fedavg/iid/seed-0"
    assert marker.exists() and not (killed / "history.json").exists()
    assert sorted(p.name for p in (killed / "checkpoints").glob("round-*.ckpt")) == ["round-00001.ckpt"]

    second = subprocess.run([*command, "--parallel", "2"], env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert second.returncode == 0, second.stderr
    assert "0 finished, 8 to run, 2 at a time" in second.stdout
    for name in NAMES:
        method, partition, seed = name.split(" | ")
        key = (method, partition, int(seed.split()[1]))
        for metric in ("val_acc", "val_loss"):
            assert metric_rows(history_of(out, *key)["history"], metric) == metric_rows(
                history_of(reference, *key)["history"], metric), (name, metric)


# ------------------------------------------------------------------------------------------------ failures
def test_a_failing_cell_is_marked_failed_and_the_others_go_on(tmp_path, capsys):
    fail_seed_1 = {"class_path": "test_cli_benchmark.FailAtRound", "init_args": {"at_round": 1, "seed": 1}}
    fail_always = {"class_path": "test_cli_benchmark.FailAtRound", "init_args": {"at_round": 1}}
    config = write_config(tmp_path / "failing.yaml", {
        **TINY, "name": "failing", "partitions": ["iid"], "logger": "none", "gain": ["Flaky", "FedAvg"],
        "methods": {"FedAvg": None, "Flaky": {"callbacks": [fail_seed_1]}, "Broken": {"callbacks": [fail_always]}},
    })
    out = tmp_path / "out"
    assert main(["benchmark", str(config), "--output", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "Broken | IID | seed 0: failed: RuntimeError: planned failure in round 1" in printed
    assert "3 of 6 cells finished, 3 failed" in printed

    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        rows = {(r["method"], int(r["seed"])): r for r in csv.DictReader(f)}
    assert [rows[k]["status"] for k in sorted(rows)] == ["failed", "failed", "ok", "ok", "ok", "failed"]
    assert rows["Broken", 1]["error"] == "RuntimeError: planned failure in round 1"
    assert rows["Broken", 1]["value"] == "" and rows["Broken", 1]["history_file"] == "cells/broken/iid/seed-1/failed.json"
    failed = json.loads((out / "cells/broken/iid/seed-1/failed.json").read_text())
    assert failed["status"] == "failed" and "RuntimeError: planned failure in round 1" in failed["traceback"]

    flaky = float(rows["Flaky", 0]["value"])
    fedavg = [float(rows["FedAvg", s]["value"]) for s in (0, 1)]
    best = max(flaky, np.mean(fedavg))
    flaky_text = f"{100 * flaky:.2f} (n = 1 of 2)"
    fedavg_text = f"{100 * np.mean(fedavg):.2f} ± {100 * np.std(fedavg, ddof=1):.2f} (n = 2)"
    table = "\n".join([
        "| Method | IID |", "| --- | ---: |",
        f"| FedAvg | {f'**{fedavg_text}**' if np.mean(fedavg) == best else fedavg_text} |",
        f"| Flaky | {f'**{flaky_text}**' if flaky == best else flaky_text} |",
        "| Broken | failed |",
        f"| Flaky − FedAvg | {100 * (flaky - fedavg[0]):+.2f} (n = 1 of 2) |",
    ])
    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert table in markdown
    for method, seed in (("Flaky", 1), ("Broken", 0), ("Broken", 1)):
        assert (f"- {method} | IID | seed {seed}: RuntimeError: planned failure in round 1"
                f" (`cells/{method.lower()}/iid/seed-{seed}/failed.json`)") in markdown


# ------------------------------------------------------------------------------------------------ bad input
BAD = [
    (["--set", "methods=[FedAvg, FedFoo]"],
     ("tiny.yaml: methods: unknown method 'FedFoo' (did you mean FedYogi?): expected one of FedAvg, FedMut, FedProx,"
     " SCAFFOLD, FedAvgM, FedAdagrad, FedAdam, FedYogi, FedExP, FedMR, Clustered sampling, FedNova, FedSAM, FedASAM, FedDyn, DPFedAvg, DPFedMut, FedBN, FedPer, FedGen, MoFedSAM, FedLESAM,"
     " FedGloSS, FedSMOO, FedASAMSWA, FedSAMSWA, FedAvgSWA, FedRep, or a mapping of the"
     " method's name to its fit arguments")),
    (["--set", "partitions=[iid, dirichlet]"],
     ("tiny.yaml: partitions: Expected a partition name among iid, dir<alpha> (e.g. dir0.1), shards<n> (e.g. shards2)"
     " and json:<path>, or a mapping of the name to fit's partition options, got 'dirichlet'.")),
    (["--set", "fit.loop.roundz=3"],
     "tiny.yaml: fit: `loop.roundz` is not an argument of `lightning-fedmut fit` (did you mean `loop.rounds`?)"),
    (["--set", "methods={X: {aggregator: {class_path: lightning_fedmut.aggregators.FedAdam, init_args: {lr: 1}}}}"],
     ("tiny.yaml: methods.X: aggregator.lr: FedAdam has no argument 'lr'; it takes server_lr, beta1, beta2, tau,"
     " bias_correction, initial_accumulator, weighted")),
    (["--set", "partitions={a: {schema: iid}}"],
     ("tiny.yaml: partitions.a: `partition.schema` is not an argument of `lightning-fedmut fit` (did you mean"
     " `partition.scheme`?)")),
    (["--set", "fit.loop.rounds=abc"], "tiny.yaml: fit: loop.rounds: expected an integer, got 'abc'"),
    (["--set", "methods={X: {mutation: {init_args: {radius: -3}}}}"],
     ("tiny.yaml: methods.X: mutation: MutationCallback(...) rejected its arguments: Expected `radius` in"
     " [0.0, 1000000.0], got -3.0.")),
    (["--set", "fit.seed=3"], "tiny.yaml: fit: `seed` is set by the benchmark for each cell (from `seeds`); remove it"),
    (["--set", "metods=[FedAvg]"],
     ("tiny.yaml: unknown key `metods` (did you mean `methods`?); a benchmark file takes name, description, data,"
     " model, fit, methods, partitions, seeds, metric, goal, last, gain, parallel, logger, project, published,"
     " source, flatness")),
    (["--set", "seeds=[0, 0]"], "tiny.yaml: seeds: expected distinct seeds, got [0, 0]"),
    (["--set", "gain=[FedMut, FedProx]"],
     ("tiny.yaml: gain: expected [method, baseline], two of the benchmark's methods (FedAvg, FedMut), or null, got"
     " ['FedMut', 'FedProx']")),
    (["--parallel", "0"], "--parallel: expected a value > 0, got '0'"),
    (["--set", "fit.loop"], "--set: expected KEY=VALUE (e.g. fit.loop.rounds=3), got 'fit.loop'"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_is_one_line_before_any_cell_runs(tmp_path, capsys, monkeypatch, argv, message):
    config = write_config(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)  # the message names the file as given
    assert main(["benchmark", "tiny.yaml", "--output", str(out), *argv]) == 2
    assert capsys.readouterr().err == f"lightning-fedmut benchmark: error: {message}\n"
    assert not out.exists() and config.exists()


def test_a_missing_config_file_and_missing_data_are_one_line(tmp_path, capsys):
    assert main(["benchmark", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == (f"lightning-fedmut benchmark: error: CONFIG: expected a benchmark file (YAML),"
                                       f" got {str(tmp_path / 'nope.yaml')!r}: no such file\n")
    config = write_config(tmp_path / "cifar.yaml", {**TINY, "data": "cifar10",
                                                     "fit": {**TINY["fit"], "data_dir": str(tmp_path), "download": False}})
    assert main(["benchmark", str(config), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lightning-fedmut benchmark: error: data: cifar10 cannot be loaded: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- the Python API
@pytest.mark.slow
def test_the_config_layers_and_the_paper_partition_files(tmp_path):
    parts = tmp_path / "paper_dir0.1.json"
    parts.write_text(json.dumps({str(c): list(range(c * 100, c * 100 + 100)) for c in range(6)}), encoding="utf-8")
    bench = load_benchmark({
        "data": "digits", "seeds": [3], "partitions": [f"json:{parts}", "shards2"],
        "fit": {"loop": {"rounds": 4}, "partition": {"num_clients": 6}, "model": {"init_args": {"lr": 0.05}}},
        "methods": {"FedMut": None, "FedMut (radius 2)": {"base": "FedMut", "mutation": {"init_args": {"radius": 2.0}}},
                    "FedProx + ServerReport": {"base": "FedProx", "callbacks": [
                        {"class_path": "lightning_fedmut.callbacks.ServerReport"}]}},
    })
    assert list(bench.partitions) == ["paper_dir0.1.json", "Shards(2)"]
    first, radius2, prox = bench.cells[0], bench.cells[2], bench.cells[4]
    assert first.config["partition"]["scheme"] == "json" and first.config["partition"]["path"] == str(parts)
    assert bench.cells[1].config["partition"]["scheme"] == "shards"
    assert first.config["seed"] == 3 and first.config["loop"]["rounds"] == 4
    assert first.config["model"]["init_args"]["lr"] == 0.05  # fit's layer reaches every method
    assert first.config["mutation"]["init_args"] == {"radius": 4.0, "acceleration": 0.3, "acceleration_rounds": 50,
                                                     "mutate_buffers": False, "seed": None}
    assert radius2.config["mutation"]["init_args"]["radius"] == 2.0
    assert radius2.config["mutation"]["init_args"]["acceleration"] == 0.3
    assert prox.config["mutation"] is None
    assert [c["class_path"] for c in prox.config["callbacks"]] == ["lightning_fedmut.callbacks.FedProx",
                                                                   "lightning_fedmut.callbacks.ServerReport"]
    assert bench.gain is None  # no FedAvg to compare with

    result = run_benchmark(bench, tmp_path / "out", dry_run=True, echo=None)
    assert [r["status"] for r in result.records] == ["missing"] * 6 and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- shipped configs
CONFIGS = ROOT / "examples" / "benchmarks"


def test_the_cpu_tables_are_the_issues_grid():
    for name in ("digits", "mnist1d"):
        bench = load_benchmark(CONFIGS / f"{name}.yaml")
        assert bench.data == name
        assert bench.methods == ("FedAvg", "FedProx", "FedGen", "Clustered sampling", "FedMut", "SCAFFOLD", "FedAdam",
                                 "FedExP", "FedMR")
        assert list(bench.partitions) == ["IID", "Dir(0.1)", "Dir(0.5)", "Dir(1)"]
        assert bench.seeds == (0, 1, 2) and bench.gain == ("FedMut", "FedAvg") and len(bench.cells) == 108
        config = bench.cells[0].config
        assert (config["batch_size"], config["loop"]["clients_per_round"], config["loop"]["local_epochs"],
                config["partition"]["num_clients"]) == (50, 10, 5, 20)


def make_cifar10(root: Path, monkeypatch, per_batch: int = 8) -> None:
    """CIFAR-10's python batches in torchvision's layout, with random images, taken for the published files."""
    import hashlib
    import pickle

    from lightning_fedmut.datasets import CIFAR_CHECKSUMS

    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    sums = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        data = pickle.dumps(batch)
        (folder / name).write_bytes(data)
        sums[name] = (len(data), hashlib.md5(data).hexdigest())
    monkeypatch.setitem(CIFAR_CHECKSUMS, "cifar10", sums)  # the files are verified before they are read


PAPER = {"cifar10_cnn": ("LeNetCNN", 0.3, "Dir(0.1)", 47.93, 51.25),
         "cifar10_resnet18": ("ResNet18", 0.5, "Dir(0.1)", 44.41, 55.43),
         "cifar10_vgg16": ("VGG16", 0.3, "IID", 80.20, 81.70)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PAPER))
def test_the_paper_configs_run_when_the_data_is_present(tmp_path, monkeypatch, name):
    model, acceleration, column, fedavg, fedmut = PAPER[name]
    bench = load_benchmark(CONFIGS / f"{name}.yaml")
    assert bench.data == "cifar10" and bench.seeds == (0, 1, 2) and len(bench.cells) == 96
    fedmut_cell = next(c for c in bench.cells if c.method == "FedMut")
    assert fedmut_cell.config["model"]["class_path"] == f"lightning_fedmut.models.{model}"
    assert fedmut_cell.config["mutation"]["init_args"]["radius"] == 4.0
    assert fedmut_cell.config["mutation"]["init_args"]["acceleration"] == acceleration
    assert (fedmut_cell.config["loop"]["clients_per_round"], fedmut_cell.config["loop"]["local_epochs"],
            fedmut_cell.config["batch_size"], fedmut_cell.config["partition"]["num_clients"]) == (10, 5, 50, 100)
    assert fedmut_cell.config["model"]["init_args"]["lr"] == 0.01
    assert fedmut_cell.config["model"]["init_args"]["momentum"] == 0.5
    assert bench.published == {"FedAvg": {column: fedavg}, "FedMut": {column: fedmut}}

    if name != "cifar10_cnn":
        return  # ResNet-18 and VGG-16 take seconds per step on a CPU; the models are tested in test_models.py
    make_cifar10(tmp_path / "data", monkeypatch)
    small = {"seeds": 1, "methods": ["FedAvg", "FedMut"], "partitions": ["dir0.1"], "logger": "none",
             "fit": {"data_dir": str(tmp_path / "data"), "eval_batch_size": 8,
                     "partition": {"num_clients": 4, "min_size": 1},
                     "loop": {"rounds": 2, "clients_per_round": 2, "local_steps": 1}}}
    result = run_benchmark(CONFIGS / f"{name}.yaml", tmp_path / "out", overrides=small, echo=None)
    assert result.complete, result.failed
    markdown = result.files["results.md"].read_text(encoding="utf-8")
    assert ("Published (Hu et al., FedMut, AAAI 2024, Table 1 (CIFAR-10, CNN)):\n\n| Method | Dir(0.1) |\n"
            "| --- | ---: |\n| FedAvg | 47.93 |\n| FedMut | 51.25 |\n") in markdown


@pytest.mark.slow
def test_a_sampler_method_is_the_python_run_it_names(tmp_path):
    """Clustered sampling (a class-typed loop argument) against the same federation built by hand."""
    import torch
    from torch.utils.data import DataLoader

    from lightning_fedmut import FedAvg, FederatedLoop, make_clients
    from lightning_fedmut.data import partition_iid
    from lightning_fedmut.datasets import load_dataset
    from lightning_fedmut.models import DigitsCNN
    from lightning_fedmut.sampling import ClusteredSampler

    result = run_benchmark({**TINY, "methods": ["Clustered sampling"], "partitions": ["iid"], "seeds": [1],
                            "logger": "none"}, tmp_path / "out", echo=None)
    assert result.complete, result.failed
    split = load_dataset("digits")
    clients = make_clients(split.train, partition_iid(len(split.train), 6, seed=1), batch_size=50)
    torch.manual_seed(1)
    model = DigitsCNN()
    loop = FederatedLoop(rounds=2, clients_per_round=3, local_epochs=1, aggregator=FedAvg(weighted=False),
                         sampler=ClusteredSampler(), seed=1, enable_progress_bar=False)
    reference = loop.fit(model, clients, val_dataloaders=DataLoader(split.test, batch_size=500)).history
    for metric in ("val_acc", "val_loss"):
        assert metric_rows(result.records[0]["history"], metric) == metric_rows(reference, metric)


def test_help_is_plain_text(capsys, monkeypatch):
    from test_cli_help import MARKUP

    monkeypatch.setenv("COLUMNS", "100")
    assert main(["benchmark", "--help"]) == 0
    text = capsys.readouterr().out
    assert [ln for ln in text.splitlines() if MARKUP.search(ln)] == []
    for flag in ("--output", "--parallel", "--group", "--set", "--dry_run", "--report_only"):
        assert f"  {flag} " in text
    assert main(["--help"]) == 0
    assert "  benchmark " in capsys.readouterr().out
