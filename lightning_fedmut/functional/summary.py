"""Summaries of per-client metrics: mean, sample spread and the worst 10 % of clients, in float64.

Used by the loop's personalised evaluation and by ``lightning-fedmut validate --per_client``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["lower_is_better", "summarize", "worst_count"]


def lower_is_better(metric: str) -> bool:
    """Whether a lower value of ``metric`` is better: metrics with ``loss`` in their name, by convention.

    Examples:
        >>> lower_is_better("val_loss"), lower_is_better("test/Loss_ce"), lower_is_better("val_acc")
        (True, True, False)
    """
    return "loss" in metric.lower()


def worst_count(n: int) -> int:
    """How many clients "the worst 10 %" of ``n`` clients are: ``ceil(n / 10)``, at least one.

    Examples:
        >>> worst_count(1), worst_count(10), worst_count(11), worst_count(30), worst_count(100)
        (1, 1, 2, 3, 10)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"Expected `n` to be a positive integer, got {n!r}.")
    return -(-n // 10)


def summarize(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Summarise per-client metrics: for each metric, the mean, the sample standard deviation (``n - 1``) with
    ``n``, and the mean of the worst 10 % of clients (:func:`worst_count` of them; the highest values when
    :func:`lower_is_better`, else the lowest). Computed in float64; ``std`` is ``None`` for one client.

    Args:
        rows: one mapping per client, metric name to value (other keys are ignored unless named in ``metrics``).
        metrics: the metrics to summarise; default: every float-valued key of the rows, in order of appearance.

    Examples:
        >>> rows = [{"client": i, "val_acc": a, "val_loss": l}
        ...         for i, (a, l) in enumerate([(0.5, 1.0), (0.75, 0.5), (1.0, 0.25)])]
        >>> out = summarize(rows)
        >>> out["val_acc"]
        {'mean': 0.75, 'std': 0.25, 'n': 3, 'worst_10pct': 0.5, 'worst_count': 1, 'lower_is_better': False}
        >>> out["val_loss"]["worst_10pct"]
        1.0
    """
    if metrics is None:
        metrics = list(dict.fromkeys(k for row in rows for k, v in row.items() if isinstance(v, float)))
    out: dict[str, dict[str, Any]] = {}
    for name in metrics:
        values = np.array([float(row[name]) for row in rows if name in row], dtype=np.float64)
        if values.size == 0:
            continue
        k = worst_count(int(values.size))
        ordered = np.sort(values)
        worst = ordered[-k:] if lower_is_better(name) else ordered[:k]
        out[name] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if values.size > 1 else None,
            "n": int(values.size),
            "worst_10pct": float(worst.mean()),
            "worst_count": k,
            "lower_is_better": lower_is_better(name),
        }
    return out
