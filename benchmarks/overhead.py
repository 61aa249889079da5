"""Wall-time overhead of ``FederatedLoop`` against hand-written Lightning and plain PyTorch.

The same federated job (FedAvg, no mutation) runs three ways in one process, alternating
A-B-C, A-B-C, ...:

* ``fedloop``   -- :class:`lightning_fedmut.FederatedLoop`;
* ``lightning`` -- the loop a user would write by hand around the same short-lived, quiet Lightning
  ``Trainer`` per client (load the global weights into a working copy, ``Trainer.fit``, accumulate the
  average; after the round write the average into the global model and ``Trainer.validate``);
* ``fedloop+fabric`` -- the same ``FederatedLoop`` with ``executor=FabricExecutor()``: no Trainer per client,
  the module's hooks driven by a short loop (``--no-fabric`` skips it);
* ``torch``     -- a minimal plain-PyTorch loop: same model class, data, seeds, optimizer
  (``configure_optimizers``), clients per round, local epochs and batch size; forward / cross-entropy /
  backward / step, then average, then evaluate the global model on the validation set.

Optionally (on by default) a fourth variant, ``lightning+cache``: the hand-written loop run inside
``lightning_fedmut.utilities.trainer.quiet_lightning()``, which isolates what the loop itself adds from
what its cached entry-point scan saves.

All variants derive the client sampling and each client's training seed exactly as ``FederatedLoop``
does, so they do the same arithmetic: the final validation accuracy is printed for each as a check.

Workloads:

* ``A``: mnist1d (generated locally, never downloaded), the mnist1d paper's small 1-D CNN, 20 IID
  clients, 10 per round, 5 local epochs, batch 50 (20 optimizer steps per client).
* ``B``: scikit-learn digits, ``DigitsCNN``, 100 IID clients, 10 per round, 1 local epoch, batch 50
  (one batch per client: the worst case for the per-Trainer cost).

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/overhead.py                  # about 3 minutes on 2 CPU cores
    OMP_NUM_THREADS=1 python benchmarks/overhead.py --quick          # smoke run (CI), under 30 s
    OMP_NUM_THREADS=1 python benchmarks/overhead.py --cprofile-top 25 --json overhead.json

Besides the timed runs it prints a per-part breakdown of each variant's wall time (functions of
Lightning, torch and the loops wrapped with a timer; ``--no-profile`` skips it) and how much
``quiet_lightning()`` saves per Trainer. Every function the breakdown wraps must exist and be called: a
name that is missing (renamed in the package or in Lightning) or never called stops the benchmark with an
error naming it, so no part of the breakdown silently reads zero.

Each ratio is given four ways: best-of wall times, median wall times, the median of the paired ratios
(each repetition's FederatedLoop time over the baseline's run right after it, which cancels drifts in
the machine's load) and median process-CPU times. On cores shared with other work, read the best-of and
the paired ratios; the plain medians are the first to be thrown off. The process exits with status 0
whatever the ratios are (the bars are reported, not enforced), unless ``--check`` is given.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import contextlib
import copy
import cProfile
import difflib
import functools
import gc
import io
import json
import logging
import platform
import pstats
import random
import statistics
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import distributions, entry_points
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_fedmut
from lightning_fedmut import FederatedLoop
from lightning_fedmut.aggregators import FedAvg
from lightning_fedmut.data import Client, make_clients, partition_iid
from lightning_fedmut.utilities.seed import CLIENT_STREAM, SAMPLING_STREAM, derive_seed
from lightning_fedmut.utilities.trainer import quiet_lightning

torch.set_num_threads(1)

#: The bars of the issue: FederatedLoop / hand-written Lightning, FederatedLoop / plain PyTorch.
BARS = {"A": {"lightning": 1.05, "torch": 1.10}, "B": {"lightning": 1.15, "torch": 2.0}}
#: The goals of the lighter client runner: FederatedLoop(executor=FabricExecutor()) / plain PyTorch.
FABRIC_BARS = {"A": {"torch": 1.25}, "B": {"torch": 2.0}}

#: What a careful user passes to each short-lived client Trainer (the issue's hand-written loop).
HAND_TRAINER_KWARGS: dict[str, Any] = dict(
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
)

SEED = 0


def source_version() -> str:
    """The repository's commit (and whether the package has local changes), for the record."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "lightning_fedmut"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}{' + local changes to lightning_fedmut/' if dirty else ''}" if commit else "unknown"


