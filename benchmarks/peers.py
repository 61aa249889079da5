"""Clients per second side by side with pfl-research: the same FedAvg federation in four implementations.

One process runs the same federated job (FedAvg, uniform average, no mutation) four ways, alternating them
repetition by repetition (the order rotates by one each repetition, so no variant always runs right after the
same one):

* ``fedloop``   -- :class:`lightning_fedmut.FederatedLoop` with ``FedAvg(weighted=False)``;
* ``lightning`` -- the loop a user writes by hand around one quiet Lightning ``Trainer`` per client
  (``benchmarks/overhead.py``'s ``run_lightning_by_hand``, imported);
* ``torch``     -- a minimal plain-PyTorch loop (``overhead.py``'s ``run_plain_torch``, imported);
* ``pfl``       -- pfl-research (``pfl`` on PyPI) with its PyTorch backend: ``PyTorchModel`` around the same
  module, ``FederatedDataset`` of the same client tensors, ``SimulatedBackend``, ``FederatedAveraging`` with a
  central SGD of learning rate 1 (so the new global model is the mean of the clients' models), local SGD with
  the same learning rate and momentum, ``NNTrainHyperParams(local_num_epochs=E, local_batch_size=B)``.

The work is the same in all four: the model is built once per run under ``torch.manual_seed(0)`` (same
architecture, same initial weights); the clients are drawn per round by the generator ``FederatedLoop`` uses
(``pfl`` gets them through a user sampler that draws from that generator); every client's examples are fed in
their stored order in batches of ``B`` (pfl's in-memory ``Dataset`` slices its tensors in order and never
shuffles, so the other three are given loaders that yield the same slices, one indexing per batch); every
variant validates the global model on the same validation set after every round. The final validation accuracy
of each is printed, with the largest difference between them. pfl's per-user evaluation before and after local
training (on in its FedAvg at iteration 0) is turned off, as the others do not evaluate clients.

Workloads:

* ``A``: mnist1d made locally, ``overhead.py``'s 1-D CNN module, 20 IID clients, 10 per round, E=5, batch 50.
* ``B``: scikit-learn digits, ``DigitsCNN(batch_norm=False)`` (pfl federates parameters only, and BatchNorm's
  running statistics are buffers), 100 IID clients, 10 per round, E=1, batch 50 (one batch per client).
* ``C``: a small ResNet (3 stages of basic blocks with GroupNorm, width 16, 78 k parameters) on generated
  3x32x32 images of 10 classes, 20 clients of 50 images, 10 per round, E=1, batch 25: compute dominates.

Run in an environment that has pfl (its pins may clash with the project's; see ``benchmarks/README.md``)::

    OMP_NUM_THREADS=1 PYTHONPATH=. /work/pflenv/bin/python benchmarks/peers.py            # a few minutes
    OMP_NUM_THREADS=1 python benchmarks/peers.py --quick                                   # smoke run

Without pfl the ``pfl`` column is skipped with a note.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import dataclasses
import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import overhead  # benchmarks/overhead.py: the hand-written Lightning and plain-PyTorch baselines

import lightning_fedmut
from lightning_fedmut.data import Client, partition_iid
from lightning_fedmut.models.classifier import Classifier
from lightning_fedmut.utilities.seed import SAMPLING_STREAM, derive_seed

torch.set_num_threads(1)

SEED = overhead.SEED
METHODS = ("fedloop", "lightning", "torch", "pfl")
LABELS = {"fedloop": "lightning_fedmut FederatedLoop", "lightning": "hand-written Lightning",
          "torch": "plain PyTorch", "pfl": "pfl-research"}


# --------------------------------------------------------------------------------------- workloads
@dataclass
class PeerWorkload(overhead.Workload):
    """``overhead.Workload`` plus the raw tensors pfl's datasets are made of (the same as the loaders')."""

    batch_size: int = 50
    client_tensors: list[tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=list)
    val_tensors: tuple[torch.Tensor, torch.Tensor] | None = None


def in_order_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> DataLoader:
    """Batches of ``batch_size`` in stored order, one indexing per batch: the slices pfl's ``Dataset`` yields.

    >>> [b[1].tolist() for b in in_order_loader(torch.zeros(5, 1), torch.arange(5), 2)]
    [[0, 1], [2, 3], [4]]
    """
    sampler = BatchSampler(SequentialSampler(range(len(y))), batch_size=batch_size, drop_last=False)
    return DataLoader(TensorDataset(x, y), sampler=sampler, batch_size=None)


def build(name: str, description: str, make_model: Callable[[], Any], x: torch.Tensor, y: torch.Tensor,
          x_val: torch.Tensor, y_val: torch.Tensor, num_clients: int, local_epochs: int, batch_size: int,
          rounds: int) -> PeerWorkload:
    parts = partition_iid(len(y), num_clients, seed=SEED)
    tensors = [(x[torch.as_tensor(p)], y[torch.as_tensor(p)]) for p in parts]
    clients = [Client(id=i, data=in_order_loader(cx, cy, batch_size), num_examples=len(cy))
               for i, (cx, cy) in enumerate(tensors)]
    steps = statistics.mean(-(-len(cy) // batch_size) for _, cy in tensors) * local_epochs
    return PeerWorkload(name=name, description=description, make_model=make_model, clients=clients,
                        val_loader=in_order_loader(x_val, y_val, 500), clients_per_round=10,
                        local_epochs=local_epochs, rounds=rounds, steps_per_client=steps, batch_size=batch_size,
                        client_tensors=tensors, val_tensors=(x_val, y_val))


def workload_a(rounds: int = 1) -> PeerWorkload:
    from mnist1d.data import get_dataset_args, make_dataset  # never get_dataset: it downloads

    data = make_dataset(get_dataset_args())
    as_x = functools.partial(torch.tensor, dtype=torch.float32)
    as_y = functools.partial(torch.tensor, dtype=torch.long)
    return build("A", "mnist1d (4000 train / 1000 val), 1-D CNN, 20 IID clients, 10/round, E=5, batch 50",
                 overhead.MNIST1DModule, as_x(data["x"]), as_y(data["y"]), as_x(data["x_test"]),
                 as_y(data["y_test"]), num_clients=20, local_epochs=5, batch_size=50, rounds=rounds)


def _stack(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.as_tensor(ys, dtype=torch.long)


def workload_b(rounds: int = 3) -> PeerWorkload:
    from lightning_fedmut.datasets import load_digits_split
    from lightning_fedmut.models import DigitsCNN

    train, val = load_digits_split(seed=SEED)
    return build("B", "sklearn digits (1348 train / 449 val), DigitsCNN without BatchNorm, 100 IID clients, "
                 "10/round, E=1, batch 50", functools.partial(DigitsCNN, batch_norm=False), *_stack(train),
                 *_stack(val), num_clients=100, local_epochs=1, batch_size=50, rounds=rounds)


class Block(nn.Module):
    """A basic residual block with GroupNorm (parameters only, no running statistics)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(4, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(4, cout)
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.GroupNorm(4, cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


def small_resnet(width: int = 16, num_classes: int = 10) -> nn.Sequential:
    """A 3-stage CIFAR-style ResNet (one block per stage, widths w, 2w, 4w) for 3x32x32 inputs.

    >>> net = small_resnet(8)
    >>> net(torch.zeros(2, 3, 32, 32)).shape, sum(p.numel() for p in net.parameters())
    (torch.Size([2, 10]), 19954)
    """
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False), nn.GroupNorm(4, width), nn.ReLU(),
        Block(width, width, 1), Block(width, 2 * width, 2), Block(2 * width, 4 * width, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes),
    )


