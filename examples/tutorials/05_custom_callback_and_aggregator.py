"""Tutorial 5: write your own FederatedCallback and Aggregator.

Everything the loop does beyond "sample, train, average, evaluate" is a plugin: FedMut itself is a
FederatedCallback. This program writes three plugins and runs them:

- ``ClientDrift``, a callback that measures how far each client moves from its start model, and adds the
  round's mean to the history and the logger (``drift/mean``);
- ``EarlyStopping``, a callback that stops the federation when the accuracy has not improved for a few
  rounds; it keeps state, and saves it in federated checkpoints through ``state_dict``;
- ``CoordinateMedian``, an aggregator that takes the element-wise median of the client models instead of
  their mean: robust to a few corrupted clients, at the price of holding every client's weights.

To show why a robust aggregator matters, a fourth callback, ``CorruptClient``, plays a faulty client: it
replaces client 0's trained weights with large noise before they reach the aggregator. FedAvg's mean is
pulled away by it; the median is not.

Run:  python examples/tutorials/05_custom_callback_and_aggregator.py
      FEDMUT_EXAMPLE_SMALL=1 python examples/tutorials/05_custom_callback_and_aggregator.py   (as CI runs it)
Writes:  robust_aggregation.png to $FEDMUT_OUTPUT_DIR (default outputs/05_custom_callback_and_aggregator).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_fedmut import Aggregator, FedAvg, FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut.data import partition_dirichlet
from lightning_fedmut.datasets import labels_of, load_digits_split
from lightning_fedmut.models import DigitsCNN

SMALL = os.environ.get("FEDMUT_EXAMPLE_SMALL", "") not in ("", "0")
OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/05_custom_callback_and_aggregator"))
ROUNDS = 5 if SMALL else 30


# --8<-- [start:drift]
class ClientDrift(FederatedCallback):
    """Logs ``drift/mean``: the mean L2 distance between a client's start model and its trained model."""

    def on_round_start(self, loop, module):
        self.distances: list[float] = []

    def on_fit_start(self, loop, module):
        self.names = [name for name, _ in module.named_parameters()]

    def on_client_fit_start(self, loop, module, task):
        # copy the start model (after any mutation: put this callback after MutationCallback)
        self.start = [task.start_state[name].detach().clone() for name in self.names]

    def on_client_fit_end(self, loop, module, result):
        trained = [result.state[name] for name in self.names]
        squared = sum(float((w - s).pow(2).sum()) for w, s in zip(trained, self.start))
        self.distances.append(squared**0.5)

    def on_before_aggregate(self, loop, module, aggregator):
        # loop.round_metrics goes into result.history and to the logger, with step = round
        loop.round_metrics["drift/mean"] = sum(self.distances) / len(self.distances)
# --8<-- [end:drift]


# --8<-- [start:early_stopping]
class EarlyStopping(FederatedCallback):
    """Stops when ``monitor`` has not improved for ``patience`` evaluated rounds, like Lightning's EarlyStopping."""

    def __init__(self, monitor: str = "val_acc", patience: int = 3) -> None:
        self.monitor = monitor
        self.patience = patience
        self.best = float("-inf")
        self.wait = 0

    def on_validation_end(self, loop, module):
        if self.monitor not in loop.round_metrics:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, but the round logged"
                           f" {sorted(loop.round_metrics)}.")
        value = loop.round_metrics[self.monitor]
        if value > self.best:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        if self.wait >= self.patience:
            loop.should_stop = True  # the loop finishes this round, checkpoints, and stops

    # the counters are run state: saved in federated checkpoints, restored on resume
    def state_dict(self):
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state_dict):
        self.best, self.wait = state_dict["best"], state_dict["wait"]
# --8<-- [end:early_stopping]


# --8<-- [start:median]
class CoordinateMedian(Aggregator):
    """Element-wise median of the client models (Yin et al., 2018).

    Unlike FedAvg it cannot stream: it keeps every client's floating state until ``compute``, so the
    server holds ``clients_per_round`` models. Integer state (BatchNorm's counters) takes the maximum.
    """

    def reset(self) -> None:
        self.states: list[dict[str, Tensor]] = []

    @torch.no_grad()
    def update(self, result) -> None:
        # result.state may be the one working module's tensors, reused for the next client: copy them
        self.states.append({k: v.detach().clone() for k, v in result.state.items()})

    @torch.no_grad()
    def compute(self, global_state) -> dict[str, Tensor]:
        out = {}
        for key, first in self.states[0].items():
            stacked = torch.stack([state[key] for state in self.states])
            out[key] = stacked.median(dim=0).values if first.is_floating_point() else stacked.max(dim=0).values
        return out
# --8<-- [end:median]


class CorruptClient(FederatedCallback):
    """Simulates a faulty client: client ``client_id`` sends large random weights instead of its trained ones."""

    def __init__(self, client_id: int = 0, scale: float = 5.0) -> None:
        self.client_id = client_id
        self.scale = scale
        self.generator = torch.Generator().manual_seed(0)  # its own generator: never the global one

    @torch.no_grad()
    def on_client_fit_end(self, loop, module, result):
        if result.client.id == self.client_id:
            for name, _ in module.named_parameters():
                weights = result.state[name]
                weights.add_(self.scale * torch.randn(weights.shape, generator=self.generator))


def federate(aggregator: Aggregator, corrupt: bool):
    train, test = load_digits_split()
    parts = partition_dirichlet(labels_of(train), num_clients=10, alpha=1.0, seed=0)
    torch.manual_seed(0)
    model = DigitsCNN(lr=0.05, momentum=0.5)
    callbacks = [ClientDrift(), EarlyStopping(monitor="val_acc", patience=5)]
    if corrupt:
        callbacks.append(CorruptClient(client_id=0))  # listed last: the drift is measured before the corruption
    # divergence=False: the corrupted mean's exploding loss is what this program shows, so the run must go on
    loop = FederatedLoop(rounds=ROUNDS, clients_per_round=5, local_epochs=2, aggregator=aggregator,
                         callbacks=callbacks, enable_progress_bar=False, seed=0, divergence=False)
    return loop.fit(model, make_clients(train, parts, batch_size=50), val_dataloaders=DataLoader(test, batch_size=500))


def main() -> None:
    torch.set_num_threads(1)
    runs = {
        "FedAvg": federate(FedAvg(weighted=False), corrupt=False),
        "FedAvg, one corrupt client": federate(FedAvg(weighted=False), corrupt=True),
        "median, one corrupt client": federate(CoordinateMedian(), corrupt=True),
    }
    print(f"{'':<28}" + "".join(f"{'round ' + str(r):>10}" for r in range(len(runs['FedAvg'].history))))
    for name, result in runs.items():
        print(f"{name:<28}" + "".join(f"{row['val_acc']:>10.3f}" for row in result.history))
    print("client drift (mean distance travelled in local training), FedAvg run:",
          [round(v, 2) for v in runs["FedAvg"].metric("drift/mean")])

    from lightning_fedmut.plotting import plot_metric

    plot_metric(runs, metric="val_acc", path=OUTPUT / "robust_aggregation.png",
                title="10 clients, 5 per round; client 0 sends noise when sampled")
    print(f"figure written to {OUTPUT / 'robust_aggregation.png'}")


if __name__ == "__main__":
    main()
