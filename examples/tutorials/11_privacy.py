"""Tutorial 11: accuracy against epsilon, DP-FedAvg and DP-FedMut on digits.

User-level central differential privacy: each client's update clipped to norm C, Gaussian noise on their sum,
epsilon from dp-accounting's RDP accountant. Both methods sample K = 20 of the 100 clients per round without
replacement (FedMut's mutation needs K clients every round), so they are accounted alike, and for each target
epsilon the noise multiplier is the one that spends exactly that epsilon in the planned rounds.

Setting: digits, 100 clients (IID, about 13 images each), 20 per round, 30 rounds, 1 local epoch with batch 5,
SGD lr 0.1 momentum 0; a linear model on the 64 pixels (650 weights: the fewer the weights, the less noise in
total); C = 0.5, delta = 1e-3 (below 1/N); FedMut with radius 1 and acceleration 0.3.

Run:  python examples/tutorials/11_privacy.py                  (3 seeds, 30 rounds: about 4 minutes on a CPU)
      FEDMUT_EXAMPLE_SMALL=1 python examples/tutorials/11_privacy.py   (1 seed, 3 rounds, as CI runs it)
Writes:  table.md and history.csv to $FEDMUT_OUTPUT_DIR (default outputs/11_privacy).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_fedmut import FederatedLoop, make_clients
from lightning_fedmut.algorithms import DPFedAvg, DPFedMut, FedAvg, FedMut
from lightning_fedmut.data import partition_iid
from lightning_fedmut.datasets import load_digits_split
from lightning_fedmut.models.classifier import Classifier

SMALL = os.environ.get("FEDMUT_EXAMPLE_SMALL", "") not in ("", "0")
OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/11_privacy"))
ROUNDS = 3 if SMALL else 30
SEEDS = (0,) if SMALL else (0, 1, 2)
EPSILONS = (8.0, 32.0, None)  # None: no privacy
EVALUATE_EVERY = 1 if SMALL else 5
LAST = 2  # the table: mean of the last LAST evaluations of each run (rounds 25 and 30 at full size)
CLIP, DELTA, RADIUS = 0.5, 1e-3, 1.0


# --8<-- [start:methods]
def method(name: str, epsilon: float | None):
    """The preset for ``name`` at ``epsilon``: the noise multiplier is derived from the target and the rounds."""
    if epsilon is None:
        return FedAvg(weighted=False) if name == "FedAvg" else FedMut(radius=RADIUS)
    private = {"noise_multiplier": None, "target_epsilon": epsilon, "clip_norm": CLIP, "delta": DELTA}
    if name == "FedAvg":
        return DPFedAvg(poisson=False, **private)  # the sampler FedMut needs: K of N without replacement
    return DPFedMut(radius=RADIUS, **private)
# --8<-- [end:methods]


# --8<-- [start:run]
def run(name: str, epsilon: float | None, seed: int):
    train, test = load_digits_split()
    clients = make_clients(train, partition_iid(len(train), 100, seed=seed), batch_size=5)
    torch.manual_seed(seed)  # the same initial model for every method and epsilon
    model = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), num_classes=10, lr=0.1, momentum=0.0)
    loop = FederatedLoop(rounds=ROUNDS, clients_per_round=20, local_epochs=1, enable_progress_bar=False, seed=seed,
                         evaluate_every=EVALUATE_EVERY, algorithm=method(name, epsilon))
    return loop.fit(model, clients, val_dataloaders=DataLoader(test, batch_size=500))
# --8<-- [end:run]


def main() -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    rows, table = [], {}
    for epsilon in EPSILONS:
        for name in ("FedAvg", "FedMut"):
            finals, spent = [], []
            for seed in SEEDS:
                history = run(name, epsilon, seed).history
                finals.append(float(np.mean([h["val_acc"] for h in history if "val_acc" in h][-LAST:])))
                spent.append(history[-1].get("dp/epsilon", float("inf")))
                rows += [{"method": name, "target_epsilon": epsilon, "seed": seed, **h} for h in history]
            table[(name, epsilon)] = (finals, spent)
            print(name, epsilon, finals, flush=True)
    lines = ["| Method | target epsilon | epsilon spent | noise multiplier | test accuracy, last 2 evaluations |",
             "| --- | --- | --- | --- | --- |"]
    for (name, epsilon), (finals, spent) in table.items():
        z = next((r["dp/noise_multiplier"] for r in rows if r["method"] == name and r["target_epsilon"] == epsilon
                  and "dp/noise_multiplier" in r), None)
        spread = f"{np.std(finals, ddof=1):.3f}" if len(finals) > 1 else "-"  # sample std, n = len(SEEDS)
        lines.append(f"| {name} | {'none' if epsilon is None else f'{epsilon:g}'} |"
                     f" {'-' if epsilon is None else f'{max(spent):.3f}'} | {'-' if z is None else f'{z:.3f}'} |"
                     f" {np.mean(finals):.3f} ± {spread} (n={len(finals)}) |")
    (OUTPUT / "table.md").write_text("\n".join(lines) + "\n")
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("method", "target_epsilon", "seed", "round"), k))
    with open(OUTPUT / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
