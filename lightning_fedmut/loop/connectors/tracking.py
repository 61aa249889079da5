"""Logging a federated run: the round as the step axis, per-client tables, and the run id for resuming.

Rounds are numbered from 0 everywhere: ``result.history``'s ``round``, the logger's step, W&B's ``round``
metric and the client table's ``round`` column hold the same number for the same round.
"""

from __future__ import annotations

import os
import sys
import weakref
from typing import Any

from lightning.pytorch.loggers import Logger

#: Key of the per-client W&B table.
CLIENT_TABLE_KEY = "clients/table"
# the incremental client table of each W&B run (a run's rows are logged once, in increments)
_TABLES: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
# hyperparameters to log when the loop starts the logger's run (see defer_hyperparams)
_PENDING: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
# W&B loggers the loop made silent (quiet_wandb): their offline run folder is named in one line at the end
_SILENCED: weakref.WeakSet[Any] = weakref.WeakSet()


def _wandb_logger(logger: Logger | None) -> Any:
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return None
    return logger if isinstance(logger, WandbLogger) else None


def prepare_resume(logger: Logger | None, run_id: str | None) -> None:
    """Make a W&B logger continue the run ``run_id`` (from a checkpoint) if its run has not started yet."""
    wandb_logger = _wandb_logger(logger)
    if wandb_logger is None or run_id is None or getattr(wandb_logger, "_experiment", None) is not None:
        return
    wandb_logger._wandb_init.update(id=run_id, resume="allow")
    wandb_logger._id = run_id


def run_id(logger: Logger | None) -> str | None:
    """The logger's run id (W&B run id, or a CSV/TensorBoard version) for the checkpoint."""
    if logger is None:
        return None
    version = logger.version
    return None if version is None else str(version)


def quiet_wandb(logger: Logger | None) -> None:
    """Make a W&B run the loop is about to start print nothing (no banner, no end-of-run summary) and drop
    Lightning's ``anonymous=None``, which W&B warns about. One line names the run instead: its URL when it
    starts (online), or its folder when it ends (offline, with the ``wandb sync`` command).

    Left as they are: a run already started, a ``WandbLogger(settings=...)``, and the console W&B is told to
    have by ``WANDB_SILENT`` or ``WANDB_QUIET`` (``WANDB_SILENT=false`` brings W&B's own lines back).
    """
    wandb_logger = _wandb_logger(logger)
    if wandb_logger is None or getattr(wandb_logger, "_experiment", None) is not None:
        return
    init = wandb_logger._wandb_init
    if "anonymous" in init and init["anonymous"] is None:
        del init["anonymous"]
    if init.get("settings") is not None or os.environ.get("WANDB_SILENT") or os.environ.get("WANDB_QUIET"):
        return
    import wandb

    init["settings"] = wandb.Settings(silent=True)
    _SILENCED.add(wandb_logger)


def defer_hyperparams(logger: Logger | None, params: dict[str, Any]) -> None:
    """Have ``params`` logged when ``fit`` starts the logger's run, before the loop's own config.

    Logging them now would start the run (``WandbLogger.log_hyperparams`` opens it), before ``fit`` has read
    the run id of a checkpoint it resumes: the resumed run would be a new W&B run. Called again before
    ``fit``, the new ``params`` are added to those waiting.

    Examples:
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> import tempfile
        >>> logger = CSVLogger(tempfile.mkdtemp())
        >>> defer_hyperparams(logger, {"seed": 0})
        >>> _PENDING[logger], logger._experiment is None
        ({'seed': 0}, True)
    """
    if logger is not None:
        _PENDING.setdefault(logger, {}).update(params)


