"""Partitions of a data set among clients: IID, Dirichlet non-IID, label shards, and JSON index maps."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lightning_fedmut.utilities.validation import check_int, check_real


def _labels(labels: Any) -> np.ndarray:
    """``labels`` as a 1-D integer array; NaN, fractional or non-numeric labels are refused, never dropped."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"Expected `labels` to be a non-empty 1-D sequence, got shape {arr.shape}.")
    if np.issubdtype(arr.dtype, np.integer):
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"Expected `labels` to be integer class labels, got an array of dtype {arr.dtype}.")
    bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"Expected `labels` to be integer class labels, got {float(arr[i])!r} at index {i}"
            f" ({bad.size} such label{'s' if bad.size > 1 else ''}). Drop or fix those examples first."
        )
    return arr.astype(np.int64)


def partition_iid(num_examples: int, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Split ``range(num_examples)`` into ``num_clients`` random parts of (almost) equal size.

    Examples:
        >>> [len(p) for p in partition_iid(10, 3, seed=0)]
        [4, 3, 3]
    """
    num_examples = check_int("num_examples", num_examples, low=1)
    num_clients = check_int("num_clients", num_clients, low=1, high=num_examples)
    order = np.random.default_rng(check_int("seed", seed, low=0)).permutation(num_examples)
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def partition_dirichlet(
    labels: Sequence[int] | np.ndarray,
    num_clients: int,
    alpha: float,
    min_size: int = 10,
    seed: int = 0,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Non-IID split: each class is divided among clients by proportions drawn from ``Dir(alpha)``.

    Proportions are redrawn (all classes) until every client holds at least ``min_size`` examples. While
    drawing, a client that already holds its fair share (``len(labels) / num_clients``) gets no more of a
    class, the usual balancing that keeps small ``alpha`` from starving most clients.

    Args:
        labels: one integer label per example (a float label must be a whole number; NaN is refused).
        num_clients: number of parts.
        alpha: Dirichlet concentration; 0.1 is strongly non-IID, 100 close to IID.
        min_size: the fewest examples a client may hold.
        seed: seed of the partition's own generator.
        max_tries: draws before giving up with an error.

    Examples:
        >>> labels = np.repeat(np.arange(4), 50)
        >>> parts = partition_dirichlet(labels, num_clients=5, alpha=0.5, min_size=5, seed=0)
        >>> sum(len(p) for p in parts), min(len(p) for p in parts) >= 5
        (200, True)
    """
    y = _labels(labels)
    num_clients = check_int("num_clients", num_clients, low=1, high=len(y))
    alpha = check_real("alpha", alpha, low=0.0)
    if alpha == 0.0:
        raise ValueError("Expected `alpha` > 0, got 0.0.")
    min_size = check_int("min_size", min_size, low=0)
    if min_size * num_clients > len(y):
        raise ValueError(
            f"Expected `min_size` * `num_clients` <= {len(y)} examples, got {min_size} * {num_clients}."
            " Lower `min_size` or `num_clients`."
        )
    max_tries = check_int("max_tries", max_tries, low=1)
    rng = np.random.default_rng(check_int("seed", seed, low=0))
    classes = np.unique(y)
    fair = len(y) / num_clients
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = np.flatnonzero(y == c)
            rng.shuffle(idx)
            p = rng.dirichlet(np.full(num_clients, alpha))
            p = p * np.array([len(part) < fair for part in parts])
            p = p / p.sum() if p.sum() > 0 else np.full(num_clients, 1.0 / num_clients)
            cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(idx, cuts)):
                part.extend(chunk.tolist())
        if min(len(part) for part in parts) >= min_size:
            return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]
    raise RuntimeError(
        f"No Dirichlet(alpha={alpha}) partition into {num_clients} clients gave every client >= {min_size}"
        f" examples in {max_tries} draws. Lower `min_size`, raise `alpha` or use fewer clients."
    )


