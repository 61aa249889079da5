"""One place that assembles a federated checkpoint from every part of a run with state, and restores it."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningModule

from lightning_fedmut import _tracking as tracking
from lightning_fedmut import checkpoint as ckpt
from lightning_fedmut._config import class_path
from lightning_fedmut.functional.state import copy_

if TYPE_CHECKING:
    from lightning_fedmut.data.client import Client
    from lightning_fedmut.loop import FederatedLoop


class CheckpointConnector:
    """Writes federated checkpoints by a policy (every N rounds, the last round, on stop and on interrupt).

    A checkpoint holds the global model, the sampler, aggregator, callbacks and client-state store, the
    run's progress and its history; restoring it puts every part back as it was after that round.
    """

    def __init__(self, dirpath: Path | None, every_n_rounds: int, keep_last: int) -> None:
        self.dirpath = dirpath
        self.every_n_rounds = every_n_rounds
        self.keep_last = keep_last
        self.fingerprint: dict[str, Any] = {}
        self._round_start: dict[str, Any] = {}
        self._lock: IO[str] | None = None

    @property
    def enabled(self) -> bool:
        return self.dirpath is not None

    def lock(self) -> None:
        """Take the folder for this fit: a second live run writing to it is refused, naming the process."""
        if self.dirpath is None:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        handle = open(self.dirpath / ".lock", "a+")  # noqa: SIM115 - held until unlock()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise RuntimeError(
                f"`checkpoint_dir`={str(self.dirpath)!r} is in use by another running fit ({owner}). Two runs writing"
                " to one folder would overwrite each other's checkpoints: give this run its own `checkpoint_dir`,"
                " or wait for the other to finish."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def should_save(self, rounds_done: int, total_rounds: int, stopping: bool) -> bool:
        """Whether to save after ``rounds_done`` rounds."""
        return self.enabled and (rounds_done % self.every_n_rounds == 0 or rounds_done == total_rounds or stopping)

    def on_round_start(self, loop: FederatedLoop) -> None:
        """Remember what the round is about to change, for a checkpoint taken if it is interrupted."""
        if self.enabled:
            self._round_start = {"sampler": _clone(loop.sampler.state_dict())}

    def save_on_interrupt(self, loop: FederatedLoop, module: LightningModule) -> None:
        """After Ctrl+C among the clients of a round, save the rounds before it, if not saved yet."""
        if self.enabled and self._round_start and loop.round > loop.progress.last_saved:
            self.save(loop, module, loop.round, sampler_state=self._round_start["sampler"])

    def save(
        self, loop: FederatedLoop, module: LightningModule, rounds_done: int, sampler_state: dict[str, Any] | None = None
    ) -> None:
        if not self.enabled:
            return
        if not loop.is_global_zero:  # with workers, rank 0 alone writes; every rank keeps the same progress
            loop.progress.last_saved = rounds_done
            return
        progress = {**loop.progress.state_dict(), "round": rounds_done, "rounds_done": rounds_done,
                    "last_saved": rounds_done}
        state = {
            "format": "lightning_fedmut",
            "version": ckpt.CHECKPOINT_VERSION,
            "rounds_done": rounds_done,
            "progress": progress,
            "fingerprint": self.fingerprint,
            "model": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
            "sampler": loop.sampler.state_dict() if sampler_state is None else sampler_state,
            "aggregator": loop.aggregator.state_dict(),
            "callbacks": {cb.state_key: cb.state_dict() for cb in loop.callbacks},
            "client_states": loop.client_states.state_dict(),
            "divergence": None if loop.divergence is None else loop.divergence.state_dict(),
            "history": loop.history[:rounds_done],
            "client_history": [r for r in loop.client_history if r["round"] < rounds_done],
            "failures": [f for f in loop.failures if f["round"] < rounds_done],
            "timings": loop.timings[:rounds_done],
            "run_id": tracking.run_id(loop.logger),
        }
        protect = [] if loop.divergence is None else loop.divergence.protected
        ckpt.save_checkpoint(state, self.dirpath, self.keep_last, protect=protect)
        loop.progress.last_saved = rounds_done

    def restore(self, loop: FederatedLoop, module: LightningModule, saved: dict[str, Any]) -> None:
        """Put every part of ``loop`` and ``module`` back as ``saved`` holds it."""
        state = module.state_dict()
        copy_([state[k] for k in saved["model"]], list(saved["model"].values()))
        loop.sampler.load_state_dict(saved["sampler"])
        loop.aggregator.load_state_dict(saved["aggregator"])
        for cb in loop.callbacks:
            if cb.state_key in saved["callbacks"]:
                cb.load_state_dict(saved["callbacks"][cb.state_key])
            elif cb.state_dict():
                raise ValueError(
                    f"Cannot resume: the checkpoint holds no state for callback {cb.state_key!r}; it was made"
                    f" with callbacks {sorted(saved['callbacks'])}."
                )
        loop.client_states.load_state_dict(saved["client_states"])
        if loop.divergence is not None and saved.get("divergence") is not None:
            loop.divergence.load_state_dict(saved["divergence"])
        loop.history[:] = saved["history"]
        loop.client_history[:] = saved["client_history"]
        loop.failures[:] = saved["failures"]
        loop.timings[:] = saved["timings"]
        loop.progress.load_state_dict(saved["progress"])


def fingerprint(loop: FederatedLoop, model: LightningModule, clients: list[Client]) -> dict[str, Any]:
    """The settings a checkpoint of this run must match to be resumed (plain data, as checkpoints hold)."""
    ids = [repr(c.id) for c in clients]
    shapes = [f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in model.state_dict().items()]
    hparams = loop.hparams
    return {
        "model": class_path(model),
        "model_hparams": _plain(dict(getattr(model, "hparams", {}))),
        "model_state": _digest(shapes) if len(shapes) > 8 else shapes,
        "clients": len(clients),
        "client_ids": _digest(ids) if len(ids) > 8 else ids,
        "client_data": _digest([_data_digest(c) for c in clients]),
        "clients_per_round": loop.clients_per_round,
        "local_epochs": loop.local_epochs,
        "local_steps": loop.local_steps,
        "seed": loop.seed,
        "aggregator": _plain(hparams["aggregator"]),
        "sampler": _plain(hparams["sampler"]),
        "callbacks": _plain([cb for cb, real in zip(hparams["callbacks"], loop.callbacks) if hasattr(real, "hparams")]),
    }


def _data_digest(client: Client) -> str:
    """What identifies a client's data: its example indices when it is a subset of a dataset, else its size."""
    dataset = getattr(client.data, "dataset", None)
    indices = getattr(dataset, "indices", None)
    if indices is None:
        return f"{client.id!r}:{client.num_examples}"
    return f"{client.id!r}:" + hashlib.sha1(",".join(map(str, list(indices))).encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """``value`` as plain data (numbers, strings, lists, dicts); anything else as its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


def _digest(items: list[str]) -> str:
    return f"{len(items)} items, sha1 " + hashlib.sha1("\n".join(items).encode()).hexdigest()[:12]


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return obj
