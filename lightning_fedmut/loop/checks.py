"""Checks of the loop's arguments and of what ``fit`` is handed, before any training starts."""

from __future__ import annotations

import importlib.util
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import Checkpoint, DeviceStatsMonitor, ProgressBar
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader

from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.callbacks.base import FederatedCallback, StartModelCallback
from lightning_fedmut.data.client import Client
from lightning_fedmut.divergence import DivergenceMonitor
from lightning_fedmut.functional.state import first_non_finite
from lightning_fedmut.utilities.trainer import RESERVED_TRAINER_KEYS, trainer_parameters
from lightning_fedmut.utilities.validation import check_int
from lightning_fedmut.utilities.warnings import warn_user


def check_instance(name: str, value: Any, cls: type, what: str, default: Any = None) -> Any:
    """``value`` (or a new ``default()`` when it is ``None``) if it is a ``cls``, else a ``TypeError`` naming it."""
    if value is None and default is not None:
        value = default()
    if not isinstance(value, cls):
        raise TypeError(f"Expected `{name}` to be {what}, got {type(value).__name__}.")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"Expected `{name}` to be a bool, got {value!r}.")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"Expected `{name}` in {choices}, got {value!r}.")
    return value


def check_checkpoint_dir(checkpoint_dir: Any) -> Path | None:
    if checkpoint_dir is None:
        return None
    if not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(f"Expected `checkpoint_dir` to be a path or None, got {type(checkpoint_dir).__name__}.")
    if not str(os.fspath(checkpoint_dir)).strip():
        raise ValueError("Expected `checkpoint_dir` to be a folder path or None, got ''. Pass a folder name.")
    path = Path(checkpoint_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"Expected `checkpoint_dir` to be a folder (created if missing), got {str(path)!r}, which is a file. Pass a"
            " folder path; to resume from a checkpoint file, pass it as `ckpt_path`."
        )
    return path


def check_algorithm(algorithm: Any, aggregator: Any, sampler: Any, callbacks: Any
                    ) -> tuple[FederatedAlgorithm | None, Any, Any, Any]:
    """``(algorithm, aggregator, sampler, callbacks)`` for the loop: an algorithm's own parts, its federated
    callbacks before the loop's ``callbacks``; ``algorithm`` with ``aggregator`` or ``sampler`` is refused."""
    if algorithm is None:
        return None, aggregator, sampler, callbacks
    if not isinstance(algorithm, FederatedAlgorithm):
        raise TypeError(f"Expected `algorithm` to be a FederatedAlgorithm (e.g. FedMut(), from"
                        f" lightning_fedmut.algorithms) or None, got {type(algorithm).__name__}.")
    for name, value in (("aggregator", aggregator), ("sampler", sampler)):
        if value is not None:
            raise ValueError(
                f"Expected either `algorithm` or `{name}`, got both (algorithm={algorithm.name},"
                f" {name}={type(value).__name__}): the algorithm brings its own {name}. Pass the {name} to the"
                f" algorithm (`FederatedAlgorithm({name}=...)`, or a preset's settings), or drop `algorithm`."
            )
    extra = [] if callbacks is None else [callbacks] if isinstance(callbacks, (FederatedCallback, Callback)) else list(callbacks)
    return algorithm, algorithm.aggregator, algorithm.sampler, [*algorithm.federated_callbacks, *extra]


