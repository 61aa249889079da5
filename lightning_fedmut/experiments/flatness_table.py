"""The flatness columns of a benchmark's report: each method's figures next to its accuracy, and whether the
flatter methods are the more accurate ones (Spearman's rank correlation over the methods of a partition)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["LABELS", "flatness_cell", "format_flatness", "rank_correlations"]

#: How the tables head each figure.
LABELS = {"hessian_top": "top eigenvalue", "hessian_trace": "Hessian trace", "sharpness": "sharpness",
          "loss": "loss"}
#: The figures the correlation line ranks accuracy against (where measured).
CORRELATED = ("hessian_top", "sharpness")


def flatness_cell(runs: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per figure, the ``mean``, sample ``std`` (``None`` from fewer than two runs), ``n``, ``values`` and ``seeds``
    of the runs (each with ``seed`` and ``flatness``: ``{name: value}``) that measured it.

    Examples:
        >>> runs = [{"seed": 0, "flatness": {"sharpness": 0.1}}, {"seed": 1, "flatness": {"sharpness": 0.3}},
        ...         {"seed": 2, "flatness": {}}]
        >>> cell = flatness_cell(runs, ["sharpness"])["sharpness"]
        >>> round(cell["mean"], 6), round(cell["std"], 6), cell["n"], cell["seeds"]
        (0.2, 0.141421, 2, [0, 1])
    """
    out: dict[str, dict[str, Any]] = {}
    for name in metrics:
        measured = [(r["seed"], float(r["flatness"][name])) for r in runs
                    if isinstance((r.get("flatness") or {}).get(name), (int, float))]
        values = [v for _, v in measured]
        out[name] = {
            "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "n": len(values), "values": values, "seeds": [s for s, _ in measured],
        }
    return out


def rank_correlations(summary: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """For each partition and each figure of :data:`CORRELATED` that was measured: Spearman's rank correlation
    (``scipy.stats.spearmanr``) between the methods' mean ``metric`` (accuracy) and their mean figure, over the
    methods that have both: ``rho``, its two-sided ``p`` value, ``n`` (methods) and ``methods``. ``rho`` and ``p``
    are ``None`` with fewer than three methods or when one side is constant.

    Examples:
        >>> cells = {m: {"IID": {"mean": acc, "flatness": {"sharpness": {"mean": s}}}}
        ...          for m, acc, s in [("A", 0.9, 0.1), ("B", 0.8, 0.3), ("C", 0.7, 0.2)]}
        >>> summary = {"methods": ["A", "B", "C"], "partitions": ["IID"], "cells": cells,
        ...            "flatness": {"metrics": ["sharpness"]}}
        >>> entry = rank_correlations(summary)["IID"]["sharpness"]
        >>> entry["rho"], entry["n"]
        (-0.5, 3)
    """
    from scipy import stats

    metrics = [m for m in CORRELATED if m in (summary.get("flatness") or {}).get("metrics", [])]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for partition in summary["partitions"]:
        out[partition] = {}
        for name in metrics:
            pairs = []
            for method in summary["methods"]:
                cell = summary["cells"][method][partition]
                figure = (cell.get("flatness") or {}).get(name) or {}
                if cell.get("mean") is not None and figure.get("mean") is not None:
                    pairs.append((method, float(cell["mean"]), float(figure["mean"])))
            rho = p = None
            accuracy, figures = [a for _, a, _ in pairs], [f for _, _, f in pairs]
            if len(pairs) >= 3 and len(set(accuracy)) > 1 and len(set(figures)) > 1:
                result = stats.spearmanr(accuracy, figures)
                rho, p = float(result.statistic), float(result.pvalue)
            out[partition][name] = {"rho": rho, "p": p, "n": len(pairs), "methods": [m for m, _, _ in pairs]}
    return out


def _figure(mean: float | None, std: float | None, n: int, total: int) -> str:
    if mean is None:
        return "n/a"
    text = f"{mean:.4g}" + (f" ± {std:.2g}" if std is not None else "")
    return f"{text} (n = {n})" if n >= total else f"{text} (n = {n} of {total})"


def format_flatness(summary: Mapping[str, Any], accuracy_text: Any) -> list[str]:
    """The report's lines on flatness: per partition a table of the methods' accuracy (``accuracy_text(cell)``,
    as the main table shows it) and figures, mean ± sample std (n) over the seeds, then the rank correlation line."""
    flat = summary.get("flatness") or {}
    metrics = list(flat.get("metrics", []))
    if not metrics:
        return []
    settings = flat.get("settings") or {}
    total = len(summary["seeds"])
    lines = ["## Accuracy and flatness", "",
             (f"The final global model of every run, measured on the same {settings.get('batches')} batches of"
              f" {settings.get('batch_size')} training examples (drawn with seed {settings.get('seed')}; the union of"
              " the clients' data): the Hessian's top eigenvalue (power iteration), its trace (Hutchinson,"
              f" {settings.get('trace_samples')} probes) and the sharpness (the loss rise after one SAM step of"
              f" radius {settings.get('rho')}); lower is flatter. Mean ± sample standard deviation (n − 1) over the"
              " seeds, n runs."), ""]
    correlations = flat.get("correlation") or {}
    for partition in summary["partitions"]:
        unit = " (%)" if "acc" in summary["metric"].lower() else ""
        lines += [f"**{partition}**", "", f"| Method | {summary['metric']}{unit} | "
                  + " | ".join(LABELS.get(m, m) for m in metrics) + " |",
                  "| --- | ---: |" + " ---: |" * len(metrics)]
        for method in summary["methods"]:
            cell = summary["cells"][method][partition]
            figures = cell.get("flatness") or {}
            row = [accuracy_text(cell)] + [_figure(**{k: figures[m][k] for k in ("mean", "std", "n")}, total=total)
                                           if m in figures else "n/a" for m in metrics]
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        lines.append("")
        entries = correlations.get(partition) or {}
        if entries:
            parts = []
            for name, entry in entries.items():
                if entry["rho"] is None:
                    parts.append(f"{LABELS.get(name, name)} n/a (n = {entry['n']})")
                else:
                    p = entry["p"]
                    parts.append(f"{LABELS.get(name, name)} ρ = {entry['rho']:+.2f} (n = {entry['n']} methods,"
                                 f" p = {p:.2g})" if p is not None and math.isfinite(p) else
                                 f"{LABELS.get(name, name)} ρ = {entry['rho']:+.2f} (n = {entry['n']} methods)")
            lines += [f"Spearman rank correlation of the methods' mean {summary['metric']} with their mean "
                      + "; ".join(parts) + " (negative: the flatter methods are the more accurate).", ""]
    return lines
