"""What a fit has done: the rows of its history, client history, failures and timings, and its progress.

One owner for what the loop's connectors used to write into the loop's own fields: the logger connector appends
a round's row and timings, the failure connector a failed client's row, the checkpoint connector saves and
restores it all.
"""

from __future__ import annotations

from typing import Any

from lightning_fedmut.progress import FitProgress

__all__ = ["RunState"]

#: The per-row records of a fit, in the order a checkpoint's ``history.jsonl`` keeps them.
ROWS = ("history", "client_history", "failures", "timings")


class RunState:
    """A fit's record: what :class:`~lightning_fedmut.FederatedResult` returns, and what a resume restores.

    Attributes:
        history: one dict per round (the round's metrics, the global model's evaluation, the components'
            ``metrics()``).
        client_history: one dict per client that trained, per round.
        failures: one dict per client that failed, per round.
        timings: one dict per round (seconds spent per phase).
        progress: the :class:`~lightning_fedmut.progress.FitProgress` counters that drive resuming.
        round_metrics: the figures of the round in progress, written into its history row.

    Examples:
        >>> state = RunState()
        >>> state.history.append({"round": 0, "val_acc": 0.5}); state.progress.rounds_done = 1
        >>> restored = RunState(); restored.load_state_dict(state.state_dict())
        >>> restored.history, restored.progress.rounds_done
        ([{'round': 0, 'val_acc': 0.5}], 1)
        >>> old = state.history; state.reset(); old, state.history  # a new fit starts new lists
        ([{'round': 0, 'val_acc': 0.5}], [])
    """

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.client_history: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.timings: list[dict[str, Any]] = []
        self.progress = FitProgress()
        self.round_metrics: dict[str, Any] = {}

    def reset(self) -> None:
        """A fresh record for a new fit (new lists: a previous fit's result keeps its own)."""
        self.history, self.client_history, self.failures, self.timings = [], [], [], []
        self.progress.reset()
        self.round_metrics = {}

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """The four row lists by name (the lists themselves, not copies)."""
        return {name: getattr(self, name) for name in ROWS}

    def load_rows(self, saved: dict[str, Any]) -> None:
        """Replace the rows with ``saved``'s, in place (whoever holds the lists sees them)."""
        for name in ROWS:
            getattr(self, name)[:] = saved[name]

    def state_dict(self) -> dict[str, Any]:
        return {**{name: list(rows) for name, rows in self.rows().items()}, "progress": self.progress.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.load_rows(state_dict)
        self.progress.load_state_dict(state_dict["progress"])
