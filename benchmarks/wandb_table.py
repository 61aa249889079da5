"""Cost of logging the per-client W&B table, per call, early and late in a long run (offline W&B).

A simulated run logs ``--clients`` rows per round (the loop's client rows: round, client id, slot, number
of examples, two training metrics) for ``--rounds`` rounds, calling
``lightning_fedmut.loop.connectors.tracking.log_client_table`` every round (``client_table_every=1``, the worst case) with
only that round's rows, as the loop does. Each call is timed. In the same process, the baseline is what
the table cost before: a new ``wandb.Table`` of *every* row so far, logged whole, timed at the same rounds.

Printed: the median milliseconds per call in a window around round 10 and around the last round, for
both, and the ratios (incremental late / incremental early: 1.0 is a flat cost; full re-log / incremental
at the last round). Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/wandb_table.py              # 1000 rounds, about a minute
    OMP_NUM_THREADS=1 python benchmarks/wandb_table.py --every 10   # the loop's default client_table_every
    OMP_NUM_THREADS=1 python benchmarks/wandb_table.py --quick      # 100 rounds, smoke run
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")

import argparse
import statistics
import tempfile
import time

import torch

torch.set_num_threads(1)


def rows_of(round_index: int, clients: int) -> list[dict]:
    return [{"round": round_index, "client_id": (round_index * 7 + slot) % 100, "slot": slot, "num_examples": 50,
             "train_loss": 1.0 / (1 + round_index + slot), "train_acc": (slot + 1) / (clients + 1)}
            for slot in range(clients)]


def logger(save_dir: str, name: str):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    lg = WandbLogger(project="fedmut-bench", name=name, save_dir=save_dir, offline=True,
                     settings=wandb.Settings(silent=True))
    lg._wandb_init.pop("anonymous", None)
    return lg


def incremental(save_dir: str, rounds: int, clients: int, every: int) -> dict[int, float]:
    """Seconds of each ``log_client_table`` call by round: a call every ``every`` rounds, with the new rows."""
    from lightning_fedmut.loop.connectors import tracking

    lg = logger(save_dir, "incremental")
    tracking.start_run(lg, {})
    times, pending = {}, []
    for r in range(rounds):
        pending += rows_of(r, clients)
        if (r + 1) % every == 0:
            start = time.perf_counter()
            tracking.log_client_table(lg, pending, r)
            times[r] = time.perf_counter() - start
            pending = []
    tracking.finish_run(lg, "success")
    return times


def full_relog(save_dir: str, at_rounds: list[int], clients: int, repeats: int) -> dict[int, list[float]]:
    """Seconds of logging a whole new table of every row up to round ``r`` (the earlier behaviour)."""
    import wandb

    from lightning_fedmut.loop.connectors import tracking

    lg = logger(save_dir, "full")
    tracking.start_run(lg, {})
    run = lg.experiment
    out: dict[int, list[float]] = {}
    for r in at_rounds:
        rows = [row for t in range(r + 1) for row in rows_of(t, clients)]
        columns = list(rows[0])
        out[r] = []
        for _ in range(repeats):
            start = time.perf_counter()
            table = wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
            run.log({"clients/table": table, "round": r})
            out[r].append(time.perf_counter() - start)
    tracking.finish_run(lg, "success")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=10, help="rows per round (clients per round)")
    parser.add_argument("--window", type=int, default=10, help="calls around each round in a median")
    parser.add_argument("--every", type=int, default=1, help="log the table every this many rounds (the"
                        " loop's client_table_every; 1 is the worst case)")
    parser.add_argument("--quick", action="store_true", help="100 rounds")
    args = parser.parse_args()
    rounds = 100 if args.quick else args.rounds
    early, late = 10, rounds - 1
    with tempfile.TemporaryDirectory(prefix="fedmut-bench-wandb-") as save_dir:
        times = incremental(save_dir, rounds, args.clients, args.every)
        called = sorted(times)
        early = min(called, key=lambda r: abs(r - early))
        late = called[-1]
        baseline = full_relog(save_dir, [early, late], args.clients, repeats=args.window)

    def window(at: int) -> list[float]:
        i = called.index(at)
        lo = max(0, min(i - args.window // 2, len(called) - args.window))
        return [times[r] for r in called[lo : lo + args.window]]

    inc_early, inc_late = statistics.median(window(early)), statistics.median(window(late))
    full_early, full_late = statistics.median(baseline[early]), statistics.median(baseline[late])
    print(f"W&B client table, offline, {args.clients} rows per round, {rounds} rounds, a call every"
          f" {args.every} round(s) with the rows since the last")
    print(f"{'':28}{'round ' + str(early):>12}{'round ' + str(late):>12}")
    print(f"{'incremental (ms per call)':28}{inc_early * 1e3:>12.2f}{inc_late * 1e3:>12.2f}")
    print(f"{'full re-log (ms per call)':28}{full_early * 1e3:>12.2f}{full_late * 1e3:>12.2f}")
    print(f"incremental, round {late} / round {early}: {inc_late / inc_early:.2f} (1.00 is a flat cost per call)")
    print(f"full re-log / incremental at round {late}: {full_late / inc_late:.1f}")
    print(f"all {len(times)} incremental calls: {sum(times.values()):.2f} s")


if __name__ == "__main__":
    main()
