"""The built-in Classifier logs the example-weighted epoch mean of its loss and accuracy, computed by hand here."""

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, Subset

from lightning_fedmut.datasets import load_digits_split
from lightning_fedmut.models import DigitsCNN


@pytest.mark.filterwarnings("ignore:.*(val_dataloader|many workers|logging interval).*")
def test_epoch_metrics_equal_a_hand_written_replay():
    train, _ = load_digits_split()
    data = Subset(train, list(range(130)))  # batches of 50, 50, 30: the weighting matters
    torch.manual_seed(0)
    model = DigitsCNN()
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, DataLoader(data, batch_size=50))

    torch.manual_seed(0)
    replay = DigitsCNN()
    optimizer = replay.configure_optimizers()
    total, correct, seen = 0.0, 0, 0
    for x, y in DataLoader(data, batch_size=50):
        logits = replay(x)
        loss = F.cross_entropy(logits, y)
        total += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert abs(float(trainer.callback_metrics["train_loss"]) - total / seen) < 1e-5
    assert abs(float(trainer.callback_metrics["train_acc"]) - correct / seen) < 1e-7
