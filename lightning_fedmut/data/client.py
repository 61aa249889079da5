"""A federated client: an id, its training data and its number of examples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_fedmut.utilities.validation import check_int

ClientData = Union[DataLoader, LightningDataModule]


@dataclass(eq=False)
class Client:
    """One client of a simulated federation.

    Args:
        id: a unique, hashable id (an int or a str).
        data: the client's training data, a ``DataLoader`` or a ``LightningDataModule``.
        num_examples: the number of training examples (the FedAvg weight). Inferred from a
            ``DataLoader`` over a sized dataset; required for a ``LightningDataModule``.

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> loader = DataLoader(TensorDataset(torch.zeros(7, 2)), batch_size=4)
        >>> Client(id=0, data=loader).num_examples
        7
    """

    id: Any
    data: ClientData
    num_examples: int | None = None

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


Partitions = Union[Sequence[Sequence[int]], Mapping[Any, Sequence[int]]]


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


def make_clients(
    dataset: Dataset, partitions: Partitions, batch_size: int, shuffle: bool = True, **dataloader_kwargs: Any
) -> list[Client]:
    """One :class:`Client` per partition, each with a ``DataLoader`` over its subset of ``dataset``.

    Args:
        dataset: a sized map-style dataset.
        partitions: index lists (ids ``0..n-1``) or a mapping ``{client_id: indices}``.
        batch_size: local batch size.
        shuffle: reshuffle every epoch; the order is reproducible because the loop seeds each client's
            training from the run seed.
        **dataloader_kwargs: passed to every ``DataLoader`` (``num_workers``, ``pin_memory``, ...).

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.arange(10.0))
        >>> [c.num_examples for c in make_clients(ds, [[0, 1, 2], [3, 4]], batch_size=2)]
        [3, 2]
    """
    batch_size = check_int("batch_size", batch_size, low=1)  # numpy integers too
    parts = check_partitions(partitions, len(dataset))  # type: ignore[arg-type]
    return [
        Client(
            id=cid,
            data=DataLoader(Subset(dataset, idx.tolist()), batch_size=batch_size, shuffle=shuffle, **dataloader_kwargs),
            num_examples=len(idx),
        )
        for cid, idx in parts.items()
    ]
