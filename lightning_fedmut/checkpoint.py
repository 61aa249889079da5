"""Federated checkpoints: one checksummed file per saved round, written atomically, the last ``k`` kept.

A checkpoint is data, never code. Its file is a short text header followed by a body::

    lightning_fedmut checkpoint\\n
    sha256 <64 hex digits> bytes <n, 20 digits>\\n
    <body: n bytes>

and the body (checkpoint version 2) is ``version 2\\n`` followed by the run's state as written by
``torch.save``. Loading checks the header, the length of the body (a truncated file says so) and its
SHA-256 (a flipped byte anywhere in the file is detected) before anything is unpickled, then reads the
state with ``torch.load(..., weights_only=True)`` only: tensors, numbers, strings, booleans, ``None``,
lists, tuples and dicts, never an arbitrary pickled object, so a file that carries one is refused
without running it. :func:`save_checkpoint` refuses such a state before writing it, naming the entry.

A file is written to ``.tmp-<pid>@<host>-<random>.ckpt`` in the same folder, flushed, renamed into place
and the folder synced, so a crash during the write never leaves a truncated ``round-NNNNN.ckpt``; the
temporary file a killed writer leaves behind is removed at the next save or resume (at once when its
process is gone, after an hour when it cannot tell). When the newest checkpoint is truncated or corrupt
all the same (a disk that filled up, a copy that broke off), :func:`load_resume_checkpoint` falls back to
the previous one with a warning that names both files.

The run's history rows (``history``, ``client_history``, ``failures``, ``timings``) are not in the checkpoint
files: they are stored once, in ``history.jsonl`` beside them (one JSON line per completed round, appended and
synced before each checkpoint is written). Each checkpoint records how many rounds, bytes and rows of that file
it covers and their SHA-256, so a checkpoint file does not grow with the number of rounds, and
:func:`load_checkpoint` reads back exactly the rows of its round (a truncated or altered history file is
refused, naming it). Checkpoints of earlier releases, which hold the rows themselves, load as before.

``torch.load`` cannot open a federated checkpoint directly: the checksummed header comes first, and torch
stops with ``could not find MARK`` (or ``invalid load key``). Open one with :func:`load_checkpoint`, or take
the global model's weights with :func:`load_state_dict`::

    from lightning_fedmut.checkpoint import load_state_dict
    state_dict = load_state_dict("checkpoints/round-00010.ckpt")  # also reads a Lightning last.ckpt
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import pickle
import re
import socket
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, cast

import torch

from lightning_fedmut.utilities.validation import check_int
from lightning_fedmut.utilities.warnings import warn_user

__all__ = [
    "CHECKPOINT_VERSION",
    "HISTORY_FILE",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "HistoryLog",
    "UnsafeCheckpointError",
    "check_resume_rounds",
    "checkpoint_name",
    "compare_fingerprints",
    "list_checkpoints",
    "load_checkpoint",
    "load_resume_checkpoint",
    "load_state_dict",
    "read_history",
    "remove_orphaned_temporaries",
    "resolve_checkpoint",
    "save_checkpoint",
]

#: The version of the checkpoint format this release writes and reads (2: checksummed, plain data only).
CHECKPOINT_VERSION = 2
_NAME = re.compile(r"^round-(\d+)\.ckpt$")
_TMP = re.compile(r"^\.tmp-.*\.ckpt$")
_TMP_OWNER = re.compile(r"^\.tmp-(\d+)@([A-Za-z0-9._]*)-[^@]*\.ckpt$")
_STALE_AFTER_S = 3600.0  # a temporary file nobody wrote to for this long is an orphan, whoever made it
_MAGIC = b"lightning_fedmut checkpoint\n"
_FRAME = re.compile(rb"sha256 ([0-9a-f]{64}) bytes (\d{1,20})")
_VERSION = re.compile(rb"version (\d{1,9})")
_LEAVES = frozenset(
    {bool, int, float, complex, str, bytes, type(None), torch.Tensor, torch.nn.Parameter, torch.Size, torch.dtype,
     torch.device}
)
_KINDS = "tensors, numbers, strings, booleans, None, lists, tuples and dicts"

log = logging.getLogger("lightning_fedmut")


class CorruptCheckpointError(ValueError):
    """A checkpoint file is truncated or its bytes changed after it was written."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a read-only folder); the message names the file, the round
    and the newest checkpoint that is safe. ``errno`` is the cause's."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno  # type: ignore[misc]

    def __str__(self) -> str:
        return str(self.args[0])


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds a pickled object besides plain data; it is refused without being unpickled."""


def checkpoint_name(rounds_done: int) -> str:
    """File name of the checkpoint taken after ``rounds_done`` completed rounds.

    Examples:
        >>> checkpoint_name(12)
        'round-00012.ckpt'
    """
    return f"round-{rounds_done:05d}.ckpt"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoints in ``directory``, oldest first (by completed rounds); orphaned temporary files are removed."""
    d = Path(directory)
    if not d.is_dir():
        return []
    remove_orphaned_temporaries(d)
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_orphaned_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``.tmp-*.ckpt`` files that an interrupted write left in ``directory``; return them.

    A temporary file is an orphan when the process named in it is gone (or is this one: a save here is
    never in flight while this runs), or when nothing wrote to it for an hour (another machine's, or an
    older name). A file another live process is writing right now is left alone.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     orphan = Path(d, f".tmp-{os.getpid()}@{_host()}-abcd1234.ckpt")
        ...     _ = orphan.write_bytes(b"half a checkpoint")
        ...     [p.name == orphan.name for p in remove_orphaned_temporaries(d)], orphan.exists()
        ([True], False)
    """
    d = Path(directory)
    if not d.is_dir():
        return []
    removed = []
    now = time.time()
    for p in d.iterdir():
        if not _TMP.match(p.name):
            continue
        try:
            if not p.is_file():
                continue
            idle = now - p.stat().st_mtime
        except OSError:  # removed meanwhile
            continue
        if idle >= _STALE_AFTER_S or _writer_is_gone(p.name):
            try:
                p.unlink(missing_ok=True)
            except OSError:  # a read-only folder: reading from it must still work
                continue
            removed.append(p)
    if removed:
        log.info(f"Removed {len(removed)} temporary file(s) left by an interrupted checkpoint write in {str(d)!r}.")
    return removed


def save_checkpoint(
    state: dict[str, Any], directory: str | os.PathLike, keep_last: int, protect: Iterable[int] = ()
) -> Path:
    """Write ``state`` to ``directory/round-NNNNN.ckpt`` atomically and delete all but the ``keep_last`` newest.

    Checkpoints whose completed-round count is in ``protect`` are never deleted (the loop protects the last
    round before a run started to diverge).

    ``state`` must hold ``rounds_done`` and only tensors, numbers, strings, booleans, ``None``, lists, tuples
    and dicts; anything else raises a ``TypeError`` naming the entry, before a byte is written. The file is
    written to a temporary name in the same directory, flushed to disk, then renamed, so a crash during the
    write never leaves a truncated checkpoint behind.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for r in (1, 2, 3):
        ...         _ = save_checkpoint({"format": "lightning_fedmut", "version": CHECKPOINT_VERSION,
        ...                              "rounds_done": r}, d, keep_last=2)
        ...     [p.name for p in list_checkpoints(d)], resolve_checkpoint("last", d).name
        ...     load_checkpoint(resolve_checkpoint("last", d))["rounds_done"]
        (['round-00002.ckpt', 'round-00003.ckpt'], 'round-00003.ckpt')
        3
    """
    keep_last = check_int("keep_last", keep_last, low=1)
    if not isinstance(state, dict) or "rounds_done" not in state:
        raise ValueError("Expected `state` to be a dict holding `rounds_done`, got " + _short(state) + ".")
    rounds_done = check_int("state['rounds_done']", state["rounds_done"], low=0)
    _check_plain(state)
    d = Path(directory)
    path = d / checkpoint_name(rounds_done)
    try:
        d.mkdir(parents=True, exist_ok=True)
        remove_orphaned_temporaries(d)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".tmp-{os.getpid()}@{_host()}-", suffix=".ckpt")
    except OSError as exc:
        raise _write_error(path, rounds_done, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + _frame_line(b"0" * 64, 0))  # filled in once the body is written
            body = _HashingWriter(f)
            body.write(b"version %d\n" % CHECKPOINT_VERSION)
            torch.save(state, cast(IO[bytes], body))  # streamed to disk: no second copy of the state in memory
            f.seek(len(_MAGIC))
            f.write(_frame_line(body.sha256.hexdigest().encode(), body.size))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = _os_error(exc)
        if cause is not None:
            raise _write_error(path, rounds_done, cause) from exc
        raise
    _sync_directory(d)
    kept = {checkpoint_name(int(r)) for r in protect}
    for old in list_checkpoints(d)[:-keep_last]:
        if old.name not in kept:
            old.unlink(missing_ok=True)
    return path


def resolve_checkpoint(ckpt_path: str | os.PathLike, directory: str | os.PathLike | None) -> Path | None:
    """Turn ``ckpt_path`` (a file, a folder of checkpoints for its newest, or ``"last"`` for the newest in
    ``directory``) into an existing path.

    ``"last"`` with no checkpoint in ``directory`` yet (a first launch) returns ``None`` and logs that the
    run starts fresh; a missing file raises ``FileNotFoundError``.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     resolve_checkpoint("last", d) is None
        True
    """
    if str(ckpt_path) == "last":
        if directory is None:
            raise ValueError("`ckpt_path='last'` needs the loop's `checkpoint_dir`; pass a file path instead.")
        found = list_checkpoints(directory)
        if not found:
            log.info(f"`ckpt_path='last'` found no checkpoint in `checkpoint_dir`={str(directory)!r}: starting fresh.")
            return None
        return found[-1]
    path = Path(ckpt_path)
    if path.is_dir():  # another run's folder (read-only, say): its newest checkpoint, to extend that run elsewhere
        found = list_checkpoints(path)
        if not found:
            raise FileNotFoundError(
                f"Expected `ckpt_path` to be a checkpoint file, 'last' or a folder of checkpoints, got"
                f" {str(ckpt_path)!r}: the folder holds no round-NNNNN.ckpt file.")
        return found[-1]
    if not path.is_file():
        raise FileNotFoundError(f"Expected `ckpt_path` to be a checkpoint file or 'last', got {str(ckpt_path)!r}: no such file.")
    return path


def load_resume_checkpoint(
    ckpt_path: str | os.PathLike, directory: str | os.PathLike | None
) -> tuple[Path, dict[str, Any]] | None:
    """Resolve and load the checkpoint to resume from: ``(path, state)``, or ``None`` to start fresh.

    With ``ckpt_path="last"``, a newest checkpoint that is truncated or corrupt is skipped with a warning
    naming it and the previous one, which is loaded instead; ``None`` means there is no checkpoint yet. A
    folder as ``ckpt_path`` reads its newest checkpoint the same way, takes no lock there and saves nothing
    there: a run kept in a read-only folder is extended into another ``checkpoint_dir``. An explicit file that is truncated or corrupt
    raises :class:`CorruptCheckpointError`.

    Examples:
        >>> import tempfile, warnings
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for r in (1, 2):
        ...         newest = save_checkpoint({"rounds_done": r}, d, keep_last=2)
        ...     _ = newest.write_bytes(newest.read_bytes()[:-10])  # the newest breaks off
        ...     with warnings.catch_warnings(record=True) as caught:
        ...         warnings.simplefilter("always")
        ...         path, state = load_resume_checkpoint("last", d)
        ...     path.name, state["rounds_done"], "truncated" in str(caught[0].message)
        ('round-00001.ckpt', 1, True)
    """
    if str(ckpt_path) != "last" and not Path(ckpt_path).is_dir():
        path = resolve_checkpoint(ckpt_path, directory)
        assert path is not None
        return path, load_checkpoint(path)
    if str(ckpt_path) != "last":  # a folder: its newest good checkpoint, read only (no lock, nothing written there)
        resolve_checkpoint(ckpt_path, None)
        directory = ckpt_path
    elif resolve_checkpoint("last", directory) is None:
        return None
    candidates = list_checkpoints(directory)[::-1]  # type: ignore[arg-type]
    errors: list[CorruptCheckpointError] = []
    for i, path in enumerate(candidates):
        try:
            return path, load_checkpoint(path)
        except CorruptCheckpointError as exc:
            errors.append(exc)
            if i + 1 < len(candidates):
                warn_user(f"{exc} Resuming from the previous checkpoint, {str(candidates[i + 1])!r}, instead.",
                          UserWarning)
    raise CorruptCheckpointError(
        f"Cannot resume from `checkpoint_dir`={str(directory)!r}: every checkpoint in it is truncated or corrupt.\n  "
        + "\n  ".join(str(e) for e in errors)
        + "\nStart the run afresh without `ckpt_path`, or pass a good checkpoint file."
    )


def load_checkpoint(path: str | os.PathLike, *, history: bool = True) -> dict[str, Any]:
    """Read a federated checkpoint written by :func:`save_checkpoint`, checking it before unpickling anything.

    ``torch.load`` cannot open these files (it stops with ``could not find MARK``: a checksummed header comes
    first); this function can, and :func:`load_state_dict` returns just the global model's weights.

    With ``history`` (default), the rows of the run's history that the checkpoint covers are read from the
    ``history.jsonl`` beside it (:func:`read_history`) into ``state["history"]``, ``["client_history"]``,
    ``["failures"]`` and ``["timings"]``; ``history=False`` reads the checkpoint file alone.

    Raises :class:`CorruptCheckpointError` for a truncated or altered file (or history file),
    :class:`UnsafeCheckpointError` for one that holds anything but plain data (refused without unpickling
    it), and ``ValueError`` for a file that is not a checkpoint of this version.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = save_checkpoint({"rounds_done": 1, "model": {"w": torch.ones(2)}}, d, keep_last=1)
        ...     load_checkpoint(path)["model"]
        {'w': tensor([1., 1.])}
    """
    p = str(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise ValueError(f"Cannot read checkpoint {p!r}: {exc.strerror or exc}.") from exc
    with f:
        f.seek(_verified_body(p, f))
        line = f.readline(32)
        m = _VERSION.fullmatch(line[:-1]) if line.endswith(b"\n") else None
        if m is None:
            raise ValueError(f"{p!r} is not a lightning_fedmut checkpoint: its body starts with no version line.")
        if int(m.group(1)) != CHECKPOINT_VERSION:
            raise ValueError(_version_message(p, int(m.group(1))))
        state = _load_plain(p, _Window(f, f.tell()))
    if not isinstance(state, dict) or state.get("format", "lightning_fedmut") != "lightning_fedmut":
        raise ValueError(f"{p!r} is not a lightning_fedmut federated checkpoint: it holds no run state.")
    if history and isinstance(state.get("history_log"), dict):
        state.update(read_history(Path(path), state["history_log"]))
    return state


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The global model's ``state_dict`` from a checkpoint file, ready for ``module.load_state_dict``.

    ``path`` is a federated checkpoint (``round-NNNNN.ckpt``, which ``torch.load`` cannot open) or a Lightning
    checkpoint of the global model (``last.ckpt``, or a best-k file of
    :class:`~lightning_fedmut.callbacks.GlobalModelCheckpoint`). Either is read as data only
    (``weights_only=True``), and a federated one is checked against its checksum first.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = save_checkpoint({"rounds_done": 3, "model": {"w": torch.zeros(2)}}, d, keep_last=1)
        ...     load_state_dict(path)
        {'w': tensor([0., 0.])}
    """
    p = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head == b"PK\x03\x04":  # a plain torch file: a Lightning checkpoint of the global model?
                state = _load_plain(p, _Window(f, 0), verified=False)
                if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                    return state["state_dict"]
                raise ValueError(
                    f"{p!r} is neither a federated checkpoint nor a Lightning checkpoint: it holds no `state_dict`.")
    except OSError as exc:
        raise ValueError(f"Cannot read checkpoint {p!r}: {exc.strerror or exc}.") from exc
    state = load_checkpoint(path, history=False)
    if not isinstance(state.get("model"), dict):
        raise ValueError(f"{p!r} holds no global model: it is a federated checkpoint without a `model` entry.")
    return state["model"]


