"""Every shipped benchmark table holds the FedMut paper's Table 1 columns, in the paper's order, before the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_fedmut.experiments import load_benchmark

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "benchmarks"
PAPER_COLUMNS = ["FedAvg", "FedProx", "FedGen", "Clustered sampling", "FedMut"]
FILES = sorted(p.stem for p in CONFIGS.glob("*.yaml"))  # every shipped table
FILES = [f for f in FILES if not f.startswith("generalisation")]  # the accuracy-and-flatness tables: other methods


@pytest.mark.parametrize("name", FILES)
def test_the_paper_columns_come_first_in_the_paper_order(name):
    bench = load_benchmark(CONFIGS / f"{name}.yaml")
    assert list(bench.methods)[:5] == PAPER_COLUMNS
    cells = {c.method: c for c in bench.cells}
    assert cells["FedGen"].config["algorithm"]["class_path"] == "lightning_fedmut.algorithms.fedgen.FedGen"
    assert cells["Clustered sampling"].config["loop"]["sampler"]["class_path"] == \
        "lightning_fedmut.sampling.ClusteredSampler"
    if name.startswith("cifar10"):
        assert {c.config["loop"]["rounds"] for c in bench.cells} == {1000}
        assert len(bench.cells) == 8 * 4 * 3


@pytest.mark.slow
def test_the_fedgen_and_clustered_cells_run_from_the_digits_file(tmp_path):
    from lightning_fedmut.experiments import run_benchmark

    small = {"seeds": 1, "methods": ["FedGen", "Clustered sampling"], "partitions": ["dir0.5"], "logger": "none",
             "fit": {"loop": {"rounds": 2, "local_steps": 2}}}
    result = run_benchmark(CONFIGS / "digits.yaml", tmp_path / "out", overrides=small, echo=None)
    assert result.complete, result.failed
    history = {r["method"]: r for r in result.records}
    assert set(history) == {"FedGen", "Clustered sampling"}
