"""FedMut in one picture: a federation of a two-parameter model, drawn in its parameter plane.

The model is a linear regression ``y = a*x1 + b*x2`` whose two parameters are two ``state_dict`` keys, so
the whole federation fits in a plane. Eight clients hold non-IID data (each its own true ``(a, b)``); four
train per round. The program records, with a small FederatedCallback, the global model after every round
and every client's start and trained model, for FedAvg and for FedMut with the same seed.

In the picture, FedMut's clients do not start from the global model: after round ``t`` aggregates
``w(t)``, client ``i`` starts from ``w(t) + radius * c_i * g`` with ``g = w(t) - w(t-1)`` and, for each key
separately, half the clients a coefficient ``+1`` and half ``-1 + beta``: the start models straddle the
global model along the last global step, and they are balanced, so their mean stays close to ``w(t)``.

Run:  python examples/tutorials/fedmut_in_one_picture.py   (seconds; the same at FEDMUT_EXAMPLE_SMALL=1)
Writes:  fedmut_in_one_picture.png to $FEDMUT_OUTPUT_DIR (default outputs/fedmut_in_one_picture).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningModule
from torch import nn
from torch.utils.data import TensorDataset

from lightning_fedmut import FedAvg, FederatedCallback, FederatedLoop, MutationCallback, make_clients

OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/fedmut_in_one_picture"))
ROUNDS = 6  # small already (seconds): FEDMUT_EXAMPLE_SMALL changes nothing here
SHOWN_ROUND = 2  # the round whose start models the left panel zooms into
RADIUS = 4.0


class LinearRegression(LightningModule):
    """``y = a*x1 + b*x2``, with ``a`` and ``b`` as two separate parameters (two state keys)."""

    def __init__(self, a: float, b: float, lr: float = 0.1) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))
        self.lr = lr

    def forward(self, x):
        return self.a * x[:, 0] + self.b * x[:, 1]

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.mean((self(x) - y) ** 2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Trace(FederatedCallback):
    """Records the plane coordinates ``(a, b)`` of every global, start and trained model."""

    def __init__(self) -> None:
        self.globals: list[tuple[float, float]] = []
        self.starts: dict[int, list[tuple[float, float]]] = {}
        self.trained: dict[int, list[tuple[float, float]]] = {}

    @staticmethod
    def point(module) -> tuple[float, float]:
        return module.a.item(), module.b.item()

    @staticmethod
    def point_of(state) -> tuple[float, float]:
        return state["a"].item(), state["b"].item()

    def on_fit_start(self, loop, module):
        self.globals.append(self.point(module))

    def on_client_fit_start(self, loop, module, task):
        # listed after MutationCallback, so the start model is already mutated when this runs
        self.starts.setdefault(loop.round, []).append(self.point_of(task.start_state))

    def on_client_fit_end(self, loop, module, result):
        self.trained.setdefault(loop.round, []).append(self.point_of(result.state))

    def on_after_aggregate(self, loop, module):
        self.globals.append(self.point(module))


def make_data(seed: int = 0):
    """Eight clients, each with its own true (a, b) on a ring around (1, 1): non-IID targets."""
    g = torch.Generator().manual_seed(seed)
    xs, ys, parts = [], [], []
    for i in range(8):
        angle = 2 * np.pi * i / 8
        a_true, b_true = 1 + 0.8 * np.cos(angle), 1 + 0.8 * np.sin(angle)
        x = torch.randn(40, 2, generator=g) * torch.tensor([1.0, 0.5])  # x2 varies less: an elongated bowl
        y = a_true * x[:, 0] + b_true * x[:, 1] + 0.1 * torch.randn(40, generator=g)
        parts.append(range(40 * i, 40 * (i + 1)))
        xs.append(x)
        ys.append(y)
    return TensorDataset(torch.cat(xs), torch.cat(ys)), parts


def federate(callbacks, seed: int = 0) -> Trace:
    dataset, parts = make_data()
    trace = Trace()
    loop = FederatedLoop(
        rounds=ROUNDS,
        clients_per_round=4,
        local_epochs=1,
        aggregator=FedAvg(weighted=False),
        callbacks=[*callbacks, trace],
        enable_progress_bar=False,
        seed=seed,
    )
    loop.fit(LinearRegression(a=-1.5, b=-1.0), make_clients(dataset, parts, batch_size=10))
    return trace


def main() -> None:
    torch.set_num_threads(1)
    fedavg = federate([])
    fedmut = federate([MutationCallback(radius=RADIUS, acceleration=0.3, acceleration_rounds=50)])

    # globals[0] is the initial model and globals[r + 1] the global model after round r, so round t's
    # clients start around globals[t], mutated along its last step globals[t] - globals[t - 1]
    t = SHOWN_ROUND
    starts = np.array(fedmut.starts[t])
    w, g = np.array(fedmut.globals[t]), np.subtract(fedmut.globals[t], fedmut.globals[t - 1])
    print(f"FedMut, round {t}: global model w = {np.round(w, 3).tolist()},"
          f" last global step g = {np.round(g, 3).tolist()}")
    for slot, start in enumerate(starts):
        c = (start - w) / (RADIUS * g)  # recover each key's coefficient from the start model
        print(f"  slot {slot} starts from {np.round(start, 3).tolist()}:"
              f" coefficients (a, b) = {np.round(c, 2).tolist()}")
    print(f"  mean of the start models {np.round(starts.mean(axis=0), 3).tolist()}"
          " (w + radius * beta/2 * g: the acceleration tilts it along the last step)")
    print(f"global models after {ROUNDS} rounds: FedAvg {np.round(fedavg.globals[-1], 3).tolist()},"
          f" FedMut {np.round(fedmut.globals[-1], 3).tolist()}")

    from matplotlib.figure import Figure

    dataset, _ = make_data()
    x, y = dataset.tensors

    def landscape(ax, points):
        """Contours of the global loss (the mean over every client's data) around ``points``."""
        low, high = points.min(axis=0), points.max(axis=0)
        pad = 0.15 * (high - low).max()
        grid_a, grid_b = np.meshgrid(np.linspace(low[0] - pad, high[0] + pad, 200),
                                     np.linspace(low[1] - pad, high[1] + pad, 200))
        pred = grid_a[..., None] * x[:, 0].numpy() + grid_b[..., None] * x[:, 1].numpy()
        loss = ((pred - y.numpy()) ** 2).mean(-1)
        ax.contour(grid_a, grid_b, loss, levels=np.geomspace(loss.min() + 0.02, loss.max(), 16),
                   colors="0.82", linewidths=0.8)
        ax.set_xlabel("parameter a")
        ax.set_ylabel("parameter b")

    fig = Figure(figsize=(12, 5.5), layout="constrained")
    left, right = fig.subplots(1, 2)

    # left: one round of FedMut. Start models of round t come from the global after round t-1 and its last step.
    w_prev, w_now, w_next = (np.array(fedmut.globals[i]) for i in (t - 1, t, t + 1))
    trained = np.array(fedmut.trained[t])
    landscape(left, np.vstack([starts, trained, w_prev, w_now, w_next]))
    left.annotate("", xy=w_now, xytext=w_prev, arrowprops={"arrowstyle": "->", "color": "black", "lw": 1.8})
    left.plot(*w_prev, "o", color="0.4", ms=6, label="previous global model")
    left.text(*((w_prev + w_now) / 2), "  last global step g", va="top", fontsize=9)
    for start, end in zip(starts, trained):
        left.plot([w_now[0], start[0]], [w_now[1], start[1]], ":", color="tab:red", lw=1)
        left.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "color": "tab:blue", "lw": 1.2})
    left.plot(starts[:, 0], starts[:, 1], "s", color="tab:red", ms=8, label="client start models  w + radius·c·g")
    left.plot(trained[:, 0], trained[:, 1], "^", color="tab:blue", ms=7, label="trained client models")
    left.plot(*w_now, "o", color="black", ms=9, label="global model w")
    left.plot(*w_next, "*", color="tab:green", ms=16, label="new global model (mean of the trained)")
    left.set_title(f"one round of FedMut (round {t}, radius {RADIUS:g}, 4 clients per round)")

    # right: the global models over all rounds, FedAvg and FedMut from the same initial model and seed
    paths = {label: np.array(trace.globals) for trace, label in ((fedavg, "FedAvg"), (fedmut, "FedMut"))}
    landscape(right, np.vstack(list(paths.values())))
    for (label, path), color in zip(paths.items(), ("tab:gray", "tab:purple")):
        right.plot(path[:, 0], path[:, 1], "o-", color=color, ms=4, label=f"{label}: global model, round by round")
    right.plot(*paths["FedMut"][0], "ko", ms=7, label="initial model")
    right.set_title(f"global models over {ROUNDS} rounds")
    for ax in (left, right):
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8, frameon=False)

    OUTPUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUTPUT / "fedmut_in_one_picture.png", dpi=120)
    print(f"figure written to {OUTPUT / 'fedmut_in_one_picture.png'}")


if __name__ == "__main__":
    main()