def partition_shards(
    labels: Sequence[int] | np.ndarray, num_clients: int, shards_per_client: int = 2, seed: int = 0
) -> list[np.ndarray]:
    """Pathological non-IID split (McMahan et al.): sort by label, cut into shards, deal ``k`` per client.

    Examples:
        >>> labels = np.repeat(np.arange(5), 20)
        >>> parts = partition_shards(labels, num_clients=5, shards_per_client=2, seed=0)
        >>> [len(p) for p in parts], [len(np.unique(labels[p])) <= 2 for p in parts].count(True)
        ([20, 20, 20, 20, 20], 5)
    """
    y = _labels(labels)
    num_clients = check_int("num_clients", num_clients, low=1)
    k = check_int("shards_per_client", shards_per_client, low=1)
    if num_clients * k > len(y):
        raise ValueError(
            f"Expected `num_clients` * `shards_per_client` <= {len(y)} examples, got {num_clients} * {k}."
        )
    rng = np.random.default_rng(check_int("seed", seed, low=0))
    order = np.argsort(y, kind="stable")
    shards = np.array_split(order, num_clients * k)
    deal = rng.permutation(num_clients * k).reshape(num_clients, k)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in deal]


def load_partition_json(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``{client_id: [indices]}`` JSON map, the format of FedMut's reference partitions.

    Keys stay strings, in file order. A map wrapped as ``{"dataset": ..., "train_data": {...}}`` is unwrapped.
    Every index must be a JSON integer (a whole-number float such as ``3.0`` is read as ``3``); a fraction,
    a boolean, a string or a key that appears twice is an error naming the client and the file, never
    rounded, cast or overwritten.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = os.path.join(d, "parts.json")
        ...     save_partition_json({"0": [3, 1], "1": [2]}, p)
        ...     load_partition_json(p)
        {'0': array([3, 1]), '1': array([2])}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = os.path.join(d, "parts.json")
        ...     _ = open(p, "w").write('{"0": [0, 1.9]}')
        ...     load_partition_json(p)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Expected the indices of client '0' in '...parts.json' to be integers, got 1.9 at position 1.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Expected `path` to be a JSON partition file, got {str(path)!r}: no such file.")
    name = str(path)

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(
                    f"Client {key!r} appears more than once in {name!r}; each client id must appear once"
                    " (JSON readers keep only the last)."
                )
            out[key] = value
        return out

    with open(path) as f:
        try:
            data = json.load(f, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            raise ValueError(f"{name!r} is not valid JSON: {exc.msg} at {where}.") from exc
    if isinstance(data, dict) and isinstance(data.get("train_data"), dict):
        data = data["train_data"]  # the wrapped form {"dataset": ..., "train_data": {client_id: [indices]}}
    if not isinstance(data, dict):
        raise ValueError(f"Expected a JSON object {{client_id: [indices]}} in {name!r}, got {type(data).__name__}.")
    return {str(k): _json_indices(k, v, name) for k, v in data.items()}


def _json_indices(client: str, value: Any, name: str) -> np.ndarray:
    """One client's list of JSON indices as int64, refusing anything that is not a whole number."""
    if not isinstance(value, list):
        raise ValueError(
            f"Expected the indices of client {client!r} in {name!r} to be a list, got {_json_repr(value)}."
        )
    if any(type(x) is not int for x in value):
        for i, x in enumerate(value):
            if type(x) is int or (type(x) is float and x.is_integer()):
                continue
            raise ValueError(
                f"Expected the indices of client {client!r} in {name!r} to be integers, got {_json_repr(x)} at"
                f" position {i}."
            )
    ints = [int(x) for x in value]
    if ints and (min(ints) < -(2**63) or max(ints) >= 2**63):
        i = next(i for i, x in enumerate(ints) if not -(2**63) <= x < 2**63)
        raise ValueError(
            f"Expected the indices of client {client!r} in {name!r} to fit in 64 bits, got {value[i]!r} at"
            f" position {i}."
        )
    return np.asarray(ints, dtype=np.int64)


def _json_repr(x: Any) -> str:
    if isinstance(x, bool):
        return f"{json.dumps(x)} (a boolean)"
    if isinstance(x, str):
        return f"{json.dumps(x)} (a string)"
    if x is None:
        return "null"
    if isinstance(x, (list, dict)):
        return f"a JSON {'array' if isinstance(x, list) else 'object'}"
    return repr(x)


def save_partition_json(partitions: Sequence[Sequence[int]] | Mapping[Any, Sequence[int]], path: str | os.PathLike) -> None:
    """Write partitions as a ``{client_id: [indices]}`` JSON map (ids are written as strings).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = os.path.join(d, "parts.json")
        ...     save_partition_json([[0, 2], [1]], path)
        ...     open(path).read()
        '{"0": [0, 2], "1": [1]}'
    """
    items = partitions.items() if isinstance(partitions, Mapping) else enumerate(partitions)
    with open(path, "w") as f:
        json.dump({str(k): [int(i) for i in v] for k, v in items}, f)
