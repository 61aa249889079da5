"""LEAF-format data (FEMNIST, Shakespeare): naturally non-IID, one client per writer or speaker.

A LEAF file is JSON with ``users`` (the ids), ``num_samples`` (one count per user) and ``user_data``
(``{user: {"x": [...], "y": [...]}}``); a data set is one file or a folder of them (LEAF splits its data
into several). FEMNIST's ``x`` are lists of 784 pixel values and ``y`` class ids; Shakespeare's ``x`` are
80-character strings and ``y`` the next character, read as indices into LEAF's 80-letter alphabet
(:data:`LEAF_LETTERS`). Nothing is downloaded: point the reader at files you have.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["LEAF_LETTERS", "load_leaf"]

#: LEAF's Shakespeare alphabet: a character's index is its class.
LEAF_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
_INDEX = {c: i for i, c in enumerate(LEAF_LETTERS)}


def load_leaf(path: str | os.PathLike) -> tuple[TensorDataset, dict[str, np.ndarray]]:
    """Read a LEAF data set: ``(dataset, partitions)`` with one partition per user, for :func:`make_clients`.

    Args:
        path: a LEAF JSON file, or a folder whose ``*.json`` files are read in name order.

    Returns:
        A ``TensorDataset(x, y)`` (float features, or character indices for text) and ``{user: indices}``.

    Examples:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as d:
        ...     file = Path(d) / "train.json"
        ...     _ = file.write_text(json.dumps({"users": ["a", "b"], "num_samples": [2, 1],
        ...         "user_data": {"a": {"x": ["to be", "or no"], "y": ["o", "t"]}, "b": {"x": ["ay! h"], "y": ["e"]}}}))
        ...     dataset, parts = load_leaf(file)
        >>> dataset.tensors[0].shape, dataset.tensors[1].tolist(), {u: p.tolist() for u, p in parts.items()}
        (torch.Size([3, 5]), [67, 72, 57], {'a': [0, 1], 'b': [2]})
    """
    root = Path(path)
    files = sorted(root.glob("*.json")) if root.is_dir() else [root]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"Expected `path` to be a LEAF JSON file or a folder of them, got {str(path)!r}.")
    xs: list[Any] = []
    ys: list[Any] = []
    parts: dict[str, np.ndarray] = {}
    for file in files:
        for user, x, y in _read(file):
            if user in parts:
                raise ValueError(f"User {user!r} appears twice in the LEAF data at {str(root)!r} (again in {file.name}).")
            parts[user] = np.arange(len(xs), len(xs) + len(x), dtype=np.int64)
            xs.extend(x)
            ys.extend(y)
    if not xs:
        raise ValueError(f"The LEAF data at {str(path)!r} holds no example.")
    text = isinstance(xs[0], str)
    try:
        x_tensor = (torch.tensor([[_INDEX[c] for c in s] for s in xs], dtype=torch.long) if text
                    else torch.tensor(xs, dtype=torch.float32))
        y_tensor = torch.tensor([_INDEX[c] for c in ys] if text else ys, dtype=torch.long)
    except KeyError as err:
        raise ValueError(f"The LEAF text at {str(path)!r} holds {err.args[0]!r}, which is not in LEAF_LETTERS.") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"The LEAF examples at {str(path)!r} are not of one shape and type: {err}.") from None
    return TensorDataset(x_tensor, y_tensor), parts


def _read(file: Path) -> list[tuple[str, list[Any], list[Any]]]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(file)!r} is not valid JSON: {err}.") from None
    missing = [k for k in ("users", "num_samples", "user_data") if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{str(file)!r} is not a LEAF file: it has no {', '.join(repr(k) for k in missing)}.")
    users, counts, user_data = data["users"], data["num_samples"], data["user_data"]
    if len(users) != len(counts):
        raise ValueError(f"{str(file)!r} lists {len(users)} users but {len(counts)} `num_samples`.")
    out = []
    for user, count in zip(users, counts):
        record = user_data.get(user)
        if not isinstance(record, dict) or "x" not in record or "y" not in record:
            raise ValueError(f"{str(file)!r}: user {user!r} has no `user_data` with `x` and `y`.")
        x, y = record["x"], record["y"]
        if not (len(x) == len(y) == count):
            raise ValueError(f"{str(file)!r}: user {user!r} has {len(x)} x, {len(y)} y and num_samples {count}.")
        out.append((str(user), list(x), list(y)))
    return out
