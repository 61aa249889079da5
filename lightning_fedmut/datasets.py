"""Built-in data sets as ``(train, test)`` map-style datasets, for the command line and the examples.

Offline data sets: ``digits`` (scikit-learn's bundled 8x8 digits), ``mnist1d`` (generated locally by the
``mnist1d`` package) and ``synthetic`` (Gaussian class prototypes, for tests). Downloaded data sets:
``mnist``, ``fashion_mnist``, ``cifar10`` and ``cifar100``. Their files are read by the small readers
below (MNIST's IDX files, CIFAR's pickled batches, in torchvision's folder layout), so a machine that
already holds the files needs no torchvision; torchvision (``pip install 'lightning_fedmut[vision]'``) is
used only to download missing files, and a failed download raises one :class:`DatasetDownloadError`
line saying what to do.

Data files are data, never code: every CIFAR file is checked against its published size and MD5
(:data:`CIFAR_CHECKSUMS`, the sums torchvision checks) before a byte of it is unpickled, and the batches are
then read by an unpickler that builds only numpy arrays, lists, dicts, numbers and strings, so that even a
file with the right sum cannot run code. A missing, partial or altered file, and an IDX file whose header and
length disagree, is one :class:`DatasetIntegrityError` line naming the file and how to get the real one.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = [
    "CIFAR_CHECKSUMS",
    "DATASETS",
    "DatasetDownloadError",
    "DatasetIntegrityError",
    "DatasetSplit",
    "ImageDataset",
    "cache_folder",
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
class _VisionRequired(TypedDict):
    folder: str
    tv: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: int


class _VisionSpec(_VisionRequired, total=False):
    url: str


_VISION: dict[str, _VisionSpec] = {
    "mnist": {"folder": "MNIST", "tv": "MNIST", "mean": (0.1307,), "std": (0.3081,), "classes": 10},
    "fashion_mnist": {"folder": "FashionMNIST", "tv": "FashionMNIST", "mean": (0.2860,), "std": (0.3530,), "classes": 10},
    "cifar10": {"folder": "cifar-10-batches-py", "tv": "CIFAR10", "mean": (0.4914, 0.4822, 0.4465),
                "std": (0.2470, 0.2435, 0.2616), "classes": 10,
                "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"},
    "cifar100": {"folder": "cifar-100-python", "tv": "CIFAR100", "mean": (0.5071, 0.4865, 0.4409),
                 "std": (0.2673, 0.2564, 0.2762), "classes": 100,
                 "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"},
}

#: The CIFAR files read, as published: ``{data set: {file name: (size in bytes, MD5)}}``. The sums are the
#: ones torchvision checks (``torchvision/datasets/cifar.py``); the sizes are those of the files in the
#: official archives. A file is unpickled only once its size and sum match.
CIFAR_CHECKSUMS: dict[str, dict[str, tuple[int, str]]] = {
    "cifar10": {
        "data_batch_1": (31035704, "c99cafc152244af753f735de768cd75f"),
        "data_batch_2": (31035320, "d4bba439e000b95fd0a9bffe97cbabec"),
        "data_batch_3": (31035999, "54ebc095f3ab1f0389bbae665268c751"),
        "data_batch_4": (31035696, "634d18415352ddfa80567beed471001a"),
        "data_batch_5": (31035623, "482c414d41f54cd18b22e5b47cb7c3cb"),
        "test_batch": (31035526, "40351d587109b95175f43aff81a1287e"),
    },
    "cifar100": {
        "train": (155249918, "16019d7e3df5f24257cddd939b257f8d"),
        "test": (31049707, "f0ef6b0ae62326f3e7ffdfab6717acfc"),
    },
}


class DatasetDownloadError(RuntimeError):
    """A data set's files are missing and could not be downloaded (typically: the machine is offline)."""


