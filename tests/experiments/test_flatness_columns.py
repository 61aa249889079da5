"""A benchmark's flatness columns: the final global model of each cell measured on fixed seeded batches, the figures
in results.md, the CSV and the JSON next to the accuracy, and Spearman's rank correlation of the two."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch.utils.data import default_collate

from lightning_fedmut.analysis import hessian_eigenvalues, hessian_trace, sharpness
from lightning_fedmut.experiments import load_benchmark, run_benchmark
from lightning_fedmut.experiments.config import Benchmark, Cell
from lightning_fedmut.experiments.flatness import FlatnessSettings
from lightning_fedmut.experiments.report import summarize, write_report

pytest.importorskip("scipy")

FLATNESS = {"metrics": ["hessian_top", "hessian_trace", "sharpness"], "batches": 2, "batch_size": 16, "rho": 0.05,
            "trace_samples": 4, "max_iter": 15, "tol": 1e-2, "seed": 3}


def _config(**flatness) -> dict:
    return {"name": "tiny", "data": "digits", "methods": ["FedMut"], "partitions": ["dir0.5"], "seeds": 1,
            "logger": "none", "flatness": {**FLATNESS, **flatness},
            "fit": {"batch_size": 20, "partition": {"num_clients": 4, "min_size": 5},
                    "loop": {"rounds": 2, "clients_per_round": 2, "local_steps": 2}}}


def _figures(result) -> dict:
    (record,) = result.records
    return record["flatness"]["values"]


# ------------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(("flatness", "message"), [
    ({"batch": 2}, "flatness: unknown key `batch` (did you mean `batches`?); expected keys among metrics, batches,"
                   " batch_size, rho, trace_samples, max_iter, tol, seed"),
    ({"metrics": ["hessian_top", "curvature"]}, "flatness.metrics: expected a non-empty list of distinct names among"
                                               " hessian_top, hessian_trace, sharpness, loss, got ['hessian_top',"
                                               " 'curvature']"),
    ({"metrics": []}, "flatness.metrics: expected a non-empty list of distinct names among hessian_top,"
                      " hessian_trace, sharpness, loss, got []"),
    ({"batches": 0}, "flatness.batches: expected an integer >= 1, got 0"),
    ({"batch_size": 2.5}, "flatness.batch_size: expected an integer >= 1, got 2.5"),
    ({"rho": 0}, "flatness.rho: expected a finite number > 0, got 0"),
    ({"rho": "big"}, "flatness.rho: expected a finite number > 0, got 'big'"),
    ({"trace_samples": True}, "flatness.trace_samples: expected an integer >= 1, got True"),
    ({"tol": -1.0}, "flatness.tol: expected a finite number >= 0, got -1.0"),
    ({"seed": -1}, "flatness.seed: expected an integer >= 0, got -1"),
])
def test_bad_flatness_values_are_refused_before_any_cell(tmp_path, flatness, message):
    with pytest.raises(ValueError) as err:
        run_benchmark(_config(**flatness), tmp_path / "out", echo=None)
    assert str(err.value) == f"benchmark: {message}"
    assert not (tmp_path / "out").exists()


def test_a_flatness_section_that_is_not_a_mapping_is_refused():
    config = {**_config(), "flatness": ["hessian_top"]}
    with pytest.raises(ValueError, match=r"^benchmark: flatness: expected a mapping of metrics, batches, .* got"
                                         r" \['hessian_top'\]$"):
        load_benchmark(config)


def test_more_examples_than_the_training_set_is_refused_before_any_cell(tmp_path):
    with pytest.raises(ValueError) as err:  # digits has 1348 training examples
        run_benchmark(_config(batches=100, batch_size=20), tmp_path / "out", echo=None)
    assert str(err.value) == ("flatness: expected batches x batch_size at most the 1348 training examples, got"
                              " 100 x 20 = 2000")
    assert not (tmp_path / "out" / "cells").exists()


# ------------------------------------------------------------------------------------------------ the cells
def _final_model_and_batches(bench: Benchmark):
    """The cell's final global model, trained again as `fit` trains it, and the batches drawn by hand."""
    from lightning_fedmut.cli.fit import _data, build_run
    from lightning_fedmut.experiments.runner import _cell_config

    cfg = _cell_config(bench.cells[0].args, "test")
    run = build_run(cfg)
    result = run.loop(logger=None, seed=cfg.seed).fit(run.model, run.clients, val_dataloaders=run.val)
    train = _data(cfg, run.data)[0]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(FLATNESS["seed"]))
    size = FLATNESS["batch_size"]
    batches = [default_collate([train[int(i)] for i in order[b * size:(b + 1) * size]])
               for b in range(FLATNESS["batches"])]
    return result.module, batches


