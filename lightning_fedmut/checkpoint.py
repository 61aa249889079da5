"""Federated checkpoints: one file per saved round, written atomically, the last ``k`` kept."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^round-(\d+)\.ckpt$")


def checkpoint_name(rounds_done: int) -> str:
    """File name of the checkpoint taken after ``rounds_done`` completed rounds.

    Examples:
        >>> checkpoint_name(12)
        'round-00012.ckpt'
    """
    return f"round-{rounds_done:05d}.ckpt"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoints in ``directory``, oldest first (by completed rounds)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict[str, Any], directory: str | os.PathLike, keep_last: int) -> Path:
    """Write ``state`` to ``directory/round-NNNNN.ckpt`` atomically and delete all but the ``keep_last`` newest.

    The file is written to a temporary name in the same directory, flushed to disk, then renamed, so a
    crash during the write never leaves a truncated checkpoint behind.

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
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / checkpoint_name(int(state["rounds_done"]))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".ckpt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    for old in list_checkpoints(d)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def resolve_checkpoint(ckpt_path: str | os.PathLike, directory: str | os.PathLike | None) -> Path:
    """Turn ``ckpt_path`` (a file, or ``"last"`` for the newest in ``directory``) into an existing path."""
    if str(ckpt_path) == "last":
        if directory is None:
            raise ValueError("`ckpt_path='last'` needs the loop's `checkpoint_dir`; pass a file path instead.")
        found = list_checkpoints(directory)
        if not found:
            raise FileNotFoundError(
                f"`ckpt_path='last'` found no checkpoint in `checkpoint_dir`={str(directory)!r}."
                " Start without `ckpt_path`, or pass the file to resume from."
            )
        return found[-1]
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"Expected `ckpt_path` to be a checkpoint file or 'last', got {str(ckpt_path)!r}: no such file.")
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a federated checkpoint written by :func:`save_checkpoint`."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != "lightning_fedmut":
        raise ValueError(f"{str(path)!r} is not a lightning_fedmut federated checkpoint.")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{str(path)!r} has checkpoint version {state.get('version')}, expected {CHECKPOINT_VERSION}.")
    return state


def compare_fingerprints(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise a ``ValueError`` naming every setting in which a checkpoint differs from the run resuming it."""
    mismatches = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            a, b = _short(saved.get(key)), _short(current.get(key))
            mismatches.append(f"{key}: checkpoint has {a}, this run has {b}")
    if mismatches:
        raise ValueError("Cannot resume: the checkpoint was made with other settings.\n  " + "\n  ".join(mismatches))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