class DatasetIntegrityError(DatasetDownloadError, ValueError):
    """A data set's file is there but is not the published file: partial, altered, or not data only.

    Raised before anything from the file is used; the message names the file, what was expected and
    found, and how to get the real one. It is a :class:`DatasetDownloadError` (the command line reports it
    as one line) and a ``ValueError``.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = os.path.join(d, "labels-idx1-ubyte")
        ...     with open(path, "wb") as f:
        ...         _ = f.write(struct.pack(">HBBI", 0, 0x08, 1, 3) + bytes([7]))  # 3 labels announced, 1 written
        ...     try:
        ...         read_idx(path)
        ...     except DatasetIntegrityError as err:
        ...         print(str(err).replace(repr(path), "FILE"))
        FILE is truncated: expected 3 bytes of data for shape (3,), got 1.
    """


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
    generated arrays are kept per seed for the rest of the process, and on disk for later ones (see
    :func:`cache_folder`).

    Examples:
        >>> train, test = load_mnist1d_split()
        >>> len(train), len(test), tuple(train[0][0].shape)
        (4000, 1000, (40,))
    """
    data = _mnist1d_arrays(seed)

    def tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long))

    return tensors(data["x"], data["y"]), tensors(data["x_test"], data["y_test"])


#: The arrays of the generated MNIST-1D, as the cache file holds them.
_MNIST1D_KEYS = ("x", "y", "x_test", "y_test")


@functools.lru_cache(maxsize=2)
def _mnist1d_arrays(seed: int) -> dict[str, np.ndarray]:
    try:
        from importlib.metadata import version

        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # pragma: no cover
        raise ImportError("The mnist1d data set needs the mnist1d package: pip install 'lightning_fedmut[examples]'.") from err
    import random

    args = get_dataset_args()
    args.seed = seed
    recipe = json.dumps({"mnist1d": version("mnist1d"), "args": args.__dict__}, sort_keys=True, default=str)
    folder = cache_folder()
    path = None if folder is None else folder / "mnist1d" / f"{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.npz"
    cached = _read_generated(path, _MNIST1D_KEYS)
    if cached is not None:
        return cached
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    arrays = {k: np.asarray(data[k]) for k in _MNIST1D_KEYS}
    _write_generated(path, arrays, recipe)
    return arrays


def cache_folder() -> Path | None:
    """Where generated data sets are kept between runs: ``$LIGHTNING_FEDMUT_CACHE``, else
    ``$XDG_CACHE_HOME/lightning_fedmut``, else ``~/.cache/lightning_fedmut``; ``None`` with
    ``LIGHTNING_FEDMUT_CACHE=off``.

    MNIST-1D is generated once per recipe (the ``mnist1d`` version and its arguments) and read back in later
    processes (about 1.5 s saved per run on two cores). ``LIGHTNING_FEDMUT_CACHE=off`` keeps nothing on disk;
    a folder that cannot be written keeps nothing either, and the data are generated each time.

    Examples:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"LIGHTNING_FEDMUT_CACHE": "/data/cache"}):
        ...     cache_folder()
        PosixPath('/data/cache')
        >>> with mock.patch.dict(os.environ, {"LIGHTNING_FEDMUT_CACHE": "off"}):
        ...     cache_folder() is None
        True
    """
    chosen = os.environ.get("LIGHTNING_FEDMUT_CACHE")
    if chosen == "off":
        return None
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lightning_fedmut"


def _read_generated(path: Path | None, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file if it is whole (its SHA-256 matches the one written beside it), else ``None``.

    Read with ``allow_pickle=False``: numbers only, never objects or code.
    """
    if path is None or not path.is_file():
        return None
    try:
        expected = path.with_suffix(".sha256").read_text().split()[0]
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != expected:
            return None
        with np.load(io.BytesIO(raw), allow_pickle=False) as stored:
            arrays = {k: stored[k] for k in keys}
    except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile):
        return None
    return arrays


