"""Logging a federated run: the round as the step axis, per-client tables, and the run id for resuming."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import Logger


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


def start_run(logger: Logger | None, config: dict[str, Any]) -> None:
    """Log the run config and make ``round`` the x-axis of every metric in W&B."""
    if logger is None:
        return
    logger.log_hyperparams(config)
    wandb_logger = _wandb_logger(logger)
    if wandb_logger is not None:
        experiment = wandb_logger.experiment
        experiment.define_metric("round")
        experiment.define_metric("*", step_metric="round")


def log_round(logger: Logger | None, row: dict[str, Any]) -> None:
    """Log one round's metrics with ``step = round`` (and ``round`` itself, W&B's step metric)."""
    if logger is None:
        return
    metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    logger.log_metrics(metrics, step=int(row["round"]))


def log_client_table(logger: Logger | None, rows: list[dict[str, Any]], round_index: int) -> None:
    """Log the per-client rows so far as a W&B table ``clients/table`` (no-op for other loggers)."""
    wandb_logger = _wandb_logger(logger)
    if wandb_logger is None or not rows:
        return
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    data = [[_cell(row.get(c)) for c in columns] for row in rows]
    import wandb

    wandb_logger.experiment.log({"clients/table": wandb.Table(columns=columns, data=data), "round": round_index})


def finish_run(logger: Logger | None, status: str) -> None:
    """Flush the logger; a W&B run is finished so that the next ``fit`` (e.g. the baseline) opens its own run."""
    if logger is None:
        return
    logger.save()
    logger.finalize(status)
    wandb_logger = _wandb_logger(logger)
    if wandb_logger is not None and getattr(wandb_logger, "_experiment", None) is not None:
        wandb_logger.experiment.finish(exit_code=0 if status == "success" else 1)


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return str(value)
