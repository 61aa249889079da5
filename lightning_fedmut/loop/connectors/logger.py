"""A round's record: the history row, its timing, the logger's metrics and client table, the progress bar (or,
when the console is not a terminal, one line per round)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from lightning_fedmut.loop.checks import is_validation_metric
from lightning_fedmut.loop.connectors import tracking
from lightning_fedmut.progress import progress_mode, round_line
from lightning_fedmut.result import client_metric_spread, weighted_client_means

if TYPE_CHECKING:
    from lightning_fedmut.loop import FederatedLoop


class RoundLog:
    """Writes what a round leaves behind into the loop's history and timings, and to the logger (rank 0)."""

    def __init__(self, loop: FederatedLoop) -> None:
        self.loop = loop
        self.table_rows = 0  # client_history rows already in the W&B client table

    def resume(self) -> None:
        """After a restore: the rows of the rounds before the last table log were logged by the earlier run."""
        loop = self.loop
        logged = (loop.progress.rounds_done // loop.client_table_every) * loop.client_table_every
        self.table_rows = sum(1 for row in loop.client_history if row["round"] < logged)

    def log(self, trained: list[dict[str, Any]], failed: list[dict[str, Any]], skipped: bool, start: float,
            val_metrics: dict[str, float]) -> None:
        loop = self.loop
        local = sorted({k for r in trained for k in r if is_validation_metric(k)})  # clients' own validation
        row: dict[str, Any] = {"round": loop.round, **weighted_client_means(trained), **client_metric_spread(trained, local),
                               "clients/trained": len(trained), "clients/failed": len(failed),
                               "round_skipped": int(skipped), **loop.round_metrics}
        loop.history.append(row)
        elapsed = time.perf_counter() - start
        timing = {"round": loop.round, "round_time": elapsed, "clients_per_second": len(trained) / elapsed}
        loop.timings.append(timing)
        tracking.log_round(loop._logger, {**row, **timing})
        if (loop.round + 1) % loop.client_table_every == 0:
            self.log_client_table()
        # the validation metrics, and the figures a component asks to show (`progress_bar_metrics`: dp/epsilon ...)
        extra = {k: row[k] for c in loop._components() for k in getattr(c, "progress_bar_metrics", ())
                 if isinstance(row.get(k), (int, float))}
        shown = {k: f"{v:.4g}" for k, v in {**val_metrics, **extra}.items()}
        if loop._bar is not None:
            loop._bar.set_postfix({**shown, "failed": len(loop.failures)} if loop.failures else shown, refresh=False)
        if progress_mode(loop.enable_progress_bar, loop.is_global_zero) == "lines":
            metrics = {**(val_metrics or {k: row[k] for k in ("clients/train_loss",) if isinstance(row.get(k), float)}),
                       **extra}
            print(round_line(loop.round, loop.rounds, metrics, elapsed, failed=len(failed)), file=sys.stderr,
                  flush=True)

    def log_client_table(self) -> None:
        """Log the client rows added since the last table log (none at all: nothing)."""
        loop = self.loop
        rows = loop.client_history[self.table_rows:]
        if rows:
            tracking.log_client_table(loop._logger, rows, loop.round)
            self.table_rows = len(loop.client_history)
