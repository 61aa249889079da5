"""What a federated ``fit`` returns."""

from __future__ import annotations

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