class SmallResNet(Classifier):
    """:class:`~lightning_fedmut.models.classifier.Classifier` around :func:`small_resnet`."""

    def __init__(self, width: int = 16, lr: float = 0.01, momentum: float = 0.5) -> None:
        super().__init__(small_resnet(width), num_classes=10, lr=lr, momentum=momentum)


def generated_images(n: int, seed: int, templates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` 3x32x32 images: a class's fixed random template plus twice as much noise; labels uniform."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, len(templates), (n,), generator=gen)
    return templates[y] + 2.0 * torch.randn(n, 3, 32, 32, generator=gen), y


def workload_c(rounds: int = 1, width: int = 16, clients: int = 20, per_client: int = 50, batch_size: int = 25,
               local_epochs: int = 1) -> PeerWorkload:
    templates = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    x, y = generated_images(clients * per_client, 2, templates)
    x_val, y_val = generated_images(500, 3, templates)
    return build("C", f"generated 3x32x32 images ({clients * per_client} train / 500 val), ResNet of width {width} "
                 f"(GroupNorm), {clients} IID clients, 10/round, E={local_epochs}, batch {batch_size}",
                 functools.partial(SmallResNet, width=width), x, y, x_val, y_val, num_clients=clients,
                 local_epochs=local_epochs, batch_size=batch_size, rounds=rounds)


WORKLOADS: dict[str, Callable[..., PeerWorkload]] = {"A": workload_a, "B": workload_b, "C": workload_c}


# ------------------------------------------------------------------------------------- pfl-research
def pfl_runner() -> tuple[Callable[[PeerWorkload], dict[str, float]] | None, str]:
    """pfl's FedAvg as a runner, and pfl's version; ``(None, why)`` where pfl cannot be imported."""
    try:
        import pfl
        from pfl.aggregate.simulate import SimulatedBackend
        from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
        from pfl.callback.base import TrainingProcessCallback
        from pfl.data.federated_dataset import FederatedDataset
        from pfl.data.pytorch import PyTorchTensorDataset
        from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
        from pfl.metrics import Metrics, StringMetricName, Weighted
        from pfl.model.pytorch import PyTorchModel
    except ImportError as exc:
        return None, f"not installed ({exc}); `pip install pfl` in a separate environment (see benchmarks/README.md)"

    class PflClassifier(nn.Module):
        """The workload's module, with the ``loss`` and ``metrics`` methods pfl's ``PyTorchModel`` calls."""

        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module(x)

        def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            self.train()
            return F.cross_entropy(self(x), y)

        @torch.no_grad()
        def metrics(self, x: torch.Tensor, y: torch.Tensor, eval: bool = True) -> dict[str, Any]:
            self.eval()
            logits = self(x)
            n = len(y)
            return {"loss": Weighted(F.cross_entropy(logits, y, reduction="sum").item(), n),
                    "accuracy": Weighted(int((logits.argmax(1) == y).sum()), n)}

    class FedAvgWithoutUserEvaluation(FederatedAveraging):
        """pfl's FedAvg, less its evaluation of every user before and after local training at iteration 0."""

        def get_next_central_contexts(self, *args: Any, **kwargs: Any) -> Any:
            contexts, model, metrics = super().get_next_central_contexts(*args, **kwargs)
            if contexts is not None:
                contexts = tuple(dataclasses.replace(c, do_evaluation=False) for c in contexts)
            return contexts, model, metrics

    class EvaluateEveryRound(TrainingProcessCallback):
        """Validates the central model after every central iteration, as the other variants do."""

        def __init__(self, dataset: Any, batch_size: int) -> None:
            self.dataset, self.params, self.last = dataset, NNEvalHyperParams(local_batch_size=batch_size), {}

        def after_central_iteration(self, aggregate_metrics: Metrics, model: Any, *,
                                    central_iteration: int) -> tuple[bool, Metrics]:
            metrics = model.evaluate(self.dataset, lambda n: StringMetricName(f"val {n}"), self.params)
            self.last = {"val_loss": metrics[StringMetricName("val loss")].overall_value,
                         "val_acc": metrics[StringMetricName("val accuracy")].overall_value}
            return False, metrics

    class RoundSampler:
        """pfl's ``user_sampler``: the clients ``FederatedLoop`` samples, one id per call, round after round."""

        def __init__(self, wl: PeerWorkload) -> None:
            self.wl, self.queue = wl, iter(())
            self.generator = torch.Generator().manual_seed(derive_seed(SEED, SAMPLING_STREAM))

        def __call__(self) -> int:
            nxt = next(self.queue, None)
            if nxt is None:
                self.queue = iter(overhead._sample(self.generator, self.wl))
                nxt = next(self.queue)
            return int(nxt)

    def run_pfl(wl: PeerWorkload) -> dict[str, float]:
        module = PflClassifier(overhead.fresh_model(wl))
        tensors = wl.client_tensors
        data = FederatedDataset(lambda uid: PyTorchTensorDataset(tensors[uid], user_id=str(uid)), RoundSampler(wl))
        model = PyTorchModel(module, local_optimizer_create=functools.partial(
            torch.optim.SGD, momentum=module.module.hparams.momentum),
            central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0))
        assert wl.val_tensors is not None
        evaluation = EvaluateEveryRound(PyTorchTensorDataset(wl.val_tensors), 500)
        FedAvgWithoutUserEvaluation().run(
            algorithm_params=NNAlgorithmParams(central_num_iterations=wl.rounds, evaluation_frequency=1,
                                               train_cohort_size=wl.clients_per_round, val_cohort_size=0),
            backend=SimulatedBackend(training_data=data, val_data=data),
            model=model,
            model_train_params=NNTrainHyperParams(local_learning_rate=module.module.hparams.lr,
                                                  local_num_epochs=wl.local_epochs, local_batch_size=wl.batch_size),
            model_eval_params=NNEvalHyperParams(local_batch_size=500),
            callbacks=[evaluation],
            send_metrics_to_platform=False,
        )
        return dict(evaluation.last)

    return run_pfl, pfl.__version__


# ------------------------------------------------------------------------------------------ timing
def runners(with_pfl: bool = True) -> tuple[dict[str, Callable[[PeerWorkload], dict[str, float]]], str]:
    found: dict[str, Callable[[PeerWorkload], dict[str, float]]] = {
        "fedloop": overhead.run_fedloop, "lightning": overhead.run_lightning_by_hand,
        "torch": overhead.run_plain_torch}
    run_pfl, pfl_version = pfl_runner() if with_pfl else (None, "skipped (--no-pfl)")
    if run_pfl is not None:
        found["pfl"] = run_pfl
    return found, pfl_version


def rotations(methods: list[str], repeats: int) -> Iterator[list[str]]:
    """The order of each repetition: rotated by one each time.

    >>> list(rotations(["a", "b", "c"], 4))
    [['a', 'b', 'c'], ['b', 'c', 'a'], ['c', 'a', 'b'], ['a', 'b', 'c']]
    """
    for rep in range(repeats):
        k = rep % len(methods)
        yield methods[k:] + methods[:k]


def measure(wl: PeerWorkload, run: dict[str, Callable[[PeerWorkload], dict[str, float]]], repeats: int,
            warmup_rounds: int) -> dict[str, Any]:
    methods = list(run)
    if warmup_rounds:
        warm = dataclasses.replace(wl, rounds=warmup_rounds)
        for m in methods:
            run[m](warm)
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    metrics: dict[str, dict[str, float]] = {}
    for rep, order in enumerate(rotations(methods, repeats)):
        for m in order:
            wall, cpu_s, metrics[m] = overhead.time_once(run[m], wl)
            seconds[m].append(wall)
            cpu[m].append(cpu_s)
        print(f"  [{wl.name}] repeat {rep + 1}/{repeats}: "
              + "  ".join(f"{m}={seconds[m][-1]:.3f}s" for m in methods), flush=True)
    return summarise(wl, seconds, cpu, metrics)


def spread(values: list[float]) -> float:
    """Sample standard deviation (``n - 1``); 0 for fewer than two values."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(wl: PeerWorkload, seconds: dict[str, list[float]], cpu: dict[str, list[float]],
              metrics: dict[str, dict[str, float]]) -> dict:
    """Per implementation: clients/s (median, sample sd, best), the paired time ratio ``ours / its`` (median,
    sample sd), the ratio of median process-CPU times (least disturbed by other work on shared cores), and the
    final validation metrics."""
    clients = wl.rounds * wl.clients_per_round
    n = len(seconds["fedloop"])
    out: dict[str, Any] = {"workload": wl.name, "description": wl.description, "rounds": wl.rounds, "pairs": n,
                           "methods": {}}
    print(f"\nWorkload {wl.name}: {wl.description}; {wl.rounds} rounds ({clients} clients) per run, "
          f"{wl.steps_per_client:g} steps per client, n = {n} repetitions")
    print(f"  {'implementation':<32}{'clients/s median':>17}{'sd':>8}{'best':>8}"
          f"{'ours time / its time':>22}{'sd':>7}{'CPU ratio':>10}{'val_acc':>9}{'val_loss':>10}")
    for m, times in seconds.items():
        rates = [clients / t for t in times]
        paired = [f / t for f, t in zip(seconds["fedloop"], times)]
        row = {"clients_per_s_median": statistics.median(rates), "clients_per_s_sd": spread(rates),
               "clients_per_s_best": max(rates), "time_ratio_ours_over_it_median": statistics.median(paired),
               "time_ratio_sd": spread(paired),
               "cpu_ratio_ours_over_it": statistics.median(cpu["fedloop"]) / statistics.median(cpu[m]),
               "wall_s": times, "cpu_s": cpu[m], **metrics[m]}
        out["methods"][m] = row
        print(f"  {LABELS[m]:<32}{row['clients_per_s_median']:17.2f}{row['clients_per_s_sd']:8.2f}"
              f"{row['clients_per_s_best']:8.2f}{row['time_ratio_ours_over_it_median']:22.3f}"
              f"{row['time_ratio_sd']:7.3f}{row['cpu_ratio_ours_over_it']:10.3f}{metrics[m]['val_acc']:9.4f}"
              f"{metrics[m]['val_loss']:10.5f}")
    accs = [metrics[m]["val_acc"] for m in seconds]
    out["val_acc_max_difference"] = max(accs) - min(accs)
    print(f"  largest difference in final val_acc between implementations: {out['val_acc_max_difference']:.4f}")
    return out


def versions(pfl_version: str) -> dict[str, str]:
    return {"lightning_fedmut": lightning_fedmut.__version__, "source": overhead.source_version(),
            "torch": torch.__version__, "lightning": __import__("lightning").__version__, "pfl": pfl_version,
            "python": platform.python_version(), "cpus": str(os.cpu_count()),
            "torch_threads": str(torch.get_num_threads())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="A,B,C", help="comma-separated subset of A,B,C (default: A,B,C)")
    p.add_argument("--rounds", default="A=1,B=5,C=1", help="rounds per run, per workload (default: A=1,B=5,C=1)")
    p.add_argument("--repeats", default="A=21,B=21,C=11",
                   help="timed repetitions (each runs every implementation once), per workload")
    p.add_argument("--warmup-rounds", type=int, default=1, help="untimed warm-up rounds per implementation")
    p.add_argument("--no-pfl", action="store_true", help="leave pfl out even where it is installed")
    p.add_argument("--json", metavar="PATH", help="write all figures to this JSON file")
    p.add_argument("--quick", action="store_true", help="smoke run: one repetition of each workload")
    args = p.parse_args(argv)
    rounds = {k: int(v) for k, v in (item.split("=") for item in args.rounds.split(","))}
    repeats = {k: int(v) for k, v in (item.split("=") for item in args.repeats.split(","))}
    if args.quick:
        repeats, args.warmup_rounds = dict.fromkeys(WORKLOADS, 1), 0
    names = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        p.error(f"unknown workloads {unknown}; choose from {', '.join(WORKLOADS)}")

    overhead.silence_lightning_console()
    overhead.FEDLOOP_KWARGS["enable_progress_bar"] = False
    run, pfl_version = runners(with_pfl=not args.no_pfl)
    info = versions(pfl_version)
    print(", ".join(f"{k} {v}" for k, v in info.items()) + f"; load average {overhead._load()}")
    if "pfl" not in run:
        print(f"NOTE: pfl {pfl_version}: the pfl-research column is skipped.")
    results: dict[str, Any] = {"versions": info, "load_start": overhead._load(), "workloads": {}}
    start = time.perf_counter()
    for name in names:
        wl = WORKLOADS[name](rounds=rounds.get(name, 1))
        print(f"\nWorkload {name}: {wl.description}", flush=True)
        results["workloads"][name] = measure(wl, run, repeats.get(name, 5), args.warmup_rounds)
    results["load_end"] = overhead._load()
    print(f"\ntotal wall time {time.perf_counter() - start:.1f} s; load average {results['load_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
