"""Built-in data sets as ``(train, test)`` map-style datasets, for the command line and the examples.

Offline data sets: ``digits`` (scikit-learn's bundled 8x8 digits), ``mnist1d`` (generated locally by the
``mnist1d`` package) and ``synthetic`` (Gaussian class prototypes, for tests). Downloaded data sets:
``mnist``, ``fashion_mnist``, ``cifar10`` and ``cifar100``. Their files are read by the small readers
below (MNIST's IDX files, CIFAR's pickled batches, in torchvision's folder layout), so a machine that
already holds the files needs no torchvision; torchvision (``pip install 'lightning_fedmut[vision]'``) is
used only to download missing files, and a failed download raises one :class:`DatasetDownloadError`
line saying what to do.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = [
    "DATASETS",
    "DatasetDownloadError",
    "DatasetSplit",
    "ImageDataset",
    "labels_of",
    "load_cifar_split",
    "load_dataset",
    "load_digits_split",
    "load_mnist1d_split",
    "load_mnist_split",
    "make_synthetic_split",
    "read_idx",
]

#: Names accepted by :func:`load_dataset` (and by ``lightning-fedmut fit --data``).
DATASETS = ("digits", "mnist1d", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100")

_VISION_HINT = "pip install 'lightning_fedmut[vision]'"
_OFFLINE_CHOICES = "digits, mnist1d or synthetic"

# torchvision's folder layout and file names, and the normalisation of each data set
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_VISION = {
    "mnist": {"folder": "MNIST", "tv": "MNIST", "mean": (0.1307,), "std": (0.3081,), "classes": 10},
    "fashion_mnist": {"folder": "FashionMNIST", "tv": "FashionMNIST", "mean": (0.2860,), "std": (0.3530,), "classes": 10},
    "cifar10": {"folder": "cifar-10-batches-py", "tv": "CIFAR10", "mean": (0.4914, 0.4822, 0.4465),
                "std": (0.2470, 0.2435, 0.2616), "classes": 10},
    "cifar100": {"folder": "cifar-100-python", "tv": "CIFAR100", "mean": (0.5071, 0.4865, 0.4409),
                 "std": (0.2673, 0.2564, 0.2762), "classes": 100},
}


class DatasetDownloadError(RuntimeError):
    """A data set's files are missing and could not be downloaded (typically: the machine is offline)."""


@dataclass(frozen=True)
class DatasetSplit:
    """A built-in data set: its training and test datasets and what a model needs to know about them.

    Attributes:
        name: the name given to :func:`load_dataset`.
        train: the training dataset (partitioned among clients).
        test: the test dataset (server-side evaluation).
        num_classes: number of classes.
        input_shape: shape of one input, e.g. ``(1, 8, 8)``.
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]


class ImageDataset(Dataset):
    """Images kept as ``uint8`` and normalised per item: ``(x / 255 - mean) / std`` per channel.

    Args:
        images: ``uint8`` array ``(N, C, H, W)``.
        labels: integer labels ``(N,)``.
        mean: per-channel mean of the ``[0, 1]``-scaled pixels.
        std: per-channel standard deviation.

    Examples:
        >>> ds = ImageDataset(np.full((2, 1, 2, 2), 255, dtype=np.uint8), np.array([3, 1]), mean=(0.5,), std=(0.5,))
        >>> x, y = ds[0]
        >>> x.tolist(), y
        ([[[1.0, 1.0], [1.0, 1.0]]], 3)
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]):
        images = np.asarray(images)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"Expected `images` to be a uint8 array (N, C, H, W), got {images.dtype} {images.shape}.")
        if len(labels) != len(images):
            raise ValueError(f"Expected one label per image ({len(images)}), got {len(labels)}.")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = (self.images[index].float() / 255.0 - self.mean) / self.std
        return x, int(self.targets[index])


def labels_of(dataset: Dataset) -> np.ndarray:
    """The labels of a dataset as a numpy array, for partitioning.

    Reads ``tensors[-1]`` of a ``TensorDataset``, ``targets`` of torchvision-style datasets (and of
    :class:`ImageDataset`), follows ``Subset`` indices, and otherwise reads item ``[1]`` of every example.

    Examples:
        >>> labels_of(TensorDataset(torch.zeros(3, 2), torch.tensor([2, 0, 1]))).tolist()
        [2, 0, 1]
        >>> labels_of(Subset(TensorDataset(torch.zeros(3, 2), torch.tensor([2, 0, 1])), [2, 0])).tolist()
        [1, 2]
    """
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[-1].numpy()
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return targets.numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- offline
def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes) as ``(train, test)`` datasets.

    Pixels are scaled to ``[0, 1]``; images have shape ``1x8x8``. The split is a seeded random permutation.

    Examples:
        >>> train, test = load_digits_split()
        >>> len(train), len(test), tuple(train[0][0].shape)
        (1348, 449, (1, 8, 8))
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover
        raise ImportError("The digits data set needs scikit-learn: pip install 'lightning_fedmut[examples]'.") from err
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = round(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def load_mnist1d_split(seed: int = 42) -> tuple[TensorDataset, TensorDataset]:
    """MNIST-1D (Greydanus, 2020) generated locally: 4000 train and 1000 test signals of length 40.

    Inputs have shape ``(40,)``. Generation takes about a second and never touches the network; the
    global numpy and ``random`` states, which the generator reseeds, are restored afterwards. The
    generated arrays are cached per seed for the rest of the process.

    Examples:
        >>> train, test = load_mnist1d_split()
        >>> len(train), len(test), tuple(train[0][0].shape)
        (4000, 1000, (40,))
    """
    data = _mnist1d_arrays(seed)

    def tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long))

    return tensors(data["x"], data["y"]), tensors(data["x_test"], data["y_test"])


