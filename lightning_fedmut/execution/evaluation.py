"""Evaluating a module on data with a short-lived, quiet Trainer: for the loop and for analysis code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader

from lightning_fedmut.execution._calls import interruptible, merged_scalars
from lightning_fedmut.utilities.trainer import QUIET_TRAINER_DEFAULTS, quiet_lightning

__all__ = ["Evaluator", "evaluate"]

#: Evaluation Trainers are as quiet as client ones but do validate.
EVAL_TRAINER_DEFAULTS = {k: v for k, v in QUIET_TRAINER_DEFAULTS.items() if k != "limit_val_batches"}


class Evaluator:
    """Runs ``Trainer.validate`` on a module and returns its logged metrics as floats.

    One Trainer per call, as quiet as the client ones (no logger, checkpointing, progress bar or model
    summary unless ``trainer_kwargs`` asks). The entry-point scan of ``Trainer.__init__`` is done once per
    evaluator.

    Args:
        trainer_kwargs: passed to the Trainer (accelerator, precision ...); they win over the quiet defaults.
        prepare_data: whether each evaluation calls the module's ``prepare_data``, as ``Trainer.validate`` does.
            The federated loop's evaluator does not: the loop calls it once per ``fit``.

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> class Model(LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = torch.nn.Linear(1, 1)
        ...     def validation_step(self, batch, batch_idx):
        ...         self.log("val_mean", self.layer(batch[0]).mean())
        >>> model = Model()
        >>> _ = torch.nn.init.zeros_(model.layer.weight), torch.nn.init.constant_(model.layer.bias, 2.0)
        >>> Evaluator().evaluate(model, DataLoader(TensorDataset(torch.ones(4, 1)), batch_size=2))
        {'val_mean': 2.0}
    """

    def __init__(self, trainer_kwargs: dict[str, Any] | None = None, prepare_data: bool = True) -> None:
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.prepare_data = prepare_data
        self._entry_points: dict[str, list[Any]] = {}

    def evaluate(self, module: LightningModule, dataloaders: DataLoader | Sequence[DataLoader]) -> dict[str, float]:
        """Validate ``module`` on ``dataloaders``; the metrics of several loaders are merged into one dict."""
        with quiet_lightning(self._entry_points, prepare_data=self.prepare_data):
            trainer = Trainer(**{**EVAL_TRAINER_DEFAULTS, **self.trainer_kwargs})
            results = interruptible(trainer, trainer.validate, module, dataloaders=dataloaders, verbose=False)
        return merged_scalars(results)


def evaluate(
    module: LightningModule, dataloaders: DataLoader | Sequence[DataLoader], trainer_kwargs: dict[str, Any] | None = None
) -> dict[str, float]:
    """Validate ``module`` on ``dataloaders`` once; see :class:`Evaluator`."""
    return Evaluator(trainer_kwargs).evaluate(module, dataloaders)