def check_callbacks(callbacks: Any) -> list[FederatedCallback]:
    if callbacks is None:
        return []
    if isinstance(callbacks, (FederatedCallback, Callback)):
        callbacks = [callbacks]
    out = []
    for cb in callbacks:
        if isinstance(cb, Callback):
            raise TypeError(
                f"{type(cb).__name__} is a Lightning Callback: pass it to the client Trainers with"
                f" `trainer_kwargs={{'callbacks': [{type(cb).__name__}(...)]}}`; `callbacks=` takes FederatedCallback."
            )
        if not isinstance(cb, FederatedCallback):
            raise TypeError(f"Expected every item of `callbacks` to be a FederatedCallback, got {type(cb).__name__}.")
        out.append(cb)
    starts = [type(cb).__name__ for cb in out if isinstance(cb, StartModelCallback)]
    if len(starts) > 1:
        raise ValueError(
            f"{' and '.join(starts)} both replace the clients' start models (each is a StartModelCallback, and a loop"
            " takes one); pass only one of them in `callbacks`."
        )
    keys = [cb.state_key for cb in out]
    clash = sorted({k for k in keys if keys.count(k) > 1})
    if clash:
        raise ValueError(
            f"Two callbacks share the `state_key` {clash[0]!r}; give each instance its own `state_key`"
            " so their checkpoint states do not collide."
        )
    return out


def check_trainer_kwargs(trainer_kwargs: Any) -> dict[str, Any]:
    if trainer_kwargs is None:
        return {}
    if not isinstance(trainer_kwargs, dict):
        raise TypeError(f"Expected `trainer_kwargs` to be a dict, got {type(trainer_kwargs).__name__}.")
    unknown = sorted(set(trainer_kwargs) - trainer_parameters())
    if unknown:
        raise ValueError(f"`trainer_kwargs` has keys that lightning.pytorch.Trainer does not take: {unknown}.")
    reserved = sorted(set(trainer_kwargs) & RESERVED_TRAINER_KEYS)
    if reserved:
        raise ValueError(
            f"`trainer_kwargs` sets {reserved}, which the loop controls: use `local_epochs` or `local_steps`."
        )
    if trainer_kwargs.get("logger") not in (None, False):
        raise ValueError(
            f"`trainer_kwargs` sets logger={trainer_kwargs['logger']!r}: client Trainers never log on their own (a"
            " logger there would open a run or a folder per client per round); what they log reaches"
            " `result.client_history` and the W&B client table through their ClientLogger. Pass the logger to"
            " `FederatedLoop(logger=...)`, which logs every round with step=round."
        )
    check_accelerator(trainer_kwargs.get("accelerator", "auto"))
    check_lightning_callbacks(trainer_kwargs)
    devices = trainer_kwargs.get("devices", 1)
    multi = (
        (isinstance(devices, int) and (devices > 1 or devices == -1))
        or (isinstance(devices, (list, tuple)) and len(devices) > 1)
        or (isinstance(devices, str) and (devices in ("auto", "-1") or "," in devices.strip(",")
                                          or (devices.isdigit() and int(devices) > 1)))
        or trainer_kwargs.get("num_nodes", 1) != 1
    )
    if multi:
        raise ValueError(
            f"Client Trainers run in-process on one device; got devices={devices!r},"
            f" num_nodes={trainer_kwargs.get('num_nodes', 1)!r}. Use devices=1 (pick the GPU with"
            " `devices=[i]`), and run several federations in parallel processes to use more devices."
        )
    return dict(trainer_kwargs)


def check_accelerator(accelerator: Any) -> None:
    """Refuse an accelerator this machine does not have, before any Trainer is built (in one line)."""
    if accelerator in ("auto", "cpu"):
        return
    from lightning.pytorch.accelerators import Accelerator, AcceleratorRegistry, CUDAAccelerator, MPSAccelerator

    if isinstance(accelerator, Accelerator):
        available = type(accelerator).is_available()
    elif isinstance(accelerator, str) and (accelerator == "gpu" or accelerator in AcceleratorRegistry):
        available = (CUDAAccelerator.is_available() or MPSAccelerator.is_available() if accelerator == "gpu"
                     else AcceleratorRegistry[accelerator]["accelerator"].is_available())
    else:
        names = ", ".join(repr(n) for n in sorted({"auto", "gpu", *AcceleratorRegistry}))
        raise ValueError(
            f"Expected `trainer_kwargs['accelerator']` to be one of {names} or an Accelerator, got {accelerator!r}.")
    if not available:
        here = [n for n, cls in (("cuda", CUDAAccelerator), ("mps", MPSAccelerator)) if cls.is_available()]
        raise ValueError(
            f"`trainer_kwargs` asks for accelerator={accelerator!r}, which this machine does not have (available:"
            f" {', '.join(repr(n) for n in ['cpu', *here])}); pass accelerator='auto', which takes a GPU if there is"
            " one, or 'cpu'."
        )


