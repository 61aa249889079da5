"""The progress of a federated ``fit``: which round runs, how many are done, which was saved last."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["FitProgress"]


@dataclass
class FitProgress:
    """Counters of a ``fit`` that drive resuming; checkpointed with the run.

    Attributes:
        round: the round in progress (0-based), or the next one between rounds.
        rounds_done: rounds completed (aggregated or skipped, evaluated and logged).
        last_saved: ``rounds_done`` of the newest checkpoint written by this run (0: none).

    Examples:
        >>> p = FitProgress()
        >>> p.start_round(0); p.complete_round(); p.round, p.rounds_done
        (0, 1)
        >>> FitProgress(**p.state_dict()) == p
        True
    """

    round: int = 0
    rounds_done: int = 0
    last_saved: int = 0

    def start_round(self, round_index: int) -> None:
        """Mark round ``round_index`` as in progress."""
        self.round = round_index

    def complete_round(self) -> None:
        """Mark the round in progress as done."""
        self.rounds_done = self.round + 1

    def reset(self) -> None:
        """Back to a fresh run."""
        self.round = self.rounds_done = self.last_saved = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.round = int(state_dict["round"])
        self.rounds_done = int(state_dict["rounds_done"])
        self.last_saved = int(state_dict["last_saved"])
