"""One place that assembles a federated checkpoint from every part of a run with state, and restores it."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from lightning_fedmut import checkpoint as ckpt
from lightning_fedmut.functional.state import copy_, frozen_keys
from lightning_fedmut.loop.config import class_path
from lightning_fedmut.loop.connectors import tracking
from lightning_fedmut.utilities.warnings import warn_user

if TYPE_CHECKING:
    from lightning_fedmut.data.client import Client
    from lightning_fedmut.loop import FederatedLoop


#: ``checkpoint_every=None`` writes a checkpoint every round while one is at most this many bytes, and every
#: ``ceil(size / AUTO_BYTES_PER_ROUND)`` rounds when larger: on average at most 20 MB a round, 2 GB per 100 rounds ...
AUTO_BYTES_PER_ROUND = 20 * 10**6
#: ... but at least every this many rounds, however large (a crash never loses more; the size warning says the cost).
AUTO_MAX_EVERY = 25
#: Warn at setup when the checkpoints kept on disk at once would exceed this many bytes ...
WARN_KEPT_BYTES = 2 * 10**9
#: ... or when those written over the run would.
WARN_WRITTEN_BYTES = 20 * 10**9


class CheckpointConnector:
    """Writes federated checkpoints by a policy (every N rounds, the last round, on stop and on interrupt).

    A checkpoint holds the global model, the sampler, aggregator, callbacks and client-state store and the
    run's progress; the history rows are appended once to ``history.jsonl`` beside it. Restoring it puts every
    part back as it was after that round. When the federation policy freezes entries (a peft model's base under
    :func:`~lightning_fedmut.adapters.adapter_policy`, parameters with ``requires_grad=False``), the checkpoint
    holds the federated and local entries only, with :func:`frozen_digest` of the frozen ones: on resume they
    come from the module passed to ``fit``, and a module whose frozen entries differ is refused. With
    ``model_checkpoint``, each save also writes ``last.ckpt``, a
    Lightning checkpoint of the global model, unless a
    :class:`~lightning_fedmut.callbacks.GlobalModelCheckpoint` writes into the same folder.
    """

    def __init__(self, dirpath: Path | None, every_n_rounds: int | None, keep_last: int,
                 model_checkpoint: bool = True) -> None:
        self.dirpath = dirpath
        self.every_n_rounds = every_n_rounds
        self.keep_last = keep_last
        self.model_checkpoint = model_checkpoint
        self.interval = 1 if every_n_rounds is None else every_n_rounds  # resolved at setup when None ("auto")
        self.write_last = False
        self.fingerprint: dict[str, Any] = {}
        self._round_start: dict[str, Any] = {}
        self._lock: IO[str] | None = None
        self._history: ckpt.HistoryLog | None = None
        self._last_hparams = True
        self._frozen: list[str] = []  # the policy's frozen entries, in state_dict order: left out of checkpoints
        self._frozen_record: dict[str, Any] | None = None  # their digest, as checkpoints hold it
        self._verified: dict[str, Any] | None = None  # the digest restore() checked, reused by setup()

    @property
    def enabled(self) -> bool:
        return self.dirpath is not None

    def lock(self) -> None:
        """Take the folder for this fit: a second live run writing to it is refused, naming the process.

        A folder this process cannot write to is refused here, before any round trains, with
        :class:`~lightning_fedmut.checkpoint.CheckpointWriteError`. :meth:`unlock` removes the ``.lock`` file.
        """
        if self.dirpath is None:
            return
        self._history = ckpt.HistoryLog(self.dirpath)  # a new fit rewrites the file from its own rows at its first save
        path = self.dirpath / ".lock"
        for _ in range(10):  # the file was removed by its holder between our open and our lock: take a new one
            try:
                self.dirpath.mkdir(parents=True, exist_ok=True)
                if not os.access(self.dirpath, os.W_OK | os.X_OK):
                    raise PermissionError(13, "Permission denied")
                handle = open(path, "a+")  # noqa: SIM115 - held until unlock()
            except OSError as exc:
                raise ckpt.CheckpointWriteError(
                    f"Cannot write to `checkpoint_dir`={str(self.dirpath)!r} ({exc.strerror or exc}), where this run"
                    " saves its checkpoints. Pass a writable `checkpoint_dir`; to extend a run kept in a read-only"
                    " folder, pass that folder (or one of its files) as `ckpt_path` with a new `checkpoint_dir`.",
                    exc.errno
                ) from None
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                handle.close()
                raise RuntimeError(
                    f"`checkpoint_dir`={str(self.dirpath)!r} is in use by another running fit ({owner}). Two runs"
                    " writing to one folder would overwrite each other's checkpoints: give this run its own"
                    " `checkpoint_dir`, or wait for the other to finish."
                ) from None
            if _same_file(handle, path):
                break
            handle.close()
        else:
            raise RuntimeError(f"Cannot take the lock {str(path)!r}: other processes keep replacing it.")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        """Release the folder and remove its ``.lock`` file, if this process holds it."""
        if self._lock is not None:
            path = self.dirpath / ".lock"  # type: ignore[operator]
            with contextlib.suppress(OSError):
                if _same_file(self._lock, path):  # ours: removed while still locked, so no one else holds it
                    path.unlink()
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def setup(self, loop: FederatedLoop, module: LightningModule) -> None:
        """Before the first round: choose ``last.ckpt``'s writer and the interval, and warn of large checkpoints.

        The estimate of a checkpoint's size, the interval ``checkpoint_every=None`` picks and the warning
        (rank 0, once) follow :func:`estimate_checkpoint_bytes` and :func:`checkpoint_plan`.
        """
        verified, self._verified = self._verified, None
        if not self.enabled:
            return
        from lightning_fedmut.callbacks.model_checkpoint import GlobalModelCheckpoint, hparams_load_safely

        same = [cb for cb in loop.callbacks if isinstance(cb, GlobalModelCheckpoint)
                and _resolved(cb.dirpath or self.dirpath) == _resolved(self.dirpath)]
        self.write_last = self.model_checkpoint and not same
        self._last_hparams = True
        if self.write_last and loop.is_global_zero:
            problem = hparams_load_safely(module)
            if problem is not None:
                self._last_hparams = False
                warn_user(f"{problem} `last.ckpt` is written without hyperparameters.", UserWarning)
        self._frozen = frozen_entries(loop, module)
        if verified is not None:  # restore() checked the module's frozen entries moments ago
            self._frozen_record = verified
        elif self._frozen and loop.is_global_zero:  # rank 0 alone writes checkpoints
            self._frozen_record = frozen_digest(module.state_dict(), self._frozen)
        else:
            self._frozen_record = None
        size = estimate_checkpoint_bytes(loop, module)
        model_bytes = _tensor_bytes(module.state_dict())
        if self.every_n_rounds is None:
            self.interval = min(AUTO_MAX_EVERY, max(1, math.ceil(size / AUTO_BYTES_PER_ROUND)))
        plan = checkpoint_plan(size, loop.rounds, loop.progress.rounds_done, self.interval, self.keep_last,
                               model_bytes if self.write_last else 0)
        if loop.is_global_zero and (plan["kept"] > WARN_KEPT_BYTES or plan["written"] > WARN_WRITTEN_BYTES):
            warn_user(_size_warning(plan, size, self, loop.rounds), UserWarning)

    def should_save(self, rounds_done: int, total_rounds: int, stopping: bool) -> bool:
        """Whether to save after ``rounds_done`` rounds."""
        return self.enabled and (rounds_done % self.interval == 0 or rounds_done == total_rounds or stopping)

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
        if self.dirpath is None:  # not enabled
            return
        if not loop.is_global_zero:  # with workers, rank 0 alone writes; every rank keeps the same progress
            loop.progress.last_saved = rounds_done
            return
        progress = {**loop.progress.state_dict(), "round": rounds_done, "rounds_done": rounds_done,
                    "last_saved": rounds_done}
        rows = loop.run_state.rows()
        frozen = set(self._frozen)
        if self._history is None or self._history.path.parent != Path(self.dirpath):
            self._history = ckpt.HistoryLog(self.dirpath)
        try:  # the rows first, synced: a checkpoint never covers rows that are not on disk
            history_log = self._history.write(rows, rounds_done)
        except OSError as exc:
            raise ckpt._write_error(self.dirpath / ckpt.HISTORY_FILE, rounds_done, exc) from exc
        state = {
            "format": "lightning_fedmut",
            "version": ckpt.CHECKPOINT_VERSION,
            "rounds_done": rounds_done,
            "progress": progress,
            "fingerprint": self.fingerprint,
            "model": {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if k not in frozen},
            "frozen": self._frozen_record if frozen else None,  # what the resumed module's frozen entries must be
            "sampler": loop.sampler.state_dict() if sampler_state is None else sampler_state,
            "aggregator": loop.aggregator.state_dict(),
            "callbacks": {cb.state_key: cb.state_dict() for cb in loop.callbacks},
            "client_states": loop.client_states.state_dict(),
            "divergence": None if loop.divergence is None else loop.divergence.state_dict(),
            "history_log": history_log,
            "run_id": tracking.run_id(loop.logger),
        }
        protect = [] if loop.divergence is None else loop.divergence.protected
        ckpt.save_checkpoint(state, self.dirpath, self.keep_last, protect=protect)
        if self.write_last and rounds_done > 0:
            from lightning_fedmut.callbacks.model_checkpoint import LAST_NAME, write_lightning_checkpoint

            write_lightning_checkpoint(module, self.dirpath / f"{LAST_NAME}.ckpt", rounds_done - 1,
                                       hparams=self._last_hparams)
        loop.progress.last_saved = rounds_done

    def restore(self, loop: FederatedLoop, module: LightningModule, saved: dict[str, Any]) -> None:
        """Put every part of ``loop`` and ``module`` back as ``saved`` holds it."""
        state = module.state_dict()
        recorded = saved.get("frozen")
        if recorded is not None:  # the frozen entries were left out: the module's own must be the run's
            found = frozen_digest(state, frozen_entries(loop, module))
            check_frozen_digest(recorded, found)
            self._verified = found
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
        loop.run_state.load_state_dict(saved)


def frozen_entries(loop: FederatedLoop, module: LightningModule) -> list[str]:
    """The keys of ``module``'s ``state_dict`` that the loop's federation policy freezes, in ``state_dict`` order."""
    policy = getattr(loop, "federation", None)
    if policy is None:
        return []
    frozen = policy.split(module)[2]
    return [k for k in module.state_dict(keep_vars=True) if k in frozen]


@torch.no_grad()
def frozen_digest(state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> dict[str, Any]:
    """What a checkpoint records of the frozen entries ``keys`` of ``state`` that it leaves out.

    ``keys``: their number; ``layout_sha256``: the SHA-256 of their names, dtypes and shapes; ``sha256``: the
    SHA-256 of the same and of every tensor's bytes, in ``keys`` order.

    Examples:
        >>> record = frozen_digest({"w": torch.ones(2), "b": torch.zeros(1)}, ["w"])
        >>> record["keys"], record["sha256"] == frozen_digest({"w": torch.ones(2)}, ["w"])["sha256"]
        (1, True)
        >>> record["sha256"] == frozen_digest({"w": torch.tensor([1.0, 2.0])}, ["w"])["sha256"]
        False
    """
    layout, content = hashlib.sha256(), hashlib.sha256()
    for key in keys:
        tensor = state[key].detach()
        head = f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\n".encode()
        layout.update(head)
        content.update(head)
        content.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"keys": len(keys), "layout_sha256": layout.hexdigest(), "sha256": content.hexdigest()}


def check_frozen_digest(recorded: Mapping[str, Any], found: Mapping[str, Any]) -> None:
    """Refuse to resume when the module's frozen entries (``found``) are not those a checkpoint recorded.

    Examples:
        >>> a = frozen_digest({"w": torch.ones(2)}, ["w"])
        >>> check_frozen_digest(a, a)
        >>> check_frozen_digest(a, frozen_digest({"w": torch.zeros(2)}, ["w"]))
        Traceback (most recent call last):
        ...
        ValueError: Cannot resume: the base model differs from the one this run was started with. The checkpoint holds the federated entries only; its 1 frozen entries come from the module passed to `fit`, and their bytes differ (SHA-256 ...
    """
    if recorded.get("sha256") == found["sha256"]:
        return
    if recorded.get("layout_sha256") != found["layout_sha256"] or recorded.get("keys") != found["keys"]:
        what = (f"the module has {found['keys']} frozen entries, the run had {recorded.get('keys')}, and their names,"
                " dtypes or shapes differ")
    else:
        what = (f"their bytes differ (SHA-256 {found['sha256'][:16]}... in the module,"
                f" {str(recorded.get('sha256'))[:16]}... in the checkpoint)")
    raise ValueError(
        "Cannot resume: the base model differs from the one this run was started with. The checkpoint holds the"
        f" federated entries only; its {recorded.get('keys')} frozen entries come from the module passed to `fit`,"
        f" and {what}. Build the module's frozen part as that run did (the same pretrained weights or seed, the same"
        " dtype, the same federation policy).")


def estimate_checkpoint_bytes(loop: FederatedLoop, module: LightningModule) -> int:
    """Bytes of one federated checkpoint of this run, once every client has stored its state (at setup).

    The tensors of the global model, the aggregator's, sampler's and callbacks' state and the client-state
    store as they are now, the buffers a server optimizer (FedAvgM, FedAdam ...) makes at its first step, and, for
    each client without stored state yet, what the run's components will
    store for it: SCAFFOLD's control variate (the trainable parameters, in at least float32) and clustered
    sampling's last update (the floating entries, in float32). Torch's framing adds a few KB. The entries the
    federation policy freezes are left out (a checkpoint does not hold them), and so are the unshared ones from
    server optimizers' buffers and SCAFFOLD's control variates.
    """
    from lightning_fedmut.callbacks.scaffold import Scaffold
    from lightning_fedmut.sampling import ClusteredSampler

    frozen = set(frozen_entries(loop, module))
    unshared = frozen_keys(module)
    total = _tensor_bytes({k: v for k, v in module.state_dict().items() if k not in frozen})
    total += _tensor_bytes(loop.aggregator.state_dict()) + _tensor_bytes(loop.sampler.state_dict())
    total += sum(_tensor_bytes(cb.state_dict()) for cb in loop.callbacks)
    total += _tensor_bytes(loop.client_states.state_dict())
    init_state = getattr(loop.aggregator, "init_state", None)  # the FedOpt family makes its buffers at its first step
    if callable(init_state) and not getattr(loop.aggregator, "buffers", dict)():
        buffers = len(init_state([torch.zeros(1)]))
        total += buffers * sum(p.numel() * p.element_size() for n, p in module.named_parameters()
                               if p.is_floating_point() and n not in unshared)
    per_client = 0
    if any(isinstance(cb, Scaffold) for cb in loop.callbacks):
        per_client += sum(p.numel() * max(p.element_size(), 4) for n, p in module.named_parameters()
                          if p.requires_grad and n not in unshared)
    if isinstance(loop.sampler, ClusteredSampler):
        per_client += sum(v.numel() * 4 for v in module.state_dict().values() if v.is_floating_point())
    return total + per_client * max(0, loop.num_clients - len(loop.client_states))


def checkpoint_plan(size: int, rounds: int, start: int, every: int, keep_last: int, last_bytes: int = 0
                    ) -> dict[str, int]:
    """How many checkpoints of ``size`` bytes a run writes after round ``start``, and the bytes written and kept.

    A checkpoint is written when the completed rounds are a multiple of ``every``, and after the last round;
    ``keep_last`` of them stay on disk, with ``last.ckpt`` (``last_bytes``, rewritten at each).

    Examples:
        >>> checkpoint_plan(10**9, rounds=25, start=0, every=10, keep_last=2, last_bytes=10**8)
        {'count': 3, 'written': 3300000000, 'kept': 2100000000}
    """
    saved = [r for r in range(start + 1, rounds + 1) if r % every == 0 or r == rounds]
    return {"count": len(saved), "written": len(saved) * (size + last_bytes),
            "kept": min(keep_last, len(saved)) * size + (last_bytes if saved else 0)}


def _size_warning(plan: dict[str, int], size: int, connector: CheckpointConnector, rounds: int) -> str:
    every = connector.interval
    how = f"`checkpoint_every`={connector.every_n_rounds}" if connector.every_n_rounds is not None else (
        f"`checkpoint_every`=None (every {every} round{'s' if every != 1 else ''} for this size)")
    return (
        f"Checkpoints of this run are large: about {_gb(size)} each, {plan['count']} written over {rounds} rounds"
        f" ({how}), so about {_gb(plan['written'])} written in all and {_gb(plan['kept'])} kept on disk at once"
        f" (`keep_last`={connector.keep_last}) in `checkpoint_dir`={str(connector.dirpath)!r}. Raise"
        " `checkpoint_every`, lower `keep_last`, or pass `checkpoint_dir=None` to write none (the final round and"
        " an interrupt are always saved)."
    )


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 10**8 else f"{n / 1e6:.1f} MB"


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts, lists, tuples)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _resolved(path: Any) -> str:
    return os.path.realpath(os.fspath(path))


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except OSError:
        return False


#: ``trainer_kwargs`` keys left out of the fingerprint: they change where and how visibly a run trains, not its
#: numbers, so a run may resume on another machine or with other console and profiling settings.
ENGINEERING_TRAINER_KEYS = frozenset({
    "accelerator", "devices", "num_nodes", "strategy", "logger", "enable_progress_bar", "enable_model_summary",
    "enable_checkpointing", "default_root_dir", "profiler", "log_every_n_steps", "detect_anomaly", "barebones",
})


def fingerprint(loop: FederatedLoop, model: LightningModule, clients: list[Client]) -> dict[str, Any]:
    """The settings a checkpoint of this run must match to be resumed (plain data, as checkpoints hold).

    Every setting that changes the run's numbers is in it: the model, the clients and their data (ids,
    examples, and the batch size, shuffling and ``drop_last`` of their loaders), the round's shape
    (``clients_per_round``, ``local_epochs``/``local_steps``, ``min_clients_per_round``), the failure and
    divergence policies, the aggregator, sampler and federated callbacks, the evaluation (``evaluate_every``
    and the server's validation data) and ``trainer_kwargs`` except :data:`ENGINEERING_TRAINER_KEYS` and
    Lightning callbacks that only observe. ``rounds`` is not: a run may resume to go on for more rounds.

    Examples:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_fedmut import Client, FederatedLoop
        >>> from lightning_fedmut.models import DigitsCNN
        >>> clients = [Client(i, DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2, shuffle=True))
        ...            for i in range(2)]
        >>> loop = FederatedLoop(rounds=3, clients_per_round=2, trainer_kwargs={"gradient_clip_val": 1.0})
        >>> found = fingerprint(loop, DigitsCNN(), clients)
        >>> found["client_batch_size"], found["client_shuffle"], found["trainer_kwargs"], "rounds" in found
        (2, True, {'gradient_clip_val': 1.0}, False)
    """
    ids = [repr(c.id) for c in clients]
    shapes = [f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in model.state_dict().items()]
    hparams = loop.hparams
    loaders = [_loader_settings(c.data) for c in clients]
    val_loaders = [None if c.val_data is None else _loader_settings(c.val_data) for c in clients]
    val = getattr(loop, "_val", None)
    policy = getattr(loop, "federation", None)
    return {
        **({} if policy is None or policy.is_default else {"federation": policy.hparams}),
        "model": class_path(model),
        "model_hparams": _plain(dict(getattr(model, "hparams", {}))),
        "model_state": _digest(shapes) if len(shapes) > 8 else shapes,
        "clients": len(clients),
        "client_ids": _digest(ids) if len(ids) > 8 else ids,
        "client_data": _digest([_data_digest(c) for c in clients]),
        "client_batch_size": _same_for_all([s["batch_size"] for s in loaders]),
        "client_shuffle": _same_for_all([s["shuffle"] for s in loaders]),
        "client_drop_last": _same_for_all([s["drop_last"] for s in loaders]),
        "client_val_data": _same_for_all(val_loaders),
        "clients_per_round": loop.clients_per_round,
        "local_epochs": loop.local_epochs,
        "local_steps": loop.local_steps,
        "min_clients_per_round": loop.min_clients_per_round,
        "on_round_failure": loop.on_round_failure,
        "on_client_failure": loop.on_client_failure,
        "evaluate_every": loop.evaluate_every,
        "val_data": None if val is None else [_loader_settings(v) for v in (val if isinstance(val, (list, tuple))
                                                                            else [val])],
        "seed": loop.seed,
        "aggregator": _plain(hparams["aggregator"]),
        "sampler": _plain(hparams["sampler"]),
        "callbacks": _plain([cb for cb, real in zip(hparams["callbacks"], loop.callbacks) if hasattr(real, "hparams")]),
        "divergence": None if loop.divergence is None else _plain(
            {"class_path": class_path(loop.divergence), "init_args": getattr(loop.divergence, "hparams", {})}),
        "trainer_kwargs": _trainer_settings(loop.trainer_kwargs),
    }


def _loader_settings(data: Any) -> dict[str, Any]:
    """What in a client's loader changes the numbers: batch size, shuffling, ``drop_last`` (and a dataset's size).

    A ``LightningDataModule`` is named by its class and its hyperparameters' ``batch_size``, if any.
    """
    if isinstance(data, DataLoader):
        sampler = data.sampler
        shuffle: Any = {RandomSampler: True, SequentialSampler: False}.get(type(sampler), class_path(sampler))
        batch_size = data.batch_size if data.batch_size is not None else class_path(data.batch_sampler)
        try:
            examples = len(data.dataset)  # type: ignore[arg-type]
        except TypeError:
            examples = None
        return {"batch_size": batch_size, "shuffle": shuffle, "drop_last": data.drop_last, "examples": examples}
    batch_size = _plain(dict(getattr(data, "hparams", {})).get("batch_size"))
    return {"batch_size": batch_size, "shuffle": class_path(data), "drop_last": None, "examples": None}


def _same_for_all(values: list[Any]) -> Any:
    """The one value every client has, or a digest of the clients' values when they differ."""
    if all(v == values[0] for v in values):
        return values[0] if values else None
    return "varies by client: " + _digest([repr(v) for v in values])


