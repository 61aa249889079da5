"""A LightningModule that trains any ``nn.Module`` classifier with SGD and reports accuracy."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


class Classifier(LightningModule):
    """Cross-entropy classification with SGD, logging ``train_loss``, ``val_loss`` and ``val_acc``.

    Args:
        net: the network, mapping a batch of inputs to class logits.
        num_classes: number of classes.
        lr: SGD learning rate (FedMut's reference: 0.01).
        momentum: SGD momentum (FedMut's reference code: 0.5).
        weight_decay: SGD weight decay.

    Examples:
        >>> model = Classifier(torch.nn.Linear(4, 3), num_classes=3)
        >>> model(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self, net: nn.Module, num_classes: int, lr: float = 0.01, momentum: float = 0.5, weight_decay: float = 0.0
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        self._loss_sum = torch.zeros((), device=self.device)
        self._seen = 0
        self.train_acc.reset()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        # accumulate here and log once per epoch: a `self.log` per step costs Lightning about 0.3 ms
        self.train_acc.update(logits.detach(), y)
        self._loss_sum += loss.detach() * y.numel()
        self._seen += y.numel()
        return loss

    def on_train_epoch_end(self) -> None:
        if self._seen:
            self.log("train_loss", self._loss_sum / self._seen)
            self.log("train_acc", self.train_acc.compute())

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)  # one accuracy metric serves validation and test: they never run together
        self.log(f"{stage}_loss", F.cross_entropy(logits, y))
        self.log(f"{stage}_acc", self.val_acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hparams: Any = self.hparams  # an AttributeDict: the saved hyperparameters as attributes
        return torch.optim.SGD(
            self.parameters(), lr=hparams.lr, momentum=hparams.momentum, weight_decay=hparams.weight_decay
        )