@functools.lru_cache(maxsize=2)
def _mnist1d_arrays(seed: int) -> dict[str, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # pragma: no cover
        raise ImportError("The mnist1d data set needs the mnist1d package: pip install 'lightning_fedmut[examples]'.") from err
    import random

    args = get_dataset_args()
    args.seed = seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: data[k] for k in ("x", "y", "x_test", "y_test")}


def make_synthetic_split(
    num_train: int = 600, num_test: int = 200, num_classes: int = 10, noise: float = 1.0, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """Gaussian blobs shaped like the digits (``1x8x8``): one random prototype per class plus noise.

    Small, deterministic and learnable in a few steps, for tests and smoke runs.

    Examples:
        >>> train, test = make_synthetic_split(num_train=30, num_test=10, num_classes=3)
        >>> len(train), len(test), tuple(train[0][0].shape), sorted(set(labels_of(train).tolist()))
        (30, 10, (1, 8, 8), [0, 1, 2])
    """
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, 1, 8, 8, generator=g)
    n = num_train + num_test
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=g)]
    x = prototypes[y] + noise * torch.randn(n, 1, 8, 8, generator=g)
    return TensorDataset(x[:num_train], y[:num_train]), TensorDataset(x[num_train:], y[num_train:])


# ------------------------------------------------------------------------------------------- files
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (MNIST's format), plain or gzipped, as a numpy array.

    The header is two zero bytes, a type code (``0x08`` for uint8), the number of dimensions, and one
    big-endian 32-bit size per dimension.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = os.path.join(d, "labels-idx1-ubyte")
        ...     with open(p, "wb") as f:
        ...         _ = f.write(struct.pack(">HBBI", 0, 0x08, 1, 3) + bytes([7, 0, 2]))
        ...     read_idx(p).tolist()
        [7, 0, 2]
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{str(path)!r} is not an IDX file: it holds {len(data)} bytes.")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if zero != 0 or code not in dtypes:
        raise ValueError(f"{str(path)!r} is not an IDX file: bad magic number {data[:4].hex()}.")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(dtypes[code])
    body = data[4 + 4 * ndim :]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(body) != expected:
        raise ValueError(f"{str(path)!r} is truncated: expected {expected} bytes of data for shape {shape}, got {len(body)}.")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _mnist_files(root: Path, name: str) -> dict[str, tuple[Path, Path]] | None:
    raw = root / _VISION[name]["folder"] / "raw"
    found = {}
    for split, (images, labels) in _MNIST_FILES.items():
        pair = (_idx_file(raw, images), _idx_file(raw, labels))
        if None in pair:
            return None
        found[split] = pair
    return found  # type: ignore[return-value]


def _cifar_files(root: Path, name: str) -> dict[str, list[Path]] | None:
    folder = root / _VISION[name]["folder"]
    if name == "cifar10":
        files = {"train": [folder / f"data_batch_{i}" for i in range(1, 6)], "test": [folder / "test_batch"]}
    else:
        files = {"train": [folder / "train"], "test": [folder / "test"]}
    return files if all(p.is_file() for paths in files.values() for p in paths) else None


def _read_cifar(paths: list[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in paths:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[label_key])
    return np.concatenate(images), np.asarray(labels, dtype=np.int64)


def _find_or_download(name: str, root: Path, find: Callable[[Path, str], Any], download: bool, folder: Path) -> Any:
    """The files ``find(root, name)`` locates, downloading them first if they are missing and allowed."""
    files = find(root, name)
    if files is None:
        if not download:
            raise DatasetDownloadError(f"{_VISION[name]['tv']} files not found in {str(folder)!r} and download=False.")
        _download(name, root)
        files = find(root, name)
        if files is None:  # pragma: no cover - torchvision changed its layout
            raise DatasetDownloadError(f"torchvision did not leave {_VISION[name]['tv']}'s files in {str(root)!r}.")
    return files


def _download(name: str, root: Path) -> None:
    """Download ``name`` into ``root`` with torchvision, as one clear error if that is not possible."""
    spec = _VISION[name]
    try:
        import torchvision
    except ImportError as err:
        raise DatasetDownloadError(
            f"{spec['tv']} is not in {str(root)!r} and downloading it needs torchvision: {_VISION_HINT}"
            f" (or copy the files to {str(root / spec['folder'])!r}, or use --data {_OFFLINE_CHOICES})."
        ) from err
    dataset_class = getattr(torchvision.datasets, spec["tv"])
    messages = io.StringIO()
    try:
        with contextlib.redirect_stdout(messages):  # torchvision prints one line per failed mirror
            for train in (True, False):
                dataset_class(str(root), train=train, download=True)
    except (OSError, RuntimeError) as err:  # URLError, socket errors, torchvision's "Error downloading ..."
        reason = " ".join(str(getattr(err, "reason", err) or type(err).__name__).split())
        raise DatasetDownloadError(
            f"Cannot download {spec['tv']} into {str(root)!r} ({reason}): the machine looks offline."
            f" Copy the files to {str(root / spec['folder'])!r} from a machine with network access,"
            f" or use --data {_OFFLINE_CHOICES}, which need no download."
        ) from err
    print(messages.getvalue(), end="")


def load_mnist_split(
    root: str | os.PathLike = "data", download: bool = True, fashion: bool = False
) -> tuple[ImageDataset, ImageDataset]:
    """MNIST or Fashion-MNIST (``1x28x28``, 10 classes) from torchvision's layout ``root/MNIST/raw``.

    The IDX files (plain or ``.gz``) are read with :func:`read_idx`; only missing files need torchvision,
    which downloads them when ``download=True``.

    Raises:
        DatasetDownloadError: the files are missing and cannot be downloaded.
    """
    name = "fashion_mnist" if fashion else "mnist"
    root = Path(root)
    files = _find_or_download(name, root, _mnist_files, download, root / _VISION[name]["folder"] / "raw")
    spec = _VISION[name]
    out = []
    for split in ("train", "test"):
        images, labels = (read_idx(p) for p in files[split])
        if images.ndim != 3 or len(images) != len(labels):
            raise ValueError(f"{str(files[split][0])!r}: expected images (N, H, W) and N labels, got {images.shape} and {labels.shape}.")
        out.append(ImageDataset(images[:, None].astype(np.uint8), labels.astype(np.int64), spec["mean"], spec["std"]))
    return out[0], out[1]


def load_cifar_split(
    root: str | os.PathLike = "data", download: bool = True, cifar100: bool = False
) -> tuple[ImageDataset, ImageDataset]:
    """CIFAR-10 or CIFAR-100 (``3x32x32``; 10 or 100 fine classes) from torchvision's layout under ``root``.

    The pickled batches (``cifar-10-batches-py/data_batch_1`` ..., ``cifar-100-python/train``) are read
    directly; only missing files need torchvision, which downloads them when ``download=True``.

    Raises:
        DatasetDownloadError: the files are missing and cannot be downloaded.
    """
    name = "cifar100" if cifar100 else "cifar10"
    root = Path(root)
    files = _find_or_download(name, root, _cifar_files, download, root / _VISION[name]["folder"])
    spec = _VISION[name]
    label_key = "fine_labels" if cifar100 else "labels"
    train, test = (_read_cifar(files[split], label_key) for split in ("train", "test"))
    return ImageDataset(*train, spec["mean"], spec["std"]), ImageDataset(*test, spec["mean"], spec["std"])


# ---------------------------------------------------------------------------------------- registry
def load_dataset(name: str, root: str | os.PathLike = "data", download: bool = True, seed: int = 0) -> DatasetSplit:
    """Load a built-in data set by name (one of :data:`DATASETS`).

    Args:
        name: ``digits``, ``mnist1d``, ``synthetic``, ``mnist``, ``fashion_mnist``, ``cifar10`` or ``cifar100``.
        root: folder of the downloaded data sets (torchvision's layout).
        download: download missing files (needs torchvision and network access).
        seed: seed of the generated or split data sets (``digits``' test split, ``synthetic``); it is
            not the run's seed, so runs with different seeds see the same data.

    Examples:
        >>> split = load_dataset("digits")
        >>> split.num_classes, split.input_shape, len(split.train)
        (10, (1, 8, 8), 1348)
    """
    key = str(name).lower().replace("-", "_")
    key = {"fashionmnist": "fashion_mnist", "cifar_10": "cifar10", "cifar_100": "cifar100"}.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"Expected `name` to be one of {', '.join(DATASETS)}, got {name!r}.")
    if key == "digits":
        train, test = load_digits_split(seed=seed)
    elif key == "mnist1d":
        train, test = load_mnist1d_split()
    elif key == "synthetic":
        train, test = make_synthetic_split(seed=seed)
    elif key in ("mnist", "fashion_mnist"):
        train, test = load_mnist_split(root, download=download, fashion=key == "fashion_mnist")
    else:
        train, test = load_cifar_split(root, download=download, cifar100=key == "cifar100")
    num_classes = int(_VISION[key]["classes"]) if key in _VISION else 10
    return DatasetSplit(key, train, test, num_classes, tuple(train[0][0].shape))

