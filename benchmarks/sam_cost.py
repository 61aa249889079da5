"""What a sharpness-aware client step costs against a plain step of the same LightningModule.

In one process, on the digits CNN (``DigitsCNN``, scikit-learn's 8x8 digits, batch 50, the module's own SGD
with momentum), each repetition fits one Lightning ``Trainer`` per variant for ``--steps`` optimizer steps, in
pairs: a plain fit, then one variant, then a plain fit, then the next variant ...:

* ``plain``  -- the module's own steps, no callback;
* ``SAM``    -- ``SharpnessAwareStep(rho=0.05)`` (FedSAM's client): two forward and backward passes a step;
* ``ASAM``   -- ``SharpnessAwareStep(rho=0.5, adaptive=True, eta=0.2)`` (FedASAM's client);
* ``MoSAM``  -- SAM plus ``GlobalMomentum`` (MoFedSAM's client: the gradient mixed with a server direction);
* ``LESAM``  -- ``FixedPerturbationStep`` with a fixed random perturbation (FedLESAM's client): one pass a step.

A step is timed by a Lightning callback from ``on_train_batch_start`` to ``on_train_batch_end`` (forward,
backward, the wrapper's work and the optimizer step; the first ``--warmup`` steps of each fit are dropped). The
figure of a variant is the median, over repetitions, of its median step time divided by the median step time of
the plain fit just before it (pairs, so that the load of a shared machine hits both sides).

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/sam_cost.py              # about a minute on 2 CPU cores
    OMP_NUM_THREADS=1 python benchmarks/sam_cost.py --quick      # smoke run, a few seconds
    python benchmarks/sam_cost.py --device cuda --repeats 20     # on a GPU
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from lightning_fedmut.callbacks.lesam import FixedPerturbationStep
from lightning_fedmut.callbacks.mofedsam import GlobalMomentum
from lightning_fedmut.callbacks.sam import SharpnessAwareStep, sam_perturbation


class StepTimer(Callback):
    """Wall time of each training batch, from ``on_train_batch_start`` to ``on_train_batch_end``."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync, self.times, self._start = sync, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
        self.sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        self.sync()
        self.times.append(time.perf_counter() - self._start)


def variants(model: torch.nn.Module) -> dict[str, Callable[[], list[Callback]]]:
    g = torch.Generator().manual_seed(1)
    named = [(n, p) for n, p in model.named_parameters()]
    direction = [torch.randn(p.shape, generator=g) for _, p in named]
    perturbation = dict(zip([n for n, _ in named], sam_perturbation(direction, 0.05)))
    names = [n for n, _ in named]
    return {
        "plain": list,
        "SAM": lambda: [SharpnessAwareStep(rho=0.05)],
        "ASAM": lambda: [SharpnessAwareStep(rho=0.5, adaptive=True, eta=0.2)],
        "MoSAM": lambda: [SharpnessAwareStep(rho=0.05), GlobalMomentum(names, direction, alpha=0.1)],
        "LESAM": lambda: [FixedPerturbationStep(perturbation)],
    }


def fit_once(callbacks: list[Callback], loader: DataLoader, steps: int, warmup: int, device: str) -> float:
    """The median step time (s) of one fit of a fresh DigitsCNN (same seed every time)."""
    from lightning_fedmut.models import DigitsCNN

    torch.manual_seed(0)
    model = DigitsCNN()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    timer = StepTimer(sync)
    trainer = Trainer(max_steps=steps + warmup, accelerator=device, devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, callbacks=[*callbacks, timer])
    trainer.fit(model, loader)
    return statistics.median(timer.times[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="3 repeats of 10 steps")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps, args.warmup = 3, 10, 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    from lightning_fedmut.datasets import load_digits_split
    from lightning_fedmut.models import DigitsCNN

    train, _ = load_digits_split()
    loader = DataLoader(train, batch_size=args.batch, shuffle=False, drop_last=True)
    builders = variants(DigitsCNN())
    steps: dict[str, list[float]] = {name: [] for name in builders}
    ratios: dict[str, list[float]] = {name: [] for name in builders if name != "plain"}
    for _ in range(args.repeats):
        for name, build in builders.items():
            if name == "plain":
                continue
            base = fit_once([], loader, args.steps, args.warmup, args.device)
            other = fit_once(build(), loader, args.steps, args.warmup, args.device)
            steps["plain"].append(base)
            steps[name].append(other)
            ratios[name].append(other / base)
    rows = {name: {"median_step_ms": 1e3 * statistics.median(steps[name]),
                   "best_step_ms": 1e3 * min(steps[name]),
                   "ratio_paired_median": statistics.median(ratios[name]) if name in ratios else 1.0,
                   "ratio_sample_std": statistics.stdev(ratios[name]) if name in ratios and len(ratios[name]) > 1
                   else 0.0}
            for name in builders}
    print(f"torch {torch.__version__}, device {args.device}, {args.repeats} repeats x {args.steps} steps, batch"
          f" {args.batch}")
    print(f"{'variant':8s} {'median ms':>10s} {'best ms':>9s} {'ratio (paired median)':>22s} {'sd (n)':>12s}")
    for name, row in rows.items():
        n = len(ratios.get(name, []))
        print(f"{name:8s} {row['median_step_ms']:10.2f} {row['best_step_ms']:9.2f}"
              f" {row['ratio_paired_median']:22.2f} {row['ratio_sample_std']:7.2f} ({n})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
