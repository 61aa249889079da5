"""Tutorial 7: is FedMut's minimum flatter? Hessian, sharpness and loss landscapes of the final global models.

FedMut's argument is that mutating the global model steers federated training towards flat regions of the
loss, which generalise better. This program measures it instead of assuming it: FedMut and uniform FedAvg
(its like-for-like baseline: FedMut with ``radius=0``) train on the same problem from the same start with
the same clients, for several seeds; then for each final global model it measures, on the training data
(the union of the clients' data: the loss federated training minimises):

- the Hessian's top eigenvalue (power iteration) and trace (Hutchinson), the curvature at the minimum;
- the sharpness: one SAM ascent step of radius 0.05, and the worst of 10 filter-normalised random
  directions of relative radius 0.05;
- the loss along a filter-normalised random direction through the model (1-D), and over a plane (2-D).

During training, a :class:`~lightning_fedmut.analysis.FlatnessCallback` logs the top eigenvalue, the SAM
sharpness and the loss of the global model every few rounds, so the history holds how flatness evolves
and the curvature of the two methods can be compared at equal training loss.

Setting (the paper's local settings, as in tutorial 3): digits, 20 clients, Dirichlet(0.1) labels, 10
clients per round, 5 local epochs, batch 50, SGD lr 0.01 momentum 0.5; FedMut with radius 4, acceleration
0.3 for 50 rounds.

Run:  python examples/tutorials/07_flatness.py                    (3 seeds, 30 rounds: about 3 minutes on a CPU)
      FEDMUT_EXAMPLE_SMALL=1 python examples/tutorials/07_flatness.py   (1 seed, 3 rounds, as CI runs it)
Writes:  landscape_1d.png, landscape_2d.png, flatness_per_round.png and flatness.csv to $FEDMUT_OUTPUT_DIR
(default outputs/07_flatness).
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from lightning_fedmut import FedAvg, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.analysis import (
    FlatnessCallback,
    hessian_eigenvalues,
    hessian_trace,
    loss_landscape_1d,
    loss_landscape_2d,
    sharpness,
)
from lightning_fedmut.data import partition_dirichlet
from lightning_fedmut.datasets import labels_of, load_digits_split
from lightning_fedmut.models import DigitsCNN

SMALL = os.environ.get("FEDMUT_EXAMPLE_SMALL", "") not in ("", "0")
OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/07_flatness"))
ROUNDS = 3 if SMALL else 30
SEEDS = (0,) if SMALL else (0, 1, 2)
EVERY = 1 if SMALL else 5  # rounds between the callback's measurements
MAX_ITER = 10 if SMALL else 100  # Hessian-vector products for the top eigenvalue, and probes for the trace
STEPS_1D, STEPS_2D = (11, 5) if SMALL else (21, 11)

METHODS = ("FedMut", "FedAvg (uniform)")
FIGURES = ("hessian_top", "hessian_trace", "sharpness_sam", "sharpness_random", "train_loss", "test_acc")


def accuracy(module, batch):
    x, y = batch
    return (module(x).argmax(-1) == y).float().mean()


# --8<-- [start:run]
def run(method: str, seed: int, train, test):
    parts = partition_dirichlet(labels_of(train), num_clients=20, alpha=0.1, min_size=10, seed=seed)
    clients = make_clients(train, parts, batch_size=50)
    torch.manual_seed(seed)
    model = DigitsCNN(lr=0.01, momentum=0.5)
    callbacks = [MutationCallback(radius=4.0, acceleration=0.3, acceleration_rounds=50)] if method == "FedMut" else []
    # flatness of the global model every EVERY rounds, on 500 training examples, logged as flatness/*
    probe = DataLoader(Subset(train, range(500)), batch_size=250)
    callbacks.append(FlatnessCallback(every_n_rounds=EVERY, data=probe, metrics=("hessian_top", "sharpness", "loss"),
                                      max_iter=MAX_ITER))
    loop = FederatedLoop(rounds=ROUNDS, clients_per_round=10, local_epochs=5, aggregator=FedAvg(weighted=False),
                         callbacks=callbacks, enable_progress_bar=False, seed=seed)
    result = loop.fit(model, clients, val_dataloaders=DataLoader(test, batch_size=500))
    return model, result
# --8<-- [end:run]


# --8<-- [start:measure]
def measure(model, train_loader, seed: int) -> dict[str, float]:
    """The flatness figures of one final global model on the whole training set."""
    return {
        "hessian_top": hessian_eigenvalues(model, train_loader, k=1, max_iter=MAX_ITER, seed=seed)[0],
        "hessian_trace": hessian_trace(model, train_loader, max_iter=MAX_ITER, seed=seed),
        "sharpness_sam": sharpness(model, train_loader, rho=0.05, method="sam"),
        "sharpness_random": sharpness(model, train_loader, rho=0.05, method="random", num_directions=10, seed=seed),
    }
# --8<-- [end:measure]


def main() -> None:
    torch.set_num_threads(1)
    train, test = load_digits_split()
    train_loader = DataLoader(train, batch_size=500)
    rows, curves, surfaces, results = [], {m: [] for m in METHODS}, {}, {m: [] for m in METHODS}
    for seed in SEEDS:
        for method in METHODS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # small runs stop power iteration early
                model, result = run(method, seed, train, test)
                figures = measure(model, train_loader, seed)
            # the same direction seed for both methods; each direction is normalised to its own model's filters
            curve = loss_landscape_1d(model, train_loader, seed=100 + seed, steps=STEPS_1D, metric_fn=accuracy)
            curves[method].append(curve)
            if seed == SEEDS[0]:
                surfaces[method] = loss_landscape_2d(model, train_loader, seed=100 + seed, steps=STEPS_2D)
            figures["train_loss"] = float(curve["loss"][STEPS_1D // 2])  # alpha = 0 is the model itself
            figures["test_acc"] = result.history[-1]["val_acc"]
            results[method].append(result)
            rows.append({"method": method, "seed": seed, **figures})

    print(f"final global models after {ROUNDS} rounds, on the {len(train)} training examples (seeds {list(SEEDS)})")
    print(f"{'method':<18}{'seed':>5}" + "".join(f"{f:>18}" for f in FIGURES))
    for row in rows:
        print(f"{row['method']:<18}{row['seed']:>5}" + "".join(f"{row[f]:>18.4f}" for f in FIGURES))
    print("mean over seeds (FedMut / FedAvg ratio in the last line)")
    means = {m: {f: np.mean([r[f] for r in rows if r["method"] == m]) for f in FIGURES} for m in METHODS}
    for method in METHODS:
        print(f"{method:<18}{'mean':>5}" + "".join(f"{means[method][f]:>18.4f}" for f in FIGURES))
    print(f"{'ratio':<18}{'':>5}" + "".join(f"{means['FedMut'][f] / means['FedAvg (uniform)'][f]:>18.3f}"
                                          for f in FIGURES))
    wins = {f: sum(a[f] < b[f] for a, b in zip([r for r in rows if r["method"] == "FedMut"],
                                                [r for r in rows if r["method"] != "FedMut"])) for f in FIGURES[:4]}
    print("seeds where FedMut's figure is the lower (flatter): "
          + ", ".join(f"{f} {n}/{len(SEEDS)}" for f, n in wins.items()))

    OUTPUT.mkdir(parents=True, exist_ok=True)
    with open(OUTPUT / "flatness.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "seed", *FIGURES])
        writer.writeheader()
        writer.writerows(rows)

    from matplotlib.figure import Figure

    from lightning_fedmut.plotting import plot_landscape_1d, plot_landscape_2d, plot_metric

    fig = Figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    plot_landscape_1d(curves, ax=left, title="training loss along a random direction")
    plot_landscape_1d(curves, metric="metric", ax=right, title="training accuracy along it")
    right.set_ylabel("accuracy")
    fig.suptitle(f"final global models, {len(SEEDS)} seed(s): mean and min-max band")
    fig.savefig(OUTPUT / "landscape_1d.png", dpi=120)

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    logs = np.log10(np.stack([surfaces[m]["loss"] for m in METHODS]))
    levels = np.linspace(logs.min(), logs.max(), 21)  # one colour scale for both
    for ax, method in zip(fig.subplots(1, 2), METHODS):
        plot_landscape_2d(surfaces[method], ax=ax, log=True, levels=levels, title=f"{method}, seed {SEEDS[0]}")
    fig.savefig(OUTPUT / "landscape_2d.png", dpi=120)

    fig = Figure(figsize=(15, 4), layout="constrained")
    left, middle, right = fig.subplots(1, 3)
    plot_metric(results, metric="flatness/hessian_top", ax=left, title="top Hessian eigenvalue (500 examples)")
    plot_metric(results, metric="flatness/sharpness", ax=middle, title="SAM sharpness, rho 0.05 (500 examples)")
    # curvature grows as the loss falls: compare the methods at equal training loss, every seed and round
    for method in METHODS:
        points = [(row["flatness/loss"], row["flatness/hessian_top"]) for result in results[method]
                  for row in result.history if "flatness/loss" in row]
        right.scatter(*zip(*points), label=method, s=18)
    right.set(xlabel="training loss (500 examples)", ylabel="top Hessian eigenvalue",
              title="curvature against loss, every measured round")
    right.grid(True, alpha=0.3)
    right.legend()
    fig.savefig(OUTPUT / "flatness_per_round.png", dpi=120)
    print(f"figures and flatness.csv written to {OUTPUT}/")


if __name__ == "__main__":
    main()
