"""``lightning-fedmut demo``: FedMut against uniform FedAvg on the bundled digits, in about 45 s on two CPU cores."""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence, Sized
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveInt
from torch.utils.data import DataLoader

from lightning_fedmut.aggregators import FedAvg
from lightning_fedmut.callbacks import MutationCallback
from lightning_fedmut.cli._logging import finish_logger, make_logger, offline_notice
from lightning_fedmut.cli._parser import CLIError, make_parser, parse, plain, plural
from lightning_fedmut.data import make_clients, partition_dirichlet
from lightning_fedmut.datasets import labels_of, load_dataset
from lightning_fedmut.loop import FederatedLoop, FederatedResult
from lightning_fedmut.models import DigitsCNN

PROG = "lightning-fedmut demo"
METHODS = ("FedMut", "FedAvg")


def run_demo(
    rounds: PositiveInt = 30,  # type: ignore[assignment]
    clients: PositiveInt = 50,  # type: ignore[assignment]
    clients_per_round: PositiveInt = 10,  # type: ignore[assignment]
    alpha: float = 0.1,
    seeds: PositiveInt = 3,  # type: ignore[assignment]
    local_epochs: PositiveInt = 5,  # type: ignore[assignment]
    batch_size: PositiveInt = 50,  # type: ignore[assignment]
    lr: float = 0.01,
    momentum: float = 0.5,
    radius: NonNegativeFloat = 4.0,  # type: ignore[assignment]
    acceleration: NonNegativeFloat = 0.3,  # type: ignore[assignment]
    min_size: NonNegativeInt = 2,  # type: ignore[assignment]
    output_dir: str = "fedmut_demo",
    logger: Literal["wandb", "csv", "none"] = "wandb",
    project: str = "lightning-fedmut-demo",
) -> dict[str, list[FederatedResult]]:
    """FedMut against uniform FedAvg on scikit-learn's digits, on the same seeds, clients and initial models.

    Prints a per-round table of the global model's test accuracy (mean over seeds) and one progress bar per
    run, writes ``accuracy.png``, ``label_distribution.png`` and ``history.csv`` to ``output_dir``, and logs
    every run to W&B (offline when no API key is configured), W&B itself kept quiet. Rounds are numbered
    from 0 in the table, the CSV, the plot and W&B alike, as in ``result.history``.

    Args:
        rounds: federated rounds.
        clients: number of clients the digits are divided among.
        clients_per_round: clients sampled per round.
        alpha: Dirichlet concentration of the label split (0.1: strongly non-IID).
        seeds: number of seeds (0, 1, ...); each gives its own partition, initial model and sampling.
        local_epochs: local epochs per client per round.
        batch_size: local batch size.
        lr: local SGD learning rate.
        momentum: local SGD momentum.
        radius: FedMut's mutation radius.
        acceleration: FedMut's initial acceleration beta_0.
        min_size: the fewest examples a client may hold.
        output_dir: folder of the plots and the CSV history.
        logger: wandb, csv or none.
        project: W&B project (CSV folder) of the runs.

    Returns:
        ``{"FedMut": [result per seed], "FedAvg": [...]}``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = load_dataset("digits")
    labels = labels_of(split.train)
    train_size, test_size = len(cast(Sized, split.train)), len(cast(Sized, split.test))
    val = DataLoader(split.test, batch_size=test_size)
    print(
        f"FedMut vs FedAvg on digits ({train_size} train / {test_size} test images): {clients} clients"
        f" (Dirichlet alpha={alpha}), {clients_per_round} per round, {plural(rounds, 'round')},"
        f" {plural(local_epochs, 'local epoch')}, batch {batch_size}, SGD lr {lr} momentum {momentum}; FedMut radius"
        f" {radius}, acceleration {acceleration}; uniform averaging; {'seed 0' if seeds == 1 else f'seeds 0-{seeds - 1}'}",
        flush=True,
    )
    settings = {"dataset": "digits", "clients": clients, "alpha": alpha, "min_size": min_size,
                "clients_per_round": clients_per_round, "rounds": rounds, "local_epochs": local_epochs,
                "batch_size": batch_size, "lr": lr, "momentum": momentum, "radius": radius,
                "acceleration": acceleration, "aggregator": "uniform mean"}
    results: dict[str, list[FederatedResult]] = {m: [] for m in METHODS}
    folders: list[str] = []
    first_partition: list[np.ndarray] = []
    group = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny CNN: more threads only add synchronisation
    try:
        for seed in range(seeds):
            try:
                parts = partition_dirichlet(labels, clients, alpha, min_size=min_size, seed=seed)
            except (ValueError, RuntimeError) as err:
                raise CLIError(f"--partition: {err}") from None
            first_partition = first_partition or parts
            federation = make_clients(split.train, parts, batch_size=batch_size)
            for method in METHODS:
                result, folder = _one_run(method, seed, federation, val, settings, logger=logger, project=project,
                                          group=group, save_dir=out)
                results[method].append(result)
                if folder is not None:
                    folders.append(folder)
    finally:
        torch.set_num_threads(threads)
    print()
    print(comparison_table(results))
    _write_history(results, out / "history.csv")
    _plots(results, labels, first_partition, out, alpha)
    if folders:
        print(offline_notice(*folders))
    return results


def _one_run(method: str, seed: int, federation: list, val: DataLoader, settings: dict[str, Any], *, logger: str,
             project: str, group: str, save_dir: Path) -> tuple[FederatedResult, str | None]:
    torch.manual_seed(seed)  # the same initial model for both methods
    model = DigitsCNN(lr=settings["lr"], momentum=settings["momentum"])
    callbacks = ([MutationCallback(radius=settings["radius"], acceleration=settings["acceleration"])]
                 if method == "FedMut" else [])
    if len(federation) < settings["clients_per_round"]:
        raise CLIError(f"--loop.clients_per_round: expected at most --partition.num_clients ({len(federation)}),"
                       f" got {settings['clients_per_round']}")
    try:
        loop = FederatedLoop(rounds=settings["rounds"], clients_per_round=settings["clients_per_round"],
                             local_epochs=settings["local_epochs"], aggregator=FedAvg(weighted=False),
                             callbacks=callbacks, seed=seed, enable_progress_bar=True)
    except (ValueError, TypeError) as err:
        raise CLIError(f"--loop: {err}") from None
    loop.logger = make_logger(logger, save_dir=save_dir, project=project, group=group,
                              name=f"{method.lower()}-seed{seed}", job_type=method, silent=True)
    if loop.logger is not None:
        loop.logger.log_hyperparams({"demo.method": method, "demo.seed": seed,
                                     **{f"demo.{k}": v for k, v in settings.items()}})
    start = time.perf_counter()
    result = loop.fit(model, federation, val_dataloaders=val)
    folder = finish_logger(loop.logger)
    acc = result.metric("val_acc")
    print(f"  {method} seed {seed}: val_acc {acc[-1]:.3f} after {plural(len(acc), 'round')}"
          f" ({time.perf_counter() - start:.1f} s)", flush=True)
    return result, folder


def mean_curves(results: dict[str, list[FederatedResult]], metric: str = "val_acc") -> dict[str, np.ndarray]:
    """The per-round mean of ``metric`` over seeds, per method.

    Examples:
        >>> r = {"A": [FederatedResult(history=[{"round": 0, "val_acc": 0.2}]),
        ...            FederatedResult(history=[{"round": 0, "val_acc": 0.4}])]}
        >>> mean_curves(r)["A"].round(3).tolist()
        [0.3]
    """
    return {m: np.mean([r.metric(metric) for r in runs], axis=0) for m, runs in results.items() if runs}


def comparison_table(results: dict[str, list[FederatedResult]], metric: str = "val_acc") -> str:
    """The per-round table the demo prints: each method's mean ``metric`` over seeds and the difference.

    Examples:
        >>> r = {"FedMut": [FederatedResult(history=[{"round": 0, "val_acc": 0.5}])],
        ...      "FedAvg": [FederatedResult(history=[{"round": 0, "val_acc": 0.25}])]}
        >>> print(comparison_table(r))
        test accuracy of the global model (mean over 1 seed)
        round  FedMut  FedAvg  FedMut-FedAvg
            0   0.500   0.250         +0.250
        FedMut ahead in 1 of 1 round; last round (0) 0.500 vs 0.250
    """
    curves = mean_curves(results, metric)
    fedmut, fedavg = curves["FedMut"], curves["FedAvg"]
    n = len(results["FedMut"])
    lines = [f"test accuracy of the global model (mean over {n} seed{'s' if n != 1 else ''})",
             "round  FedMut  FedAvg  FedMut-FedAvg"]
    rounds = [int(row["round"]) for row in results["FedMut"][0].history if metric in row]
    for r, a, b in zip(rounds, fedmut, fedavg):
        lines.append(f"{r:>5}  {a:>6.3f}  {b:>6.3f}  {a - b:>+13.3f}")
    ahead = int((fedmut > fedavg).sum())
    lines.append(f"FedMut ahead in {ahead} of {plural(len(fedmut), 'round')}; last round ({rounds[-1]})"
                 f" {fedmut[-1]:.3f} vs {fedavg[-1]:.3f}")
    return "\n".join(lines)


def _write_history(results: dict[str, list[FederatedResult]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "seed", "round", "val_acc", "val_loss"])
        for method, runs in results.items():
            for seed, result in enumerate(runs):
                for row in result.history:
                    writer.writerow([method, seed, row["round"], row.get("val_acc"), row.get("val_loss")])
    print(f"Per-round history: {path}")


def _plots(results: dict[str, list[FederatedResult]], labels: np.ndarray, partition: list[np.ndarray], out: Path,
           alpha: float) -> None:
    try:
        from lightning_fedmut.plotting import plot_label_distribution, plot_metric
    except ImportError as err:  # pragma: no cover - plotting is part of the package
        print(f"Plots skipped: {err}")
        return
    try:
        plot_metric(results, metric="val_acc", path=out / "accuracy.png",
                    title=f"digits, {len(partition)} clients, Dirichlet {alpha}: test accuracy")
        plot_label_distribution(labels, partition, num_classes=10, path=out / "label_distribution.png",
                                title=f"Label distribution of the {len(partition)} clients (seed 0)")
    except ImportError as err:  # matplotlib missing
        print(f"Plots skipped: {err}")
        return
    print(f"Plots: {out / 'accuracy.png'}, {out / 'label_distribution.png'}")


#: The demo's flags, named as ``lightning-fedmut fit`` names the same setting, and the short name each also takes.
FLAGS = {
    "rounds": ("loop.rounds", "federated rounds"),
    "clients": ("partition.num_clients", "number of clients the digits are divided among"),
    "clients_per_round": ("loop.clients_per_round", "clients sampled per round"),
    "alpha": ("partition.alpha", "Dirichlet concentration of the label split (0.1: strongly non-IID)"),
    "min_size": ("partition.min_size", "the fewest examples a client may hold"),
    "local_epochs": ("loop.local_epochs", "local epochs per client per round"),
    "batch_size": ("batch_size", "local batch size"),
    "lr": ("model.lr", "local SGD learning rate"),
    "momentum": ("model.momentum", "local SGD momentum"),
    "radius": ("mutation.radius", "FedMut's mutation radius"),
    "acceleration": ("mutation.acceleration", "FedMut's initial acceleration beta_0"),
    "seeds": ("seeds", "number of seeds (0, 1, ...); each gives its own partition, initial model and sampling"),
    "output_dir": ("output_dir", "folder of the plots and the CSV history"),
    "logger": ("logger", "wandb (offline when no API key is configured), csv or none"),
    "project": ("project", "W&B project (CSV folder) of the runs"),
}


def demo_parser() -> Any:
    """The parser of ``lightning-fedmut demo``: ``fit``'s flag names (``--loop.rounds``, ``--mutation.radius``
    ...), each also under its short name (``--rounds``, ``--radius`` ...)."""
    import inspect

    parser = make_parser(PROG, "FedMut against uniform FedAvg on scikit-learn's bundled digits: the paper's local"
                               " settings, the same seeds for both, a per-round table, two plots and W&B runs."
                               " The flags are those of `lightning-fedmut fit` for the same settings; each also"
                               " takes its short name (--rounds for --loop.rounds).")
    parameters = inspect.signature(run_demo).parameters
    hints = inspect.get_annotations(run_demo, eval_str=True)
    for name, (flag, text) in FLAGS.items():
        names = [f"--{flag}"] + ([f"--{name}"] if name != flag else [])
        parser.add_argument(*names, type=hints[name], default=parameters[name].default, help=f"{text}.")
    return parser


def demo_kwargs(cfg: Any) -> dict[str, Any]:
    """The parsed flags as :func:`run_demo`'s keyword arguments.

    Examples:
        >>> kwargs = demo_kwargs(parse(demo_parser(), ["--loop.rounds=3", "--radius=2"]))
        >>> kwargs["rounds"], kwargs["radius"], kwargs["clients"]
        (3, 2.0, 50)
    """
    return {name: plain(cfg[flag]) for name, (flag, _) in FLAGS.items()}


def demo_main(argv: Sequence[str]) -> int:
    """Parse ``argv`` and run the demo; returns the exit code."""
    run_demo(**demo_kwargs(parse(demo_parser(), list(argv))))
    return 0