def _on_cpu(accelerator: Any) -> bool:
    """Whether client Trainers with this (available) accelerator run on the CPU."""
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator

    if accelerator == "auto":
        return not (CUDAAccelerator.is_available() or MPSAccelerator.is_available())
    return accelerator == "cpu" or isinstance(accelerator, CPUAccelerator)


def check_lightning_callbacks(trainer_kwargs: dict[str, Any]) -> None:
    """Refuse, with the reason and the fix, the Lightning callbacks and flags client Trainers cannot run."""
    user = trainer_kwargs.get("callbacks") or []
    callbacks = [user] if isinstance(user, Callback) else list(user)
    instead = (
        " To save the global model as Lightning checkpoints (`last.ckpt`, the best rounds by a metric), use"
        " `FederatedLoop(callbacks=[GlobalModelCheckpoint(monitor=..., mode=...)])` from lightning_fedmut.callbacks;"
        " `FederatedLoop(checkpoint_dir=...)` writes the checkpoints a run resumes from."
    )
    if trainer_kwargs.get("enable_checkpointing"):
        raise ValueError(
            "`trainer_kwargs` sets enable_checkpointing=True, which would make every client Trainer checkpoint its"
            " own local training, every round: client Trainers do not checkpoint." + instead
        )
    for cb in callbacks:
        name = type(cb).__name__
        if isinstance(cb, Checkpoint):
            raise TypeError(
                f"{name} in `trainer_kwargs['callbacks']` would checkpoint every client's local training, every"
                " round, not the federated model: client Trainers do not checkpoint." + instead
            )
        if isinstance(cb, ProgressBar) and trainer_kwargs.get("enable_progress_bar") is not True:
            raise ValueError(
                f"{name} in `trainer_kwargs['callbacks']`: client Trainers run without a progress bar, since one per"
                " client per round would flood the console; the loop shows one bar over rounds and clients"
                " (`FederatedLoop(enable_progress_bar=True)`). Drop it, or pass `enable_progress_bar=True` in"
                " `trainer_kwargs` as well for a bar per client Trainer."
            )
        if (isinstance(cb, DeviceStatsMonitor) and getattr(cb, "_cpu_stats", None) is not False
                and _on_cpu(trainer_kwargs.get("accelerator", "auto")) and importlib.util.find_spec("psutil") is None):
            raise ValueError(
                "DeviceStatsMonitor in `trainer_kwargs['callbacks']` reads CPU statistics with psutil, which is not"
                " installed: `pip install psutil` (or run the client Trainers on a GPU)."
            )


#: Names of validation metrics: ``val_loss``, ``val/acc``, ``valid_loss``, ``validation_acc`` ...
_VALIDATION_METRIC = re.compile(r"^val(id(ation)?)?($|[_/.\-])", re.IGNORECASE)


def is_validation_metric(name: str) -> bool:
    """Whether ``name`` names a validation metric (``val_loss``, ``val/acc``, ``valid_acc`` ...).

    Examples:
        >>> [is_validation_metric(n) for n in ("val_loss", "val/acc", "validation_acc", "train_loss", "value")]
        [True, True, True, False, False]
    """
    return bool(_VALIDATION_METRIC.match(name))


def _scheduler_monitors(conf: Any) -> list[str]:
    """The metrics that the schedulers in a ``configure_optimizers`` return value monitor, in order."""
    out: list[str] = []

    def visit(item: Any) -> None:
        if isinstance(item, dict):
            if isinstance(item.get("monitor"), str):
                out.append(item["monitor"])
            visit(item.get("lr_scheduler"))
        elif isinstance(item, (list, tuple)):
            for x in item:
                visit(x)

    visit(conf)
    return out


