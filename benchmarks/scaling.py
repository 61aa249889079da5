"""Clients per second with 1, 2 (and more) workers, against the plain-PyTorch sequential loop, in one process run.

Workload A of ``benchmarks/overhead.py`` (mnist1d, 1-D CNN, 20 IID clients, 10 per round, 5 local epochs,
batch 50), over enough rounds that start-up is amortised. Each repetition runs, alternating:

- ``FederatedLoop`` in one process (the default sequential executor);
- ``FederatedLoop(workers=N)`` for each N asked for (the workers are forked at ``fit``, gloo on 127.0.0.1);
- the plain-PyTorch sequential loop of ``overhead.py`` doing the same work.

It checks that every variant ends at the same validation accuracy (the same arithmetic), reports best-of
and median wall times, clients per second, the speed-up over one worker, the ratio to plain PyTorch, and the
start-up cost of the workers (a 1-round, 1-step run with N workers minus the same run in one process).

    OMP_NUM_THREADS=1 python benchmarks/scaling.py                 # about 2 minutes on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/scaling.py --quick         # smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead

from lightning_fedmut import FedAvg, FederatedLoop


def run_workers(wl: overhead.Workload, workers: int | None) -> dict[str, float]:
    model = overhead.fresh_model(wl)
    loop = FederatedLoop(rounds=wl.rounds, clients_per_round=wl.clients_per_round, local_epochs=wl.local_epochs,
                         aggregator=FedAvg(weighted=wl.weighted), seed=overhead.SEED, enable_progress_bar=False,
                         workers=workers)
    result = loop.fit(model, wl.clients, val_dataloaders=wl.val_loader)
    return {k: float(v) for k, v in result.history[-1].items() if k.startswith("val_")}


def startup(wl: overhead.Workload, workers: int, repeats: int) -> float:
    """Seconds a run with ``workers`` workers takes beyond the same tiny run in one process (best of)."""
    tiny = copy.copy(wl)
    tiny.rounds, tiny.clients_per_round = 1, workers
    extra = []
    for _ in range(repeats):
        t = time.perf_counter()
        run_workers(tiny, None)
        alone = time.perf_counter() - t
        t = time.perf_counter()
        run_workers(tiny, workers)
        extra.append(time.perf_counter() - t - alone)
    return min(extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="2", help="comma-separated worker counts besides 1 (default: 2)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run (default: 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (default: 5)")
    parser.add_argument("--quick", action="store_true", help="1 round, 1 repetition: a smoke run")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    overhead.silence_lightning_console()
    rounds, repeats = (1, 1) if args.quick else (args.rounds, args.repeats)
    counts = [int(w) for w in args.workers.split(",")]
    wl = overhead.workload_a(rounds)
    methods = {"1 worker": lambda w: run_workers(w, None),
               **{f"{n} workers": (lambda w, n=n: run_workers(w, n)) for n in counts},
               "plain PyTorch": overhead.run_plain_torch}
    warm = copy.copy(wl)
    warm.rounds = 1
    for fn in methods.values():
        fn(warm)
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    accuracy: dict[str, float] = {}
    for rep in range(repeats):
        for name, fn in methods.items():
            t = time.perf_counter()
            accuracy[name] = fn(wl)["val_acc"]
            seconds[name].append(time.perf_counter() - t)
        print(f"  repeat {rep + 1}/{repeats}: " + "  ".join(f"{n}={s[-1]:.2f}s" for n, s in seconds.items()),
              flush=True)
    clients = rounds * wl.clients_per_round
    best = {name: min(s) for name, s in seconds.items()}
    print(f"\nWorkload A: {wl.description}; {rounds} rounds ({clients} client trainings) per run, {repeats} repeats,"
          f" {os.cpu_count()} CPUs, 1 thread per worker")
    print(f"  {'variant':<16}{'best s':>9}{'median s':>10}{'clients/s':>11}{'vs 1 worker':>13}{'vs PyTorch':>12}")
    for name in methods:
        print(f"  {name:<16}{best[name]:>9.3f}{statistics.median(seconds[name]):>10.3f}{clients / best[name]:>11.1f}"
              f"{best['1 worker'] / best[name]:>12.2f}x{best[name] / best['plain PyTorch']:>12.3f}")
    same = len({round(a, 6) for a in accuracy.values()}) == 1
    print(f"  same final val_acc in every variant (same work): {same} ({accuracy['1 worker']:.4f})")
    starts = {n: startup(wl, n, 1 if args.quick else 3) for n in counts}
    for n, s in starts.items():
        print(f"  start-up of {n} local workers (a 1-round run with them minus the same run in one process): {s:.3f} s")
    if args.json:
        args.json.write_text(json.dumps({"seconds": seconds, "accuracy": accuracy, "startup": starts}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