def _load() -> str:
    """The 1/5/15-minute load averages: above the number of cores, other work competes for them."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on this platform
        return "n/a"


def silence_lightning_console() -> None:
    """What a careful user does to keep per-client Trainers quiet: INFO banners off, warnings filtered.

    Must run after ``lightning.pytorch`` is imported: importing it sets its logger back to INFO.
    """
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")


# --------------------------------------------------------------------------------------- workloads
class MNIST1DConvNet(nn.Module):
    """The small 1-D CNN of the mnist1d paper (``ConvBase``: 3 strided convolutions, 25 channels)."""

    def __init__(self, channels: int = 25, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.linear = nn.Linear(channels * 5, num_classes)  # 40 -> 19 -> 10 -> 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.linear(x.flatten(1))


class MNIST1DModule(LightningModule):
    """A typical user LightningModule: cross-entropy, SGD, logs the epoch training loss and val metrics."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = MNIST1DConvNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)


@dataclass
class Workload:
    name: str
    description: str
    make_model: Callable[[], LightningModule]
    clients: list[Client]
    val_loader: DataLoader
    clients_per_round: int
    local_epochs: int
    rounds: int
    weighted: bool = False
    steps_per_client: float = 0.0


def workload_a(rounds: int) -> Workload:
    from mnist1d.data import get_dataset_args, make_dataset  # never get_dataset: it downloads

    data = make_dataset(get_dataset_args())
    x = torch.tensor(data["x"], dtype=torch.float32)
    y = torch.tensor(data["y"], dtype=torch.long)
    train = TensorDataset(x, y)
    x_val = torch.tensor(data["x_test"], dtype=torch.float32)
    val = TensorDataset(x_val, torch.tensor(data["y_test"], dtype=torch.long))
    clients = make_clients(train, partition_iid(len(train), 20, seed=SEED), batch_size=50)
    steps = float(np.mean([len(c.data) for c in clients])) * 5
    return Workload(
        name="A",
        description="mnist1d (4000 train / 1000 val), 1-D CNN, 20 IID clients, 10/round, E=5, batch 50",
        make_model=MNIST1DModule,
        clients=clients,
        val_loader=DataLoader(val, batch_size=500),
        clients_per_round=10,
        local_epochs=5,
        rounds=rounds,
        steps_per_client=steps,
    )


def workload_b(rounds: int) -> Workload:
    from lightning_fedmut.datasets import load_digits_split
    from lightning_fedmut.models import DigitsCNN

    train, val = load_digits_split(seed=SEED)
    clients = make_clients(train, partition_iid(len(train), 100, seed=SEED), batch_size=50)
    steps = float(np.mean([len(c.data) for c in clients]))
    return Workload(
        name="B",
        description="sklearn digits (1348 train / 449 val), DigitsCNN, 100 IID clients, 10/round, E=1, batch 50",
        make_model=DigitsCNN,
        clients=clients,
        val_loader=DataLoader(val, batch_size=500),
        clients_per_round=10,
        local_epochs=1,
        rounds=rounds,
        steps_per_client=steps,
    )


def fresh_model(wl: Workload) -> LightningModule:
    torch.manual_seed(SEED)
    return wl.make_model()


# ------------------------------------------------------------------------- the three (four) loops
#: Extra arguments of FederatedLoop, e.g. its own progress bar (off by default, see ``--progress-bar``).
FEDLOOP_KWARGS: dict[str, Any] = {}


def run_fedloop(wl: Workload, **kwargs: Any) -> dict[str, float]:
    model = fresh_model(wl)
    loop = FederatedLoop(
        rounds=wl.rounds,
        clients_per_round=wl.clients_per_round,
        local_epochs=wl.local_epochs,
        aggregator=FedAvg(weighted=wl.weighted),
        seed=SEED,
        **FEDLOOP_KWARGS,
        **kwargs,
    )
    result = loop.fit(model, wl.clients, val_dataloaders=wl.val_loader)
    return {k: float(v) for k, v in result.history[-1].items() if k.startswith("val_")}


def run_fedloop_fabric(wl: Workload) -> dict[str, float]:
    """FederatedLoop with its lighter client runner, ``executor=FabricExecutor()`` (no Trainer per client)."""
    from lightning_fedmut.execution import FabricExecutor

    return run_fedloop(wl, executor=FabricExecutor())


def _seed_client(round_idx: int, client_idx: int) -> None:
    seed = derive_seed(SEED, CLIENT_STREAM, round_idx, client_idx)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _sample(sampler: torch.Generator, wl: Workload) -> list[int]:
    return torch.randperm(len(wl.clients), generator=sampler)[: wl.clients_per_round].tolist()


@torch.no_grad()
def _load_global(working: nn.Module, model: nn.Module) -> None:
    working.load_state_dict(model.state_dict())


