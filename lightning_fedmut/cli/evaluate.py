"""``lightning-fedmut validate`` and ``test``: evaluate a saved global model on the server's data, and per client.

The model and the data are built as ``lightning-fedmut fit`` builds them (the same flags, so a fit's command line
repeated with ``validate`` and ``--ckpt_path`` evaluates what it trained), the weights come from ``--ckpt_path``
(a Lightning ``last.ckpt`` of :class:`~lightning_fedmut.callbacks.GlobalModelCheckpoint`, a federated
``round-NNNNN.ckpt``, a folder of them, or ``last``), and the evaluation is Lightning's own: ``Trainer.validate``
or ``Trainer.test`` on a quiet, short-lived Trainer. With ``--per_client`` every client's data is evaluated too,
and each metric is summarised over the clients by :func:`summarize`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader

from lightning_fedmut.checkpoint import (
    CorruptCheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_resume_checkpoint,
)
from lightning_fedmut.cli._parser import CLIError, parse, plural
from lightning_fedmut.cli.fit import _build, _clients, _data, _partitions, algorithm_argv, fit_parser
from lightning_fedmut.execution._calls import interruptible, merged_scalars
from lightning_fedmut.execution.evaluation import EVAL_TRAINER_DEFAULTS
from lightning_fedmut.functional.summary import lower_is_better, summarize, worst_count
from lightning_fedmut.loop import checks
from lightning_fedmut.utilities.trainer import quiet_lightning

__all__ = ["check_weights", "evaluate_main", "evaluate_parser", "load_weights", "lower_is_better", "run_evaluate",
           "summarize", "summary_line", "worst_count"]

Stage = Literal["validate", "test"]
STAGES: tuple[str, ...] = ("validate", "test")
#: The head of a federated checkpoint file (``lightning_fedmut.checkpoint``'s format).
_FEDERATED_MAGIC = b"lightning_fedmut checkpoint\n"
_STEP = {"validate": "validation_step", "test": "test_step"}
_LOADER = {"validate": "val_dataloader", "test": "test_dataloader"}


# ------------------------------------------------------------------------------------------ functional core
def summary_line(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """The per-client summary in one line.

    Examples:
        >>> summary_line(summarize([{"val_acc": 0.5}, {"val_acc": 1.0}]))
        'val_acc mean 0.7500 std 0.3536 (n=2), worst 10% (1 client) 0.5000'
    """
    parts = []
    for name, s in summary.items():
        std = "n/a" if s["std"] is None else f"{s['std']:.4f}"
        parts.append(f"{name} mean {s['mean']:.4f} std {std} (n={s['n']}), worst 10% "
                     f"({plural(s['worst_count'], 'client')}) {s['worst_10pct']:.4f}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------ checkpoints
def load_weights(ckpt_path: str, checkpoint_dir: str | None) -> tuple[Path, dict[str, torch.Tensor], int | None]:
    """``(file, state_dict, rounds)``: the global model's weights in ``ckpt_path`` and after how many rounds.

    ``ckpt_path`` is a federated checkpoint (``round-NNNNN.ckpt``, read by
    :func:`~lightning_fedmut.checkpoint.load_checkpoint`, which checks it before unpickling), a Lightning checkpoint
    (``last.ckpt``: its ``state_dict``, read with ``torch.load(..., weights_only=True)``), a folder (its newest
    federated checkpoint, else its ``last.ckpt``) or ``last`` (the same in ``checkpoint_dir``). Anything else is a
    :class:`CLIError`.

    Examples:
        >>> load_weights("last", None)
        Traceback (most recent call last):
        ...
        lightning_fedmut.cli._parser.CLIError: --ckpt_path last: expected --loop.checkpoint_dir, the folder of the run, got none
    """
    if ckpt_path == "last":
        if checkpoint_dir is None:
            raise CLIError("--ckpt_path last: expected --loop.checkpoint_dir, the folder of the run, got none")
        folder, flag = checkpoint_dir, f"--ckpt_path last: --loop.checkpoint_dir={checkpoint_dir}"
    elif os.path.isdir(ckpt_path):
        folder, flag = ckpt_path, f"--ckpt_path: {ckpt_path}"
    else:
        folder, flag = None, "--ckpt_path"
    if folder is not None:
        if list_checkpoints(folder):
            try:
                found = load_resume_checkpoint(folder, None)
            except (CorruptCheckpointError, ValueError) as err:
                raise CLIError(f"{flag}: {' '.join(str(err).split())}") from None
            assert found is not None
            path, state = found
            return path, _model_state(state, path), int(state["rounds_done"])
        last = Path(folder) / "last.ckpt"
        if not last.is_file():
            raise CLIError(f"{flag}: expected a folder holding round-NNNNN.ckpt or last.ckpt, got one holding"
                           " neither" if os.path.isdir(folder) else f"{flag}: no such folder")
        ckpt_path = str(last)
    if not os.path.isfile(ckpt_path):
        raise CLIError(f"--ckpt_path: expected last, a checkpoint file (last.ckpt, round-NNNNN.ckpt) or a folder of"
                       f" checkpoints, got {ckpt_path!r}: no such file")
    path = Path(ckpt_path)
    with open(path, "rb") as f:
        federated = f.read(len(_FEDERATED_MAGIC)) == _FEDERATED_MAGIC
    if federated:
        try:
            state = load_checkpoint(path, history=False)  # the weights alone: a file copied away from its history
        except ValueError as err:  # corrupt, unsafe or of another version: the message says which
            raise CLIError(f"--ckpt_path: {' '.join(str(err).split())}") from None
        return path, _model_state(state, path), int(state["rounds_done"])
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - not a torch file, or one holding objects besides data: never unpickled
        raise CLIError(f"--ckpt_path: {str(path)!r} is neither a federated nor a Lightning checkpoint that loads"
                       f" as data: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    weights = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        keys = sorted(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise CLIError(f"--ckpt_path: expected a Lightning checkpoint with a state_dict of tensors in {str(path)!r},"
                       f" got {keys}")
    epoch = state.get("epoch")
    return path, weights, int(epoch) + 1 if isinstance(epoch, int) else None


def _model_state(state: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    model = state.get("model")
    if not isinstance(model, dict):
        raise CLIError(f"--ckpt_path: {str(path)!r} holds no global model")
    return model


def check_weights(model: LightningModule, weights: Mapping[str, torch.Tensor]) -> None:
    """Refuse ``weights`` that do not fit ``model``, naming the first missing, unexpected or misshapen keys.

    Examples:
        >>> model = LightningModule()
        >>> model.layer = torch.nn.Linear(2, 1)
        >>> check_weights(model, {"layer.weight": torch.zeros(1, 3), "head.bias": torch.zeros(1)})
        Traceback (most recent call last):
        ...
        lightning_fedmut.cli._parser.CLIError: --ckpt_path: the checkpoint does not fit LightningModule: missing keys layer.bias; unexpected keys head.bias; layer.weight has shape (1, 3) in the checkpoint, (1, 2) in the model. Pass the --model and --data flags of the fit that wrote it
    """
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k} has shape {tuple(weights[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
              for k, v in own.items() if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    problems = [f"{what} keys {_first(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected))
                if keys] + shapes[:2]
    if problems:
        raise CLIError(f"--ckpt_path: the checkpoint does not fit {type(model).__name__}: {'; '.join(problems)}."
                       " Pass the --model and --data flags of the fit that wrote it")


def _first(keys: Sequence[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (f" (and {len(keys) - shown} more)" if len(keys) > shown else "")


# ------------------------------------------------------------------------------------------ the command
def evaluate_parser(stage: Stage, argv: Sequence[str] = ()) -> ArgumentParser:
    """The parser of ``lightning-fedmut validate`` / ``test``: ``fit``'s flags, plus ``--per_client`` and
    ``--output``; ``--ckpt_path`` names the weights to evaluate."""
    parser = fit_parser(argv)
    parser.prog = f"lightning-fedmut {stage}"
    data_text = ("the server's validation data: the held-out split of a built-in data set (the one fit evaluates"
                 " on), the val_dataloader of a LightningDataModule" if stage == "validate" else
                 "the test data: the held-out split of a built-in data set (they have one held-out split, so test"
                 " and validate use the same data), the test_dataloader of a LightningDataModule")
    parser.description = (
        f"Evaluate a saved global model with Lightning's Trainer.{stage} on {data_text}; with --per_client also on"
        " every client's data (mean, spread and worst 10 % of clients). The model, data and partition are built"
        " from the same flags as lightning-fedmut fit, so a fit's command line with --ckpt_path evaluates what it"
        " trained; the training flags are accepted and unused.")
    for action in parser._actions:
        if action.dest == "ckpt_path":
            action.help = ("Required: the weights to evaluate: a Lightning checkpoint (last.ckpt, round=N.ckpt), a"
                           " federated checkpoint (round-NNNNN.ckpt), a folder of checkpoints (its newest federated"
                           " one, else its last.ckpt), or last (the same in --loop.checkpoint_dir).")
    parser.add_argument("--per_client", type=bool, default=False, nargs="?", const=True,
                        help="Also evaluate every client's data (its validation part with --val_fraction, else its"
                             " training part), in batches of --eval_batch_size, and summarise each metric.")
    parser.add_argument("--output", type=str | None, default=None,
                        help="Write the metrics, the per-client rows and their summary to this JSON file.")
    return parser


def evaluate_main(argv: Sequence[str], stage: Stage = "validate") -> int:
    """Parse ``argv`` and run ``lightning-fedmut validate`` (or ``test``); returns the exit code."""
    if stage not in STAGES:
        raise ValueError(f"Expected `stage` to be one of {', '.join(STAGES)}, got {stage!r}.")
    argv = list(argv)
    argv = algorithm_argv(argv)  # the fit's command line may name its method
    cfg = parse(evaluate_parser(stage, argv), argv, none_flags={"--mutation", "--model_checkpoint", "--algorithm"})
    run_evaluate(cfg, stage)
    return 0


def run_evaluate(cfg: Namespace, stage: Stage) -> dict[str, Any]:
    """Load the weights ``cfg`` names into the model it describes and evaluate them; print and return the result.

    The result holds ``stage``, ``ckpt_path``, ``rounds`` (after how many rounds the weights were saved, when the
    checkpoint says), ``metrics`` (the server data's), ``num_examples``, and with ``--per_client`` also
    ``clients`` (one row per client: ``client``, ``num_examples``, ``part`` and the metrics) and ``summary``
    (:func:`summarize` of the rows); otherwise those two are ``None``. Every check runs before the first
    evaluation.
    """
    if cfg.ckpt_path is None:
        raise CLIError("--ckpt_path: expected last, a checkpoint file (last.ckpt, round-NNNNN.ckpt) or a folder of"
                       " checkpoints, got none")
    _check_output(cfg.output)
    try:
        trainer_kwargs = checks.check_trainer_kwargs(cfg.loop.trainer_kwargs)
    except (ValueError, TypeError) as err:
        raise CLIError(f"--loop.trainer_kwargs: {err}") from None
    path, weights, rounds = load_weights(cfg.ckpt_path, cfg.loop.checkpoint_dir)
    torch.manual_seed(cfg.seed)
    model = _build("model", LightningModule, cfg.model)
    check_weights(model, weights)
    model.load_state_dict(weights, strict=True)
    step = _STEP[stage]
    if not is_overridden(step, model, LightningModule):
        hint = " (validate runs validation_step)" if stage == "test" else ""
        raise CLIError(f"--model: expected a LightningModule with a {step} for {stage}, got {type(model).__name__},"
                       f" which has none{hint}")
    data = _build("data", LightningDataModule, cfg.data)
    train, loader, collate_fn = _data(cfg, data)
    if not isinstance(data, str):
        loader = _datamodule_loader(data, stage)
    clients = _client_loaders(cfg, train, collate_fn) if cfg.per_client else []

    cache: dict[str, list[Any]] = {}
    metrics = _run(stage, model, loader, trainer_kwargs, cache, prepare_data=True)
    result: dict[str, Any] = {"stage": stage, "ckpt_path": str(path), "rounds": rounds, "metrics": metrics,
                              "num_examples": _size(loader), "clients": None, "summary": None}
    data_name = data if isinstance(data, str) else type(data).__name__
    after = f", after {plural(rounds, 'round')}" if rounds is not None else ""
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) or "no metrics logged"
    print(f"{stage}: {type(model).__name__} from {path.name}{after}, on {data_name}"
          f" ({plural(result['num_examples'] or 0, 'example')}): {shown}", flush=True)
    if clients:
        rows = []
        for cid, part, client_loader in clients:
            row = _run(stage, model, client_loader, trainer_kwargs, cache, prepare_data=False)
            rows.append({"client": cid, "num_examples": _size(client_loader), "part": part, **row})
        result["clients"], result["summary"] = rows, summarize(rows, list(metrics) or None)
        parts = sorted({part for _, part, _ in clients})
        print(f"per client ({plural(len(rows), 'client')}, {' or '.join(parts)} part of each):"
              f" {summary_line(result['summary'])}", flush=True)
    if cfg.output:
        out = Path(cfg.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=_json_value) + "\n")
    return result


def _run(stage: Stage, model: LightningModule, loader: DataLoader, trainer_kwargs: dict[str, Any],
         cache: dict[str, list[Any]], prepare_data: bool) -> dict[str, float]:
    """``Trainer.validate`` or ``Trainer.test`` on a quiet, short-lived Trainer; the logged scalars."""
    with quiet_lightning(cache, prepare_data=prepare_data):
        trainer = Trainer(**{**EVAL_TRAINER_DEFAULTS, **trainer_kwargs})
        method = trainer.validate if stage == "validate" else trainer.test
        results = interruptible(trainer, method, model, dataloaders=loader, verbose=False)
    return merged_scalars(results)


def _datamodule_loader(data: LightningDataModule, stage: Stage) -> DataLoader:
    name = _LOADER[stage]
    if not is_overridden(name, data, LightningDataModule):
        raise CLIError(f"--data: expected a LightningDataModule with a {name} for {stage}, got"
                       f" {type(data).__name__}, which has none")
    data.setup(stage)
    loader = getattr(data, name)()
    if not isinstance(loader, DataLoader):
        raise CLIError(f"--data: expected {type(data).__name__}.{name}() to return one DataLoader, got"
                       f" {type(loader).__name__}")
    return loader


def _client_loaders(cfg: Namespace, train: Any, collate_fn: Any) -> list[tuple[Any, str, DataLoader]]:
    """``(client id, part, loader)`` per client, built as ``fit`` builds them (``--partition``, ``--val_fraction``):
    the client's validation examples when it holds some, else its training examples, in order, in batches of
    ``--eval_batch_size``."""
    clients = _clients(cfg, train, _partitions(cfg.partition, train, cfg.seed), collate_fn)
    out = []
    for client in clients:
        val = client.val_data if isinstance(client.val_data, DataLoader) else None
        source, part = (val, "val") if val is not None else (client.data, "training")
        loader = DataLoader(source.dataset, batch_size=cfg.eval_batch_size, shuffle=False,
                            collate_fn=source.collate_fn)
        out.append((client.id, part, loader))
    return out


def _check_output(output: str | None) -> None:
    if output is None:
        return
    path = Path(output)
    if path.is_dir():
        raise CLIError(f"--output: expected a JSON file to write, got {output!r}, which is a folder")
    existing = path.parent if str(path.parent) else Path(".")
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK) or (path.exists()
                                                                                and not os.access(path, os.W_OK)):
        raise CLIError(f"--output: cannot write {output!r}: pass a file in a writable folder")


def _size(loader: DataLoader) -> int | None:
    try:
        return len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)