def _write_generated(path: Path | None, arrays: dict[str, np.ndarray], recipe: str) -> None:
    """Keep ``arrays`` in ``path`` with its SHA-256 and recipe beside it (written whole or not at all)."""
    if path is None:  # LIGHTNING_FEDMUT_CACHE=off
        return
    buffer = io.BytesIO()
    np.savez(buffer, **cast("dict[str, Any]", arrays))
    raw = buffer.getvalue()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for target, content in ((path, raw), (path.with_suffix(".sha256"),
                                              f"{hashlib.sha256(raw).hexdigest()}  {recipe}\n".encode())):
            partial = target.with_name(f".{target.name}.{os.getpid()}")
            partial.write_bytes(content)
            os.replace(partial, target)  # whole or absent, also with several processes at once
    except OSError:
        return


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
    big-endian 32-bit size per dimension; the data that follows must be exactly as long as the header
    says. A file that is not IDX, or whose length disagrees with its header (a partial download, a
    truncated gzip stream), raises :class:`DatasetIntegrityError` naming the file.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = os.path.join(d, "labels-idx1-ubyte")
        ...     with open(p, "wb") as f:
        ...         _ = f.write(struct.pack(">HBBI", 0, 0x08, 1, 3) + bytes([7, 0, 2]))
        ...     read_idx(p).tolist()
        [7, 0, 2]
    """
    name = str(path)
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except EOFError as err:  # gzip stream cut short
        raise DatasetIntegrityError(f"{name!r} is truncated: {err}.") from None
    except gzip.BadGzipFile as err:
        raise DatasetIntegrityError(f"{name!r} is not a gzip file: {err}.") from None
    if len(data) < 4:
        raise DatasetIntegrityError(f"{name!r} is not an IDX file: it holds {len(data)} bytes.")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if zero != 0 or code not in dtypes:
        raise DatasetIntegrityError(f"{name!r} is not an IDX file: bad magic number {data[:4].hex()}.")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetIntegrityError(
            f"{name!r} is truncated: its header needs {header} bytes for {ndim} dimensions, the file holds {len(data)}.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(dtypes[code])
    body = len(data) - header
    expected = math.prod(shape) * dtype.itemsize  # exact: numpy's product would wrap around for a forged shape
    if body != expected:
        state = "is truncated" if body < expected else "is longer than its header says"
        raise DatasetIntegrityError(
            f"{name!r} {state}: expected {expected} bytes of data for shape {shape}, got {body}.")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


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


def _missing(root: Path, name: str) -> list[str]:
    """The names of ``name``'s files that are not in its folder under ``root``."""
    if name in CIFAR_CHECKSUMS:
        folder = root / _VISION[name]["folder"]
        return [f for f in CIFAR_CHECKSUMS[name] if not (folder / f).is_file()]
    raw = root / _VISION[name]["folder"] / "raw"
    return [f for pair in _MNIST_FILES.values() for f in pair if _idx_file(raw, f) is None]


def _refetch_hint(name: str, folder: Path) -> str:
    """How to get ``name``'s published files into ``folder``, for the end of an error."""
    spec = _VISION[name]
    elsewhere = (f"or unpack {spec['url']} into {str(folder.parent)!r}" if "url" in spec
                 else "or copy the published files there from a machine that has them")
    return (f"Delete {str(folder)!r} and run again with download enabled (the default; needs torchvision and network"
            f" access), {elsewhere}.")