@torch.no_grad()
def _accumulate(sums: dict[str, torch.Tensor] | None, working: nn.Module, weight: float) -> dict[str, torch.Tensor]:
    """Running (weighted) sum of the floating state; integer buffers keep their maximum (as FedAvg)."""
    state = working.state_dict()
    if sums is None:
        return {k: (v.detach().to(torch.float32) * weight if v.is_floating_point() else v.detach().clone())
                for k, v in state.items()}
    for k, v in state.items():
        if v.is_floating_point():
            sums[k].add_(v, alpha=weight)
        else:
            torch.maximum(sums[k], v, out=sums[k])
    return sums


@torch.no_grad()
def _write_average(model: nn.Module, sums: dict[str, torch.Tensor], total: float) -> None:
    model.load_state_dict({k: v / total if v.is_floating_point() else v for k, v in sums.items()})


def run_lightning_by_hand(wl: Workload) -> dict[str, float]:
    """The loop a user writes by hand around short-lived quiet Trainers."""
    model = fresh_model(wl)
    working = copy.deepcopy(model)
    sampler = torch.Generator().manual_seed(derive_seed(SEED, SAMPLING_STREAM))
    metrics: dict[str, float] = {}
    for r in range(wl.rounds):
        sums, total = None, 0.0
        for i in _sample(sampler, wl):
            client = wl.clients[i]
            _load_global(working, model)
            _seed_client(r, i)
            trainer = Trainer(**HAND_TRAINER_KWARGS, max_epochs=wl.local_epochs)
            trainer.fit(working, train_dataloaders=client.data)
            weight = float(client.num_examples) if wl.weighted else 1.0
            sums, total = _accumulate(sums, working, weight), total + weight
        _write_average(model, sums, total)
        trainer = Trainer(**HAND_TRAINER_KWARGS, max_epochs=wl.local_epochs)
        (metrics,) = trainer.validate(model, dataloaders=wl.val_loader, verbose=False)
    return {k: float(v) for k, v in metrics.items()}


def run_lightning_by_hand_cached(wl: Workload) -> dict[str, float]:
    """The hand-written loop inside ``quiet_lightning()``: what the loop adds, less what the cache saves."""
    with quiet_lightning():
        return run_lightning_by_hand(wl)


def _plain_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def _plain_eval_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    logits = model(x)
    return F.cross_entropy(logits, y, reduction="sum").item(), int((logits.argmax(1) == y).sum())


def run_plain_torch(wl: Workload) -> dict[str, float]:
    """Minimal plain PyTorch: same model class, data, seeds, optimizer, K, E and batch size."""
    model = fresh_model(wl)
    working = copy.deepcopy(model)
    sampler = torch.Generator().manual_seed(derive_seed(SEED, SAMPLING_STREAM))
    metrics: dict[str, float] = {}
    for r in range(wl.rounds):
        sums, total = None, 0.0
        for i in _sample(sampler, wl):
            client = wl.clients[i]
            _load_global(working, model)
            _seed_client(r, i)
            optimizer = working.configure_optimizers()
            working.train()
            for _ in range(wl.local_epochs):
                for x, y in client.data:
                    optimizer.zero_grad()
                    loss = _plain_loss(working, x, y)
                    loss.backward()
                    optimizer.step()
            weight = float(client.num_examples) if wl.weighted else 1.0
            sums, total = _accumulate(sums, working, weight), total + weight
        _write_average(model, sums, total)
        model.eval()
        loss_sum, correct, n = 0.0, 0, 0
        with torch.no_grad():
            for x, y in wl.val_loader:
                batch_loss, batch_correct = _plain_eval_batch(model, x, y)
                loss_sum, correct, n = loss_sum + batch_loss, correct + batch_correct, n + len(y)
        model.train()
        metrics = {"val_loss": loss_sum / n, "val_acc": correct / n}
    return metrics


METHODS: dict[str, Callable[[Workload], dict[str, float]]] = {
    "fedloop": run_fedloop,
    "fedloop+fabric": run_fedloop_fabric,
    "lightning": run_lightning_by_hand,
    "lightning+cache": run_lightning_by_hand_cached,
    "torch": run_plain_torch,
}
LABELS = {
    "fedloop": "FederatedLoop",
    "fedloop+fabric": "FederatedLoop(executor=FabricExecutor())",
    "lightning": "hand-written Lightning",
    "lightning+cache": "hand-written Lightning in quiet_lightning()",
    "torch": "plain PyTorch",
}


