"""``lightning-fedmut fit``: federate any LightningModule from flags or a YAML config, LightningCLI-style."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, lazy_instance
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader

from lightning_fedmut.aggregators import Aggregator, FedAvg
from lightning_fedmut.callbacks import GlobalModelCheckpoint, MutationCallback
from lightning_fedmut.checkpoint import CheckpointWriteError, list_checkpoints
from lightning_fedmut.cli._logging import check_logger, finish_logger, flatten_config, make_logger, offline_notice
from lightning_fedmut.cli._parser import CLIError, make_parser, not_required_with_default, parse, plain, plural
from lightning_fedmut.data import (
    load_partition_json,
    make_clients,
    partition_dirichlet,
    partition_iid,
    partition_shards,
)
from lightning_fedmut.datasets import DATASETS, DatasetDownloadError, labels_of, load_dataset
from lightning_fedmut.loop import FederatedLoop, FederatedResult
from lightning_fedmut.loop.config import class_path
from lightning_fedmut.loop.connectors import tracking
from lightning_fedmut.models import DigitsCNN, default_model

PROG = "lightning-fedmut fit"

DatasetName = Literal["digits", "mnist1d", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100"]
assert DatasetName.__args__ == DATASETS  # type: ignore[attr-defined]

#: FederatedLoop arguments that get their own flags (or are built from them) instead of ``--loop.*``.
_LOOP_SKIP = {"aggregator", "callbacks", "logger", "seed", "algorithm", "enable_model_checkpoint"}
#: ``--loop.*`` options that take a class (``--loop.sampler lightning_fedmut.sampling.ClusteredSampler``).
_LOOP_PLUGINS: dict[str, Any] = {}
#: Defaults of the run that differ from the classes' own: the FedMut paper's setting on the digits.
_LOOP_DEFAULTS = {"loop.rounds": 30, "loop.clients_per_round": 10, "loop.local_epochs": 5}


@dataclass
class PartitionOptions:
    """How the training set is divided among the clients.

    Args:
        scheme: ``iid``, ``dirichlet`` (each class split by Dirichlet(alpha) proportions), ``shards``
            (label-sorted shards dealt to clients) or ``json`` (a ``{client_id: [indices]}`` file).
        num_clients: number of clients (iid, dirichlet, shards).
        alpha: Dirichlet concentration: 0.1 is strongly non-IID, 100 close to IID (dirichlet).
        min_size: the fewest examples a client may hold (dirichlet).
        shards_per_client: shards dealt to each client (shards).
        path: the JSON index map (json).
        seed: seed of the partition; null uses ``--seed``.
    """

    scheme: Literal["iid", "dirichlet", "shards", "json"] = "dirichlet"
    num_clients: PositiveInt = 50  # type: ignore[assignment]
    alpha: float = 0.1
    min_size: NonNegativeInt = 2  # type: ignore[assignment]
    shards_per_client: PositiveInt = 2  # type: ignore[assignment]
    path: str | None = None
    seed: NonNegativeInt | None = None


def data_choice(argv: Sequence[str]) -> str | None:
    """The built-in data set that ``argv`` selects (``--data`` or ``data:`` of a ``--config``), if any.

    It picks the default ``--model`` before parsing, so that ``--data mnist1d`` alone trains the 1-D
    CNN and ``--model.lr=0.05`` applies to it.

    Examples:
        >>> data_choice(["--data", "mnist1d", "--loop.rounds=3"]), data_choice(["--data=my.DataModule"])
        ('mnist1d', None)
    """
    choice = _scan(argv, "data", "digits")
    return choice if isinstance(choice, str) and choice in DATASETS else None


def model_given(argv: Sequence[str]) -> bool:
    """Whether ``argv`` (or a ``--config`` in it) names the model class.

    Then the parser has no default model, whose arguments (say ``lr``) would otherwise carry over to the
    given class.

    Examples:
        >>> model_given(["--model=my.Module"]), model_given(["--model.lr=0.1"])
        (True, False)
    """
    value = _scan(argv, "model", None)
    return isinstance(value, str) or (isinstance(value, dict) and "class_path" in value)


def _scan(argv: Sequence[str], key: str, default: Any) -> Any:
    """The last value ``argv`` gives to ``--key`` (directly, as ``--key.class_path``, or in a ``--config``)."""
    value = default
    for i, arg in enumerate(argv):
        name, eq, given = arg.partition("=")
        if name == f"--{key}.class_path":
            value = {"class_path": given if eq else (argv[i + 1] if i + 1 < len(argv) else "")}
            continue
        if arg.startswith(f"--{key}."):
            continue
        if name not in ("--config", f"--{key}"):
            continue
        if not eq:
            if i + 1 >= len(argv):
                continue
            given = argv[i + 1]
        value = given if name == f"--{key}" else _from_config(given, key, value)
    return value


def _from_config(value: str, key: str, current: Any) -> Any:
    try:
        text = Path(value).read_text() if os.path.isfile(value) else value
        content = yaml.safe_load(text)
    except (OSError, yaml.YAMLError):
        return current
    return content.get(key, current) if isinstance(content, dict) else current


def fit_parser(argv: Sequence[str] = ()) -> ArgumentParser:
    """The parser of ``lightning-fedmut fit`` (its ``--model`` default depends on the data set in ``argv``)."""
    parser = make_parser(
        PROG,
        "Federate a LightningModule with FedMut (or FedAvg with --mutation=null) on a built-in data set or a"
        " LightningDataModule. Every flag also takes the --key=value form; --print_config writes the resolved"
        " YAML, which --config reads back.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML config (e.g. from --print_config).")
    parser.add_argument("--seed", type=NonNegativeInt, default=0,
                        help="Seed of the model's initialisation, the partition, client sampling and mutation.")
    parser.add_argument(
        "--data", type=DatasetName | LightningDataModule, default="digits",
        help=f"A built-in data set ({', '.join(DATASETS)}) or any LightningDataModule (class_path, init_args):"
             " its train_dataloader's dataset is partitioned, its val_dataloader evaluates the global model.",
    )
    parser.add_argument("--data_dir", type=str, default="data",
                        help="Folder of downloaded data sets (torchvision's layout).")
    parser.add_argument("--download", type=bool, default=True,
                        help="Download missing MNIST/Fashion-MNIST/CIFAR files (needs torchvision).")
    parser.add_argument("--batch_size", type=PositiveInt, default=50, help="Local batch size of every client.")
    parser.add_argument("--eval_batch_size", type=PositiveInt, default=500,
                        help="Batch size of the server-side evaluation.")
    parser.add_class_arguments(PartitionOptions, "partition")
    parser.add_argument(
        "--val_fraction", type=float, default=0.0,
        help="Hold out this share (0 <= F < 1) of each client's training examples as the client's validation data"
             " (split seeded by --seed); what a scheduler or callback that monitors val_loss needs. 0: none.",
    )
    data = data_choice(argv)
    model_class, model_kwargs = default_model(data) if data is not None else (DigitsCNN, {})
    parser.add_subclass_arguments(
        LightningModule, "model", required=False,
        default=None if model_given(argv) else lazy_instance(model_class, **model_kwargs),
        help="Any LightningModule by class_path and init_args; default: the built-in model of --data.",
    )
    parser.add_class_arguments(FederatedLoop, "loop", skip=_LOOP_SKIP)
    parser.set_defaults(_LOOP_DEFAULTS)
    not_required_with_default(parser)  # --loop.rounds has a default here, though FederatedLoop requires it
    from lightning_fedmut.algorithms import FederatedAlgorithm, names

    parser.add_argument(
        "--algorithm", type=FederatedAlgorithm | None, default=None,
        help=f"A federated method by name ({', '.join(names())}, or one registered with"
             " lightning_fedmut.algorithms.register; case, spaces, - and _ aside) with its settings as --algorithm.NAME (e.g. --algorithm.mu 0.01). It"
             " brings its own aggregator and start model: do not pass --mutation or --aggregator with it.",
    )
    method_given = _scan(argv, "algorithm", None) is not None
    parser.add_argument(
        "--mutation", type=MutationCallback | None,
        default=None if method_given else lazy_instance(MutationCallback, radius=4.0, acceleration=0.3),
        help="FedMut's MutationCallback (--mutation.radius, --mutation.acceleration, ...), or null for FedAvg"
             " (without --algorithm).",
    )
    parser.add_argument("--aggregator", type=Aggregator | None,
                        default=None if method_given else lazy_instance(FedAvg, weighted=False),
                        help="How client models are combined; FedAvg(weighted=False) is FedMut's uniform mean"
                             " (without --algorithm).")
    parser.add_argument(
        "--model_checkpoint", type=GlobalModelCheckpoint | None, default=lazy_instance(GlobalModelCheckpoint),
        help="Lightning checkpoints of the global model (last.ckpt, and the best rounds by"
             " --model_checkpoint.monitor), written to --loop.checkpoint_dir or --model_checkpoint.dirpath when"
             " one is set; null writes none.",
    )
    parser.add_argument(
        "--ckpt_path", type=str | None, default=None,
        help="Resume: last (the newest federated checkpoint in --loop.checkpoint_dir; with none there yet the"
             " run starts at round 0), a checkpoint file, or a folder of checkpoints (its newest; the folder is only"
             " read, so a run kept read-only goes on in a new --loop.checkpoint_dir). Without it, a"
             " --loop.checkpoint_dir that already holds checkpoints is refused rather than overwritten.",
    )
    parser.add_argument("--logger", type=Literal["wandb", "mlflow", "tensorboard", "csv", "none"], default="wandb",
                        help="wandb (offline when no API key is configured), mlflow (a local file store,"
                             " SAVE_DIR/mlruns), tensorboard, csv or none.")
    parser.add_argument("--project", type=str | None, default=None,
                        help="W&B project / MLflow experiment / TensorBoard and CSV folder name; default:"
                             " WANDB_PROJECT or lightning-fedmut.")
    parser.add_argument("--group", type=str | None, default=None, help="W&B group of the run.")
    parser.add_argument("--run_name", type=str | None, default=None,
                        help="W&B / MLflow run name, TensorBoard and CSV version.")
    parser.add_argument("--save_dir", type=str, default=".",
                        help="Where logs are written (W&B: unless WANDB_DIR is set; MLflow: unless"
                             " MLFLOW_TRACKING_URI is set).")
    parser.add_argument("--history_file", type=str | None, default=None,
                        help="Also write the config and the per-round history to this JSON file.")
    return parser


def algorithm_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the method name of ``--algorithm NAME`` replaced by its registered class's path.

    Names are looked up in :mod:`lightning_fedmut.algorithms`' registry (case, spaces, ``-`` and ``_`` aside); a
    class path or a ``{class_path: ...}`` value is left as it is. An unknown name is a one-line error.

    Examples:
        >>> algorithm_argv(["--algorithm", "scaffold", "--algorithm.init_args.weighted=false"])[:2]
        ['--algorithm', 'lightning_fedmut.algorithms.scaffold.SCAFFOLD']
        >>> algorithm_argv(["--algorithm=FedMutt"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_fedmut.cli._parser.CLIError: --algorithm: expected a registered method name, got 'FedMutt' (did you mean FedMut?); known: FedAvg, FedMut, ...
    """
    out = list(argv)
    for i, arg in enumerate(out):
        name, eq, value = arg.partition("=")
        if name != "--algorithm":
            continue
        if not eq:
            if i + 1 >= len(out):
                continue
            value = out[i + 1]
        if "." in value or value.strip().startswith("{") or value in ("null", "None", ""):
            continue
        from lightning_fedmut.algorithms.registry import algorithm_class

        try:
            cls = algorithm_class(value)
        except ValueError as err:
            message = str(err).removeprefix("Expected `algorithm` to be").removesuffix(".").strip()
            raise CLIError(f"--algorithm: expected {message}") from None
        path = f"{cls.__module__}.{cls.__qualname__}"
        if eq:
            out[i] = f"--algorithm={path}"
        else:
            out[i + 1] = path
    return out


