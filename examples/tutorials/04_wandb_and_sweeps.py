"""Tutorial 4: track federated runs in Weights & Biases, and run a sweep.

``FederatedLoop(logger=...)`` takes any Lightning logger. The loop logs once per round with
``step=round`` (the client Trainers never log on their own), so in W&B every metric has the round on its
x-axis: the global model's ``val_acc`` and ``val_loss``, the clients' mean ``clients/train_loss``,
FedMut's ``fedmut/beta``, ``fedmut/delta_norm`` and ``fedmut/start_model_distance``, the round time,
plus a per-client table (``clients/table``) and the run config (every loop, aggregator and callback
argument, and the model's hyperparameters).

This program needs no W&B account: the runs are offline (``WandbLogger(offline=True)``, or
``WANDB_MODE=offline``), written under $FEDMUT_OUTPUT_DIR, and can be uploaded later with ``wandb sync``.
It logs a FedMut and a FedAvg run in one W&B group, then runs a small sweep file with
``lightning-fedmut sweep``, which runs a W&B sweep's configurations locally, each as an offline run.

Run:  python examples/tutorials/04_wandb_and_sweeps.py
      FEDMUT_EXAMPLE_SMALL=1 python examples/tutorials/04_wandb_and_sweeps.py   (as CI runs it)
Writes:  wandb/offline-run-*/ (two runs) and sweep/wandb/offline-run-*/ (one per sweep configuration)
         to $FEDMUT_OUTPUT_DIR (default outputs/04_wandb_and_sweeps).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.data import partition_dirichlet
from lightning_fedmut.datasets import labels_of, load_digits_split
from lightning_fedmut.models import DigitsCNN

SMALL = os.environ.get("FEDMUT_EXAMPLE_SMALL", "") not in ("", "0")
OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/04_wandb_and_sweeps"))
ROUNDS = 3 if SMALL else 30
SWEEP_FILE = Path(__file__).with_name("04_sweep_small.yaml")


# --8<-- [start:logger]
def federate(method: str) -> str:
    train, test = load_digits_split()
    parts = partition_dirichlet(labels_of(train), num_clients=20, alpha=0.1, seed=0)
    logger = WandbLogger(
        project="lightning-fedmut-tutorials",
        group="fedmut-vs-fedavg",  # W&B groups the runs: compare them in one chart
        name=method,
        save_dir=str(OUTPUT),
        offline=True,  # no account, no network: upload later with `wandb sync`
    )
    loop = FederatedLoop(
        rounds=ROUNDS,
        clients_per_round=10,
        local_epochs=2,
        aggregator=FedAvg(weighted=False),
        callbacks=[MutationCallback(radius=4.0)] if method == "FedMut" else [],
        logger=logger,  # every round is logged with step=round; the run is finished when fit ends
        client_table_every=10,  # the per-client table, every 10 rounds and at the end
        enable_progress_bar=False,
        seed=0,
    )
    torch.manual_seed(0)
    result = loop.fit(DigitsCNN(), make_clients(train, parts, batch_size=50),
                      val_dataloaders=DataLoader(test, batch_size=500))
    print(f"{method}: val_acc {result.history[-1]['val_acc']:.3f} after {ROUNDS} rounds, W&B run {logger.version}")
    return logger.version
# --8<-- [end:logger]


def main() -> None:
    torch.set_num_threads(1)
    for method in ("FedMut", "FedAvg"):
        federate(method)
    runs = sorted(p.name for p in (OUTPUT / "wandb").glob("offline-run-*"))
    print(f"offline runs in {OUTPUT / 'wandb'}: {len(runs)}")
    print(f"upload them with: wandb sync {OUTPUT / 'wandb'}/offline-run-*")

    # --8<-- [start:sweep]
    # `lightning-fedmut sweep FILE` expands the sweep file's grid (or --count random draws) and runs each
    # configuration with the file's command, as `wandb agent` would, with WANDB_MODE=offline and one group.
    sweep_dir = OUTPUT / "sweep"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "lightning_fedmut.cli", "sweep", str(SWEEP_FILE), "--group", "tutorial-4"]
    sys.stdout.flush()  # keep this program's output ahead of the sweep's when both go to one file
    subprocess.run(command, env={**os.environ, "WANDB_DIR": str(sweep_dir)}, check=True)
    # --8<-- [end:sweep]
    runs = sorted(p.name for p in (sweep_dir / "wandb").glob("offline-run-*"))
    print(f"sweep runs in {sweep_dir / 'wandb'}: {len(runs)}")


if __name__ == "__main__":
    main()