def _module_monitors(model: LightningModule) -> list[tuple[str, str]]:
    """``(where, metric)`` for each metric that the module's schedulers and ``configure_callbacks`` monitor.

    Both are called on the module itself, as Lightning calls them, with the random state saved and restored;
    what they return is dropped (an optimizer over the parameters changes nothing). A method that needs a
    Trainer (``self.trainer.estimated_stepping_batches``) cannot be inspected outside one and is skipped.
    """
    optimizers = is_overridden("configure_optimizers", model, LightningModule)
    callbacks = is_overridden("configure_callbacks", model, LightningModule)
    if not (optimizers or callbacks):
        return []
    found: list[tuple[str, str]] = []
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            if optimizers:
                try:
                    conf = model.configure_optimizers()
                except Exception:  # noqa: BLE001 - it may need the Trainer that fit gives it
                    conf = None
                found += [(f"`configure_optimizers` of {type(model).__name__} returns a scheduler that", m)
                          for m in _scheduler_monitors(conf)]
            if callbacks:
                try:
                    extra = model.configure_callbacks()
                except Exception:  # noqa: BLE001
                    extra = []
                extra = [extra] if isinstance(extra, Callback) else list(extra or [])
                found += [(f"{type(cb).__name__} from `configure_callbacks` of {type(model).__name__}", monitor)
                          for cb in extra if isinstance(monitor := getattr(cb, "monitor", None), str)]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
    return found