@functools.lru_cache(maxsize=1)
def _data_globals() -> dict[tuple[str, str], Any]:
    """The only globals a data set's pickle may name, by ``(module, name)``."""
    import codecs

    reconstruct = np.zeros(0).__reduce__()[0]  # numpy's own, whatever module this numpy keeps it in
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): codecs.encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data only: numpy arrays, dicts, lists, numbers, strings and bytes.

    Any other global a pickle names (a function to call, a class to build) is refused before it is looked
    up, so a crafted file cannot run code. What CIFAR's batches need: numpy's array reconstruction (the
    Python 2 ``numpy.core`` names of the published files and the ``numpy._core`` names of numpy 2),
    ``numpy.dtype``, and ``_codecs.encode``, with which Python 3 writes ``bytes`` at protocol 2.
    """

    def __init__(self, file: io.BytesIO, source: str):
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        found = _data_globals().get((module, name))
        if found is None:
            raise DatasetIntegrityError(
                f"{self.source!r} is not plain data: it asks to load {module}.{name}, which a data set file never"
                " needs; it was refused and nothing in the file was run.")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise DatasetIntegrityError(f"{self.source!r} is not plain data: it holds a persistent reference.")


def _verified_bytes(path: Path, size: int, md5: str, hint: str) -> bytes:
    """The bytes of ``path``, once they are ``size`` bytes with MD5 ``md5`` (the bytes checked are the bytes used)."""
    with open(path, "rb") as f:
        data = f.read(size + 1)
    if len(data) != size:
        found = f"{len(data)} bytes" if len(data) <= size else f"more than {size} bytes"
        raise DatasetIntegrityError(f"{str(path)!r} is partial or not the published file: {found}, expected {size}"
                                    f" bytes. {hint}")
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if digest != md5:
        raise DatasetIntegrityError(f"{str(path)!r} is not the published file: size {size} bytes, MD5 {digest},"
                                    f" expected MD5 {md5}. {hint}")
    return data


def _check_sizes(paths: list[Path], sums: dict[str, tuple[int, str]], hint: str) -> None:
    """Refuse a file of the wrong size before any file is read."""
    for path in paths:
        size = path.stat().st_size
        expected = sums[path.name][0]
        if size != expected:
            raise DatasetIntegrityError(f"{str(path)!r} is partial or not the published file: {size} bytes,"
                                        f" expected {expected} bytes. {hint}")


def _entry(batch: dict, key: str) -> Any:
    """``batch[key]`` whether the file's keys read as ``str`` (Python 2 strings) or ``bytes``."""
    if key in batch:
        return batch[key]
    return batch.get(key.encode("ascii"))


def _read_cifar_batch(data: bytes, source: str, label_key: str, classes: int) -> tuple[np.ndarray, list[int]]:
    """The images ``(N, 3, 32, 32)`` and labels of one CIFAR batch, read as data only and checked."""
    try:
        batch = _DataUnpickler(io.BytesIO(data), source).load()
    except DatasetIntegrityError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, struct.error) as err:  # a malformed pickle
        raise DatasetIntegrityError(f"{source!r} is not a CIFAR batch: {type(err).__name__}: {err}") from None
    images = _entry(batch, "data") if isinstance(batch, dict) else None
    labels = _entry(batch, label_key) if isinstance(batch, dict) else None
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 2
            and images.shape[1] == 3 * 32 * 32):
        found = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DatasetIntegrityError(f"{source!r} is not a CIFAR batch: expected 'data' to be a uint8 array"
                                    f" (N, 3072), got {found}.")
    if not (isinstance(labels, list) and len(labels) == len(images)
            and all(isinstance(y, int) and 0 <= y < classes for y in labels)):
        raise DatasetIntegrityError(f"{source!r} is not a CIFAR batch: expected {label_key!r} to be a list of"
                                    f" {len(images)} integers in [0, {classes}).")
    return images.reshape(-1, 3, 32, 32), labels


