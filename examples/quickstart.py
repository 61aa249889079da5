"""Federate a small CNN on scikit-learn's digits with FedMut and with FedAvg, and compare them per round.

Run:  python examples/quickstart.py            (about a minute on two CPU cores)
      FEDMUT_EXAMPLE_SMALL=1 python examples/quickstart.py   (a few seconds, as CI runs it)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.data import partition_dirichlet
from lightning_fedmut.datasets import labels_of, load_digits_split
from lightning_fedmut.models import DigitsCNN

SMALL = os.environ.get("FEDMUT_EXAMPLE_SMALL", "") not in ("", "0")
ROUNDS = 3 if SMALL else 15
SEEDS = (0,) if SMALL else (0, 1, 2)
OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/quickstart"))


def run(method: str, seed: int = 0):
    train, test = load_digits_split()
    # 20 clients with strongly non-IID labels: Dirichlet(0.1) proportions per class
    partitions = partition_dirichlet(labels_of(train), num_clients=20, alpha=0.1, min_size=10, seed=seed)
    clients = make_clients(train, partitions, batch_size=50)

    torch.manual_seed(seed)
    model = DigitsCNN(lr=0.01, momentum=0.5)  # any LightningModule works here

    callbacks = [MutationCallback(radius=4.0, acceleration=0.3, acceleration_rounds=50)] if method == "FedMut" else []
    loop = FederatedLoop(
        rounds=ROUNDS,
        clients_per_round=10,
        local_epochs=5,
        aggregator=FedAvg(weighted=False),  # the uniform mean of FedMut's reference code
        callbacks=callbacks,
        seed=seed,
    )
    return loop.fit(model, clients, val_dataloaders=DataLoader(test, batch_size=500)), labels_of(train), partitions


def main() -> None:
    torch.set_num_threads(1)
    results = {}
    for method in ("FedMut", "FedAvg"):
        results[method] = []
        for seed in SEEDS:
            result, labels, partitions = run(method, seed)
            results[method].append(result)
    print(f"global accuracy, mean of seeds {SEEDS}")
    print(f"{'round':>5}  {'FedMut':>7}  {'FedAvg':>7}")
    for r in range(ROUNDS):
        fm = sum(res.history[r]["val_acc"] for res in results["FedMut"]) / len(SEEDS)
        fa = sum(res.history[r]["val_acc"] for res in results["FedAvg"]) / len(SEEDS)
        print(f"{r + 1:>5}  {fm:>7.3f}  {fa:>7.3f}")
    try:
        from lightning_fedmut.plotting import plot_label_distribution, plot_metric
    except ImportError:
        return
    OUTPUT.mkdir(parents=True, exist_ok=True)
    plot_metric(results, metric="val_acc", path=OUTPUT / "accuracy.png", title="digits, Dirichlet 0.1, 20 clients")
    plot_label_distribution(labels, partitions, path=OUTPUT / "label_distribution.png")
    print(f"plots written to {OUTPUT}/")


if __name__ == "__main__":
    main()