def _method(cfg: Namespace) -> tuple[Any, MutationCallback | None, Aggregator | None]:
    """``(algorithm, mutation, aggregator)`` of ``cfg``: a method given by ``--algorithm`` brings its own parts."""
    from lightning_fedmut.algorithms import FederatedAlgorithm

    algorithm = _build("algorithm", FederatedAlgorithm | None, cfg.algorithm)
    mutation = _build("mutation", MutationCallback | None, cfg.mutation)
    aggregator = _build("aggregator", Aggregator | None, cfg.aggregator)
    if algorithm is not None:
        given = [flag for flag, value in (("--mutation", mutation), ("--aggregator", aggregator)) if value is not None]
        if given:
            raise CLIError(f"--algorithm {algorithm.name} brings its own aggregator and start model: remove"
                           f" {' and '.join(given)}, or give its settings as --algorithm.NAME")
    elif aggregator is None:
        raise CLIError("--aggregator: expected an Aggregator (e.g. lightning_fedmut.aggregators.FedAvg), got null")
    return algorithm, mutation, aggregator


def _loop_method_args(algorithm: Any, aggregator: Aggregator | None) -> dict[str, Any]:
    return {"algorithm": algorithm} if algorithm is not None else {"aggregator": aggregator}


def fit_main(argv: Sequence[str]) -> int:
    """Parse ``argv`` and run the federation; returns the exit code (130 after Ctrl+C, with how to resume)."""
    argv = algorithm_argv(argv)
    parser = fit_parser(argv)
    cfg = parse(parser, argv, none_flags={"--mutation", "--model_checkpoint", "--algorithm"})
    try:
        run_fit(cfg)
    except KeyboardInterrupt:
        print(interrupt_message(argv, cfg.loop.checkpoint_dir), file=sys.stderr, flush=True)
        return 130
    return 0