# ------------------------------------------------------------------------------------- timing
@dataclass
class Timings:
    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    cpu: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def time_once(fn: Callable[[Workload], dict[str, float]], wl: Workload) -> tuple[float, float, dict[str, float]]:
    """Wall and process-CPU seconds of one run (CPU time is less disturbed by other processes on the cores)."""
    gc.collect()
    cpu, start = time.process_time(), time.perf_counter()
    metrics = fn(wl)
    return time.perf_counter() - start, time.process_time() - cpu, metrics


def benchmark(wl: Workload, methods: list[str], repeats: int, warmup_rounds: int) -> Timings:
    timings = Timings()
    if warmup_rounds:
        warm = copy.copy(wl)
        warm.rounds = warmup_rounds
        for m in methods:
            METHODS[m](warm)
    for rep in range(repeats):
        for m in methods:
            seconds, cpu, metrics = time_once(METHODS[m], wl)
            timings.seconds[m].append(seconds)
            timings.cpu[m].append(cpu)
            timings.metrics[m] = metrics
        line = "  ".join(f"{m}={timings.seconds[m][-1]:.3f}s" for m in methods)
        print(f"  [{wl.name}] repeat {rep + 1}/{repeats}: {line}", flush=True)
    return timings


def _meets(ratio: dict[str, Any]) -> bool:
    """A bar is met when the best-of or the paired-median wall-time ratio is within it (on shared cores one of
    the two can be thrown off by other work; on a quiet machine they agree)."""
    return min(ratio["best"], ratio["paired"]) <= ratio["bar"]


def _ratio(timings: Timings, subject: str, base: str, bars: dict[str, dict[str, float]], workload: str
           ) -> dict[str, Any]:
    """``subject``'s time over ``base``'s: best-of, median, paired median (each repetition's ``subject`` time over
    the ``base`` time of the same repetition, which cancels drifts in the machine's load) and median CPU."""
    fl, bl = timings.seconds[subject], timings.seconds[base]
    return {
        "best": min(fl) / min(bl),
        "median": statistics.median(fl) / statistics.median(bl),
        "paired": statistics.median(f / b for f, b in zip(fl, bl)),
        "median_cpu": statistics.median(timings.cpu[subject]) / statistics.median(timings.cpu[base]),
        "bar": bars.get(workload, {}).get(base),
    }


def report(wl: Workload, timings: Timings, methods: list[str]) -> dict[str, Any]:
    n_clients = wl.rounds * wl.clients_per_round
    reps = len(timings.seconds[methods[0]])
    print(f"\nWorkload {wl.name}: {wl.description}; {wl.rounds} rounds, "
          f"{wl.steps_per_client:g} steps per client, {reps} repeats")
    print(f"  {'method':<44} {'best s':>8} {'median s':>9} {'med CPU s':>10} {'ms/round':>9} {'ms/client':>10}"
          f" {'val_acc':>8}")
    out: dict[str, Any] = {"workload": wl.name, "description": wl.description, "rounds": wl.rounds,
                           "repeats": reps, "methods": {}}
    for m in methods:
        best, med = min(timings.seconds[m]), statistics.median(timings.seconds[m])
        cpu = statistics.median(timings.cpu[m])
        acc = timings.metrics[m].get("val_acc", float("nan"))
        print(f"  {LABELS[m]:<44} {best:8.3f} {med:9.3f} {cpu:10.3f} {1e3 * best / wl.rounds:9.1f} "
              f"{1e3 * best / n_clients:10.2f} {acc:8.4f}")
        out["methods"][m] = {"best_s": best, "median_s": med, "median_cpu_s": cpu, "wall_s": timings.seconds[m],
                             "cpu_s": timings.cpu[m], "val_acc": acc}
    print("  (ms/round and ms/client from the best-of wall time)")
    out["ratios"] = {}
    for subject, key in (("fedloop", "ratios"), ("fedloop+fabric", "ratios_fabric")):
        if subject not in methods:
            continue
        out[key] = {}
        for base in ("lightning", "lightning+cache", "torch"):
            if base not in methods:
                continue
            out[key][base] = ratio = _ratio(timings, subject, base, BARS if subject == "fedloop" else FABRIC_BARS,
                                            wl.name)
            verdict = "" if ratio["bar"] is None else f"  bar {ratio['bar']:.2f}: {'met' if _meets(ratio) else 'NOT met'}"
            print(f"  {LABELS[subject]} / {LABELS[base]:<44} best-of {ratio['best']:6.3f}  median {ratio['median']:6.3f}"
                  f"  paired {ratio['paired']:6.3f}  median CPU {ratio['median_cpu']:6.3f}{verdict}")
    accs = {m: timings.metrics[m].get("val_acc") for m in methods}
    same = len({round(a, 6) for a in accs.values() if a is not None}) == 1
    print(f"  same final val_acc in all variants (same work): {same}")
    out["same_val_acc"] = same
    return out


