"""Where a worker's time goes: seconds per phase of a fit, kept by the executor in every rank."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PHASES", "PhaseTimes"]

#: The phases a :class:`~lightning_fedmut.distributed.DistributedExecutor` times, in table order.
PHASES = (
    "startup",  # from `fit` to this rank's first round: the fork, the process group
    "train",  # training this rank's clients (their Trainers, hooks, start models)
    "exchange",  # the exchange of trained results: waiting for the others, and the transfer
    "evaluate",  # evaluating the global model on this rank's share of the validation data
    "evaluate_exchange",  # combining the evaluation's metrics (or waiting for rank 0's)
    "state_exchange",  # declared round state and barriers
)


class PhaseTimes:
    """Seconds spent per named phase, added up over a fit; ``summary(total)`` names the rest ``"loop"``.

    ``"loop"`` is what no phase covers: aggregation, the history, logging, checkpointing, the progress bar.

    Examples:
        >>> times = PhaseTimes()
        >>> with times("train"):
        ...     pass
        >>> times.add("train", 2.0); times.add("exchange", 0.5)
        >>> summary = times.summary(total=3.0)
        >>> round(summary["train"], 2), summary["exchange"], round(summary["loop"], 2), summary["total"]
        (2.0, 0.5, 0.5, 3.0)
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - start)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def summary(self, total: float) -> dict[str, float]:
        """The phases (those of :data:`PHASES` first), ``"loop"`` (the rest of ``total``) and ``"total"``."""
        ordered = [p for p in PHASES if p in self.seconds] + sorted(set(self.seconds) - set(PHASES))
        out = {p: self.seconds[p] for p in ordered}
        out["loop"] = total - sum(out.values())
        out["total"] = total
        return out
