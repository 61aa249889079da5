"""What a federated ``fit`` returns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning.pytorch import LightningModule

__all__ = ["FederatedResult"]


@dataclass
class FederatedResult:
    """What :meth:`FederatedLoop.fit <lightning_fedmut.FederatedLoop.fit>` returns.

    Attributes:
        history: one dict per round: ``round``, the global model's validation metrics (rounds that were
            evaluated), the example-weighted mean of the clients' training metrics (``clients/<name>``),
            ``clients/trained``, ``clients/failed``, ``round_skipped``, and metrics added by callbacks
            (``fedmut/*``). Deterministic: equal for equal seeds, and across a resume.
        client_history: one dict per client that trained: ``round``, ``client_id``, ``slot``,
            ``num_examples`` and its training metrics.
        failures: one dict per client that failed: ``round``, ``client_id``, ``slot``, ``type``, ``message``.
        timings: one dict per round: ``round``, ``round_time`` (s), ``clients_per_second``.
        module: the global module (the object passed to ``fit``, trained in place).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    client_history: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    timings: list[dict[str, Any]] = field(default_factory=list)
    module: LightningModule | None = None

    def metric(self, name: str) -> list[float]:
        """The values of one metric over the rounds that logged it.

        Examples:
            >>> FederatedResult(history=[{"round": 0, "val_acc": 0.5}, {"round": 1}]).metric("val_acc")
            [0.5]
        """
        return [row[name] for row in self.history if name in row]


def weighted_client_means(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Example-weighted mean of each client training metric, as ``clients/<name>``.

    Examples:
        >>> weighted_client_means([{"round": 0, "client_id": 1, "slot": 0, "num_examples": 3, "loss": 1.0},
        ...                        {"round": 0, "client_id": 2, "slot": 1, "num_examples": 1, "loss": 5.0}])
        {'clients/loss': 2.0}
    """
    skip = {"round", "client_id", "slot", "num_examples"}
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for row in rows:
        for k, v in row.items():
            if k in skip:
                continue
            totals[k] = totals.get(k, 0.0) + row["num_examples"] * v
            weights[k] = weights.get(k, 0.0) + row["num_examples"]
    return {f"clients/{k}": totals[k] / weights[k] for k in totals}


def client_metric_spread(rows: list[dict[str, Any]], names: Sequence[str]) -> dict[str, float]:
    """How a client metric spreads over the clients of a round: unweighted mean, standard deviation, min and max.

    For the personalised (local) accuracy that federated-learning papers report, e.g. ``val_acc`` from the
    clients' own validation data: each client counts once, whatever its size (``clients/<name>``, the
    example-weighted mean, is in the history already). The standard deviation is the population one (divided by
    the number of clients). Rows without ``name`` are left out; a name no row has gives nothing.

    Args:
        rows: the round's ``client_history`` rows.
        names: the metrics to describe.

    Returns:
        ``{"clients/<name>_mean": ..., "clients/<name>_std": ..., "clients/<name>_min": ...,
        "clients/<name>_max": ...}`` for each name, in the order of ``names``.

    Examples:
        >>> client_metric_spread([{"client_id": 0, "num_examples": 30, "val_acc": 0.5},
        ...                       {"client_id": 1, "num_examples": 10, "val_acc": 1.0}], ["val_acc", "val_loss"])
        {'clients/val_acc_mean': 0.75, 'clients/val_acc_std': 0.25, 'clients/val_acc_min': 0.5, 'clients/val_acc_max': 1.0}
    """
    out: dict[str, float] = {}
    for name in names:
        values = [float(row[name]) for row in rows if name in row]
        if not values:
            continue
        mean = math.fsum(values) / len(values)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
        out.update({f"clients/{name}_mean": mean, f"clients/{name}_std": std,
                    f"clients/{name}_min": min(values), f"clients/{name}_max": max(values)})
    return out