# ------------------------------------------------------------------------ per-part attribution
def qualified_name(owner: Any) -> str:
    """``package.module`` for a module, ``package.module.Class`` for a class: where an instrumented name lives."""
    if isinstance(owner, type):
        return f"{owner.__module__}.{owner.__qualname__}"
    return getattr(owner, "__name__", repr(owner))


def required(owner: Any, name: str) -> Any:
    """``owner``'s own attribute ``name`` (from its ``__dict__``, as it will be wrapped), or an error naming it.

    The breakdown wraps functions of the package, Lightning and torch by name; a name that no longer exists would
    otherwise leave its part silently at zero.

    >>> required(time, "perf_counter") is time.perf_counter
    True
    >>> required(time, "perf_countr")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    AttributeError: benchmarks/overhead.py instruments `time.perf_countr`, but `time` defines no `perf_countr` ...
    """
    found = vars(owner).get(name)
    if found is None:
        where = qualified_name(owner)
        close = difflib.get_close_matches(name, list(vars(owner)), n=3)
        raise AttributeError(f"benchmarks/overhead.py instruments `{where}.{name}`, but `{where}` defines no `{name}`"
                             f" (renamed or removed?); close names it defines: {close or 'none'}. Update"
                             " instrument() to the name the code uses now.")
    return found


class Attribution:
    """Exclusive wall time per category, by wrapping functions with a timer stack.

    A wrapped call's time, less the time of wrapped calls nested in it, goes to its category; the time
    outside all of them goes to ``rest``. About 1 us per wrapped call. Every wrapped name must exist
    (:func:`required`), and :meth:`never_called` lists those no run has called.
    """

    def __init__(self, rest: str) -> None:
        self.rest = rest
        self.totals: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        #: calls per wrapped name (``module.Class.name``) over every run since wrapping
        self.target_calls: dict[str, int] = {}
        self._stack: list[float] = []
        self._patches: list[tuple[Any, str, Any]] = []

    def _timed(self, fn: Callable[..., Any], category: str, target: str | None = None) -> Callable[..., Any]:
        stack, totals, calls, clock = self._stack, self.totals, self.calls, time.perf_counter
        target_calls = self.target_calls

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            stack.append(0.0)
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = clock() - start
                totals[category] += elapsed - stack.pop()
                calls[category] += 1
                if target is not None:
                    target_calls[target] += 1
                if stack:
                    stack[-1] += elapsed

        return timed

    def wrap(self, owner: Any, name: str, category: str) -> None:
        """Time ``owner.name`` into ``category``; an ``AttributeError`` names it if ``owner`` does not define it."""
        original = required(owner, name)
        target = f"{qualified_name(owner)}.{name}"
        self.target_calls[target] = 0
        if isinstance(original, property):
            new: Any = property(self._timed(original.fget, category, target), original.fset, original.fdel)
        else:
            new = self._timed(original, category, target)
            if getattr(original, "hooked", False):  # torch's optimizer step profiling hook
                new.hooked = True
        setattr(owner, name, new)
        self._patches.append((owner, name, original))

    def never_called(self) -> list[str]:
        """The wrapped names that no run has called since they were wrapped: parts that would read zero."""
        return [target for target, count in self.target_calls.items() if count == 0]

    def unwrap(self) -> None:
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        self._patches.clear()

    def run(self, fn: Callable[[], Any]) -> float:
        self.totals.clear()
        self.calls.clear()
        timed = self._timed(fn, self.rest)
        start = time.perf_counter()
        timed()
        return time.perf_counter() - start


#: Parts of the wall time, in display order: key -> label. Each wrapped function's exclusive time goes to one.
PARTS = {
    "init": "Trainer construction",
    "setup": "strategy.setup (model .to(device), precision, optimizers)",
    "optim": "configure_optimizers",
    "data_setup": "dataloader setup (setup_data)",
    "run": "Lightning per-run machinery (fit/validate: connect, checks, hooks)",
    "batch": "Lightning per-batch loop & hooks (incl. closure)",
    "to_device": "batch_to_device",
    "log": "self.log",
    "metrics": "epoch-end metrics & callback_metrics",
    "teardown": "teardown (results .cpu(), strategy)",
    "user": "user step: loss, metrics",
    "forward": "forward",
    "backward": "backward",
    "step": "optimizer.step",
    "zero_grad": "zero_grad",
    "data": "data: batch fetch & collate",
    "weights": "weights in/out + averaging",
    "finite": "FederatedLoop: finite-weight checks",
    "rest": "outer loop (sampling, seeding, rest)",
}