def check_client_validation(model: LightningModule, clients: list[Client], trainer_kwargs: dict[str, Any] | None = None
                            ) -> None:
    """Refuse a scheduler or a Lightning callback that monitors a validation metric when a client has no validation
    data: it would fail that client's training. Nothing to check (and no copy) when every client has some."""
    missing = [c.id for c in clients if c.val_data is None]
    if not missing:
        return
    user = (trainer_kwargs or {}).get("callbacks") or []
    monitors = [(f"{type(cb).__name__} in `trainer_kwargs['callbacks']`", monitor)
                for cb in ([user] if isinstance(user, Callback) else user)
                if isinstance(monitor := getattr(cb, "monitor", None), str)]
    monitors += _module_monitors(model)
    for where, metric in monitors:
        if is_validation_metric(metric):
            shown = ", ".join(repr(i) for i in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            who = f"client {shown} has" if len(missing) == 1 else f"clients {shown} have"
            raise ValueError(
                f"{where} monitors {metric!r}, but {who} no validation data, so their training would fail. Give"
                " every client validation data (`make_clients(..., val_fraction=0.1)`, or `Client(val_data=...)`),"
                " or monitor a training metric (e.g. 'train_loss')."
            )


def check_fit(model: Any, clients: Any, val_dataloaders: Any, clients_per_round: int,
              trainer_kwargs: dict[str, Any] | None = None) -> list[Client]:
    """Validate ``fit``'s arguments; return the clients as a list.

    ``trainer_kwargs`` (the loop's, already checked) adds its Lightning callbacks to the monitors that
    :func:`check_client_validation` compares with the clients' validation data.
    """
    if not isinstance(model, LightningModule):
        raise TypeError(f"Expected `model` to be a LightningModule, got {type(model).__name__}.")
    if not any(p.is_floating_point() for p in model.parameters()):
        raise ValueError(
            f"Expected `model` to have floating-point parameters to federate; {type(model).__name__} has none."
        )
    bad_key = first_non_finite(model.state_dict())
    if bad_key is not None:
        raise ValueError(f"Expected `model` to hold finite weights, got NaN or Inf in {bad_key!r}.")
    if isinstance(clients, Client) or not isinstance(clients, Sequence):
        raise TypeError(f"Expected `clients` to be a list of Client, got {type(clients).__name__}.")
    clients = list(clients)
    bad = [type(c).__name__ for c in clients if not isinstance(c, Client)]
    if bad:
        raise TypeError(f"Expected every item of `clients` to be a Client, got {bad[0]}. Use make_clients(...).")
    ids = [c.id for c in clients]
    dup = sorted({repr(i) for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"Expected unique client ids, got duplicates: {', '.join(dup)}.")
    if clients_per_round > len(clients):
        raise ValueError(
            f"Expected `clients_per_round` <= the number of clients ({len(clients)}), got {clients_per_round}."
        )
    loaders = val_dataloaders if isinstance(val_dataloaders, (list, tuple)) else [val_dataloaders]
    if val_dataloaders is not None and not all(isinstance(d, DataLoader) for d in loaders):
        raise TypeError(
            "Expected `val_dataloaders` to be a DataLoader or a list of DataLoaders, got"
            f" {type(val_dataloaders).__name__}."
        )
    for i, loader in enumerate(loaders if val_dataloaders is not None else []):
        try:  # one batch now: a loader that cannot be read fails before any client trains
            next(iter(loader))
        except StopIteration:
            raise ValueError(f"`val_dataloaders`[{i}] yields no batch: give it at least one example.") from None
        except Exception as exc:
            raise ValueError(
                f"`val_dataloaders`[{i}] raised on its first batch ({type(exc).__name__}: {exc}); fix the loader"
                " before training."
            ) from exc
    if val_dataloaders is not None and not is_overridden("validation_step", model, LightningModule):
        raise ValueError(
            f"`val_dataloaders` was given but {type(model).__name__} has no `validation_step`:"
            " define one that logs metrics, or drop `val_dataloaders`."
        )
    check_client_validation(model, clients, trainer_kwargs)
    return clients


def check_sampled(sampler: Any, picked: list[Any], k: int, index: dict[int, int], round_index: int) -> list[Client]:
    """``picked`` if it is ``k`` distinct clients of the federation (``index`` maps their ids), else an error.

    A sampler whose ``fixed_size`` is ``False`` (Poisson sampling, say) may return any number of distinct clients
    of the federation, none included; ``k`` is then its expected number.
    """
    known = [id(c) in index for c in picked]
    distinct = len({id(c) for c in picked})
    fixed = getattr(sampler, "fixed_size", True)
    if (fixed and len(picked) != k) or not all(known) or distinct != len(picked):
        wanted = f"`clients_per_round`={k} distinct clients" if fixed else "distinct clients"
        raise ValueError(
            f"{type(sampler).__name__}.sample() must return {wanted} of the"
            f" federation; in round {round_index} it returned {len(picked)} clients ({sum(known)} of the"
            f" federation, {distinct} distinct)."
        )
    return picked


def check_workers(workers: Any, clients_per_round: int) -> int | None:
    """``workers``, checked, and no more than ``clients_per_round``: a round has no work for more (with a warning).

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     check_workers(64, 10), check_workers(None, 10), check_workers(4, 10)
        (10, None, 4)
        >>> print(caught[0].message)
        `workers`=64 is more than `clients_per_round`=10, the most clients a round trains at once: starting 10 workers.
    """
    if workers is None:
        return None
    workers = check_int("workers", workers, low=1)
    if workers > clients_per_round:
        warn_user(f"`workers`={workers} is more than `clients_per_round`={clients_per_round}, the most clients a round"
                  f" trains at once: starting {clients_per_round} workers.", UserWarning)
        return clients_per_round
    return workers


def check_divergence(divergence: Any) -> DivergenceMonitor | None:
    """``True``: the default monitor; ``False``: none; else a DivergenceMonitor."""
    if divergence is True:
        return DivergenceMonitor()
    if divergence is False or divergence is None:
        return None
    if not isinstance(divergence, DivergenceMonitor):
        raise TypeError(f"Expected `divergence` to be a bool or a DivergenceMonitor, got {type(divergence).__name__}.")
    return divergence