def resume_command(argv: Sequence[str]) -> str:
    """The command line that resumes the run of ``argv``: the same flags, with ``--ckpt_path last``.

    Examples:
        >>> resume_command(["--loop.rounds=30", "--ckpt_path", "old.ckpt", "--run_name=a b"])
        "lightning-fedmut fit --loop.rounds=30 '--run_name=a b' --ckpt_path last"
    """
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join(["lightning-fedmut", "fit", *kept, "--ckpt_path", "last"])


def interrupt_message(argv: Sequence[str], checkpoint_dir: str | None) -> str:
    """What ``fit`` prints after Ctrl+C: where the run was saved and the command that resumes it."""
    if checkpoint_dir is None:
        return ("Interrupted. No checkpoint was written: set --loop.checkpoint_dir=DIR to make a run resumable"
                " (--ckpt_path last then continues it).")
    return (f"Interrupted. The completed rounds are saved in {checkpoint_dir}; resume with:\n"
            f"  {resume_command(argv)}")


def resume_checkpoint(ckpt_path: str | None, checkpoint_dir: str | None) -> str | None:
    """Apply the rerun rule: what ``FederatedLoop.fit(ckpt_path=...)`` gets, or a :class:`CLIError`.

    - without ``--ckpt_path``, a ``--loop.checkpoint_dir`` that already holds ``.ckpt`` files is refused:
      nothing is overwritten;
    - ``--ckpt_path last`` resumes from the newest federated checkpoint there, and starts at round 0 when the
      folder holds no ``.ckpt`` file yet (so one command line starts a run and resumes it);
    - ``--ckpt_path FILE`` resumes from that file, and ``--ckpt_path FOLDER`` from the newest checkpoint in that
      folder, which is only read: a run kept in a read-only folder goes on in another ``--loop.checkpoint_dir``.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     resume_checkpoint("last", d) is None
        True
    """
    existing = _checkpoint_files(checkpoint_dir)
    if ckpt_path is None:
        if existing:
            shown = ", ".join(p.name for p in existing[:3]) + (", ..." if len(existing) > 3 else "")
            raise CLIError(
                f"--loop.checkpoint_dir={checkpoint_dir} already holds checkpoints ({shown}): pass --ckpt_path last"
                " to resume that run, or choose another --loop.checkpoint_dir (nothing is overwritten)"
            )
        return None
    if ckpt_path == "last":
        if checkpoint_dir is None:
            raise CLIError("--ckpt_path last: expected --loop.checkpoint_dir, the folder to resume from, got none")
        if list_checkpoints(checkpoint_dir):
            return "last"
        if existing:
            raise CLIError(
                f"--ckpt_path last: {checkpoint_dir} holds no federated checkpoint (round-NNNNN.ckpt) to resume,"
                f" only {', '.join(p.name for p in existing[:3])}: choose another --loop.checkpoint_dir"
            )
        return None
    if os.path.isdir(ckpt_path):  # another run's folder (read-only, say): its newest checkpoint, read only
        if not list_checkpoints(ckpt_path):
            raise CLIError(f"--ckpt_path: {ckpt_path} holds no federated checkpoint (round-NNNNN.ckpt) to resume")
        if checkpoint_dir is not None and os.path.realpath(ckpt_path) != os.path.realpath(checkpoint_dir) and existing:
            raise CLIError(
                f"--loop.checkpoint_dir={checkpoint_dir} already holds checkpoints: to extend the run of {ckpt_path}"
                " there, choose an empty --loop.checkpoint_dir (nothing is overwritten)")
        return ckpt_path
    if not os.path.isfile(ckpt_path):
        raise CLIError(f"--ckpt_path: expected last or a checkpoint file, got {ckpt_path!r}: no such file (a folder"
                       " of checkpoints resumes from its newest)")
    return ckpt_path


