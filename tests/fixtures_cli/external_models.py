"""A LightningModule and a LightningDataModule that live outside the package, for the command-line tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader

from lightning_fedmut.datasets import make_synthetic_split


class ExternalMLP(LightningModule):
    """An MLP on flattened 1x8x8 inputs that logs ``val_acc`` and its own ``val_external`` (always 42)."""

    def __init__(self, hidden: int = 16, num_classes: int = 10, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())
        self.log("val_external", 42.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class SyntheticDataModule(LightningDataModule):
    """The built-in synthetic data behind a LightningDataModule: train loader to partition, val loader to evaluate."""

    def __init__(self, num_train: int = 120, num_test: int = 40, num_classes: int = 4) -> None:
        super().__init__()
        self.num_train, self.num_test, self.num_classes = num_train, num_test, num_classes

    def setup(self, stage: str) -> None:
        self.train, self.test = make_synthetic_split(self.num_train, self.num_test, self.num_classes, seed=1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=16, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test, batch_size=40)


class NoValidation(ExternalMLP):
    """An ExternalMLP without ``validation_step``: trained, never evaluated."""

    validation_step = None  # type: ignore[assignment]


class NotAModule(nn.Module):
    """A plain torch module: ``--model`` must refuse it."""
