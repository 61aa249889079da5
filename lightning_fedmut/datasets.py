"""Offline data sets as tensors: scikit-learn's bundled digits and locally generated data."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset


def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes) as ``(train, test)`` datasets.

    Pixels are scaled to ``[0, 1]``; images have shape ``1x8x8``. The split is stratified-free and seeded.

    Example:
        >>> train, test = load_digits_split()
        >>> len(train), len(test), tuple(train[0][0].shape)
        (1348, 449, (1, 8, 8))
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover
        raise ImportError("The digits data set needs scikit-learn: pip install 'lightning_fedmut[dev]'.") from err
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def labels_of(dataset: TensorDataset) -> np.ndarray:
    """The label tensor of a ``(x, y)`` TensorDataset as a numpy array."""
    return dataset.tensors[1].numpy()
