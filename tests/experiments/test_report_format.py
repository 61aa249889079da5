"""The benchmark report: the settings the runs used, ``n`` and the sample spread, one legend on the curves."""

from __future__ import annotations

import math

import pytest

from lightning_fedmut.experiments.config import Benchmark, Cell
from lightning_fedmut.experiments.report import format_table, plot_curves, summarize, write_report

pytest.importorskip("matplotlib")


def _records(values: dict[tuple[str, str, int], float]) -> list[dict]:
    return [{"method": m, "partition": p, "seed": s, "status": "ok",
             "history": [{"round": 0, "val_acc": v - 0.1}, {"round": 1, "val_acc": v}]}
            for (m, p, s), v in values.items()]


def _bench(rounds: int, seeds: tuple[int, ...], description: str) -> Benchmark:
    config = {"loop": {"rounds": rounds, "clients_per_round": 10, "local_epochs": 5}, "partition": {"num_clients": 20}}
    cells = tuple(Cell(method=m, partition="IID", seed=s, args={}, config=config)
                  for m in ("FedAvg", "FedMut") for s in seeds)
    return Benchmark(name="digits", data="digits", methods=("FedAvg", "FedMut"), partitions={"IID": {}},
                     seeds=seeds, cells=cells, description=description, logger="none")


def test_results_md_states_the_rounds_the_runs_used(tmp_path):
    bench = _bench(5, (0,), "digits, 20 clients, {rounds} rounds; FedMut with acceleration over 50 rounds.")
    records = _records({("FedAvg", "IID", 0): 0.5, ("FedMut", "IID", 0): 0.625})
    summary = summarize(records, methods=bench.methods, partitions=["IID"], seeds=[0], last=1)
    text = write_report(summary, records, tmp_path, bench)["results.md"].read_text(encoding="utf-8")
    assert "digits, 20 clients, 5 rounds; FedMut with acceleration over 50 rounds." in text
    assert "Runs: 5 rounds, 10 of 20 clients per round, 5 local epochs (the cells' `fit` settings" in text
    assert "15 rounds" not in text and "{rounds}" not in text


def test_one_seed_shows_n_and_no_spread():
    records = _records({("FedAvg", "IID", 0): 0.5, ("FedMut", "IID", 0): 0.625})
    summary = summarize(records, methods=["FedAvg", "FedMut"], partitions=["IID"], seeds=[0], last=1,
                        gain=("FedMut", "FedAvg"))
    assert summary["cells"]["FedMut"]["IID"]["std"] is None
    table = format_table(summary)
    assert table.splitlines()[2:] == ["| FedAvg | 50.00 (n = 1) |", "| FedMut | **62.50 (n = 1)** |",
                                      "| FedMut − FedAvg | +12.50 (n = 1) |"]
    assert "±" not in table


def test_several_seeds_show_the_sample_std_and_n():
    values = {("FedAvg", "IID", 0): 0.5, ("FedAvg", "IID", 1): 0.7, ("FedAvg", "IID", 2): 0.9,
              ("FedMut", "IID", 0): 0.6, ("FedMut", "IID", 1): 0.9}  # FedMut's seed 2 did not run
    summary = summarize(_records(values), methods=["FedAvg", "FedMut"], partitions=["IID"], seeds=[0, 1, 2], last=1,
                        gain=("FedMut", "FedAvg"))
    fedavg = summary["cells"]["FedAvg"]["IID"]
    assert fedavg["std"] == pytest.approx(math.sqrt((0.2**2 + 0 + 0.2**2) / 2), abs=1e-15)  # n - 1 = 2
    mut_std = math.sqrt(((0.6 - 0.75) ** 2 + (0.9 - 0.75) ** 2) / 1)
    gain_std = math.sqrt(((0.1 - 0.15) ** 2 + (0.2 - 0.15) ** 2) / 1)
    half = 12.706204736174698 * gain_std / math.sqrt(2)  # Student's t(0.975, 1 degree of freedom)
    assert format_table(summary).splitlines()[2:] == [
        "| FedAvg | 70.00 ± 20.00 (n = 3) |",
        f"| FedMut | **75.00 ± {100 * mut_std:.2f} (n = 2 of 3)** |",
        f"| FedMut − FedAvg | +15.00 ± {100 * gain_std:.2f} (n = 2 of 3; 95 % CI [{100 * (0.15 - half):+.2f},"
        f" {100 * (0.15 + half):+.2f}]) |",
    ]


def test_curves_have_one_legend(tmp_path):
    values = {(m, p, s): 0.5 + 0.1 * s for m in ("FedAvg", "FedMut") for p in ("IID", "Dir(0.1)", "Dir(0.5)")
              for s in (0, 1)}
    records = [{**r, "partition": r["partition"]} for r in _records(values)]
    partitions = ["IID", "Dir(0.1)", "Dir(0.5)"]
    summary = summarize(records, methods=["FedAvg", "FedMut"], partitions=partitions, seeds=[0, 1], last=1)
    fig = plot_curves(summary, records, tmp_path / "curves.png")
    panel_legends = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert panel_legends == [] and len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["FedAvg", "FedMut"]
    assert (tmp_path / "curves.png").stat().st_size > 0