def instrument(attr: Attribution, wl: Workload) -> None:
    from lightning.pytorch.loops.evaluation_loop import _EvaluationLoop
    from lightning.pytorch.loops.fit_loop import _FitLoop
    from lightning.pytorch.loops.optimization.automatic import Closure
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
    from lightning.pytorch.strategies.strategy import Strategy
    from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    import lightning_fedmut.execution._calls as calls_module
    import lightning_fedmut.execution.sequential as executor_module
    import lightning_fedmut.loop.connectors.failures as failures_module
    import lightning_fedmut.loop.loop as loop_module

    this = sys.modules[__name__]
    model_cls = type(fresh_model(wl))
    owner: dict[str, type] = {}
    for name in ("configure_optimizers", "forward", "training_step", "validation_step"):
        owner[name] = next((k for k in model_cls.__mro__ if name in vars(k)), model_cls)
        required(owner[name], name)
    targets = [
        (Trainer, "__init__", "init"),
        (Strategy, "setup", "setup"),
        (owner["configure_optimizers"], "configure_optimizers", "optim"),
        (_FitLoop, "setup_data", "data_setup"),
        (_EvaluationLoop, "setup_data", "data_setup"),
        (Trainer, "fit", "run"),
        (Trainer, "validate", "run"),
        (_TrainingEpochLoop, "advance", "batch"),
        (_EvaluationLoop, "_evaluation_step", "batch"),
        (Closure, "__call__", "batch"),
        (Strategy, "batch_to_device", "to_device"),
        (LightningModule, "log", "log"),
        *[(_LoggerConnector, name, "metrics") for name in (
            "update_train_step_metrics", "update_train_epoch_metrics", "update_eval_step_metrics",
            "update_eval_epoch_metrics", "_evaluation_epoch_end", "epoch_end_reached", "on_epoch_end",
            "on_batch_start", "on_batch_end", "log_eval_end_metrics", "reset_metrics", "reset_results",
            "metrics", "callback_metrics")],
        (Trainer, "_teardown", "teardown"),
        (owner["training_step"], "training_step", "user"),
        (owner["validation_step"], "validation_step", "user"),
        (this, "_plain_loss", "user"),
        (this, "_plain_eval_batch", "user"),
        (owner["forward"], "forward", "forward"),
        (torch.Tensor, "backward", "backward"),
        (torch.optim.SGD, "step", "step"),
        (torch.optim.Optimizer, "zero_grad", "zero_grad"),
        (_BaseDataLoaderIter, "__next__", "data"),
        (DataLoader, "__iter__", "data"),
        (this, "_load_global", "weights"),
        (this, "_accumulate", "weights"),
        (this, "_write_average", "weights"),
        (executor_module, "copy_", "weights"),  # the start state into the working copy, per client
        (loop_module, "copy_", "weights"),  # the aggregate into the global model, per round
        (FedAvg, "update", "weights"),
        (FedAvg, "compute", "weights"),
        # checks the loop makes and a hand-written loop does not: the trained weights, the aggregate
        (calls_module, "first_non_finite", "finite"),  # the trained weights, in `trained_state`
        (failures_module, "check_global_finite", "finite"),
    ]
    for obj, name, part in targets:
        attr.wrap(obj, name, part)


