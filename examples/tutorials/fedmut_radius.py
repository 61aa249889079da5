"""What FedMut's radius does: the same federation at radius 0 (FedAvg), 2, 4 and 8.

Digits (scikit-learn's bundled 8x8 images), 20 clients with Dirichlet(0.1) labels, 10 clients per round,
5 local epochs of SGD (lr 0.01, momentum 0.5): the FedMut paper's regime. Radius 0 is uniform FedAvg bit
for bit, so the four curves differ only by the mutation. The second panel is the mean distance between a
client's start model and the global model, ``radius * |c| * |g|``: the radius scales how far from the
global model the clients start, and ``|g|`` (the last global step) shrinks as training converges.

Run:  python examples/tutorials/fedmut_radius.py                 (5 seeds, 20 rounds: a few minutes)
      FEDMUT_EXAMPLE_SMALL=1 python examples/tutorials/fedmut_radius.py   (1 seed, 6 rounds, as CI runs it)
Writes:  radius.png to $FEDMUT_OUTPUT_DIR (default outputs/fedmut_radius).
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
OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/fedmut_radius"))
ROUNDS = 6 if SMALL else 20
SEEDS = (0,) if SMALL else (0, 1, 2, 3, 4)
RADII = (0.0, 2.0, 4.0, 8.0)


def run(radius: float, seed: int):
    train, test = load_digits_split()
    parts = partition_dirichlet(labels_of(train), num_clients=20, alpha=0.1, min_size=10, seed=seed)
    clients = make_clients(train, parts, batch_size=50)
    torch.manual_seed(seed)  # the same initial model for every radius
    model = DigitsCNN(lr=0.01, momentum=0.5)
    loop = FederatedLoop(
        rounds=ROUNDS,
        clients_per_round=10,
        local_epochs=5,
        aggregator=FedAvg(weighted=False),  # FedMut's reference code averages uniformly
        # radius 0 keeps the callback (so the distance is logged) but mutates nothing: FedAvg exactly
        callbacks=[MutationCallback(radius=radius, acceleration=0.3, acceleration_rounds=50)],
        enable_progress_bar=False,
        seed=seed,
    )
    return loop.fit(model, clients, val_dataloaders=DataLoader(test, batch_size=500))


def main() -> None:
    torch.set_num_threads(1)
    runs = {}
    for radius in RADII:
        label = "radius 0 (FedAvg)" if radius == 0 else f"radius {radius:g}"
        runs[label] = [run(radius, seed) for seed in SEEDS]
        final = sum(r.history[-1]["val_acc"] for r in runs[label]) / len(SEEDS)
        print(f"{label:<18} accuracy after {ROUNDS} rounds: {final:.3f} (mean of seeds {list(SEEDS)})")

    from matplotlib.figure import Figure

    from lightning_fedmut.plotting import plot_metric

    fig = Figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    plot_metric(runs, metric="val_acc", ax=left, title="global accuracy")
    plot_metric(runs, metric="fedmut/start_model_distance", ax=right, title="start model distance from the global")
    right.set_yscale("symlog", linthresh=0.1)  # radius 0 stays at 0; the others span two decades
    fig.suptitle(f"digits, 20 clients, Dirichlet 0.1, 10 per round, {len(SEEDS)} seed(s)")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUTPUT / "radius.png", dpi=120)
    print(f"figure written to {OUTPUT / 'radius.png'}")


if __name__ == "__main__":
    main()
