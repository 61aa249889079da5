"""A long run: 1,000 rounds, recording the resident memory and the time per round at the start and at the end.

Memory or time that grows with the rounds (history kept twice, tables re-logged, checkpoints piling up, state
leaking between clients) shows here as an end/start ratio above 1. A small model, 2 clients a round of 8, one
local step, FedMut, a checkpoint every round (the last 2 kept) and a CSV logger, so the loop's own per-round
cost dominates.

    OMP_NUM_THREADS=1 python benchmarks/soak.py                  # about 1 minute on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/soak.py --rounds 200     # shorter
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from lightning.pytorch.loggers import CSVLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import TinyModule, make_synthetic

from lightning_fedmut import FedAvg, FederatedCallback, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.data import partition_iid


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Probe(FederatedCallback):
    """Records the wall time of every round and the resident memory after it."""

    def __init__(self) -> None:
        self.start = 0.0
        self.seconds: list[float] = []
        self.rss: list[float] = []

    def on_round_start(self, loop, module):
        self.start = time.perf_counter()

    def on_round_end(self, loop, module):
        self.seconds.append(time.perf_counter() - self.start)
        self.rss.append(rss_mb())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--window", type=int, default=50, help="rounds averaged at the start and at the end")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train, val = make_synthetic()
    clients = make_clients(train, partition_iid(len(train), 8, seed=0), batch_size=16)
    probe = Probe()
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        loop = FederatedLoop(rounds=args.rounds, clients_per_round=2, local_steps=1, aggregator=FedAvg(weighted=False),
                             callbacks=[MutationCallback(radius=1.0), probe], checkpoint_dir=Path(folder) / "ckpt",
                             logger=CSVLogger(folder, name="soak"), evaluate_every=10, enable_progress_bar=False)
        started = time.perf_counter()
        loop.fit(TinyModule(), clients, val_dataloaders=torch.utils.data.DataLoader(val, batch_size=60))
        total = time.perf_counter() - started
        checkpoints = len(list((Path(folder) / "ckpt").glob("round-*.ckpt")))
    w = min(args.window, args.rounds // 4)
    # skip the first rounds (first Trainer, imports) in the start window
    first, last = slice(w // 5, w // 5 + w), slice(-w, None)
    figures = {
        "rounds": args.rounds,
        "total_s": total,
        "ms_per_round_start": 1e3 * statistics.median(probe.seconds[first]),
        "ms_per_round_end": 1e3 * statistics.median(probe.seconds[last]),
        "rss_mb_start": statistics.median(probe.rss[first]),
        "rss_mb_end": statistics.median(probe.rss[last]),
        "checkpoints_on_disk": checkpoints,
    }
    print(f"{args.rounds} rounds in {total:.1f} s; median of {w} rounds at the start and at the end:")
    print(f"  time per round   {figures['ms_per_round_start']:.2f} ms -> {figures['ms_per_round_end']:.2f} ms"
          f"  (end/start {figures['ms_per_round_end'] / figures['ms_per_round_start']:.3f})")
    print(f"  resident memory  {figures['rss_mb_start']:.1f} MB -> {figures['rss_mb_end']:.1f} MB"
          f"  (end/start {figures['rss_mb_end'] / figures['rss_mb_start']:.3f})")
    print(f"  checkpoints left on disk: {checkpoints}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
