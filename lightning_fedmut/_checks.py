"""Checks of the loop's arguments and of what ``fit`` is handed, before any training starts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader

from lightning_fedmut.callbacks.base import FederatedCallback
from lightning_fedmut.data.client import Client
from lightning_fedmut.functional.state import first_non_finite
from lightning_fedmut.utilities.trainer import RESERVED_TRAINER_KEYS, trainer_parameters


def check_instance(name: str, value: Any, cls: type, what: str) -> Any:
    """``value`` if it is a ``cls``, else a ``TypeError`` naming the argument."""
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
    return Path(checkpoint_dir)


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
            f"`trainer_kwargs` sets logger={trainer_kwargs['logger']!r}: client Trainers never log on their own."
            " Pass the logger to `FederatedLoop(logger=...)`, which logs every round with step=round."
        )
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


def check_fit(model: Any, clients: Any, val_dataloaders: Any, clients_per_round: int) -> list[Client]:
    """Validate ``fit``'s arguments; return the clients as a list."""
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
    if val_dataloaders is not None and not is_overridden("validation_step", model, LightningModule):
        raise ValueError(
            f"`val_dataloaders` was given but {type(model).__name__} has no `validation_step`:"
            " define one that logs metrics, or drop `val_dataloaders`."
        )
    return clients


def check_sampled(sampler: Any, picked: list[Any], k: int, index: dict[int, int], round_index: int) -> list[Client]:
    """``picked`` if it is ``k`` distinct clients of the federation (``index`` maps their ids), else an error."""
    known = [id(c) in index for c in picked]
    distinct = len({id(c) for c in picked})
    if len(picked) != k or not all(known) or distinct != len(picked):
        raise ValueError(
            f"{type(sampler).__name__}.sample() must return `clients_per_round`={k} distinct clients of the"
            f" federation; in round {round_index} it returned {len(picked)} clients ({sum(known)} of the"
            f" federation, {distinct} distinct)."
        )
    return picked
