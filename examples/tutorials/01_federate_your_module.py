"""Tutorial 1: federate the LightningModule you already have, in a few lines.

``LitDigits`` below is an ordinary LightningModule, written the way you would write it for
``Trainer.fit``; nothing in it knows about federated learning. The program first trains it centrally, as
a reference, then federates it: the training set is split among 20 clients with non-IID labels, and
every round 10 of them train a copy for a few local epochs before the server averages the copies and
mutates the average with FedMut.

Run:  python examples/tutorials/01_federate_your_module.py
      FEDMUT_EXAMPLE_SMALL=1 python examples/tutorials/01_federate_your_module.py   (seconds, as CI runs it)
Writes:  accuracy.png to $FEDMUT_OUTPUT_DIR (default outputs/01_federate_your_module).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader

from lightning_fedmut.datasets import labels_of, load_digits_split

SMALL = os.environ.get("FEDMUT_EXAMPLE_SMALL", "") not in ("", "0")
OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/01_federate_your_module"))
ROUNDS = 4 if SMALL else 30


# --8<-- [start:module]
class LitDigits(LightningModule):
    """A plain LightningModule: an MLP on 8x8 digit images."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)  # averaged per client, per round
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        # called afresh for every client in every round: each local run gets its own optimizer state
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.5)
# --8<-- [end:module]


def train_centrally(train, test) -> float:
    """The usual Lightning run, as a reference: all the data in one place."""
    torch.manual_seed(0)
    model = LitDigits()
    trainer = Trainer(max_epochs=3 if SMALL else 20, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(train, batch_size=50, shuffle=True))
    return trainer.validate(model, DataLoader(test, batch_size=500), verbose=False)[0]["val_acc"]


def main() -> None:
    torch.set_num_threads(1)
    train, test = load_digits_split()  # scikit-learn's bundled digits: no download
    central = train_centrally(train, test)

    # --8<-- [start:federate]
    from lightning_fedmut import FedAvg, FederatedLoop, MutationCallback, make_clients
    from lightning_fedmut.data import partition_dirichlet

    # 1. split the training set among 20 clients; Dirichlet(0.1) gives each client a few dominant labels
    parts = partition_dirichlet(labels_of(train), num_clients=20, alpha=0.1, seed=0)
    clients = make_clients(train, parts, batch_size=50)

    # 2. describe the federation: 10 clients per round, 2 local epochs each, FedMut on top of uniform FedAvg
    loop = FederatedLoop(
        rounds=ROUNDS,
        clients_per_round=10,
        local_epochs=2,
        aggregator=FedAvg(weighted=False),
        callbacks=[MutationCallback(radius=4.0)],
        seed=0,
    )

    # 3. fit your module: it is the global model, trained in place
    torch.manual_seed(0)
    model = LitDigits()
    result = loop.fit(model, clients, val_dataloaders=DataLoader(test, batch_size=500))
    # --8<-- [end:federate]

    # result.history holds one dict per round: the global model's validation metrics, the clients' mean
    # training metrics ("clients/train_loss") and FedMut's own ("fedmut/beta", "fedmut/delta_norm", ...)
    print(f"{'round':>5}  {'val_acc':>7}  {'clients/train_loss':>18}")
    for row in result.history:
        print(f"{row['round']:>5}  {row['val_acc']:>7.3f}  {row['clients/train_loss']:>18.3f}")
    print(f"centralised training for reference: val_acc {central:.3f}")
    print(f"the global model is your module, trained in place: result.module is model -> {result.module is model}")

    from lightning_fedmut.plotting import plot_metric

    plot_metric({"FedMut, 20 non-IID clients": result}, metric="val_acc", path=OUTPUT / "accuracy.png",
                title="global accuracy per round")
    print(f"figure written to {OUTPUT / 'accuracy.png'}")


if __name__ == "__main__":
    main()