def _read_cifar(paths: list[Path], name: str) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of ``paths``, each file verified against :data:`CIFAR_CHECKSUMS` before it is read."""
    sums, hint = CIFAR_CHECKSUMS[name], _refetch_hint(name, paths[0].parent)
    label_key, classes = ("fine_labels" if name == "cifar100" else "labels"), int(_VISION[name]["classes"])
    images, labels = [], []
    for path in paths:
        size, md5 = sums[path.name]
        data = _verified_bytes(path, size, md5, hint)
        try:
            batch_images, batch_labels = _read_cifar_batch(data, str(path), label_key, classes)
        except DatasetIntegrityError as err:
            raise DatasetIntegrityError(f"{err} {hint}") from None
        images.append(batch_images)
        labels.extend(batch_labels)
    return np.concatenate(images), np.asarray(labels, dtype=np.int64)


def _find_or_download(name: str, root: Path, find: Callable[[Path, str], Any], download: bool, folder: Path) -> Any:
    """The files ``find(root, name)`` locates, downloading them first if they are missing and allowed."""
    files = find(root, name)
    if files is None:
        if not download:
            message = f"{_VISION[name]['tv']} files not found in {str(folder)!r} and download=False."
            if folder.is_dir():  # some of the files are there: name the others and how to get them
                message = (f"{_VISION[name]['tv']} files not found in {str(folder)!r} and download=False:"
                           f" {', '.join(_missing(root, name))} missing. {_refetch_hint(name, folder)}")
            raise DatasetDownloadError(message)
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
    which downloads them when ``download=True``. A file whose length disagrees with its header, images
    that are not ``uint8`` ``(N, H, W)``, a label count that is not the image count, or a label outside
    ``[0, 10)`` is refused before training.

    Raises:
        DatasetDownloadError: the files are missing and cannot be downloaded.
        DatasetIntegrityError: a file is partial or does not hold what MNIST's files hold.
    """
    name = "fashion_mnist" if fashion else "mnist"
    root = Path(root)
    raw = root / _VISION[name]["folder"] / "raw"
    files = _find_or_download(name, root, _mnist_files, download, raw)
    spec, classes, hint = _VISION[name], int(_VISION[name]["classes"]), _refetch_hint(name, raw)
    out = []
    for split in ("train", "test"):
        try:
            images, labels = (read_idx(p) for p in files[split])
        except DatasetIntegrityError as err:
            raise DatasetIntegrityError(f"{err} {hint}") from None
        image_file, label_file = (str(p) for p in files[split])
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DatasetIntegrityError(f"{image_file!r} does not hold MNIST images: expected uint8 (N, H, W),"
                                        f" got {images.dtype} {images.shape}. {hint}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DatasetIntegrityError(f"{label_file!r} does not hold one label per image of {image_file!r}:"
                                        f" expected shape ({len(images)},), got {labels.shape}. {hint}")
        if labels.size and not (int(labels.min()) >= 0 and int(labels.max()) < classes):
            raise DatasetIntegrityError(f"{label_file!r} holds labels outside [0, {classes}): from {int(labels.min())}"
                                        f" to {int(labels.max())}. {hint}")
        out.append(ImageDataset(images[:, None], labels.astype(np.int64), spec["mean"], spec["std"]))
    return out[0], out[1]


def load_cifar_split(
    root: str | os.PathLike = "data", download: bool = True, cifar100: bool = False
) -> tuple[ImageDataset, ImageDataset]:
    """CIFAR-10 or CIFAR-100 (``3x32x32``; 10 or 100 fine classes) from torchvision's layout under ``root``.

    The pickled batches (``cifar-10-batches-py/data_batch_1`` ..., ``cifar-100-python/train``) are read
    directly; only missing files need torchvision, which downloads them when ``download=True``. Every file
    is first checked against its published size and MD5 (:data:`CIFAR_CHECKSUMS`), and is then read by an
    unpickler that builds numpy arrays and plain Python data only: a data folder is data, never code.

    Raises:
        DatasetDownloadError: the files are missing and cannot be downloaded.
        DatasetIntegrityError: a file is partial, is not the published file, or holds more than data;
            nothing from it was used.
    """
    name = "cifar100" if cifar100 else "cifar10"
    root = Path(root)
    folder = root / _VISION[name]["folder"]
    files = _find_or_download(name, root, _cifar_files, download, folder)
    _check_sizes(files["train"] + files["test"], CIFAR_CHECKSUMS[name], _refetch_hint(name, folder))
    spec = _VISION[name]
    train, test = (_read_cifar(files[split], name) for split in ("train", "test"))
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
    train: Dataset
    test: Dataset
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

