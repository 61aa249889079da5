"""Tutorial 8: FedMut against the baselines, on the same partitions, seeds and model.

Every method the FedMut paper and its reviewers compare with, each one aggregator, callbacks and sampler
away from plain FedAvg: FedProx, SCAFFOLD, the FedOpt family (FedAvgM, FedAdagrad, FedAdam, FedYogi),
FedExP, clustered sampling and FedMR; and FedMut combined with FedProx and with FedAdam. For each seed,
every method gets the same partition, the same initial model and the same client order.

Setting: digits, 20 clients with Dirichlet(0.1) labels, 10 clients per round, 5 local epochs, batch 50,
SGD lr 0.01 momentum 0.5 (FedMut's paper); FedMut with radius 4 and acceleration 0.3.

Run:  python examples/tutorials/08_baselines.py                  (3 seeds, 30 rounds: about 10 minutes)
      FEDMUT_EXAMPLE_SMALL=1 python examples/tutorials/08_baselines.py   (1 seed, 3 rounds, as CI runs it)
Writes:  baselines.png, table.md and history.csv to $FEDMUT_OUTPUT_DIR (default outputs/08_baselines).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.aggregators import FedAdagrad, FedAdam, FedAvgM, FedExP, FedExPReport, FedYogi
from lightning_fedmut.callbacks import FedMR, FedProx, Scaffold
from lightning_fedmut.data import partition_dirichlet
from lightning_fedmut.datasets import labels_of, load_digits_split
from lightning_fedmut.models import DigitsCNN
from lightning_fedmut.sampling import ClusteredSampler

SMALL = os.environ.get("FEDMUT_EXAMPLE_SMALL", "") not in ("", "0")
OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/08_baselines"))
ROUNDS = 3 if SMALL else 30
SEEDS = (0,) if SMALL else (0, 1, 2)
LAST = 5  # the table: mean of the last LAST evaluations of each run


# --8<-- [start:methods]
def fedmut(radius: float = 4.0):
    return MutationCallback(radius=radius, acceleration=0.3, acceleration_rounds=50)


#: name -> what the method changes: aggregator, callbacks and sampler, built fresh for every run (they hold state).
#: Defaults everywhere, except FedAdam's and FedYogi's server_lr (0.03 was the best of 0.003, 0.01 and 0.03 on seed
#: 0) and FedMut's radius on top of FedAdam (0.5 was the best of 0.5, 1, 2 and 4 on seed 0).
METHODS = {
    "FedAvg": dict,  # nothing to change: {}
    "FedMut": lambda: {"callbacks": [fedmut()]},
    "FedProx": lambda: {"callbacks": [FedProx(mu=0.01)]},
    "SCAFFOLD": lambda: {"callbacks": [Scaffold()]},
    "FedAvgM": lambda: {"aggregator": FedAvgM(server_lr=1.0, momentum=0.9)},
    "FedAdagrad": lambda: {"aggregator": FedAdagrad(server_lr=0.1)},
    "FedAdam": lambda: {"aggregator": FedAdam(server_lr=0.03)},
    "FedYogi": lambda: {"aggregator": FedYogi(server_lr=0.03)},
    "FedExP": lambda: {"aggregator": FedExP(epsilon=1e-3), "callbacks": [FedExPReport()]},
    "Clustered sampling": lambda: {"sampler": ClusteredSampler()},
    "FedMR": lambda: {"callbacks": [FedMR()]},
    "FedMut + FedProx": lambda: {"callbacks": [fedmut(), FedProx(mu=0.01)]},
    # the mutation scales with the last global step, which FedAdam makes far longer than FedAvg: a smaller radius
    "FedMut (radius 0.5) + FedAdam": lambda: {"aggregator": FedAdam(server_lr=0.03), "callbacks": [fedmut(0.5)]},
}
# --8<-- [end:methods]


# --8<-- [start:run]
def run(method: str, seed: int):
    train, test = load_digits_split()
    parts = partition_dirichlet(labels_of(train), num_clients=20, alpha=0.1, min_size=10, seed=seed)
    clients = make_clients(train, parts, batch_size=50)
    torch.manual_seed(seed)  # the same initial model for every method
    model = DigitsCNN(lr=0.01, momentum=0.5)
    plugins = METHODS[method]()
    plugins.setdefault("aggregator", FedAvg(weighted=False))  # FedMut's uniform mean, for every method
    loop = FederatedLoop(rounds=ROUNDS, clients_per_round=10, local_epochs=5, enable_progress_bar=False, seed=seed,
                         **plugins)
    return loop.fit(model, clients, val_dataloaders=DataLoader(test, batch_size=500))
# --8<-- [end:run]


def main() -> None:
    torch.set_num_threads(1)
    results = {method: [run(method, seed) for seed in SEEDS] for method in METHODS}

    # the table: per run, the mean of its last LAST evaluations; then the mean and the sample std (n - 1) over seeds
    last = min(LAST, ROUNDS)
    lines = [f"| Method | test accuracy, last {last} rounds | test loss, last {last} rounds |", "| --- | --- | --- |"]
    for method, runs in results.items():
        acc = np.array([np.mean(r.metric("val_acc")[-last:]) for r in runs])
        loss = np.array([np.mean(r.metric("val_loss")[-last:]) for r in runs])
        acc_std, loss_std = (x.std(ddof=1) if len(x) > 1 else 0.0 for x in (acc, loss))
        lines.append(f"| {method} | {acc.mean():.3f} ± {acc_std:.3f} | {loss.mean():.3f} ± {loss_std:.3f} |")
    table = "\n".join(lines)
    print(f"digits, 20 clients, Dirichlet 0.1, {ROUNDS} rounds, seeds {list(SEEDS)}: mean ± sample std over the"
          f" n = {len(SEEDS)} seeds")
    print(table)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "table.md").write_text(table + "\n", encoding="utf-8")

    with open(OUTPUT / "history.csv", "w", newline="") as f:  # every number behind the table and the plot
        writer = csv.writer(f)
        writer.writerow(["method", "seed", "round", "val_acc", "val_loss"])
        for method, runs in results.items():
            for seed, result in zip(SEEDS, runs):
                for row in result.history:
                    writer.writerow([method, seed, row["round"], row["val_acc"], row["val_loss"]])

    from matplotlib.figure import Figure

    from lightning_fedmut.plotting import plot_metric

    client_side = ("FedAvg", "FedMut", "FedProx", "SCAFFOLD", "Clustered sampling", "FedMR", "FedMut + FedProx")
    server_side = ("FedAvg", "FedMut", "FedAvgM", "FedAdagrad", "FedAdam", "FedYogi", "FedExP",
                   "FedMut (radius 0.5) + FedAdam")
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    plot_metric({m: results[m] for m in client_side}, ax=left, title="client side and sampling", band="std")
    plot_metric({m: results[m] for m in server_side}, ax=right, title="server side", band="std")
    fig.suptitle(f"global test accuracy: digits, 20 clients, Dirichlet 0.1, {len(SEEDS)} seed(s)")
    fig.savefig(OUTPUT / "baselines.png", dpi=120)
    print(f"table.md, history.csv and baselines.png written to {OUTPUT}/")


if __name__ == "__main__":
    main()