def breakdown(wl: Workload, methods: list[str], repeats: int) -> dict[str, Any]:
    """Exclusive wall time per part of each method, ms per round. Of ``repeats`` instrumented runs, those
    within 10% of the fastest (the ones least disturbed by other work on the cores) are kept, and each part
    is the median over them."""
    attr = Attribution("rest")
    instrument(attr, wl)
    runs: dict[str, list[tuple[float, dict[str, float], dict[str, int]]]] = defaultdict(list)
    try:
        for _ in range(repeats):
            for m in methods:
                gc.collect()
                total = attr.run(functools.partial(METHODS[m], wl))
                runs[m].append((total, dict(attr.totals), dict(attr.calls)))
    finally:
        attr.unwrap()
    idle = attr.never_called()
    if idle:
        raise RuntimeError(f"benchmarks/overhead.py instruments {idle}, but no run called "
                           f"{'it' if len(idle) == 1 else 'them'}: the breakdown would read zero there. The code "
                           "no longer goes through these names; update instrument() to the functions it calls now.")
    table: dict[str, Any] = {}
    for m in methods:
        fastest = min(run[0] for run in runs[m])
        quiet = [run for run in runs[m] if run[0] <= 1.1 * fastest]
        table[m] = {key: 1e3 * statistics.median(run[1].get(key, 0.0) for run in quiet) / wl.rounds for key in PARTS}
        table[m]["sum"] = sum(table[m][key] for key in PARTS)
        table[m]["total"] = 1e3 * statistics.median(run[0] for run in quiet) / wl.rounds
        table[m]["runs_kept"] = len(quiet)
        calls = runs[m][0][2]
        table[m]["calls_per_round"] = {key: calls.get(key, 0) / wl.rounds for key in PARTS if key != "rest"}
    kept = ", ".join(f"{m} {table[m]['runs_kept']}" for m in methods)
    print(f"\nWorkload {wl.name}: exclusive wall time per part, ms per round "
          f"({wl.clients_per_round} clients x {wl.steps_per_client:g} steps + 1 validation); "
          f"medians over the instrumented runs within 10% of the fastest of {repeats} "
          f"({kept} kept)")
    diff = {"fedloop", "torch"} <= set(methods)
    head = "".join(f"{m:>16}" for m in methods) + (f"{'fedloop-torch':>15}" if diff else "") + f"{'fedloop calls':>15}"
    print(f"  {'part':<66}{head}")
    for key, label in [*PARTS.items(), ("sum", "sum of the parts"), ("total", "instrumented total")]:
        row = "".join(f"{table[m][key]:16.2f}" for m in methods)
        if diff:
            row += f"{table['fedloop'][key] - table['torch'][key]:15.2f}"
        if "fedloop" in methods and key in table["fedloop"]["calls_per_round"]:
            row += f"{table['fedloop']['calls_per_round'][key]:15.0f}"
        print(f"  {label:<66}{row}")
    return table


