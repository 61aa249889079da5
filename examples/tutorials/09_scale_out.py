"""Tutorial 9: scale out. Train each round's clients in parallel worker processes, and get the same model.

The same FedMut federation runs twice: in one process, and with ``workers=2``. With workers, the loop forks
the second process at ``fit``; each worker trains its share of the round's slots (dealt by their local steps,
the costliest first to the least loaded worker), builds FedMut's start models itself from what every worker
holds, and the workers exchange
their results and reduce them in slot order. The program checks that both runs end with the same weights and
history, bit for bit, and prints the wall time of each.

Run:  python examples/tutorials/09_scale_out.py
      FEDMUT_EXAMPLE_SMALL=1 python examples/tutorials/09_scale_out.py   (as CI runs it)
      torchrun --nproc_per_node 2 examples/tutorials/09_scale_out.py --torchrun   (the loop joins torchrun's two)
Writes:  scale_out.txt (what it prints) to $FEDMUT_OUTPUT_DIR (default outputs/09_scale_out).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.data import partition_dirichlet
from lightning_fedmut.datasets import labels_of, load_digits_split
from lightning_fedmut.models import DigitsCNN

SMALL = os.environ.get("FEDMUT_EXAMPLE_SMALL", "") not in ("", "0")
OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/09_scale_out"))
ROUNDS = 3 if SMALL else 20


# --8<-- [start:run]
def federate(workers: int | None):
    train, test = load_digits_split()
    parts = partition_dirichlet(labels_of(train), num_clients=20, alpha=0.5, min_size=20, seed=0)
    torch.manual_seed(0)
    model = DigitsCNN()  # SGD lr 0.01, momentum 0.5
    loop = FederatedLoop(
        rounds=ROUNDS, clients_per_round=10, local_epochs=2 if SMALL else 5,
        aggregator=FedAvg(weighted=False), callbacks=[MutationCallback(radius=4.0, acceleration=0.3)],
        workers=workers,  # None: one process (or, under torchrun, torchrun's processes)
        enable_progress_bar=False, seed=0,
    )
    start = time.perf_counter()
    result = loop.fit(model, make_clients(train, parts, batch_size=50), val_dataloaders=DataLoader(test, batch_size=500))
    return model, result, time.perf_counter() - start, loop
# --8<-- [end:run]


def main() -> None:
    torch.set_num_threads(1)
    if "--torchrun" in sys.argv:  # every torchrun process runs this; rank 0 reports
        _, result, seconds, loop = federate(None)
        if loop.is_global_zero:
            print(f"{loop.executor.world_size} workers under torchrun: val_acc {result.history[-1]['val_acc']:.4f}"
                  f" in {seconds:.1f} s")
        return
    one_model, one, one_s, _ = federate(None)
    two_model, two, two_s, _ = federate(2)
    same_weights = all(torch.equal(a, b) for a, b in zip(one_model.state_dict().values(),
                                                         two_model.state_dict().values()))
    lines = [
        f"FedMut on digits: 20 clients (Dirichlet 0.5), 10 per round, {ROUNDS} rounds",
        f"one process: val_acc {one.history[-1]['val_acc']:.4f} in {one_s:.1f} s",
        f"2 workers:   val_acc {two.history[-1]['val_acc']:.4f} in {two_s:.1f} s",
        f"same weights bit for bit: {same_weights}; same history: {one.history == two.history};"
        f" same client history: {one.client_history == two.client_history}",
    ]
    text = "\n".join(lines)
    print(text)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "scale_out.txt").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
