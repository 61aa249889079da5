"""A benchmark's outputs: the table in the paper's form, every run as CSV, the curves, and the numbers behind them.

Each run's value is the mean of its last ``last`` evaluations of the metric; a cell of the table is the mean
of its runs' values over the seeds, with their sample standard deviation (``n - 1`` in the denominator) when
two or more seeds finished, and ``n``, the number of runs averaged; the best mean of each column is bold; the last row is the gain of one method over a baseline (FedMut over FedAvg), paired by seed: for each
seed both runs had the same partition, initial model and client order, so the difference of the pair is the
method's effect on that seed. The gain row shows the mean difference ± its sample standard deviation, ``n``,
and the paired 95 % confidence interval of the mean difference, ``mean ± t_{0.975, n-1} * std / sqrt(n)``
(Student's t quantile from SciPy, which scikit-learn and so the bundled data sets install; without SciPy the
interval is left out).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lightning_fedmut.experiments.flatness_table import flatness_cell, format_flatness, rank_correlations

if TYPE_CHECKING:
    from lightning_fedmut.experiments.config import Benchmark
    from lightning_fedmut.experiments.flatness import FlatnessSettings

__all__ = ["format_table", "paired_interval", "run_settings", "run_value", "summarize", "write_report"]

CSV_COLUMNS = ("method", "partition", "seed", "status", "value", "final", "evaluated_rounds", "run_name",
               "wandb_run_id", "history_file", "error")


def run_value(history: Sequence[Mapping[str, Any]], metric: str = "val_acc", last: int = 5
              ) -> tuple[float | None, list[Mapping[str, Any]]]:
    """A run's value: the mean of ``metric`` over its last ``last`` evaluations, and those rows.

    Rounds without ``metric`` (evaluation every N rounds) do not count; with fewer evaluations, all count.

    Examples:
        >>> history = [{"round": 0, "val_acc": 0.5}, {"round": 1}, {"round": 2, "val_acc": 0.7}, {"round": 3, "val_acc": 0.8}]
        >>> value, rows = run_value(history, last=2)
        >>> round(value, 6), [r["round"] for r in rows]
        (0.75, [2, 3])
    """
    rows = [r for r in history if isinstance(r.get(metric), (int, float)) and not isinstance(r.get(metric), bool)]
    rows = rows[-last:]
    if not rows:
        return None, []
    return float(np.mean([float(r[metric]) for r in rows])), rows


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation (``n - 1``); no spread (``None``) from fewer than two values."""
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def paired_interval(differences: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """The ``confidence`` interval of the mean of paired ``differences``: ``mean ± t * std / sqrt(n)``.

    ``std`` is the sample standard deviation (``n - 1``) and ``t`` Student's quantile at ``(1 + confidence) / 2``
    with ``n - 1`` degrees of freedom (SciPy's ``scipy.stats.t.ppf``). ``None`` from fewer than two differences,
    or when SciPy is not installed.

    Examples:
        >>> low, high = paired_interval([0.049, 0.045, 0.053])  # t(0.975, 2) = 4.3027
        >>> round(low, 4), round(high, 4)
        (0.0391, 0.0589)
        >>> paired_interval([0.05]) is None
        True
    """
    if not 0 < confidence < 1:
        raise ValueError(f"Expected `confidence` in (0, 1), got {confidence}.")
    n = len(differences)
    if n < 2:
        return None
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover - scikit-learn, which the bundled data sets need, installs SciPy
        return None
    mean = float(np.mean(differences))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * float(np.std(differences, ddof=1)) / math.sqrt(n)
    return mean - half, mean + half


def summarize(
    records: Sequence[Mapping[str, Any]],
    *,
    methods: Sequence[str],
    partitions: Sequence[str],
    seeds: Sequence[int],
    metric: str = "val_acc",
    last: int = 5,
    goal: str = "max",
    gain: tuple[str, str] | None = None,
    flatness: FlatnessSettings | None = None,
) -> dict[str, Any]:
    """Every number of the table, from the cells' records (one per method, partition and seed).

    With ``flatness`` (the benchmark's settings), each run also has ``flatness`` (its figures, ``{name: value}``,
    from its record), each cell ``flatness`` (per figure ``mean``, ``std``, ``n``, ``values``, ``seeds``:
    :func:`~lightning_fedmut.experiments.flatness_table.flatness_cell`), and the summary ``flatness``:
    ``metrics``, ``settings`` and per partition the rank ``correlation`` of accuracy and flatness
    (:func:`~lightning_fedmut.experiments.flatness_table.rank_correlations`).

    Returns:
        ``cells[method][partition]``: ``mean``, ``std`` (sample standard deviation; ``None`` with fewer than
        two runs), ``n`` (runs with a value), ``values`` and ``seeds`` of
        those runs, ``failed`` and ``missing`` seeds, and ``runs`` (per seed: ``status``, ``value``, the
        ``rounds`` and ``values`` averaged, ``final``, ``run_name``, ``run_id``, ``history_file``, ``error``);
        ``best[partition]``: the methods with the best mean; ``gain``: ``method``, ``baseline`` and per partition
        the mean, std and 95 % interval (``ci95``, :func:`paired_interval`) of the paired differences with their
        ``seeds``; and the settings.

    Examples:
        >>> records = [{"method": m, "partition": "IID", "seed": s, "status": "ok", "history": [{"round": 0, "val_acc": v}]}
        ...            for m, s, v in [("FedAvg", 0, 0.5), ("FedAvg", 1, 0.7), ("FedMut", 0, 0.6), ("FedMut", 1, 0.9)]]
        >>> summary = summarize(records, methods=["FedAvg", "FedMut"], partitions=["IID"], seeds=[0, 1],
        ...                     gain=("FedMut", "FedAvg"))
        >>> cell = summary["cells"]["FedMut"]["IID"]
        >>> round(cell["mean"], 6), round(cell["std"], 6), summary["best"]["IID"]
        (0.75, 0.212132, ['FedMut'])
        >>> [round(d, 6) for d in summary["gain"]["partitions"]["IID"]["differences"]]
        [0.1, 0.2]
    """
    by_key = {(r["method"], r["partition"], int(r["seed"])): r for r in records}
    cells: dict[str, dict[str, Any]] = {}
    for method in methods:
        for partition in partitions:
            runs = []
            for seed in seeds:
                record = by_key.get((method, partition, int(seed)), {"status": "missing"})
                run: dict[str, Any] = {"seed": int(seed), "status": record.get("status", "missing"),
                                       "run_name": record.get("run_name"), "run_id": record.get("run_id"),
                                       "history_file": _history_file(record), "error": record.get("error")}
                value, rows = run_value(record.get("history") or [], metric, last) if run["status"] == "ok" else (None, [])
                finals = [r[metric] for r in rows]
                run.update(value=value, rounds=[r.get("round") for r in rows], values=finals,
                           final=float(finals[-1]) if finals else None)
                if run["status"] == "ok" and value is None:
                    run["error"] = f"no {metric} in the history"
                if flatness is not None:
                    figures = ((record.get("flatness") or {}).get("values") or {}) if run["status"] == "ok" else {}
                    run["flatness"] = {k: figures[k] for k in flatness.metrics if k in figures}
                runs.append(run)
            ok = [r for r in runs if r["value"] is not None]
            mean, std = _mean_std([r["value"] for r in ok])
            cells.setdefault(method, {})[partition] = {
                "mean": mean, "std": std, "n": len(ok), "values": [r["value"] for r in ok],
                "seeds": [r["seed"] for r in ok], "failed": [r["seed"] for r in runs if r["status"] == "failed"],
                "missing": [r["seed"] for r in runs if r["status"] == "missing"], "runs": runs,
            }
            if flatness is not None:
                cells[method][partition]["flatness"] = flatness_cell(runs, flatness.metrics)
    best: dict[str, list[str]] = {}
    for partition in partitions:
        means = {m: cells[m][partition]["mean"] for m in methods if cells[m][partition]["mean"] is not None}
        if means:
            top = max(means.values()) if goal == "max" else min(means.values())
            best[partition] = [m for m, v in means.items() if math.isclose(v, top, rel_tol=0, abs_tol=1e-12)]
    summary: dict[str, Any] = {"metric": metric, "last": last, "goal": goal, "methods": list(methods),
                               "partitions": list(partitions), "seeds": [int(s) for s in seeds], "cells": cells,
                               "best": best, "gain": None}
    if gain is not None:
        method, baseline = gain
        per_partition = {}
        for partition in partitions:
            ours = {r["seed"]: r["value"] for r in cells[method][partition]["runs"] if r["value"] is not None}
            theirs = {r["seed"]: r["value"] for r in cells[baseline][partition]["runs"] if r["value"] is not None}
            paired = [s for s in ours if s in theirs]
            differences = [ours[s] - theirs[s] for s in paired]
            mean, std = _mean_std(differences)
            per_partition[partition] = {"mean": mean, "std": std, "ci95": paired_interval(differences),
                                        "seeds": paired, "differences": differences}
        summary["gain"] = {"method": method, "baseline": baseline, "partitions": per_partition}
    if flatness is not None:
        summary["flatness"] = {"metrics": list(flatness.metrics), "settings": flatness.as_dict()}
        summary["flatness"]["correlation"] = rank_correlations(summary)
    return summary


def _history_file(record: Mapping[str, Any]) -> str | None:
    folder = record.get("folder")
    if not folder:
        return None
    return f"{folder}/{'history.json' if record.get('status') == 'ok' else 'failed.json'}"


def _percent(metric: str) -> bool:
    return "acc" in metric.lower()


def _number(value: float, percent: bool, signed: bool = False) -> str:
    shown, digits = (value * 100, 2) if percent else (value, 4)
    return f"{shown:{'+' if signed else ''}.{digits}f}"


def format_table(summary: Mapping[str, Any]) -> str:
    """The table in the FedMut paper's form: methods in rows, partitions in columns, ``mean ± std (n = k)`` over
    seeds (in % for an accuracy; the sample standard deviation, shown from two seeds on), the best of each
    column in bold, and the gain row last.

    A cell some of whose runs failed shows how many seeds it averages of how many (``(n = 2 of 3)``); one with
    no run that finished shows ``failed`` (or ``not run``).

    Examples:
        >>> records = [{"method": m, "partition": "IID", "seed": 0, "status": "ok", "history": [{"round": 0, "val_acc": v}]}
        ...            for m, v in [("FedAvg", 0.5), ("FedMut", 0.625)]]
        >>> summary = summarize(records, methods=["FedAvg", "FedMut"], partitions=["IID"], seeds=[0], gain=("FedMut", "FedAvg"))
        >>> print(format_table(summary))
        | Method | IID |
        | --- | ---: |
        | FedAvg | 50.00 (n = 1) |
        | FedMut | **62.50 (n = 1)** |
        | FedMut − FedAvg | +12.50 (n = 1) |
    """
    percent = _percent(summary["metric"])
    partitions, total = summary["partitions"], len(summary["seeds"])
    lines = ["| Method | " + " | ".join(partitions) + " |", "| --- |" + " ---: |" * len(partitions)]
    for method in summary["methods"]:
        row = []
        for partition in partitions:
            cell = summary["cells"][method][partition]
            if cell["mean"] is None:
                row.append("failed" if cell["failed"] else "not run")
                continue
            text = _cell_text(cell["mean"], cell["std"], cell["n"], total, percent)
            row.append(f"**{text}**" if method in summary["best"].get(partition, []) else text)
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    gain = summary.get("gain")
    if gain is not None:
        row = []
        for partition in partitions:
            entry = gain["partitions"][partition]
            if entry["mean"] is None:
                row.append("n/a")
                continue
            row.append(_cell_text(entry["mean"], entry["std"], len(entry["seeds"]), total, percent, signed=True,
                                  interval=entry.get("ci95")))
        lines.append(f"| {gain['method']} − {gain['baseline']} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _cell_text(mean: float, std: float | None, n: int, total: int, percent: bool, signed: bool = False,
               interval: Sequence[float] | None = None) -> str:
    """``mean ± std (n = k)``: no spread from one run; ``(n = k of m)`` when some of the ``m`` seeds are missing;
    ``interval`` (a paired difference's 95 % interval) is added as ``(n = k; 95 % CI [low, high])``."""
    text = _number(mean, percent, signed=signed)
    if std is not None:
        text += f" ± {_number(std, percent)}"
    count = f"n = {n}" if n >= total else f"n = {n} of {total}"
    if interval is not None:
        low, high = interval
        count += f"; 95 % CI [{_number(low, percent, signed=True)}, {_number(high, percent, signed=True)}]"
    return f"{text} ({count})"


def run_settings(bench: Benchmark | None) -> dict[str, Any]:
    """What the runs were run with, from the cells' resolved ``fit`` configs (after ``--set`` overrides): the
    fields a benchmark's ``description`` may name as ``{rounds}``, ``{clients_per_round}``, ``{local_epochs}``,
    ``{local_steps}``, ``{num_clients}`` and ``{seeds}``. A value that differs between cells is shown as the
    sorted distinct values joined by ``/``.

    Examples:
        >>> run_settings(None)
        {}
    """
    if bench is None or not bench.cells:
        return {}
    fields = {"rounds": ("loop", "rounds"), "clients_per_round": ("loop", "clients_per_round"),
              "local_epochs": ("loop", "local_epochs"), "local_steps": ("loop", "local_steps"),
              "num_clients": ("partition", "num_clients")}
    out: dict[str, Any] = {}
    for name, (group, key) in fields.items():
        values = {(cell.config.get(group) or {}).get(key) for cell in bench.cells} - {None}
        if values:
            out[name] = values.pop() if len(values) == 1 else "/".join(str(v) for v in sorted(values, key=str))
    out["seeds"] = len(bench.seeds)
    return out


def _describe(bench: Benchmark, settings: Mapping[str, Any]) -> str:
    """The description with its ``{field}`` placeholders filled from the runs' settings (others left as written)."""
    text = bench.description.strip()  # type: ignore[union-attr]
    return re.sub(r"\{(\w+)\}", lambda m: str(settings[m.group(1)]) if m.group(1) in settings else m.group(0), text)


def _settings_line(settings: Mapping[str, Any]) -> str:
    def count(value: Any, noun: str) -> str:
        return f"{value} {noun}{'' if value == 1 else 's'}"

    parts = []
    if "rounds" in settings:
        parts.append(count(settings["rounds"], "round"))
    if "clients_per_round" in settings:
        of = f" of {settings['num_clients']}" if "num_clients" in settings else ""
        parts.append(f"{settings['clients_per_round']}{of} clients per round")
    if "local_steps" in settings:
        parts.append(count(settings["local_steps"], "local step"))
    elif "local_epochs" in settings:
        parts.append(count(settings["local_epochs"], "local epoch"))
    return "Runs: " + ", ".join(parts) + " (the cells' `fit` settings, overrides included)."


def _markdown(summary: Mapping[str, Any], bench: Benchmark | None) -> str:
    metric, last = summary["metric"], summary["last"]
    percent = _percent(metric)
    seeds = summary["seeds"]
    title = bench.name if bench is not None else "benchmark"
    parts = [f"# {title}", ""]
    settings = run_settings(bench)
    if bench is not None and bench.description:
        parts += [_describe(bench, settings), ""]
    if len(settings) > 1:
        parts += [_settings_line(settings), ""]
    unit = " (%)" if percent else ""
    goal = "highest" if summary["goal"] == "max" else "lowest"
    parts += [
        (f"`{metric}`{unit}: for each run the mean of its last {last} evaluations, then the mean over"
         f" {len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))}) ± the sample standard"
         f" deviation (n − 1) of the n runs that finished (no spread for one run). Bold: the {goal} mean of each"
         " column."),
    ]
    gain = summary.get("gain")
    if gain is not None:
        parts[-1] += (f" Last row: {gain['method']} minus {gain['baseline']}, paired by seed (same partition, initial"
                      f" model and client order){', in points' if percent else ''}: the mean difference ± its sample"
                      " standard deviation, n, and the paired 95 % confidence interval of the mean difference"
                      " (Student's t with n − 1 degrees of freedom).")
    parts += ["", format_table(summary), ""]
    failed = [(m, p, r) for m in summary["methods"] for p in summary["partitions"]
              for r in summary["cells"][m][p]["runs"] if r["status"] == "failed"]
    if failed:
        parts += ["Failed runs (left out of their cells):", ""]
        parts += [f"- {m} | {p} | seed {r['seed']}: {r['error']} (`{r['history_file']}`)" for m, p, r in failed]
        parts += [""]
    parts += format_flatness(summary, lambda cell: _accuracy_text(cell, len(seeds), percent))
    if bench is not None and bench.published:
        parts += [f"Published{' (' + bench.source.strip() + ')' if bench.source else ''}:", "",
                  "| Method | " + " | ".join(summary["partitions"]) + " |",
                  "| --- |" + " ---: |" * len(summary["partitions"])]
        for method, row in bench.published.items():
            parts.append(f"| {method} | " + " | ".join(
                f"{row[p]:.2f}" if p in row else "" for p in summary["partitions"]) + " |")
        parts += [""]
    parts += [
        ("Where each number comes from: `summary.json` holds, per cell, its runs with the rounds and values"
         " averaged; `results.csv` has one row per run with its W&B run name and id and its history file"
         " (`cells/<method>/<partition>/seed-<s>/history.json`, the per-round history of the run). In W&B the runs"
         f" form the group `{_group(bench)}`, named `method | partition | seed s`, with `benchmark.method`,"
         " `benchmark.partition` and `benchmark.seed` in their config."),
        "",
    ]
    return "\n".join(parts)


def _accuracy_text(cell: Mapping[str, Any], total: int, percent: bool) -> str:
    if cell["mean"] is None:
        return "failed" if cell["failed"] else "not run"
    return _cell_text(cell["mean"], cell["std"], cell["n"], total, percent)


def _group(bench: Benchmark | None) -> str:
    return bench.name if bench is not None else "benchmark"


def _csv_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    flatness = (summary.get("flatness") or {}).get("metrics", [])
    rows = []
    for method in summary["methods"]:
        for partition in summary["partitions"]:
            for run in summary["cells"][method][partition]["runs"]:
                rounds = [r for r in run["rounds"] if r is not None]
                rows.append({
                    "method": method, "partition": partition, "seed": run["seed"], "status": run["status"],
                    "value": "" if run["value"] is None else repr(run["value"]),
                    "final": "" if run["final"] is None else repr(run["final"]),
                    "evaluated_rounds": " ".join(str(r) for r in rounds), "run_name": run["run_name"] or "",
                    "wandb_run_id": run["run_id"] or "", "history_file": run["history_file"] or "",
                    "error": run["error"] or "",
                    **{f"flatness/{name}": "" if name not in run.get("flatness", {}) else repr(run["flatness"][name])
                       for name in flatness},
                })
    return rows


def write_report(summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike,
                 bench: Benchmark | None = None) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``summary.json`` and ``curves.png`` (with matplotlib) into
    ``output_dir``; return their paths by name."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"results.md": out / "results.md", "results.csv": out / "results.csv", "summary.json": out / "summary.json"}
    files["results.md"].write_text(_markdown(summary, bench), encoding="utf-8")
    with open(files["results.csv"], "w", newline="", encoding="utf-8") as f:
        flatness = [f"flatness/{name}" for name in (summary.get("flatness") or {}).get("metrics", [])]
        writer = csv.DictWriter(f, fieldnames=[*CSV_COLUMNS, *flatness])
        writer.writeheader()
        writer.writerows(_csv_rows(summary))
    content = {"name": bench.name if bench is not None else None, "data": bench.data if bench is not None else None,
               "table": format_table(summary), **summary}
    if bench is not None and bench.published:
        content["published"] = {"values": bench.published, "source": bench.source}
    files["summary.json"].write_text(json.dumps(content, indent=1, default=str), encoding="utf-8")
    figure = plot_curves(summary, records, out / "curves.png")
    if figure is not None:
        files["curves.png"] = out / "curves.png"
    return files


def plot_curves(summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Any:
    """Draw the metric against the round, one panel per partition, one line per method with a band of one
    standard deviation over the seeds, and one legend for the figure; save it to ``path``. Returns the figure,
    or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    from lightning_fedmut.plotting import plot_metric

    metric, partitions = summary["metric"], summary["partitions"]
    histories: dict[str, dict[str, list[list[Mapping[str, Any]]]]] = {p: {} for p in partitions}
    for record in records:
        if record.get("status") == "ok" and any(metric in r for r in record.get("history") or []):
            histories[record["partition"]].setdefault(record["method"], []).append(record["history"])
    columns = min(len(partitions), 4)
    rows = math.ceil(len(partitions) / columns)
    fig = Figure(figsize=(4.2 * columns, 3.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, sharey=True, squeeze=False)).ravel()
    for ax, partition in zip(axes, partitions):
        runs = {m: histories[partition][m] for m in summary["methods"] if m in histories[partition]}
        if runs:
            plot_metric(runs, metric=metric, ax=ax, title=partition, band="std", legend=False)
        else:
            ax.set_title(f"{partition}: no finished run")
    for ax in axes[len(partitions):]:
        ax.set_visible(False)
    handles: dict[str, Any] = {}  # one legend for the figure: each method once, in the table's order
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    ordered = [m for m in summary["methods"] if m in handles]
    if ordered:
        fig.legend([handles[m] for m in ordered], ordered, loc="outside lower center", ncols=min(len(ordered), 6))
    seeds = len(summary["seeds"])
    fig.suptitle(f"{metric} per round: mean over {seeds} seed{'s' if seeds != 1 else ''}"
                 + (", band ± 1 std" if seeds > 1 else ""))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return fig