def cprofile_fedloop(wl: Workload, top: int) -> str:
    """cProfile of one FederatedLoop run: the top functions by own time, and Lightning's by cumulative time."""
    profiler = cProfile.Profile()
    profiler.enable()
    run_fedloop(wl)
    profiler.disable()
    buf = io.StringIO()
    stats = pstats.Stats(profiler, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(r"lightning[/\\]pytorch|lightning_fedmut", top)
    return buf.getvalue()


# ------------------------------------------------------------------------- quiet_lightning
def quiet_lightning_saving(n: int, blocks: int, client: Client, make_model: Callable[[], LightningModule]) -> dict:
    """ms per quiet client Trainer, built alone and built + fit on one client (one batch), outside and inside
    ``quiet_lightning()`` (which caches the entry-point scan of ``Trainer.__init__``); alternating blocks,
    best block. The console is silenced the same way in both."""
    kwargs = {**HAND_TRAINER_KWARGS, "max_epochs": 1}
    model = make_model()
    cases = {
        "construct": (lambda: Trainer(**kwargs), n),
        "construct+fit": (lambda: Trainer(**kwargs).fit(model, train_dataloaders=client.data), max(n // 4, 5)),
        "entry-point scan": (lambda: list(entry_points(group="lightning.pytorch.callbacks_factory")), n),
    }
    results: dict[str, float] = {"installed distributions": float(len(list(distributions())))}
    for label, (fn, count) in cases.items():
        fn()
        times: dict[str, list[float]] = {"default": [], "quiet_lightning": []}
        for _ in range(blocks):
            for key, ctx in (("default", contextlib.nullcontext), ("quiet_lightning", quiet_lightning)):
                with ctx():
                    start = time.perf_counter()
                    for _ in range(count):
                        fn()
                    times[key].append((time.perf_counter() - start) / count)
        for key, values in times.items():
            results[f"{label}: {key} ms"] = 1e3 * min(values)
    print(f"\nquiet_lightning(): ms per quiet Trainer, best of {blocks} alternating blocks "
          f"({int(results['installed distributions'])} installed distributions)")
    for label in ("construct", "construct+fit"):
        d, q = results[f"{label}: default ms"], results[f"{label}: quiet_lightning ms"]
        results[f"{label}: saved ms"] = d - q
        print(f"  Trainer {label:<14} default {d:7.3f} ms   in quiet_lightning() {q:7.3f} ms   "
              f"saves {d - q:6.3f} ms ({100 * (d - q) / d:4.1f}%)")
    print(f"  the scan alone, entry_points(group='lightning.pytorch.callbacks_factory'): "
          f"{results['entry-point scan: default ms']:.3f} ms")
    return results


# ------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="A,B", help="comma-separated subset of A,B (default: A,B)")
    p.add_argument("--rounds-a", type=int, default=1, help="federated rounds per run of workload A (default: 1)")
    p.add_argument("--rounds-b", type=int, default=3, help="federated rounds per run of workload B (default: 3)")
    p.add_argument("--repeats-a", type=int, default=31, help="timed A-B-C repetitions of workload A (default: 31)")
    p.add_argument("--repeats-b", type=int, default=41, help="timed A-B-C repetitions of workload B (default: 41)")
    p.add_argument("--warmup-rounds", type=int, default=1, help="untimed warm-up rounds per method (default: 1)")
    p.add_argument("--no-cached-baseline", action="store_true",
                   help="skip the 4th variant (hand-written Lightning inside quiet_lightning())")
    p.add_argument("--no-fabric", action="store_true",
                   help="skip the variant FederatedLoop(executor=FabricExecutor()), the runner without a Trainer")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the per-part breakdown (instrumented runs after the timed ones)")
    p.add_argument("--profile-repeats", type=int, default=9, help="instrumented runs per method (default: 9)")
    p.add_argument("--cprofile-top", type=int, default=0,
                   help="also print the N top rows (by own time) of a cProfile of one FederatedLoop run")
    p.add_argument("--trainers", type=int, default=100,
                   help="Trainers per block in the quiet_lightning() measurement (0 skips it; default: 100)")
    p.add_argument("--progress-bar", action="store_true",
                   help="keep FederatedLoop's own progress bar on (by default it is turned off, as the hand-written"
                        " loops print nothing; the bar writes at most ~10 times a second)")
    p.add_argument("--json", metavar="PATH", help="write all figures to this JSON file")
    p.add_argument("--check", action="store_true",
                   help="exit 1 if FederatedLoop misses a bar against hand-written Lightning")
    p.add_argument("--quick", action="store_true", help="smoke run in under 30 s (CI): few rounds and repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds_a, args.rounds_b, args.repeats_a, args.repeats_b = 1, 2, 1, 2
        args.trainers, args.profile_repeats, args.cprofile_top = min(args.trainers, 20), 1, 0

    silence_lightning_console()
    FEDLOOP_KWARGS["enable_progress_bar"] = args.progress_bar
    print(f"lightning_fedmut {lightning_fedmut.__version__}, torch {torch.__version__}, "
          f"lightning {__import__('lightning').__version__}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, {platform.machine()}; "
          f"source {source_version()}; load average {_load()}")
    methods = ["fedloop", *([] if args.no_fabric else ["fedloop+fabric"]), "lightning",
               *([] if args.no_cached_baseline else ["lightning+cache"]), "torch"]
    setups = {"A": (lambda: workload_a(args.rounds_a), args.repeats_a),
              "B": (lambda: workload_b(args.rounds_b), args.repeats_b)}
    names = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(names) - set(setups))
    if unknown:
        p.error(f"unknown workloads {unknown}; choose from A, B")
    results: dict[str, Any] = {"args": vars(args), "source": source_version(), "load_start": _load(), "workloads": {}}
    wall = time.perf_counter()
    for name in names:
        build, repeats = setups[name]
        wl = build()
        print(f"\nWorkload {name}: {wl.description}", flush=True)
        timings = benchmark(wl, methods, repeats, args.warmup_rounds)
        res = report(wl, timings, methods)
        if args.profile:
            res["breakdown_ms_per_round"] = breakdown(wl, methods, args.profile_repeats)
        if args.cprofile_top:
            print(f"\ncProfile of one FederatedLoop run of {name} (by own time; cProfile inflates Python-heavy code):")
            print(cprofile_fedloop(wl, args.cprofile_top))
        results["workloads"][name] = res
    if args.trainers:
        wl = workload_b(1)
        results["quiet_lightning"] = quiet_lightning_saving(args.trainers, 1 if args.quick else 5,
                                                            wl.clients[0], wl.make_model)

    failed = False
    print("\nSUMMARY  FederatedLoop time / baseline time "
          "(best-of wall | median wall | paired median wall | median CPU)")
    for name, res in results["workloads"].items():
        for key, subject in (("ratios", "FederatedLoop"), ("ratios_fabric", "FabricExecutor")):
            for base, ratio in res.get(key, {}).items():
                bar = ratio["bar"]
                verdict = "" if bar is None else f"   bar {bar:.2f} {'met' if _meets(ratio) else 'NOT met'}"
                if bar is not None and key == "ratios" and base == "lightning" and not _meets(ratio):
                    failed = True
                print(f"  {name}  {subject:<14} vs {LABELS[base]:<44} {ratio['best']:6.3f} | {ratio['median']:6.3f} |"
                      f" {ratio['paired']:6.3f} | {ratio['median_cpu']:6.3f}{verdict}")
    print(f"total benchmark wall time {time.perf_counter() - wall:.1f} s; load average {_load()}")
    results["load_end"] = _load()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=float)
    return 1 if (args.check and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
