"""Tutorial 6: checkpoints, exact resume, and clients that fail.

Long federations get interrupted (a preempted job, a crashed node), and real clients drop out. This
program shows both sides:

1. Failing clients. Client 3's data raises every time (an unreadable shard), and clients 5 and 9
   drop out at random (a connection lost in some of their rounds). A failed client is recorded in
   ``result.failures`` and left out of the round's aggregate; the round goes on with the others. With
   ``min_clients_per_round=3``, a round in which fewer than 3 of the 4 sampled clients succeed is
   skipped (``on_round_failure="skip"``: the global model stays as it was) or, with ``"raise"``, stops
   the run with ``RoundFailedError``.
2. Checkpoints. With ``checkpoint_dir`` the loop writes ``round-NNNNN.ckpt`` every ``checkpoint_every``
   rounds (atomically, keeping the last ``keep_last``). The program crashes the run on purpose, then
   resumes it with ``ckpt_path="last"`` and checks that the resumed run ends bit for bit where an
   uninterrupted run ends: same history, same weights. FedMut's state (its delta buffer, its
   coefficient table and generator) is in the checkpoint, and so are the client sampler and the
   history.

Run:  python examples/tutorials/06_checkpoints_and_failures.py
      FEDMUT_EXAMPLE_SMALL=1 python examples/tutorials/06_checkpoints_and_failures.py   (as CI runs it)
Writes:  checkpoints/round-*.ckpt to $FEDMUT_OUTPUT_DIR (default outputs/06_checkpoints_and_failures).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from lightning_fedmut import FedAvg, FederatedCallback, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.checkpoint import list_checkpoints
from lightning_fedmut.data import Client, partition_dirichlet
from lightning_fedmut.datasets import labels_of, load_digits_split
from lightning_fedmut.models import DigitsCNN

SMALL = os.environ.get("FEDMUT_EXAMPLE_SMALL", "") not in ("", "0")
OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/06_checkpoints_and_failures"))
ROUNDS = 6 if SMALL else 20
CRASH_AFTER = 3  # rounds completed before the simulated crash


# --8<-- [start:failing]
class UnreadableShard(Dataset):
    """A client whose data cannot be read: every access raises."""

    def __len__(self) -> int:
        return 50

    def __getitem__(self, index):
        raise OSError("shard unreadable")


class DroppingLoader(DataLoader):
    """A client that drops out in some rounds: its data stops arriving before the first batch.

    The loop seeds Python's ``random`` (and torch, numpy) from (seed, round, client) before each client
    trains, so which rounds fail is the same in every run with the same seed, and after a resume.
    """

    def __iter__(self):
        if random.random() < 0.3:
            return self._lost()
        return super().__iter__()

    def _lost(self):
        raise ConnectionError("client dropped out")
        yield  # a generator: the error comes with the first batch


def make_federation(train):
    parts = partition_dirichlet(labels_of(train), num_clients=10, alpha=0.5, seed=0)
    clients = make_clients(train, parts, batch_size=50)
    for i, client in enumerate(clients):
        loader = client.data
        if i == 3:
            clients[i] = Client(id=client.id, data=DataLoader(UnreadableShard(), batch_size=50))
        elif i in (5, 9):
            clients[i] = Client(id=client.id, data=DroppingLoader(loader.dataset, batch_size=50, shuffle=True))
    return clients
# --8<-- [end:failing]


class CrashAfter(FederatedCallback):
    """Simulates a crash (a preempted job) once ``rounds`` rounds have completed."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds

    def on_round_start(self, loop, module):
        if loop.round == self.rounds:
            raise RuntimeError(f"simulated crash at the start of round {loop.round}")


# --8<-- [start:loop]
def make_loop(checkpoint_dir: Path | None, callbacks=()) -> FederatedLoop:
    return FederatedLoop(
        rounds=ROUNDS,
        clients_per_round=4,
        local_epochs=2,
        aggregator=FedAvg(weighted=False),
        callbacks=[MutationCallback(radius=4.0), *callbacks],
        min_clients_per_round=3,  # a round needs 3 successful clients of the 4 sampled ...
        on_round_failure="skip",  # ... or it is skipped, with a warning; "raise" stops the run
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=1,  # after every round (and always after the last one)
        keep_last=2,  # older checkpoints are deleted
        enable_progress_bar=False,
        seed=0,
    )
# --8<-- [end:loop]


def new_model() -> DigitsCNN:
    torch.manual_seed(0)
    return DigitsCNN(lr=0.05, momentum=0.5)


def main() -> None:
    torch.set_num_threads(1)
    train, test = load_digits_split()
    clients = make_federation(train)
    val = DataLoader(test, batch_size=500)

    # the reference: one uninterrupted run
    reference = make_loop(None).fit(new_model(), clients, val_dataloaders=val)
    print("failed clients, uninterrupted run:")
    for f in reference.failures:
        print(f"  round {f['round']}  client {f['client_id']}  {f['type']}: {f['message']}")
    print("round  trained  failed  skipped  val_acc")
    for row in reference.history:
        print(f"{row['round']:>5}  {row['clients/trained']:>7}  {row['clients/failed']:>6}"
              f"  {row['round_skipped']:>7}  {row['val_acc']:.4f}")

    # --8<-- [start:resume]
    checkpoints = OUTPUT / "checkpoints"
    shutil.rmtree(checkpoints, ignore_errors=True)
    try:
        make_loop(checkpoints, callbacks=[CrashAfter(CRASH_AFTER)]).fit(new_model(), clients, val_dataloaders=val)
    except RuntimeError as err:
        print(f"crashed: {err}")
    print("checkpoints on disk:", [p.name for p in list_checkpoints(checkpoints)])

    # a new process would rebuild the same loop, model and clients, then resume from the newest checkpoint
    model = new_model()
    resumed = make_loop(checkpoints).fit(model, clients, val_dataloaders=val, ckpt_path="last")
    # --8<-- [end:resume]

    same_history = [r["val_acc"] for r in resumed.history] == [r["val_acc"] for r in reference.history]
    same_weights = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                       reference.module.state_dict().values()))
    print(f"resumed from round {CRASH_AFTER}: same history as the uninterrupted run: {same_history};"
          f" same final weights, bit for bit: {same_weights}")
    print("checkpoints on disk:", [p.name for p in list_checkpoints(checkpoints)])
    if not (same_history and same_weights):
        raise SystemExit("the resumed run differs from the uninterrupted one")


if __name__ == "__main__":
    main()