def _trainer_settings(trainer_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``trainer_kwargs`` that change the numbers, as plain data (objects by class path)."""
    from lightning.pytorch.callbacks import DeviceStatsMonitor, LearningRateMonitor, ModelSummary, ProgressBar

    out = {}
    for key in sorted(trainer_kwargs):
        value = trainer_kwargs[key]
        if key in ENGINEERING_TRAINER_KEYS:
            continue
        if key == "callbacks":
            items = value if isinstance(value, (list, tuple)) else [value]
            observers = (ProgressBar, ModelSummary, LearningRateMonitor, DeviceStatsMonitor)
            value = [class_path(cb) for cb in items if not isinstance(cb, observers)]
            if not value:
                continue
        out[key] = _setting(value)
    return out


def _setting(value: Any) -> Any:
    """``value`` as plain data; an object as its class path (its repr may hold a memory address)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _setting(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_setting(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value)
    return class_path(value)


def _data_digest(client: Client) -> str:
    """What identifies a client's data: its example indices when it is a subset of a dataset, else its size."""
    dataset = getattr(client.data, "dataset", None)
    indices = getattr(dataset, "indices", None)
    if indices is None:
        return f"{client.id!r}:{client.num_examples}"
    return f"{client.id!r}:" + hashlib.sha1(",".join(map(str, list(indices))).encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """``value`` as plain data (numbers, strings, lists, dicts); anything else as its repr."""
    if value is None or isinstance(value, bool):
        return value
    for kind in (int, float, str):  # subclasses (jsonargparse's PositiveInt ...) as the plain type checkpoints hold
        if isinstance(value, kind):
            return kind(value)
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
