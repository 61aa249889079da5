"""Extending the loop: a sampler, an aggregator that reads a payload, and a callback that adds a Lightning
callback to every client's Trainer.

- ``RoundRobinSampler`` trains the clients in turn; its cursor is state, saved in federated checkpoints.
- ``CountSteps`` is a Lightning callback that counts a client's optimizer steps. ``ReportSteps``, a federated
  callback, hands a fresh one to each client's Trainer (``task.callbacks``) and sends the count to the server
  in the result's ``payload``.
- ``StepWeightedMean`` averages the client models weighted by that payload (a client that took more steps
  counts more). It is a streaming accumulator: with parallel workers every process makes the same calls in
  slot order, so it needs no reduction of its own.

The loop also sends each client's optimizer step count itself (``result.num_steps``); the program checks that
the payload's count is that number for every client it trained.

Run:  python examples/tutorials/extending.py
      FEDMUT_EXAMPLE_SMALL=1 python examples/tutorials/extending.py   (as CI runs it)
Writes:  extending.txt (what it prints) to $FEDMUT_OUTPUT_DIR (default outputs/extending).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch import Callback
from torch.utils.data import DataLoader

from lightning_fedmut import Aggregator, FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut.data import partition_dirichlet
from lightning_fedmut.datasets import labels_of, load_digits_split
from lightning_fedmut.functional import accumulate_, finalize_mean_, is_floating
from lightning_fedmut.models import DigitsCNN
from lightning_fedmut.sampling import ClientSampler

SMALL = os.environ.get("FEDMUT_EXAMPLE_SMALL", "") not in ("", "0")
OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/extending"))
ROUNDS = 3 if SMALL else 10


# --8<-- [start:sampler]
class RoundRobinSampler(ClientSampler):
    """Round after round, the next ``k`` clients in order: every client trains equally often."""

    def __init__(self) -> None:
        self.cursor = 0

    def setup(self, seed, client_states=None):
        self.cursor = 0  # a new fit starts at the first client; a resumed one gets its cursor back

    def sample(self, round, clients, k):
        picked = [clients[(self.cursor + i) % len(clients)] for i in range(k)]
        self.cursor = (self.cursor + k) % len(clients)
        return picked

    def state_dict(self):
        return {"cursor": self.cursor}

    def load_state_dict(self, state_dict):
        self.cursor = state_dict["cursor"]
# --8<-- [end:sampler]


# --8<-- [start:callback]
class CountSteps(Callback):
    """A Lightning callback: counts the optimizer steps of one client's Trainer."""

    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps += 1


class ReportSteps(FederatedCallback):
    """Gives every client Trainer its own CountSteps and sends the count to the server as a payload."""

    def __init__(self) -> None:
        self.counters: dict[int, CountSteps] = {}

    def on_client_fit_start(self, loop, module, task):
        self.counters[task.slot] = CountSteps()
        task.callbacks.append(self.counters[task.slot])  # lives in this client's Trainer only

    def on_client_fit_end(self, loop, module, result):
        result.payload["steps"] = self.counters.pop(result.task.slot).steps
# --8<-- [end:callback]


# --8<-- [start:aggregator]
class StepWeightedMean(Aggregator):
    """Mean of the client models weighted by the steps each took (``result.payload["steps"]``).

    A streaming accumulator: one model of sums whatever the number of clients. (The same count is also in
    ``result.num_steps``, which the executor sets; a payload carries what the result does not already hold.)
    """

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.total = 0.0

    @torch.no_grad()
    def update(self, result) -> None:
        steps = float(result.payload["steps"])
        floats = {k: v for k, v in result.state.items() if is_floating(v)}  # integer state is not averaged
        if not self.sums:
            self.sums = {k: torch.zeros_like(v) for k, v in floats.items()}
        accumulate_(list(self.sums.values()), list(floats.values()), steps)
        self.total += steps

    def compute(self, global_state):
        finalize_mean_(list(self.sums.values()), self.total)
        return dict(self.sums)
# --8<-- [end:aggregator]


class RecordSteps(FederatedCallback):
    """Listed after ReportSteps: keeps each trained client's payload count beside the loop's ``num_steps``."""

    def __init__(self) -> None:
        self.steps: dict[int, list[tuple[int, int | None]]] = {}

    def on_client_fit_end(self, loop, module, result):
        self.steps.setdefault(result.task.round, []).append((result.payload["steps"], result.num_steps))


def main() -> None:
    torch.set_num_threads(1)
    train, test = load_digits_split()
    parts = partition_dirichlet(labels_of(train), num_clients=12, alpha=0.5, min_size=20, seed=0)
    clients = make_clients(train, parts, batch_size=50)
    torch.manual_seed(0)
    model = DigitsCNN(lr=0.05, momentum=0.5)
    record = RecordSteps()
    loop = FederatedLoop(rounds=ROUNDS, clients_per_round=4, local_epochs=2, sampler=RoundRobinSampler(),
                         aggregator=StepWeightedMean(), callbacks=[ReportSteps(), record],
                         enable_progress_bar=False, seed=0)
    result = loop.fit(model, clients, val_dataloaders=DataLoader(test, batch_size=500))

    lines = ["round  clients trained     steps (payload)       val_acc"]
    for row in result.history:
        ids = [c["client_id"] for c in result.client_history if c["round"] == row["round"]]
        steps = [counted for counted, _ in record.steps[row["round"]]]
        lines.append(f"{row['round']:>5}  {ids!s:<19} {steps!s:<20} {row['val_acc']:>8.3f}")

    # the count the payload carries is the one the loop puts in every result as num_steps
    pairs = [pair for round_pairs in record.steps.values() for pair in round_pairs]
    lines.append(f"payload steps == result.num_steps for all {len(pairs)} clients trained: "
                 f"{all(counted == num_steps for counted, num_steps in pairs)}")
    text = "\n".join(lines)
    print(text)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "extending.txt").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
