"""Tutorial 2: non-IID partitions, their label-distribution picture, and what they do to FedAvg.

In a real federation every client's data is its own: a phone's photos, a hospital's patients. The
labels are skewed ("non-IID"), and that skew is what makes federated learning hard. A simulation has to
reproduce it by splitting one data set among clients. This program compares the three usual schemes:

- ``partition_iid``: a random split, every client sees every class (the easy, unrealistic case);
- ``partition_dirichlet``: each class is divided among clients by proportions drawn from Dir(alpha); a
  small alpha (0.1) gives each client a few dominant classes, a large one (100) is close to IID;
- ``partition_shards``: sort by label, cut into shards, deal two per client (McMahan et al.'s
  "pathological" split: at most two classes per client).

It draws the clients x classes count matrix of each, saves one partition as JSON (the format of
FedMut's reference code, so a split can be shared and reused), then trains FedAvg on the IID and the
Dirichlet(0.1) split to show what the skew costs.

Run:  python examples/tutorials/02_non_iid_partitions.py
      FEDMUT_EXAMPLE_SMALL=1 python examples/tutorials/02_non_iid_partitions.py   (seconds, as CI runs it)
Writes:  label_distributions.png, iid_vs_dirichlet.png and dirichlet_0.1.json to $FEDMUT_OUTPUT_DIR
         (default outputs/02_non_iid_partitions).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedLoop, make_clients
from lightning_fedmut.data import (
    load_partition_json,
    partition_dirichlet,
    partition_iid,
    partition_shards,
    save_partition_json,
)
from lightning_fedmut.datasets import labels_of, load_digits_split
from lightning_fedmut.models import DigitsCNN
from lightning_fedmut.plotting import label_distribution, plot_label_distribution, plot_metric

SMALL = os.environ.get("FEDMUT_EXAMPLE_SMALL", "") not in ("", "0")
OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/02_non_iid_partitions"))
NUM_CLIENTS = 20
ROUNDS = 5 if SMALL else 20


def describe(name: str, labels: np.ndarray, parts: list[np.ndarray]) -> None:
    """One line per scheme: client sizes, and how many classes a client really holds."""
    counts = label_distribution(labels, parts, num_classes=10)  # (clients, classes)
    sizes = counts.sum(axis=1)
    classes = (counts > 0).sum(axis=1)
    # the share of its data that a client's most frequent class takes: 0.1 when balanced, 1.0 when one class
    dominant = (counts.max(axis=1) / sizes).mean()
    print(f"{name:<18} sizes {sizes.min():>3}-{sizes.max():<3}  classes per client {classes.mean():4.1f}"
          f"  dominant-class share {dominant:.2f}")


def federate(train, test, parts, seed: int = 0):
    """Uniform FedAvg on one partition; the rest of the setup is the same for every partition."""
    torch.manual_seed(seed)
    model = DigitsCNN(lr=0.01, momentum=0.5)
    loop = FederatedLoop(rounds=ROUNDS, clients_per_round=10, local_epochs=2, aggregator=FedAvg(weighted=False),
                         enable_progress_bar=False, seed=seed)
    return loop.fit(model, make_clients(train, parts, batch_size=50), val_dataloaders=DataLoader(test, batch_size=500))


def main() -> None:
    torch.set_num_threads(1)
    train, test = load_digits_split()
    labels = labels_of(train)  # partitions need only the labels, as a numpy array

    # every scheme takes its own seed: the same seed gives the same split, whatever the run's seed
    schemes = {
        "IID": partition_iid(len(labels), NUM_CLIENTS, seed=0),
        "Dirichlet 100": partition_dirichlet(labels, NUM_CLIENTS, alpha=100.0, seed=0),
        "Dirichlet 1.0": partition_dirichlet(labels, NUM_CLIENTS, alpha=1.0, seed=0),
        "Dirichlet 0.1": partition_dirichlet(labels, NUM_CLIENTS, alpha=0.1, seed=0),
        "2 shards / client": partition_shards(labels, NUM_CLIENTS, shards_per_client=2, seed=0),
    }
    for name, parts in schemes.items():
        describe(name, labels, parts)

    # the picture: one heatmap per scheme, rows are clients, columns classes, colour the number of examples
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 5), layout="constrained")
    for ax, (name, parts) in zip(fig.subplots(1, len(schemes)), schemes.items()):
        plot_label_distribution(labels, parts, num_classes=10, ax=ax, title=name)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUTPUT / "label_distributions.png", dpi=110)

    # a partition is just index lists: save it as {client_id: [indices]} JSON and load it back anywhere
    path = OUTPUT / "dirichlet_0.1.json"
    save_partition_json(schemes["Dirichlet 0.1"], path)
    loaded = load_partition_json(path)  # {"0": array([...]), "1": ...}: keys are strings
    assert all(np.array_equal(loaded[str(i)], p) for i, p in enumerate(schemes["Dirichlet 0.1"]))
    print(f"saved and reloaded {len(loaded)} clients from {path}")

    # what the skew costs: the same FedAvg on the IID and on the Dirichlet(0.1) split
    runs = {name: federate(train, test, schemes[name]) for name in ("IID", "Dirichlet 0.1")}
    for name, result in runs.items():
        print(f"FedAvg on {name:<14} accuracy after {ROUNDS} rounds: {result.history[-1]['val_acc']:.3f}")
    plot_metric(runs, metric="val_acc", path=OUTPUT / "iid_vs_dirichlet.png",
                title=f"uniform FedAvg, {NUM_CLIENTS} clients, 10 per round")
    print(f"figures written to {OUTPUT}/")


if __name__ == "__main__":
    main()