def _checkpoint_files(folder: str | None) -> list[Path]:
    if folder is None or not os.path.isdir(folder):
        return []
    return sorted(p for p in Path(folder).iterdir() if p.suffix == ".ckpt" and not p.name.startswith("."))


def config_dict(cfg: Namespace) -> dict[str, Any]:
    """The parsed config as plain data (restricted numbers such as ``PositiveInt`` become ``int``), without
    the ``--config`` bookkeeping."""
    out = plain(cfg.clone().as_dict())
    out.pop("config", None)
    out.pop("__path__", None)
    return out


def _loop_plugins() -> dict[str, Any]:
    from lightning_fedmut.client_state import ClientStateStore
    from lightning_fedmut.divergence import DivergenceMonitor
    from lightning_fedmut.execution import ClientExecutor
    from lightning_fedmut.sampling import ClientSampler

    return {"sampler": ClientSampler, "executor": ClientExecutor, "client_state_store": ClientStateStore,
            "divergence": DivergenceMonitor}


_LOOP_PLUGINS.update(_loop_plugins())


def _build(key: str, type_: Any, value: Any) -> Any:
    """Instantiate one class-typed option, turning its constructor's complaint into a one-line error."""
    if value is None or isinstance(value, str):
        return value
    mini = ArgumentParser(exit_on_error=False)
    mini.add_argument(f"--{key}", type=type_)
    try:
        return getattr(mini.instantiate_classes(Namespace(**{key: value})), key)
    except (ValueError, TypeError) as err:  # the constructor's own check (other errors keep their traceback)
        text = str(err)
        if "Errors:" in text:
            items = [ln.strip()[2:] for ln in text.split("Errors:", 1)[1].splitlines() if ln.strip().startswith("- ")]
            text = next((i for i in items if "NoneType" not in i), text)
        name = str(getattr(value, "class_path", type_)).rsplit(".", 1)[-1]
        raise CLIError(f"--{key}: {name}(...) rejected its arguments: {' '.join(text.split())}") from None