# ------------------------------------------------------------------ the history file
#: Name of the file beside the checkpoints that holds the run's history rows, one JSON line per round.
HISTORY_FILE = "history.jsonl"
_HISTORY_LISTS = ("history", "client_history", "failures", "timings")


class HistoryLog:
    """Writes a run's history rows once, to ``directory/history.jsonl``: one JSON line per completed round.

    :meth:`write` brings the file to ``rounds_done`` rounds and returns the record a checkpoint keeps
    (``rounds``, ``bytes``, ``sha256`` and row counts). The first write of a fit rewrites the whole file
    atomically (a resumed run, or one extending another folder's run, starts from its own rows); later
    writes append the new rounds and sync. A line depends only on its round's rows, so the rewritten file
    starts with the bytes every earlier checkpoint covers.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     log = HistoryLog(d)
        ...     rows = {"history": [{"round": 0, "val_acc": 0.5}, {"round": 1, "val_acc": 0.75}],
        ...             "client_history": [], "failures": [], "timings": []}
        ...     record = log.write(rows, 2)
        ...     record["rounds"], read_history(Path(d, "round-00002.ckpt"), record)["history"][1]
        (2, {'round': 1, 'val_acc': 0.75})
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / HISTORY_FILE
        self.reset()

    def reset(self) -> None:
        """Forget what is on disk: the next :meth:`write` rewrites the file."""
        self._rounds: int | None = None
        self._size = 0
        self._sha = hashlib.sha256()
        self._counts = dict.fromkeys(_HISTORY_LISTS, 0)

    def write(self, rows: dict[str, list[dict[str, Any]]], rounds_done: int) -> dict[str, Any]:
        """Bring the file to the rows of rounds ``0 .. rounds_done - 1`` of ``rows``; the checkpoint's record."""
        fresh = self._rounds is None or rounds_done < self._rounds or not self.path.is_file()
        start = 0 if fresh or self._rounds is None else self._rounds
        data, counts = _history_lines(rows, start, rounds_done)
        if fresh:
            self.reset()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".tmp-{os.getpid()}@{_host()}-", suffix=".ckpt")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _sync_directory(self.path.parent)
        else:
            with open(self.path, "r+b") as f:
                f.seek(self._size)
                f.write(data)
                f.truncate()  # what an interrupted append left after the last checkpoint's rows
                f.flush()
                os.fsync(f.fileno())
        self._sha.update(data)
        self._size += len(data)
        self._rounds = rounds_done
        for name in _HISTORY_LISTS:
            self._counts[name] += counts[name]
        return {"file": HISTORY_FILE, "rounds": rounds_done, "bytes": self._size, "sha256": self._sha.hexdigest(),
                "rows": dict(self._counts)}