@pytest.mark.slow
def test_the_figures_are_the_analysis_functions_on_the_final_model(tmp_path):
    result = run_benchmark(_config(), tmp_path / "out", echo=None)
    assert result.complete, result.failed
    figures = _figures(result)
    model, batches = _final_model_and_batches(result.benchmark)
    seed = FLATNESS["seed"]
    assert figures == {
        "hessian_top": hessian_eigenvalues(model, batches, k=1, max_iter=15, tol=1e-2, seed=seed)[0],
        "hessian_trace": hessian_trace(model, batches, max_iter=4, tol=0.0, seed=seed),
        "sharpness": sharpness(model, batches, rho=0.05, seed=seed),
    }
    stored = json.loads((tmp_path / "out" / result.records[0]["folder"] / "history.json").read_text())
    assert stored["flatness"]["values"] == figures
    assert stored["flatness"]["settings"] == FLATNESS


@pytest.mark.slow
def test_the_same_cell_twice_gives_identical_figures_and_another_seed_others(tmp_path):
    first = _figures(run_benchmark(_config(), tmp_path / "a", echo=None))
    second = _figures(run_benchmark(_config(), tmp_path / "b", echo=None))
    other = _figures(run_benchmark(_config(seed=4), tmp_path / "c", echo=None))
    assert first == second
    assert other["hessian_trace"] != first["hessian_trace"]  # other probes
    assert other["sharpness"] != first["sharpness"]  # other batches


@pytest.mark.slow
def test_finished_cells_keep_their_figures_and_new_settings_run_them_again(tmp_path):
    out = tmp_path / "out"
    first = run_benchmark(_config(), out, echo=None)
    again = run_benchmark(_config(), out, echo=None)
    assert (first.ran, again.ran) == (1, 0)
    assert _figures(again) == _figures(first)
    assert again.summary["cells"]["FedMut"]["Dir(0.5)"]["flatness"]["sharpness"]["values"] == \
        [_figures(first)["sharpness"]]
    lines: list[str] = []
    rerun = run_benchmark(_config(rho=0.1), out, echo=lines.append)
    assert rerun.ran == 1
    assert any("holds flatness figures measured with rho 0.05, expected 0.1 (flatness.rho)" in line for line in lines)
    assert rerun.records[0]["flatness"]["settings"]["rho"] == 0.1


@pytest.mark.slow
def test_the_figures_are_logged_to_the_run_logger(tmp_path):
    result = run_benchmark({**_config(), "logger": "csv"}, tmp_path / "out", echo=None)
    assert result.complete, result.failed
    (metrics,) = (tmp_path / "out").rglob("metrics.csv")
    with open(metrics, newline="") as f:
        rows = list(csv.DictReader(f))
    logged = {k: float(v) for row in rows for k, v in row.items() if k.startswith("flatness/") and v}
    assert logged == {f"flatness/{k}": v for k, v in _figures(result).items()}


# ------------------------------------------------------------------------------------------------ the report
_METHODS = ("FedAvg", "FedMut", "FedSAM", "FedDyn")
#: (accuracy, top eigenvalue, sharpness) per method and seed
_NUMBERS = {
    "FedAvg": [(0.80, 12.0, 0.030), (0.82, 14.0, 0.034), (0.78, 13.0, 0.032)],
    "FedMut": [(0.86, 9.0, 0.020), (0.84, 10.0, 0.024), (0.85, 8.0, 0.022)],
    "FedSAM": [(0.83, 7.0, 0.018), (0.85, 7.5, 0.017), (0.81, 6.5, 0.019)],
    "FedDyn": [(0.79, 15.0, 0.040), (0.77, 16.0, 0.036), (0.80, 17.0, 0.038)],
}


def _records() -> list[dict]:
    return [{"method": m, "partition": "Dir(0.1)", "seed": s, "status": "ok",
             "history": [{"round": 0, "val_acc": acc}],
             "flatness": {"settings": {}, "values": {"hessian_top": top, "sharpness": sharp}}}
            for m in _METHODS for s, (acc, top, sharp) in enumerate(_NUMBERS[m])]


def _report(tmp_path):
    settings = FlatnessSettings(metrics=("hessian_top", "sharpness"))
    cells = tuple(Cell(m, "Dir(0.1)", s, {}, {}) for m in _METHODS for s in range(3))
    bench = Benchmark(name="flat", data="digits", methods=_METHODS, partitions={"Dir(0.1)": {}}, seeds=(0, 1, 2),
                      cells=cells, logger="none", flatness=settings)
    summary = summarize(_records(), methods=_METHODS, partitions=["Dir(0.1)"], seeds=[0, 1, 2], last=1,
                        flatness=settings)
    return summary, write_report(summary, _records(), tmp_path, bench)