def _partitions(options: PartitionOptions, train: Any, seed: int) -> Any:
    seed = options.seed if options.seed is not None else seed
    try:
        if options.scheme == "json":
            if not options.path:
                raise CLIError("--partition.path: expected a JSON file with --partition.scheme=json, got none")
            return load_partition_json(options.path)
        if options.scheme == "iid":
            return partition_iid(len(train), options.num_clients, seed=seed)
        labels = labels_of(train)
        if options.scheme == "dirichlet":
            return partition_dirichlet(labels, options.num_clients, options.alpha, min_size=options.min_size, seed=seed)
        return partition_shards(labels, options.num_clients, options.shards_per_client, seed=seed)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        raise CLIError(f"--partition: {err}") from None


def _data(cfg: Namespace, data: Any) -> tuple[Any, Any, Any]:
    """``(train dataset, server evaluation loader, collate_fn)`` for a built-in name or a DataModule."""
    if isinstance(data, str):
        try:
            split = load_dataset(data, root=cfg.data_dir, download=cfg.download)
        except DatasetDownloadError as err:
            raise CLIError(str(err), code=1) from None
        except ImportError as err:
            raise CLIError(str(err), code=1) from None
        return split.train, DataLoader(split.test, batch_size=cfg.eval_batch_size), None
    data.prepare_data()
    data.setup("fit")
    loader = data.train_dataloader()
    if not isinstance(loader, DataLoader):
        raise CLIError(f"--data: expected {type(data).__name__}.train_dataloader() to return one DataLoader,"
                       f" got {type(loader).__name__}")
    val = data.val_dataloader() if is_overridden("val_dataloader", data, LightningDataModule) else None
    return loader.dataset, val, loader.collate_fn


