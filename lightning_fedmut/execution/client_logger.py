"""The logger of a client Trainer: what the client's training logs, kept in memory for its result."""

from __future__ import annotations

import os
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers.logger import DummyExperiment

__all__ = ["ClientLogger"]

#: What Lightning adds to every logging call on its own; the client's history has the round instead.
BOOKKEEPING = frozenset({"epoch", "step"})


class ClientLogger(Logger):
    """Keeps the last value of every scalar a client ``Trainer`` logs; writes nothing and opens no run.

    The executor gives one to each client ``Trainer`` (unless ``trainer_kwargs`` sets ``logger``), so that
    Lightning callbacks that need a logger work inside the federation: ``LearningRateMonitor``'s ``lr-SGD``,
    ``DeviceStatsMonitor``'s statistics, or ``self.logger.log_metrics(...)`` in the module. What it kept
    joins the client's metrics (the ``metrics`` of its :class:`~lightning_fedmut.tasks.ClientResult`),
    hence ``result.client_history`` and the W&B client table, under the client's id. The loop's own logger
    (``FederatedLoop(logger=...)``) logs once per round; this one never reaches W&B or the disk by itself.

    Its ``experiment`` accepts any call and does nothing, as Lightning's ``DummyLogger``'s does, so module
    code written for a real logger (``self.logger.experiment.add_image(...)``) runs unchanged.

    Args:
        save_dir: what ``trainer.log_dir`` returns (the Trainer's ``default_root_dir``, as without a logger).

    Examples:
        >>> logger = ClientLogger()
        >>> logger.log_metrics({"lr-SGD": 0.1, "epoch": 0}, step=0)
        >>> logger.log_metrics({"lr-SGD": torch.tensor(0.25), "vector": torch.zeros(3)}, step=1)
        >>> logger.metrics
        {'lr-SGD': 0.25}
    """

    def __init__(self, save_dir: str | os.PathLike | None = None) -> None:
        super().__init__()
        self._save_dir = None if save_dir is None else os.fspath(save_dir)
        self._metrics: dict[str, float] = {}
        self._experiment = DummyExperiment()

    @property
    def name(self) -> str:
        return "client"

    @property
    def version(self) -> None:
        """No version: nothing is written, and progress bars show no ``v_num``."""
        return None

    @property
    def save_dir(self) -> str | None:
        return self._save_dir

    @property
    def experiment(self) -> DummyExperiment:
        """A stand-in that accepts any call and does nothing."""
        return self._experiment

    @property
    def metrics(self) -> dict[str, float]:
        """The last value of every scalar metric logged so far, in the order first logged."""
        return dict(self._metrics)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        for name, value in metrics.items():
            if name in BOOKKEEPING:
                continue
            scalar = _scalar(value)
            if scalar is not None:
                self._metrics[name] = scalar

    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters are the global module's, logged once per run by the loop's logger: nothing to do."""


def _scalar(value: Any) -> float | None:
    """``value`` as a float if it is one number (a one-element tensor or a numpy scalar too), else ``None``."""
    if isinstance(value, torch.Tensor):
        return float(value) if value.numel() == 1 else None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return float(value)
    return None