def start_run(logger: Logger | None, config: dict[str, Any]) -> None:
    """Log the hyperparameters waiting for the run (:func:`defer_hyperparams`), then the run config, and make
    ``round`` the x-axis of every metric in W&B."""
    if logger is None:
        return
    quiet_wandb(logger)
    pending = _PENDING.pop(logger, None)
    if pending:
        logger.log_hyperparams(pending)
    logger.log_hyperparams(config)
    wandb_logger = _wandb_logger(logger)
    if wandb_logger is not None:
        experiment = wandb_logger.experiment
        experiment.define_metric("round")
        experiment.define_metric("*", step_metric="round")
        if wandb_logger in _SILENCED and not _offline(experiment) and getattr(experiment, "url", None):
            print(f"W&B: the run is at {experiment.url}", file=sys.stderr, flush=True)  # W&B's own line, silenced


def log_round(logger: Logger | None, row: dict[str, Any]) -> None:
    """Log one round's metrics with ``step = round`` (and ``round`` itself, W&B's step metric).

    W&B gets the row as it is: ``round`` is its x-axis, so Lightning's extra ``trainer/global_step`` (the same
    number again) is not logged.
    """
    if logger is None:
        return
    metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    wandb_logger = _wandb_logger(logger)
    if wandb_logger is not None:
        wandb_logger.experiment.log(metrics)
    else:
        logger.log_metrics(metrics, step=int(row["round"]))


def log_client_table(logger: Logger | None, rows: list[dict[str, Any]], round_index: int) -> None:
    """Add ``rows``, the per-client rows since the previous call, to the W&B table ``clients/table``.

    The table is an incremental W&B table: each call writes only the rows it is given, so a call costs the
    same in round 10 and in round 1000, and the W&B UI shows the increments as one table. A column that
    appears later (a metric some clients log) starts a new increment with every column so far; earlier rows
    have no value there. No-op for loggers other than W&B (the rows are in ``result.client_history``).
    """
    wandb_logger = _wandb_logger(logger)
    if wandb_logger is None or not rows:
        return
    import wandb

    run = wandb_logger.experiment
    table = _TABLES.get(run)
    columns = list(table.columns) if table is not None else []
    new = [k for row in rows for k in row if k not in columns]
    if new:
        columns.extend(dict.fromkeys(new))
        table = _new_table(wandb, columns, previous=table)
        _TABLES[run] = table
    assert table is not None  # a first call's columns are all new: every client row holds `round` and `client_id`
    for row in rows:
        table.add_data(*(_cell(row.get(c)) for c in columns))
    run.log({CLIENT_TABLE_KEY: table, "round": round_index})


def finish_run(logger: Logger | None, status: str) -> None:
    """Flush the logger; a W&B run is finished so that the next ``fit`` (e.g. the baseline) opens its own run."""
    if logger is None:
        return
    logger.save()
    logger.finalize(status)
    wandb_logger = _wandb_logger(logger)
    if wandb_logger is not None and getattr(wandb_logger, "_experiment", None) is not None:
        run = wandb_logger.experiment
        _TABLES.pop(run, None)
        folder = os.path.dirname(run.dir) if getattr(run, "dir", None) else None
        offline = _offline(run)
        run.finish(exit_code=0 if status == "success" else 1)
        if wandb_logger in _SILENCED and offline and folder:
            print(f"W&B: the run was logged offline in {folder}; upload it with: wandb sync {folder}",
                  file=sys.stderr, flush=True)


def _offline(run: Any) -> bool:
    return getattr(getattr(run, "settings", None), "mode", None) in ("offline", "dryrun")


def _new_table(wandb: Any, columns: list[str], previous: Any) -> Any:
    """An incremental table with ``columns``; one that replaces ``previous`` goes on with its increments."""
    table = wandb.Table(columns=columns, log_mode="INCREMENTAL", allow_mixed_types=True)
    if previous is None or getattr(previous, "_increment_num", None) is None:
        return table
    try:  # what W&B does when a logged incremental table grows: the next increment refers to the earlier ones
        last = previous._get_artifact_entry_ref_url() if previous._artifact_target is not None else None
        paths = [*(previous._previous_increments_paths or []), *([last] if last else [])]
        table._previous_increments_paths, table._increment_num = paths, previous._increment_num + 1
    except AttributeError:  # another wandb version: the new columns start a table of their own
        pass
    return table


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return str(value)