def read_history(checkpoint: str | os.PathLike, record: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The history rows that a checkpoint's ``record`` covers, read from the ``history.jsonl`` beside it.

    Reads exactly ``record["bytes"]`` bytes (rows a later checkpoint appended are left out), checks their
    SHA-256 and row counts, and raises :class:`CorruptCheckpointError` naming the file when it is missing,
    truncated or altered.
    """
    p = str(checkpoint)
    if record.get("file") != HISTORY_FILE:
        raise ValueError(f"Checkpoint {p!r} names history file {record.get('file')!r}; expected {HISTORY_FILE!r}.")
    path = Path(checkpoint).parent / HISTORY_FILE
    size, expected = int(record["bytes"]), str(record["sha256"])
    try:
        with open(path, "rb") as f:
            data = f.read(size)
    except FileNotFoundError:
        raise CorruptCheckpointError(
            f"History file {str(path)!r} of checkpoint {p!r} is missing: a checkpoint keeps its history rows in"
            f" {HISTORY_FILE} beside it. Copy that file along with the checkpoint.") from None
    except OSError as exc:
        raise CorruptCheckpointError(f"Cannot read history file {str(path)!r} of checkpoint {p!r}: {exc}.") from exc
    if len(data) < size:
        raise CorruptCheckpointError(
            f"History file {str(path)!r} of checkpoint {p!r} is truncated: it holds {len(data)} of the {size} bytes"
            " the checkpoint covers.")
    if hashlib.sha256(data).hexdigest() != expected:
        raise CorruptCheckpointError(
            f"History file {str(path)!r} of checkpoint {p!r} is corrupt: its SHA-256 checksum does not match the"
            " rows the checkpoint covers (bytes changed after they were written).")
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in _HISTORY_LISTS}
    try:
        for i, line in enumerate(data.splitlines()):
            entry = _decode(json.loads(line))
            if entry.get("round") != i:
                raise ValueError(f"line {i + 1} is round {entry.get('round')!r}, expected {i}")
            for name in _HISTORY_LISTS:
                out[name].extend(entry.get(name, []))
        rounds = len(data.splitlines())
        if rounds != int(record["rounds"]):
            raise ValueError(f"it holds {rounds} rounds, expected {record['rounds']}")
        counts = {name: len(rows) for name, rows in out.items()}
        if counts != {name: int(n) for name, n in record["rows"].items()}:
            raise ValueError(f"it holds rows {counts}, expected {record['rows']}")
    except ValueError as exc:  # JSONDecodeError included
        raise CorruptCheckpointError(f"History file {str(path)!r} of checkpoint {p!r} is corrupt: {exc}.") from None
    return out


def _history_lines(rows: dict[str, list[dict[str, Any]]], start: int, stop: int) -> tuple[bytes, dict[str, int]]:
    """One JSON line per round ``start .. stop - 1``: the rows of each list whose ``round`` is that round."""
    by_round: list[dict[str, Any]] = [{"round": r} for r in range(start, stop)]
    counts = dict.fromkeys(_HISTORY_LISTS, 0)
    for name in _HISTORY_LISTS:
        for row in rows.get(name, []):
            r = row.get("round")
            if isinstance(r, int) and start <= r < stop:
                by_round[r - start].setdefault(name, []).append(row)
                counts[name] += 1
    lines = []
    for entry in by_round:
        try:
            lines.append(json.dumps(_encode(entry, f"round {entry['round']}"), separators=(",", ":")))
        except TypeError as exc:
            raise TypeError(f"Cannot checkpoint the history: {exc}") from None
    return "".join(line + "\n" for line in lines).encode(), counts


_TAG = "__lightning_fedmut__"


def _encode(obj: Any, where: str) -> Any:
    """``obj`` as JSON data; tuples, tensors, bytes and dicts with other than string keys tagged, to read back."""
    kind = type(obj)
    if obj is None or kind in (bool, int, float, str):
        return obj
    if kind is list:
        return [_encode(v, where) for v in obj]
    if kind is tuple:
        return {_TAG: "tuple", "items": [_encode(v, where) for v in obj]}
    if kind is dict or kind is OrderedDict:
        if all(type(k) is str for k in obj) and _TAG not in obj:
            return {k: _encode(v, f"{where}[{k!r}]") for k, v in obj.items()}
        return {_TAG: "dict", "items": [[_encode(k, where), _encode(v, f"{where}[{k!r}]")] for k, v in obj.items()]}
    if kind is bytes:
        return {_TAG: "bytes", "hex": obj.hex()}
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        return {_TAG: "tensor", "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                "values": t.flatten().tolist()}
    raise TypeError(f"`{where}` is a {_type_name(obj)}; a history row holds {_KINDS}.")


def _decode(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    tag = obj.get(_TAG)
    if tag is None:
        return {k: _decode(v) for k, v in obj.items()}
    if tag == "tuple":
        return tuple(_decode(v) for v in obj["items"])
    if tag == "dict":
        return {_decode(k): _decode(v) for k, v in obj["items"]}
    if tag == "bytes":
        return bytes.fromhex(obj["hex"])
    if tag == "tensor":
        dtype = getattr(torch, str(obj["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown tensor dtype {obj['dtype']!r}")
        return torch.tensor(obj["values"], dtype=dtype).reshape(obj["shape"])
    raise ValueError(f"unknown entry {tag!r}")


def compare_fingerprints(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise a ``ValueError`` naming every setting in which a checkpoint differs from the run resuming it.

    Settings held as mappings (``trainer_kwargs``, the aggregator's arguments ...) are compared entry by entry,
    each difference named with a dotted name. A setting the checkpoint does not record at all (it was written by
    a release that did not check it yet) is not compared: a warning names it, and the resume goes on.

    Examples:
        >>> compare_fingerprints({"seed": 0, "clients": 10}, {"seed": 1, "clients": 10})
        Traceback (most recent call last):
        ...
        ValueError: Cannot resume: the checkpoint was made with other settings.
          seed: checkpoint has 0, this run has 1
        Resume with the checkpoint's settings, or start a new run (another `checkpoint_dir`, no `ckpt_path`).
        >>> compare_fingerprints({"trainer_kwargs": {}}, {"trainer_kwargs": {"gradient_clip_val": 0.5}})
        Traceback (most recent call last):
        ...
        ValueError: Cannot resume: the checkpoint was made with other settings.
          trainer_kwargs.gradient_clip_val: checkpoint has not set, this run has 0.5
        Resume with the checkpoint's settings, or start a new run (another `checkpoint_dir`, no `ckpt_path`).
    """
    unrecorded = sorted(set(current) - set(saved))
    mismatches: list[str] = []
    for key in sorted(set(saved) | set(current)):
        if key not in unrecorded:
            mismatches += _differences(key, saved.get(key, _UNSET), current.get(key, _UNSET))
    if mismatches:
        raise ValueError(
            "Cannot resume: the checkpoint was made with other settings.\n  " + "\n  ".join(mismatches)
            + "\nResume with the checkpoint's settings, or start a new run (another `checkpoint_dir`, no `ckpt_path`)."
        )
    if unrecorded:
        warn_user(
            f"The checkpoint was written by an older release that did not record {', '.join(unrecorded)}: these"
            " settings are not compared. Resume with the values the run was started with.", UserWarning)


def check_resume_rounds(rounds_done: int, rounds: int) -> None:
    """Refuse to resume a checkpoint of ``rounds_done`` rounds into a run of fewer ``rounds`` in all.

    More rounds than the checkpoint holds extend the run; as many finish it at once.

    Examples:
        >>> check_resume_rounds(10, 30)
        >>> check_resume_rounds(10, 6)
        Traceback (most recent call last):
        ...
        ValueError: Cannot resume: the checkpoint holds 10 completed rounds, and this run asks for `rounds`=6 in all. Pass `rounds` >= 10 (more rounds extend the run), or resume from an earlier checkpoint.
    """
    if rounds < rounds_done:
        raise ValueError(
            f"Cannot resume: the checkpoint holds {rounds_done} completed rounds, and this run asks for `rounds`="
            f"{rounds} in all. Pass `rounds` >= {rounds_done} (more rounds extend the run), or resume from an"
            " earlier checkpoint."
        )


class _Unset:
    def __repr__(self) -> str:
        return "not set"


_UNSET = _Unset()


def _differences(name: str, saved: Any, current: Any) -> list[str]:
    """``name: checkpoint has A, this run has B`` for each difference, entry by entry where both are mappings."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            out += _differences(f"{name}.{key}", saved.get(key, _UNSET), current.get(key, _UNSET))
        return out
    if saved == current:
        return []
    return [f"{name}: checkpoint has {_short(saved)}, this run has {_short(current)}"]


# ------------------------------------------------------------------ helpers
def _os_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind ``exc`` (torch wraps the errors of the file it writes to), if any."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, OSError):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    if isinstance(exc, RuntimeError) and "No space left on device" in str(exc):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


def _rounds(n: int) -> str:
    return f"{n} completed round{'' if n == 1 else 's'}"


def _rounds_in_name(path: Path) -> int:
    """The completed rounds in the name of a checkpoint that :func:`list_checkpoints` found."""
    match = _NAME.match(path.name)
    assert match is not None  # list_checkpoints keeps only the names that _NAME matches
    return int(match.group(1))


def _write_error(path: Path, rounds_done: int, exc: OSError) -> CheckpointWriteError:
    """Name the file, the round and what is safe on disk; say how to go on."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    name = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    earlier = [p for p in list_checkpoints(path.parent) if _rounds_in_name(p) < rounds_done]
    if earlier:
        safe_rounds = _rounds_in_name(earlier[-1])
        safe = (f"The checkpoint of the first {_rounds(safe_rounds)}, {str(earlier[-1])!r}, is safe; a resume"
                " trains the rounds after it again.")
    else:
        safe = f"No earlier checkpoint of this run is in {str(path.parent)!r}: no round is saved yet."
    fix = ("Free space on that disk" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
           else "Make the folder writable, or choose another `checkpoint_dir`")
    return CheckpointWriteError(
        f"Cannot save the checkpoint after {_rounds(rounds_done)} to {str(path)!r}:"
        f" {reason}{f' ({name})' if name else ''}. {safe} {fix}, then resume with ckpt_path='last'.",
        exc.errno,
    )


def _frame_line(digest: bytes, size: int) -> bytes:
    return b"sha256 %s bytes %020d\n" % (digest, size)  # fixed width, so it can be written last


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it to ``f``."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha256, self.size = f, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        n = self.f.write(data)
        self.sha256.update(data)
        self.size += len(data) if isinstance(data, bytes) else memoryview(data).nbytes
        return n

    def flush(self) -> None:
        self.f.flush()


class _Window(io.RawIOBase):
    """The part of the binary file ``f`` from ``base`` on, as a file of its own (for ``torch.load``)."""

    def __init__(self, f: Any, base: int) -> None:
        super().__init__()
        self.f, self.base = f, base
        f.seek(base)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        return self.f.readinto(b)

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        return self.f.seek(self.base + pos if whence == io.SEEK_SET else pos, whence) - self.base

    def tell(self) -> int:
        return self.f.tell() - self.base


def _verified_body(p: str, f: Any) -> int:
    """Where the body of the open checkpoint ``f`` starts, once its header, length and checksum hold."""
    total = os.fstat(f.fileno()).st_size
    f.seek(0)
    head = f.read(len(_MAGIC) + 128)
    if not head:
        raise CorruptCheckpointError(f"Checkpoint {p!r} is truncated: the file is empty.")
    if not head.startswith(_MAGIC):
        if head.startswith(b"PK\x03\x04"):  # a bare torch.save zip: an older checkpoint, or not one
            _refuse_bare_torch_file(p, f)
        if _MAGIC.startswith(head):
            raise CorruptCheckpointError(f"Checkpoint {p!r} is truncated: it ends inside its header.")
        start = head[: len(_MAGIC)]
        if len(start) == len(_MAGIC) and sum(a != b for a, b in zip(start, _MAGIC)) <= 2:
            raise CorruptCheckpointError(f"Checkpoint {p!r} is corrupt: its header is damaged.")
        magic = _MAGIC[:-1].decode()
        raise ValueError(f"{p!r} is not a lightning_fedmut checkpoint: it does not start with {magic!r}.")
    end = head.find(b"\n", len(_MAGIC))
    if end < 0:
        short = len(head) < len(_MAGIC) + 128
        what = "truncated: it ends inside its header" if short else "corrupt: its header is damaged"
        raise CorruptCheckpointError(f"Checkpoint {p!r} is {what}.")
    m = _FRAME.fullmatch(head[len(_MAGIC):end])
    if m is None:
        raise CorruptCheckpointError(f"Checkpoint {p!r} is corrupt: its header is damaged.")
    offset, size = end + 1, int(m.group(2))
    if total - offset < size:
        raise CorruptCheckpointError(f"Checkpoint {p!r} is truncated: it holds {total - offset} of its {size} bytes.")
    if total - offset > size:
        raise CorruptCheckpointError(f"Checkpoint {p!r} is corrupt: {total - offset - size} bytes follow its end.")
    f.seek(offset)
    digest = hashlib.sha256()
    chunk = bytearray(1 << 20)
    view = memoryview(chunk)
    while n := f.readinto(chunk):
        digest.update(view[:n])
    if digest.hexdigest().encode() != m.group(1):
        raise CorruptCheckpointError(
            f"Checkpoint {p!r} is corrupt: its SHA-256 checksum does not match its contents (bytes changed after"
            " it was written)."
        )
    return offset


def _load_plain(p: str, source: Any, verified: bool = True) -> Any:
    """``torch.load(source, weights_only=True)``, its errors said in our words.

    ``verified``: the bytes passed their checksum, so an object ``weights_only`` refuses was written on
    purpose (refused as unsafe) rather than damaged.
    """
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found or verified:
            what = f" ({found.group(1)})" if found else ""
            raise UnsafeCheckpointError(
                f"Refusing to load {p!r}: it holds a pickled object{what} besides plain data, and unpickling it"
                f" could run code. A lightning_fedmut checkpoint holds only {_KINDS}; load only files you trust."
            ) from exc
        raise ValueError(f"Cannot load {p!r}: its contents do not unpickle.") from exc
    except Exception as exc:
        raise ValueError(
            f"Cannot load {p!r}: torch cannot read its contents ({type(exc).__name__})"
            + ("; was it written by a newer torch?" if verified else ".")
        ) from exc


def _refuse_bare_torch_file(p: str, f: Any) -> None:
    """Raise the right error for a plain ``torch.save`` file: an older checkpoint, or a file of something else."""
    try:
        state = _load_plain(p, _Window(f, 0), verified=False)
    except UnsafeCheckpointError:
        raise
    except ValueError as exc:
        raise ValueError(
            f"{p!r} is not a lightning_fedmut checkpoint: it has no checkpoint header, and it does not read as an"
            " older checkpoint either (a truncated or foreign torch file)."
        ) from exc.__cause__
    if isinstance(state, dict) and state.get("format") == "lightning_fedmut":
        raise ValueError(_version_message(p, state.get("version")))
    if isinstance(state, dict) and "state_dict" in state:
        raise ValueError(
            f"{p!r} is not a lightning_fedmut federated checkpoint: it is a Lightning checkpoint of the global model"
            " (such as last.ckpt). Open it with `torch.load(path, weights_only=True)`,"
            " `MyModule.load_from_checkpoint(path)`, or take its weights with"
            " `lightning_fedmut.checkpoint.load_state_dict(path)`; resume a run from its round-NNNNN.ckpt files."
        )
    raise ValueError(
        f"{p!r} is not a lightning_fedmut checkpoint: it is a plain torch file without the checkpoint header."
    )


def _version_message(p: str, version: Any) -> str:
    return (
        f"Checkpoint {p!r} has checkpoint version {version}; this lightning_fedmut reads version {CHECKPOINT_VERSION}"
        " (checksummed) only. Start the run afresh without `ckpt_path`, or finish it with the release that wrote it."
    )


def _check_plain(state: dict[str, Any]) -> None:
    """Raise a ``TypeError`` naming the first entry of ``state`` that ``weights_only`` loading would refuse."""
    stack: list[Any] = [state]
    while stack:
        obj = stack.pop()
        kind = type(obj)
        if kind in _LEAVES:
            continue
        if kind is dict or kind is OrderedDict:
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif kind is list or kind is tuple:
            stack.extend(obj)
        else:
            break
    else:
        return
    where, what = _find_unplain(state, "state")
    raise TypeError(
        f"Cannot checkpoint `{where}`: it is a {what}, and a checkpoint holds only {_KINDS}."
        " Convert it in the `state_dict` that returns it (for example with `.item()`, `.tolist()` or"
        " `torch.as_tensor`)."
    )


def _find_unplain(obj: Any, where: str) -> tuple[str, str]:
    kind = type(obj)
    if kind is dict or kind is OrderedDict:
        for k, v in obj.items():
            found = _find_unplain(k, f"a key of {where}")
            if found[0]:
                return found
            found = _find_unplain(v, f"{where}[{k!r}]")
            if found[0]:
                return found
    elif kind is list or kind is tuple:
        for i, v in enumerate(obj):
            found = _find_unplain(v, f"{where}[{i}]")
            if found[0]:
                return found
    elif kind not in _LEAVES:
        return where, _type_name(obj)
    return "", ""


def _type_name(obj: Any) -> str:
    kind = type(obj)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _writer_is_gone(name: str) -> bool:
    """Whether the process that named this temporary file is known to have ended (or is this one)."""
    m = _TMP_OWNER.match(name)
    if m is None or m.group(2) != _host() or os.name == "nt":
        return False
    pid = int(m.group(1))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, but someone else's
        return False
    return False


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def _sync_directory(d: Path) -> None:
    """Make a rename in ``d`` durable (POSIX); a no-op where directories cannot be opened."""
    if os.name == "nt":
        return
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
