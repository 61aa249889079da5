"""Peak memory per worker against ``clients_per_round``: a worker must not hold the round's ``K`` trained models.

A model of about 11 MB (an MLP, 2.8 M float32 parameters) federated by FedAvg with 2 workers, for ``K`` = 4 and 16
clients per round (1 local step each, 2 rounds). In each worker a federated callback resets the kernel's peak-RSS
mark (``/proc/self/clear_refs``) when the fit starts and reads it (``VmHWM``) when the fit ends: the growth is
what the fit itself added to the process, in MB and in model sizes. Each configuration runs in a fresh
interpreter, once with this tree and, with ``--baseline PATH``, once with another checkout (an older version,
say) on ``PYTHONPATH``, so the two are compared in one run of this script.

    OMP_NUM_THREADS=1 python benchmarks/worker_memory.py                         # about a minute on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/worker_memory.py --baseline /path/to/older/checkout --json out.json

Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKERS = 2
KS = (4, 16)


def _status(field: str) -> float:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(k: int, out_dir: str) -> None:
    """One fit with ``K`` = ``k`` and 2 workers; every worker writes its memory figures to ``out_dir``."""
    import torch
    from lightning.pytorch import LightningModule
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_fedmut import Client, FedAvg, FederatedCallback, FederatedLoop

    class Wide(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 2560), nn.ReLU(), nn.Linear(2560, 1024), nn.ReLU(),
                                     nn.Linear(1024, 10))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Memory(FederatedCallback):
        def on_fit_start(self, loop, module):
            Path("/proc/self/clear_refs").write_text("5")  # the peak mark back to the current RSS
            self.start = _status("VmRSS")

        def on_fit_end(self, loop, module):
            size = sum(t.numel() * t.element_size() for t in module.state_dict().values()) / 2**20
            figures = {"rank": loop.executor.rank, "k": k, "model_mb": size, "start_mb": self.start,
                       "peak_mb": _status("VmHWM")}
            Path(out_dir, f"rank{loop.executor.rank}.json").write_text(json.dumps(figures))

    torch.manual_seed(0)
    clients = [Client(id=i, data=DataLoader(TensorDataset(torch.randn(8, 64), torch.randint(0, 10, (8,))),
                                             batch_size=8)) for i in range(k)]
    loop = FederatedLoop(rounds=2, clients_per_round=k, local_steps=1, aggregator=FedAvg(), callbacks=[Memory()],
                         workers=WORKERS, enable_progress_bar=False, seed=0)
    loop.fit(Wide(), clients)


def measure(k: int, pythonpath: Path) -> list[dict[str, float]]:
    """Run :func:`child` in a fresh interpreter that imports the package from ``pythonpath``."""
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
        subprocess.run([sys.executable, __file__, "--child", str(k), out], check=True, env=env, cwd=out,
                       stdout=subprocess.DEVNULL)
        return [json.loads(p.read_text()) for p in sorted(Path(out).glob("rank*.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with (its root folder)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--child", nargs=2, metavar=("K", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1])
        return
    trees = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    rows = []
    print(f"{'tree':>9} {'K':>3} {'rank':>4} {'model MB':>8} {'fit start MB':>12} {'peak MB':>8} {'growth MB':>9}"
          f" {'growth/model':>12}")
    for name, tree in trees.items():
        for k in KS:
            for figures in measure(k, tree):
                growth = figures["peak_mb"] - figures["start_mb"]
                row = {"tree": name, **figures, "growth_mb": growth, "growth_models": growth / figures["model_mb"]}
                rows.append(row)
                print(f"{name:>9} {k:>3} {figures['rank']:>4} {figures['model_mb']:>8.1f} {figures['start_mb']:>12.1f}"
                      f" {figures['peak_mb']:>8.1f} {growth:>9.1f} {row['growth_models']:>12.2f}")
    for name in trees:
        small, large = ([r["growth_mb"] for r in rows if r["tree"] == name and r["k"] == k] for k in KS)
        print(f"{name}: peak growth per worker, K={KS[1]} minus K={KS[0]}:"
              f" {max(large) - max(small):+.1f} MB (worst rank)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
