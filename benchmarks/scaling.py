"""Clients per second with 1, 2 (and more) workers, against the plain-PyTorch sequential loop, in one process run.

Workload A of ``benchmarks/overhead.py`` (mnist1d, 1-D CNN, 20 IID clients, 10 per round, 5 local epochs,
batch 50), 4 rounds per run (``--rounds``: the workers' start-up and first-round page copies weigh less over
more). Each repetition runs, alternating:

- ``FederatedLoop`` in one process (the default sequential executor);
- ``FederatedLoop(workers=N)`` for each N asked for (the workers are forked at ``fit``, gloo on 127.0.0.1);
- the plain-PyTorch sequential loop of ``overhead.py`` doing the same work.

It checks that every variant ends at the same validation accuracy (the same arithmetic), reports best-of
and median wall times, clients per second, the speed-up over one worker (median of the per-repetition ratios,
each from runs side by side, so a load that comes and goes hits both), the ratio to plain PyTorch, and the
start-up cost of the workers (a 1-round, 1-step run with N workers minus the same run in one process).

It itemises where each rank's time goes (the executor's :class:`~lightning_fedmut.distributed.timers.PhaseTimes`,
medians over the repetitions): start-up (fork, process group), training its clients, the exchange of results
(waiting for the others included), evaluating its share of the validation data, the evaluation's exchange,
declared state and barriers, logging and checkpointing (timed around the loop's round log and checkpoint
writer), and the rest (aggregation, history). The one-process run is itemised the same way.

``--side-by-side`` measures what this machine allows any two processes: the one-process run in ``N`` fresh
processes at once (started together, not forked from this one) against the same run in one fresh process alone.
Each side-by-side run is slower than the lone one by the share of caches and memory bandwidth the processes
compete for, so ``N`` divided by that slowdown bounds the speed-up of ``N`` workers here.

``--e2e R`` also times the command line end to end (``lightning-fedmut fit --data mnist1d``, 20 clients, 10 per
round, E=5, R rounds, W&B offline), one process against N workers, alternating, ``--e2e-repeats`` pairs.

    OMP_NUM_THREADS=1 python benchmarks/scaling.py                 # about 2 minutes on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/scaling.py --quick         # smoke run
    OMP_NUM_THREADS=1 python benchmarks/scaling.py --e2e 60        # and the 60-round command line, 3 pairs
    OMP_NUM_THREADS=1 python benchmarks/scaling.py --side-by-side  # and the machine's own bound
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead

from lightning_fedmut import FedAvg, FederatedLoop
from lightning_fedmut.distributed import DistributedExecutor
from lightning_fedmut.distributed.timers import PHASES, PhaseTimes

#: Per-rank phase times of the runs (a list of per-rank dicts per run), by variant.
RANK_TIMES: dict[str, list[list[dict[str, float]]]] = {}
#: Table order of the itemised phases.
TABLE = (*PHASES, "log_checkpoint", "loop", "total")


def run_workers(wl: overhead.Workload, workers: int | None, record: str | None = None) -> dict[str, float]:
    model = overhead.fresh_model(wl)
    loop = FederatedLoop(rounds=wl.rounds, clients_per_round=wl.clients_per_round, local_epochs=wl.local_epochs,
                         aggregator=FedAvg(weighted=wl.weighted), seed=overhead.SEED, enable_progress_bar=False,
                         workers=workers)
    executor = loop.executor
    times = executor.times if isinstance(executor, DistributedExecutor) else _itemise_one_process(loop)
    # rank 0's logging and checkpointing, timed where the loop calls them (the instance's attributes)
    for owner, name in ((loop._round_log, "log"), (loop.checkpoint_connector, "save")):
        setattr(owner, name, _timed(lambda: getattr(executor, "times", times), "log_checkpoint", getattr(owner, name)))
    start = time.perf_counter()
    result = loop.fit(model, wl.clients, val_dataloaders=wl.val_loader)
    if record is not None:
        ranks = executor.rank_times if isinstance(executor, DistributedExecutor) else [
            times.summary(time.perf_counter() - start)]
        RANK_TIMES.setdefault(record, []).append(ranks)
    return {k: float(v) for k, v in result.history[-1].items() if k.startswith("val_")}


def _timed(times: Callable[[], PhaseTimes], phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with times()(phase):
            return fn(*args, **kwargs)
    return wrapper


def _itemise_one_process(loop: FederatedLoop) -> PhaseTimes:
    """The one-process run's phases: training (inside the executor's results) and evaluation."""
    times, executor = PhaseTimes(), loop.executor
    run, evaluate = executor.run, executor.evaluate

    def timed_run(*args: Any, **kwargs: Any) -> Iterator[Any]:
        results = run(*args, **kwargs)
        while True:
            with times("train"):
                result = next(results, None)
            if result is None:
                return
            yield result

    executor.run = timed_run  # type: ignore[method-assign]
    executor.evaluate = _timed(lambda: times, "evaluate", evaluate)  # type: ignore[method-assign]
    return times


def print_rank_table(name: str) -> None:
    """Median seconds per phase and rank over the repetitions of variant ``name``."""
    runs = RANK_TIMES.get(name, [])
    if not runs:
        return
    ranks = len(runs[0])
    print(f"\n  where the time goes, {name} (median seconds per run over {len(runs)} runs; 'loop' = aggregation,"
          " history and the rest; 'log_checkpoint' = the round log and checkpoint writer)")
    print(f"  {'phase':<20}" + "".join(f"{'rank ' + str(r):>10}" for r in range(ranks)))
    for phase in TABLE:
        values = [statistics.median(run[r].get(phase, 0.0) for run in runs) for r in range(ranks)]
        if any(values):
            print(f"  {phase:<20}" + "".join(f"{v:>10.3f}" for v in values))


def run_cli(rounds: int, workers: int, folder: str) -> float:
    """Wall seconds of ``lightning-fedmut fit`` on mnist1d (workload A's setup) in a fresh process."""
    command = [sys.executable, "-m", "lightning_fedmut.cli", "fit", "--data", "mnist1d",
               "--partition.num_clients", "20", "--loop.clients_per_round", "10", "--loop.local_epochs", "5",
               "--loop.rounds", str(rounds), "--loop.workers", str(workers), "--loop.enable_progress_bar", "false",
               "--save_dir", folder]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def end_to_end(rounds: int, workers: int, repeats: int) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {"1 worker": [], f"{workers} workers": []}
    with tempfile.TemporaryDirectory() as folder:
        for rep in range(repeats):
            for name, n in (("1 worker", 1), (f"{workers} workers", workers)):
                seconds[name].append(run_cli(rounds, n, os.path.join(folder, f"{n}-{rep}")))
            print(f"  end to end, pair {rep + 1}/{repeats}: " + "  ".join(f"{n}={s[-1]:.1f}s" for n, s in seconds.items()),
                  flush=True)
    ratios = [a / b for a, b in zip(seconds["1 worker"], seconds[f"{workers} workers"])]
    print(f"\n`lightning-fedmut fit --data mnist1d`, 20 clients, 10 per round, E=5, {rounds} rounds, W&B offline:"
          f" median {statistics.median(seconds['1 worker']):.1f} s in one process,"
          f" {statistics.median(seconds[f'{workers} workers']):.1f} s with {workers} workers; speed-up per pair"
          f" {', '.join(f'{r:.2f}x' for r in ratios)} (median {statistics.median(ratios):.2f}x)")
    return seconds


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


def solo(rounds: int, repeats: int) -> int:
    """A process of :func:`side_by_side`: warm up, say ``ready``, wait for a line on stdin, time the
    one-process run ``repeats`` times and print the seconds as JSON."""
    torch.set_num_threads(1)
    overhead.silence_lightning_console()
    wl = overhead.workload_a(rounds)
    warm = copy.copy(wl)
    warm.rounds = 1
    run_workers(warm, None)
    print("ready", flush=True)
    sys.stdin.readline()
    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        run_workers(wl, None)
        seconds.append(time.perf_counter() - t)
    print(json.dumps(seconds), flush=True)
    return 0


def side_by_side(rounds: int, copies: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of the one-process run in one fresh process alone, then in ``copies`` fresh processes at once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out: dict[str, list[float]] = {}
    for n in (1, copies):
        procs = [subprocess.Popen([sys.executable, __file__, "--solo", str(rounds), "--repeats", str(repeats)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  env=env) for _ in range(n)]
        try:
            for p in procs:  # every copy warmed up before any is timed
                if p.stdout is None or p.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"a copy of the one-process run (pid {p.pid}) failed to start")
            for p in procs:
                if p.stdin is not None:
                    p.stdin.write("go\n")
                    p.stdin.flush()
            out[f"{n} at once"] = [s for p in procs for s in json.loads(p.communicate(timeout=600)[0])]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    alone, together = statistics.median(out["1 at once"]), statistics.median(out[f"{copies} at once"])
    print(f"\nThe one-process run in fresh processes ({repeats} runs each, {rounds} rounds): median {alone:.3f} s alone,"
          f" {together:.3f} s with {copies} at once ({together / alone - 1:+.1%} each): this machine bounds the speed-up"
          f" of {copies} workers near {copies * alone / together:.2f}x")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="2", help="comma-separated worker counts besides 1 (default: 2)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run (default: 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (default: 5)")
    parser.add_argument("--quick", action="store_true", help="1 round, 1 repetition: a smoke run")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--e2e", type=int, default=0, metavar="R",
                        help="also time the command line end to end with R rounds (0: not)")
    parser.add_argument("--e2e-repeats", type=int, default=3, help="end-to-end pairs (default: 3)")
    parser.add_argument("--side-by-side", action="store_true",
                        help="also time the one-process run in fresh processes, alone and as many at once as workers")
    parser.add_argument("--solo", type=int, metavar="R", help=argparse.SUPPRESS)  # a process of --side-by-side
    args = parser.parse_args(argv)
    if args.solo:
        return solo(args.solo, args.repeats)
    torch.set_num_threads(1)
    overhead.silence_lightning_console()
    rounds, repeats = (1, 1) if args.quick else (args.rounds, args.repeats)
    counts = [int(w) for w in args.workers.split(",")]
    wl = overhead.workload_a(rounds)
    methods: dict[str, Callable[..., dict[str, float]]] = {
        "1 worker": lambda w, record=None: run_workers(w, None, record),
        **{f"{n} workers": (lambda w, record=None, n=n: run_workers(w, n, record)) for n in counts},
        "plain PyTorch": lambda w, record=None: overhead.run_plain_torch(w)}
    warm = copy.copy(wl)
    warm.rounds = 1
    for fn in methods.values():
        fn(warm)
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    accuracy: dict[str, float] = {}
    for rep in range(repeats):
        for name, fn in methods.items():
            t = time.perf_counter()
            accuracy[name] = fn(wl, record=name)["val_acc"]
            seconds[name].append(time.perf_counter() - t)
        print(f"  repeat {rep + 1}/{repeats}: " + "  ".join(f"{n}={s[-1]:.2f}s" for n, s in seconds.items()),
              flush=True)
    clients = rounds * wl.clients_per_round
    best = {name: min(s) for name, s in seconds.items()}
    print(f"\nWorkload A: {wl.description}; {rounds} rounds ({clients} client trainings) per run, {repeats} repeats,"
          f" {os.cpu_count()} CPUs, 1 thread per worker")
    print(f"  {'variant':<16}{'best s':>9}{'median s':>10}{'clients/s':>11}{'(median)':>10}{'vs 1 worker':>13}"
          f"{'(median of pairs)':>19}{'vs PyTorch':>12}")
    for name in methods:
        paired = statistics.median(a / b for a, b in zip(seconds["1 worker"], seconds[name]))
        print(f"  {name:<16}{best[name]:>9.3f}{statistics.median(seconds[name]):>10.3f}{clients / best[name]:>11.1f}"
              f"{clients / statistics.median(seconds[name]):>10.1f}{best['1 worker'] / best[name]:>12.2f}x"
              f"{paired:>18.2f}x{best[name] / best['plain PyTorch']:>12.3f}")
    same = len({round(a, 6) for a in accuracy.values()}) == 1
    print(f"  same final val_acc in every variant (same work): {same} ({accuracy['1 worker']:.4f})")
    for name in methods:
        print_rank_table(name)
    starts = {n: startup(wl, n, 1 if args.quick else 3) for n in counts}
    for n, s in starts.items():
        print(f"  start-up of {n} local workers (a 1-round run with them minus the same run in one process): {s:.3f} s")
    bound = side_by_side(rounds, max(counts), repeats) if args.side_by_side else {}
    e2e = end_to_end(args.e2e, max(counts), args.e2e_repeats) if args.e2e else {}
    if args.json:
        args.json.write_text(json.dumps({"seconds": seconds, "accuracy": accuracy, "startup": starts,
                                         "rank_times": RANK_TIMES, "side_by_side": bound, "end_to_end": e2e},
                                        indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