def test_results_md_shows_the_figures_next_to_the_accuracy(tmp_path):
    summary, files = _report(tmp_path)
    text = files["results.md"].read_text(encoding="utf-8")
    # FedMut: top eigenvalues 9, 10, 8: mean 9, sample std 1; sharpness 0.020, 0.024, 0.022: mean 0.022, std 0.002
    assert "| Method | val_acc (%) | top eigenvalue | sharpness |" in text
    assert "| FedMut | 85.00 ± 1.00 (n = 3) | 9 ± 1 (n = 3) | 0.022 ± 0.002 (n = 3) |" in text
    assert "| FedSAM | 83.00 ± 2.00 (n = 3) | 7 ± 0.5 (n = 3) | 0.018 ± 0.001 (n = 3) |" in text
    cell = summary["cells"]["FedMut"]["Dir(0.1)"]["flatness"]["hessian_top"]
    assert (cell["mean"], cell["std"], cell["n"], cell["seeds"]) == (9.0, 1.0, 3, [0, 1, 2])


def test_the_csv_and_json_hold_every_run_figures(tmp_path):
    _summary, files = _report(tmp_path)
    with open(files["results.csv"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[-2:] == ["flatness/hessian_top", "flatness/sharpness"]
    assert [(r["method"], r["seed"], float(r["flatness/hessian_top"]), float(r["flatness/sharpness"])) for r in rows] \
        == [(m, str(s), top, sharp) for m in _METHODS for s, (_acc, top, sharp) in enumerate(_NUMBERS[m])]
    content = json.loads(files["summary.json"].read_text(encoding="utf-8"))
    assert content["flatness"]["metrics"] == ["hessian_top", "sharpness"]
    assert content["cells"]["FedDyn"]["Dir(0.1)"]["runs"][2]["flatness"] == {"hessian_top": 17.0, "sharpness": 0.038}


def test_the_spearman_line_is_scipy_on_the_table_means(tmp_path):
    from scipy import stats

    summary, files = _report(tmp_path)
    text = files["results.md"].read_text(encoding="utf-8")
    means = {m: [sum(v[i] for v in _NUMBERS[m]) / 3 for i in range(3)] for m in _METHODS}
    expected = {}
    for i, name in ((1, "hessian_top"), (2, "sharpness")):
        result = stats.spearmanr([means[m][0] for m in _METHODS], [means[m][i] for m in _METHODS])
        expected[name] = (float(result.statistic), float(result.pvalue))
        entry = summary["flatness"]["correlation"]["Dir(0.1)"][name]
        assert (entry["rho"], entry["p"], entry["n"]) == (*expected[name], 4)
    # means: accuracy FedAvg 0.80, FedMut 0.85, FedSAM 0.83, FedDyn 0.787; top eigenvalue 13, 9, 7, 16: ranks
    # (2, 4, 3, 1) against (3, 2, 1, 4): rho = 1 - 6 * (1 + 4 + 4 + 9) / (4 * 15) = -0.8
    assert math.isclose(expected["hessian_top"][0], -0.8, abs_tol=1e-12)
    top, sharp = expected["hessian_top"], expected["sharpness"]
    assert (f"Spearman rank correlation of the methods' mean val_acc with their mean top eigenvalue ρ = {top[0]:+.2f}"
            f" (n = 4 methods, p = {top[1]:.2g}); sharpness ρ = {sharp[0]:+.2f} (n = 4 methods, p = {sharp[1]:.2g})"
            " (negative: the flatter methods are the more accurate).") in text


@pytest.mark.slow
def test_the_figures_are_in_the_wandb_run_summary(tmp_path, monkeypatch):
    from pathlib import Path

    from wandb_records import read_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    result = run_benchmark({**_config(), "logger": "wandb"}, tmp_path / "out", echo=None)
    assert result.complete, result.failed
    summary: dict = {}
    for record in read_records(Path(result.records[0]["wandb_dir"])):
        if record.get("type") == "summary":
            summary.update(record["summary"]["update"])
    assert {k: v for k, v in summary.items() if k.startswith("flatness/")} == \
        {f"flatness/{k}": v for k, v in _figures(result).items()}


@pytest.mark.parametrize(("name", "cells"), [("generalisation", 60), ("generalisation_cifar10", 30)])
def test_the_shipped_generalisation_tables(name, cells):
    from pathlib import Path

    bench = load_benchmark(Path(__file__).resolve().parents[2] / "examples" / "benchmarks" / f"{name}.yaml")
    assert bench.methods == ("FedAvg", "SCAFFOLD", "FedDyn", "FedSAM", "FedASAM", "FedLESAM", "FedGloSS", "FedSMOO",
                             "FedMut", "FedMut + FedSAM")
    assert len(bench.cells) == cells and bench.flatness is not None
    assert bench.flatness.metrics == ("hessian_top", "hessian_trace", "sharpness")
    combined = next(c.config for c in bench.cells if c.method == "FedMut + FedSAM")
    assert combined["mutation"]["class_path"] == "lightning_fedmut.callbacks.MutationCallback"
    assert [(c["class_path"], c["init_args"]["rho"]) for c in combined["callbacks"]] == \
        [("lightning_fedmut.callbacks.SAM", 0.05)]