def _writable_folder(folder: Path) -> tuple[bool, str]:
    """Whether files can be created in ``folder`` (or in the folders that would be made for it); else why not."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return False, f"{str(existing)!r} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return False, f"the folder {str(existing)!r} is read-only"
    return True, ""


def check_val_fraction(value: float) -> float | None:
    """``--val_fraction`` as ``make_clients`` takes it (``None`` for 0), or a one-line :class:`CLIError`.

    Examples:
        >>> check_val_fraction(0.0), check_val_fraction(0.1)
        (None, 0.1)
        >>> check_val_fraction(1.0)
        Traceback (most recent call last):
        ...
        lightning_fedmut.cli._parser.CLIError: --val_fraction: expected a number in [0, 1), got 1.0
    """
    if not 0.0 <= value < 1.0:  # NaN too
        raise CLIError(f"--val_fraction: expected a number in [0, 1), got {value}")
    return value or None


def _clients(cfg: Namespace, train: Any, parts: Any, collate_fn: Any) -> list[Any]:
    """The clients of ``--partition``, each holding out ``--val_fraction`` of its examples for validation."""
    val_fraction = check_val_fraction(cfg.val_fraction)
    kwargs = {"collate_fn": collate_fn} if collate_fn is not None else {}
    try:
        return make_clients(train, parts, batch_size=cfg.batch_size, val_fraction=val_fraction, seed=cfg.seed,
                            **kwargs)
    except (ValueError, TypeError) as err:
        flag = "--val_fraction" if "val_fraction" in str(err) else "--partition"
        raise CLIError(f"{flag}: {err}") from None


def _check_logger(kind: str) -> None:
    """A missing package of ``--logger`` is one line naming the ``pip install``, before anything runs."""
    try:
        check_logger(kind)
    except ImportError as err:
        raise CLIError(f"--logger {kind}: {err}", code=1) from None


def _monitor_error(err: ValueError) -> CLIError | None:
    """The command line's wording of the error for a module that monitors a validation metric no client has."""
    text = str(err)
    if " monitors " not in text or "no validation data" not in text:
        return None
    where = text.split(", but ", 1)[0]
    return CLIError(f"--model: {where}, but the clients have no validation data: pass --val_fraction 0.1 (each"
                    " client holds out 10% of its examples for validation), or monitor a training metric"
                    " (e.g. 'train_loss')")


def check_output_paths(history_file: str | None, checkpoint_dir: str | None) -> None:
    """Refuse, before anything is built or trained, a ``--history_file`` or ``--loop.checkpoint_dir`` that cannot
    be written; nothing is created here.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     check_output_paths(d, None)
        Traceback (most recent call last):
        ...
        lightning_fedmut.cli._parser.CLIError: --history_file: expected a file to write the history to, got ..., which is a folder: pass a file path such as .../history.json
    """
    if history_file is not None:
        path = Path(history_file)
        if path.is_dir():
            raise CLIError(f"--history_file: expected a file to write the history to, got {history_file!r}, which is"
                           f" a folder: pass a file path such as {os.path.join(history_file, 'history.json')}")
        if path.exists() and not os.access(path, os.W_OK):
            raise CLIError(f"--history_file: cannot write {history_file!r}: the file is read-only; pass another"
                           " --history_file")
        ok, why = _writable_folder(path.parent if str(path.parent) else Path("."))
        if not ok:
            raise CLIError(f"--history_file: cannot write {history_file!r}: {why}; pass a --history_file in a"
                           " writable folder")
    if checkpoint_dir is not None:
        ok, why = _writable_folder(Path(checkpoint_dir))
        if not ok:
            raise CLIError(
                f"--loop.checkpoint_dir: cannot save checkpoints in {checkpoint_dir!r}: {why}. Pass a writable folder;"
                " to extend a run kept in a read-only folder, pass that folder as --ckpt_path with a new"
                " --loop.checkpoint_dir")


