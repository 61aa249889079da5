"""A federated client: an id, its training data, its number of examples and, optionally, its validation data."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_fedmut.utilities.validation import check_int, check_real

ClientData = DataLoader | LightningDataModule


@dataclass(eq=False)
class Client:
    """One client of a simulated federation.

    Args:
        id: a unique, hashable id (an int or a str).
        data: the client's training data, a ``DataLoader`` or a ``LightningDataModule``.
        num_examples: the number of training examples (the FedAvg weight). Inferred from a
            ``DataLoader`` over a sized dataset; required for a ``LightningDataModule``.
        val_data: the client's own validation data, or ``None`` (the default: it trains without validating).
            A ``DataLoader``; for a client whose ``data`` is a ``LightningDataModule``, that same DataModule,
            whose ``val_dataloader`` is then used. The client validates its locally trained model at the end of
            every local epoch, as ``Trainer.fit`` does, so ``EarlyStopping`` and ``ReduceLROnPlateau`` can
            monitor ``val_loss``, and its validation metrics (the personalised, or local, accuracy) join its row
            of ``result.client_history``.

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> loader = DataLoader(TensorDataset(torch.zeros(7, 2)), batch_size=4)
        >>> Client(id=0, data=loader).num_examples
        7
        >>> Client(id=1, data=loader, val_data=DataLoader(TensorDataset(torch.zeros(2, 2)))).val_data is not None
        True
    """

    id: Any
    data: ClientData
    num_examples: int | None = None
    val_data: ClientData | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, (DataLoader, LightningDataModule)):
            raise TypeError(
                f"Expected `data` of client {self.id!r} to be a DataLoader or a LightningDataModule,"
                f" got {type(self.data).__name__}."
            )
        if self.num_examples is None:
            if isinstance(self.data, LightningDataModule):
                raise ValueError(
                    f"Client {self.id!r} gets a LightningDataModule: pass `num_examples` (its number of training"
                    " examples, the FedAvg weight)."
                )
            try:
                self.num_examples = len(self.data.dataset)  # type: ignore[arg-type]
            except TypeError as err:
                raise ValueError(
                    f"Cannot infer `num_examples` of client {self.id!r}: its dataset has no length. Pass it."
                ) from err
        if isinstance(self.num_examples, bool) or not isinstance(self.num_examples, (int, np.integer)):
            raise TypeError(f"Expected `num_examples` of client {self.id!r} to be an int, got {self.num_examples!r}.")
        if self.num_examples < 1:
            raise ValueError(
                f"Client {self.id!r} is empty: expected `num_examples` >= 1, got {self.num_examples}."
                " Drop it, or repartition with a larger `min_size`."
            )
        self.num_examples = int(self.num_examples)
        if isinstance(self.data, DataLoader):
            try:
                batches = len(self.data)
            except TypeError:
                batches = None
            if batches == 0:
                raise ValueError(
                    f"Client {self.id!r} has a DataLoader that yields no batch ({self.num_examples} examples,"
                    f" batch_size={self.data.batch_size}, drop_last={self.data.drop_last}). Set drop_last=False."
                )
        self._check_val_data()

    def _check_val_data(self) -> None:
        val = self.val_data
        if val is None:
            return
        if isinstance(self.data, LightningDataModule):
            if val is not self.data:
                raise TypeError(
                    f"Expected `val_data` of client {self.id!r} to be its own LightningDataModule (`data`), whose"
                    f" `val_dataloader` it then validates on, got {type(val).__name__}. Return the validation"
                    " loader from the DataModule's `val_dataloader`."
                )
            if not is_overridden("val_dataloader", val, LightningDataModule):
                raise ValueError(
                    f"Client {self.id!r} gets its LightningDataModule as `val_data`, but"
                    f" {type(val).__name__} has no `val_dataloader`. Define one, or leave `val_data` out."
                )
            return
        if not isinstance(val, DataLoader):
            raise TypeError(
                f"Expected `val_data` of client {self.id!r} to be a DataLoader or None, got {type(val).__name__}."
            )
        try:
            batches = len(val)
        except TypeError:
            batches = None
        if batches == 0:
            raise ValueError(
                f"Client {self.id!r} has a `val_data` DataLoader that yields no batch (batch_size={val.batch_size},"
                f" drop_last={val.drop_last}). Set drop_last=False, or leave `val_data` out."
            )


Partitions = Sequence[Sequence[int]] | Sequence[np.ndarray] | Mapping[Any, Sequence[int]] | Mapping[Any, np.ndarray]


def check_partitions(partitions: Partitions, num_examples: int | None = None) -> dict[Any, np.ndarray]:
    """Validate ``partitions`` and return them as ``{client_id: int64 index array}``.

    A sequence gives ids ``0..n-1``; a mapping keeps its keys. Raises if a client is empty, an index is
    outside ``[0, num_examples)`` or an index belongs to two clients.

    Examples:
        >>> check_partitions([[0, 2], [1]], num_examples=3)
        {0: array([0, 2]), 1: array([1])}
    """
    items = partitions.items() if isinstance(partitions, Mapping) else enumerate(partitions)
    out: dict[Any, np.ndarray] = {}
    for cid, idx in items:
        arr = np.asarray(idx)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"Expected the partition of client {cid!r} to be a 1-D list of integer indices, got {idx!r}.")
        if arr.size == 0:
            raise ValueError(f"Partition of client {cid!r} is empty: every client needs at least one example.")
        out[cid] = arr.astype(np.int64)
    if not out:
        raise ValueError("Expected `partitions` to hold at least one client, got none.")
    everything = np.concatenate(list(out.values()))
    if num_examples is not None:
        bad = everything[(everything < 0) | (everything >= num_examples)]
        if bad.size:
            raise ValueError(
                f"Partitions hold indices outside the dataset of {num_examples} examples: {bad[:5].tolist()}."
            )
    uniq, counts = np.unique(everything, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][:5].tolist()
        raise ValueError(f"Partitions give indices {dup} to more than one client; each index belongs to one client.")
    return out


def train_val_split(
    partitions: Partitions, val_fraction: float, seed: int = 0
) -> dict[Any, tuple[np.ndarray, np.ndarray]]:
    """Split each client's indices into training and validation indices, reproducibly.

    Client ``i`` (in partition order) draws from its own generator, ``numpy.random.default_rng([seed, i])``:
    its split depends on the seed and its own indices only, not on the other clients. It keeps
    ``ceil(val_fraction * n)`` of its ``n`` examples for validation and at least one for training; both parts
    keep the partition's order.

    Args:
        partitions: index lists (ids ``0..n-1``) or a mapping ``{client_id: indices}``.
        val_fraction: the share of each client's examples held out for validation, in ``(0, 1)``.
        seed: seed of the split.

    Examples:
        >>> split = train_val_split([[0, 1, 2, 3, 4], [5, 6]], val_fraction=0.2, seed=0)
        >>> [(train.tolist(), val.tolist()) for train, val in split.values()]
        [([0, 1, 3, 4], [2]), ([6], [5])]
    """
    val_fraction = check_real("val_fraction", val_fraction, low=0.0, high=1.0, high_open=True)
    if val_fraction == 0.0:
        raise ValueError("Expected `val_fraction` in (0.0, 1.0), got 0.0. Leave it out (None) for no validation data.")
    seed = check_int("seed", seed, low=0)
    out: dict[Any, tuple[np.ndarray, np.ndarray]] = {}
    for i, (cid, idx) in enumerate(check_partitions(partitions).items()):
        n = len(idx)
        n_val = math.ceil(round(val_fraction * n, 9))  # 0.2 * 10 is 2.0000000000000004: 2, not 3
        if n_val >= n:
            raise ValueError(
                f"Client {cid!r} has {n} example{'s' if n > 1 else ''}: `val_fraction`={val_fraction} leaves none to"
                " train on. Lower `val_fraction`, or repartition with a larger `min_size`."
            )
        held_out = np.zeros(n, dtype=bool)
        held_out[np.random.default_rng([seed, i]).permutation(n)[:n_val]] = True
        out[cid] = (idx[~held_out], idx[held_out])
    return out


def make_clients(
    dataset: Dataset,
    partitions: Partitions,
    batch_size: int,
    shuffle: bool = True,
    val_fraction: float | None = None,
    seed: int = 0,
    val_batch_size: int | None = None,
    **dataloader_kwargs: Any,
) -> list[Client]:
    """One :class:`Client` per partition, each with a ``DataLoader`` over its subset of ``dataset``.

    Args:
        dataset: a sized map-style dataset.
        partitions: index lists (ids ``0..n-1``) or a mapping ``{client_id: indices}``.
        batch_size: local batch size.
        shuffle: reshuffle every epoch; the order is reproducible because the loop seeds each client's
            training from the run seed.
        val_fraction: hold out this share of each client's examples as its validation data
            (the client's ``val_data``, split by :func:`train_val_split`); ``None``: no client validation data.
            ``num_examples`` counts the training part only.
        seed: seed of the training/validation split.
        val_batch_size: batch size of the validation loaders; default ``batch_size``.
        **dataloader_kwargs: passed to every ``DataLoader`` (``num_workers``, ``pin_memory``, ...).

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.arange(10.0))
        >>> [c.num_examples for c in make_clients(ds, [[0, 1, 2], [3, 4]], batch_size=2)]
        [3, 2]
        >>> clients = make_clients(ds, [list(range(10))], batch_size=2, val_fraction=0.2, seed=0)
        >>> clients[0].num_examples, len(clients[0].val_data.dataset)
        (8, 2)
    """
    batch_size = check_int("batch_size", batch_size, low=1)  # numpy integers too
    parts = check_partitions(partitions, len(dataset))  # type: ignore[arg-type]
    if val_fraction is None:
        return [
            Client(
                id=cid,
                data=DataLoader(Subset(dataset, idx.tolist()), batch_size=batch_size, shuffle=shuffle,
                                **dataloader_kwargs),
                num_examples=len(idx),
            )
            for cid, idx in parts.items()
        ]
    val_batch_size = batch_size if val_batch_size is None else check_int("val_batch_size", val_batch_size, low=1)
    return [
        Client(
            id=cid,
            data=DataLoader(Subset(dataset, train.tolist()), batch_size=batch_size, shuffle=shuffle,
                            **dataloader_kwargs),
            num_examples=len(train),
            val_data=DataLoader(Subset(dataset, val.tolist()), batch_size=val_batch_size, shuffle=False,
                                **dataloader_kwargs),
        )
        for cid, (train, val) in train_val_split(parts, val_fraction, seed).items()
    ]
