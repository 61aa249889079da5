"""The progress of a federated ``fit``: which round runs, how many are done, which was saved last; and how it
is shown: a progress bar on a terminal, one line per round in a log file or CI."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, TextIO

__all__ = ["FitProgress", "progress_mode", "round_line"]


def progress_mode(enabled: bool, is_global_zero: bool, stream: TextIO | None = None) -> str | None:
    """How a ``fit`` shows its progress on ``stream`` (default ``sys.stderr``, where the bar goes).

    ``"bar"``: a progress bar, when ``stream`` is a terminal; ``"lines"``: one line per round
    (:func:`round_line`), when it is not (a log file, CI), where a bar's redraws would pile up in one huge
    line; ``None``: nothing (``enable_progress_bar=False``, or a worker other than rank 0).

    Examples:
        >>> import io
        >>> progress_mode(True, True, io.StringIO()), progress_mode(False, True), progress_mode(True, False)
        ('lines', None, None)
    """
    if not (enabled and is_global_zero):
        return None
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return "bar" if callable(isatty) and isatty() else "lines"
    except (ValueError, OSError):  # a closed stream
        return "lines"


def round_line(round_index: int, rounds: int, metrics: Mapping[str, float], seconds: float, failed: int = 0) -> str:
    """The line a round leaves when the progress is not a bar: the 0-based round (as in the history), the rounds
    done out of all, the metrics, the clients that failed and the round's time.

    Examples:
        >>> round_line(3, 10, {"val_loss": 0.51234, "val_acc": 0.81}, 1.234)
        'round 3 (4/10): val_loss 0.5123, val_acc 0.8100, 1.2 s'
        >>> round_line(0, 2, {}, 0.04, failed=1)
        'round 0 (1/2): 1 client failed, 0.0 s'
    """
    parts = [f"{k} {v:.4f}" for k, v in metrics.items()]
    if failed:
        parts.append(f"{failed} client{'s' if failed > 1 else ''} failed")
    parts.append(f"{seconds:.1f} s")
    return f"round {round_index} ({round_index + 1}/{rounds}): {', '.join(parts)}"


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