def check_fit_args(argv: Sequence[str]) -> None:
    """Check a ``fit`` command line without training or loading data: parse it, then build the options that need
    no data (the mutation, aggregator, model checkpoint, loop plugins and the loop itself). A sweep checks each
    configuration so before the first runs.

    Examples:
        >>> check_fit_args(["--loop.rounds=3", "--mutation.radius=2.0", "--logger=none"])
        >>> check_fit_args(["--loop.min_clients_per_round=20"])
        Traceback (most recent call last):
        ...
        lightning_fedmut.cli._parser.CLIError: --loop: Expected `min_clients_per_round` to be an integer <= 10, got 20.
    """
    argv = algorithm_argv(argv)
    cfg = parse(fit_parser(argv), argv, none_flags={"--mutation", "--model_checkpoint", "--algorithm"})
    check_val_fraction(cfg.val_fraction)
    _check_logger(cfg.logger)
    method = build_method(cfg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the run itself warns
            FederatedLoop(**method.loop_arguments(loop_options(cfg)), seed=cfg.seed)
    except (ValueError, TypeError) as err:
        raise CLIError(f"--loop: {err}") from None


@dataclass
class Method:
    """The method a config names, built: a registered ``algorithm``, or a ``mutation`` and an ``aggregator``, with
    the extra federated ``callbacks`` (a benchmark method's) and the ``model_checkpoint``."""

    algorithm: Any
    mutation: MutationCallback | None
    aggregator: Aggregator | None
    callbacks: list[Any]
    model_checkpoint: GlobalModelCheckpoint | None

    @property
    def name(self) -> str:
        return self.algorithm.name if self.algorithm is not None else "FedMut" if self.mutation is not None else "FedAvg"

    def loop_arguments(self, options: dict[str, Any], *, with_model_checkpoint: bool = True) -> dict[str, Any]:
        """``FederatedLoop``'s arguments: the loop ``options`` plus the method's parts and callbacks."""
        callbacks = [*([self.mutation] if self.mutation is not None else []), *self.callbacks]
        if with_model_checkpoint and self.model_checkpoint is not None:
            callbacks.append(self.model_checkpoint)
        return {**options, **_loop_method_args(self.algorithm, self.aggregator), "callbacks": callbacks}


def build_method(cfg: Namespace) -> Method:
    """The method of ``cfg`` (``--algorithm``, or ``--mutation`` and ``--aggregator``; a benchmark cell's
    ``callbacks``), each part built by its class with one-line errors."""
    from lightning_fedmut.callbacks import FederatedCallback

    algorithm, mutation, aggregator = _method(cfg)
    callbacks = [_build("callbacks", FederatedCallback, c) for c in getattr(cfg, "callbacks", None) or []]
    model_checkpoint = _build("model_checkpoint", GlobalModelCheckpoint | None, cfg.model_checkpoint)
    return Method(algorithm, mutation, aggregator, callbacks, model_checkpoint)


def loop_options(cfg: Namespace) -> dict[str, Any]:
    """``--loop.*`` as ``FederatedLoop`` arguments, its class-typed options (sampler, executor ...) built."""
    options = plain(cfg.loop.as_dict())
    for key, type_ in _LOOP_PLUGINS.items():
        if isinstance(options.get(key), dict):
            options[key] = _build(key, type_, cfg.loop[key])
    return options


@dataclass
class Run:
    """What a ``fit`` config describes, built: ``fit`` and each benchmark cell (and so each sweep run) start here."""

    model: LightningModule
    data: Any  #: the DataModule, or the built-in data set's name
    clients: list[Any]
    val: Any  #: the server's evaluation loader; ``None`` without one, or when the model has no validation_step
    method: Method
    loop_options: dict[str, Any]
    unevaluated: bool  #: evaluation data given, but the model has no validation_step

    def loop(self, **kwargs: Any) -> FederatedLoop:
        """The ``FederatedLoop`` of this run; ``kwargs`` (logger, seed ...) are added to the config's arguments."""
        with_model_checkpoint = kwargs.pop("with_model_checkpoint", True)
        try:
            return FederatedLoop(**self.method.loop_arguments(self.loop_options,
                                                              with_model_checkpoint=with_model_checkpoint), **kwargs)
        except (ValueError, TypeError) as err:
            raise CLIError(f"--loop: {err}") from None


def build_run(cfg: Namespace) -> Run:
    """Build the model (with ``--seed``), the method, the data, the clients and the loop's options of ``cfg``."""
    for key in ("batch_size", "eval_batch_size"):  # plain ints in the loaders (a checkpoint holds plain data)
        if isinstance(getattr(cfg, key, None), int):
            setattr(cfg, key, int(getattr(cfg, key)))
    torch.manual_seed(cfg.seed)
    model = _build("model", LightningModule, cfg.model)
    method = build_method(cfg)
    data = _build("data", LightningDataModule, cfg.data)
    train, val, collate_fn = _data(cfg, data)
    parts = _partitions(cfg.partition, train, cfg.seed)
    clients = _clients(cfg, train, parts, collate_fn)
    unevaluated = val is not None and not is_overridden("validation_step", model, LightningModule)
    options = loop_options(cfg)
    if options["clients_per_round"] > len(clients):
        raise CLIError(f"--loop.clients_per_round: expected at most the number of clients ({len(clients)}),"
                       f" got {options['clients_per_round']}")
    return Run(model, data, clients, None if unevaluated else val, method, options, unevaluated)


def run_fit(cfg: Namespace) -> FederatedResult:
    """Build everything ``cfg`` describes and run the federation."""
    start = time.perf_counter()
    check_output_paths(cfg.history_file, cfg.loop.checkpoint_dir)
    check_val_fraction(cfg.val_fraction)
    _check_logger(cfg.logger)
    ckpt_path = resume_checkpoint(cfg.ckpt_path, cfg.loop.checkpoint_dir)
    run = build_run(cfg)
    model, method = run.model, run.method
    if run.unevaluated:
        print(f"{type(model).__name__} has no validation_step: the global model is not evaluated")
    logger = make_logger(cfg.logger, save_dir=cfg.save_dir, project=cfg.project, group=cfg.group, name=cfg.run_name)
    checkpoint = method.model_checkpoint
    try:
        # --model_checkpoint decides the Lightning checkpoints of the global model: the loop writes none of its own
        loop = run.loop(logger=logger, seed=cfg.seed, enable_model_checkpoint=False, with_model_checkpoint=(
            checkpoint is not None and (checkpoint.dirpath is not None or bool(run.loop_options["checkpoint_dir"]))))
    except CLIError:
        finish_logger(logger)
        raise
    config = config_dict(cfg)
    for key, obj in (("model", model), ("mutation", method.mutation), ("aggregator", method.aggregator),
                     ("data", run.data), ("model_checkpoint", checkpoint), ("algorithm", method.algorithm)):
        if isinstance(config.get(key), dict):  # the class path as the loop logs it (module.Class)
            config[key]["class_path"] = class_path(obj)
    # logged when fit starts the run: after a resumed run's id is read from the checkpoint, so W&B continues it
    tracking.defer_hyperparams(logger, flatten_config(config))
    data_name = cfg.data if isinstance(cfg.data, str) else type(run.data).__name__
    print(f"{method.name}: {type(model).__name__} on {data_name},"
          f" {len(run.clients)} clients, {loop.clients_per_round} per round, {plural(loop.rounds, 'round')}"
          + (f"; resuming from {ckpt_path}" if ckpt_path is not None else ""), flush=True)
    try:
        result = loop.fit(model, run.clients, val_dataloaders=run.val, ckpt_path=ckpt_path)
    except ValueError as err:  # a checkpoint of another run: the loop names each setting that differs
        monitor = _monitor_error(err)  # checked before the first round: the fix on the command line
        if monitor is None and not str(err).startswith("Cannot resume"):
            raise
        finish_logger(logger)
        raise monitor or CLIError(f"--ckpt_path: {err}") from None
    except CheckpointWriteError as err:  # a full disk: the message names the file, the round and what is safe
        finish_logger(logger)
        raise CLIError(f"--loop.checkpoint_dir: {err}", code=1) from None
    folder = finish_logger(logger)
    _report(result, time.perf_counter() - start)
    if folder is not None:
        print(offline_notice(folder))
    if cfg.history_file:
        Path(cfg.history_file).parent.mkdir(parents=True, exist_ok=True)
        with open(cfg.history_file, "w") as f:
            json.dump({"config": config, "history": result.history}, f, default=str)
    return result


def _report(result: FederatedResult, seconds: float) -> None:
    if not result.history:
        return
    last = result.history[-1]
    shown = {k: v for k, v in last.items() if k.startswith("val_") and isinstance(v, (int, float))}
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in shown.items()) or "no validation metrics"
    print(f"Finished {plural(len(result.history), 'round')} in {seconds:.1f} s; round {last['round']}: {metrics}")
