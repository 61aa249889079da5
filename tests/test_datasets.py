"""Built-in data sets: offline ones, MNIST/CIFAR files read without torchvision, and the offline download error."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import socket
import struct
import sys
import types
import urllib.error

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from lightning_fedmut.cli import main
from lightning_fedmut.datasets import (
    CIFAR_CHECKSUMS,
    DATASETS,
    DatasetDownloadError,
    ImageDataset,
    labels_of,
    load_dataset,
    load_digits_split,
    load_mnist1d_split,
    make_synthetic_split,
    read_idx,
)

OFFLINE_TAIL = "or use --data digits, mnist1d or synthetic, which need no download."


def write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    body = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    body += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(body)
    else:
        path.write_bytes(body)


def make_mnist(root, folder: str = "MNIST", gz: bool = False, n_train: int = 12, n_test: int = 5):
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in (("train", n_train), ("t10k", n_test))}
    labels = {s: (np.arange(len(images[s])) * 7 % 10).astype(np.uint8) for s in images}
    raw = root / folder / "raw"
    for split, array in images.items():
        write_idx(raw / f"{split}-images-idx3-ubyte", array, gz)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split], gz)
    return images, labels


def trust_folder(monkeypatch, folder, name: str) -> None:
    """Take the files in ``folder`` for the published ones: their sizes and MD5s become the expected ones."""
    sums = {p.name: (p.stat().st_size, hashlib.md5(p.read_bytes()).hexdigest()) for p in folder.iterdir()}
    monkeypatch.setitem(CIFAR_CHECKSUMS, name, sums)


def make_cifar(root, hundred: bool = False):
    rng = np.random.default_rng(1)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    names = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    content = {}
    for name in names:
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 100 if hundred else 10, 3).tolist()
        batch = {"data": data, ("fine_labels" if hundred else "labels"): labels}
        if hundred:
            batch["coarse_labels"] = [x // 5 for x in labels]
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
        content[name] = (data.reshape(-1, 3, 32, 32), labels)
    return content


def test_offline_datasets():
    digits = load_dataset("digits")
    assert (digits.name, digits.num_classes, digits.input_shape, len(digits.train), len(digits.test)) == (
        "digits", 10, (1, 8, 8), 1348, 449)
    assert torch.equal(digits.train.tensors[0], load_digits_split()[0].tensors[0])
    synthetic = load_dataset("synthetic")
    assert (synthetic.input_shape, len(synthetic.train), len(synthetic.test)) == ((1, 8, 8), 600, 200)
    assert sorted(set(labels_of(synthetic.train).tolist())) == list(range(10))
    again = make_synthetic_split(seed=0)
    assert torch.equal(synthetic.train.tensors[0], again[0].tensors[0])
    assert not torch.equal(synthetic.train.tensors[0], make_synthetic_split(seed=1)[0].tensors[0])


def test_mnist1d_is_generated_locally_without_touching_the_global_rng(monkeypatch):
    from lightning_fedmut.datasets import _mnist1d_arrays

    monkeypatch.setenv("LIGHTNING_FEDMUT_CACHE", "off")
    _mnist1d_arrays.cache_clear()  # generate for real (the generator reseeds numpy's global RNG)
    np.random.seed(123)
    state = np.random.get_state()
    train, test = load_mnist1d_split()
    after = np.random.get_state()
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in zip(state, after))
    assert (len(train), len(test), tuple(train.tensors[0].shape)) == (4000, 1000, (4000, 40))
    split = load_dataset("mnist1d")
    assert (split.input_shape, split.num_classes) == ((40,), 10)
    assert torch.equal(split.train.tensors[0], train.tensors[0])


def test_mnist1d_is_generated_once_kept_whole_and_read_back_as_numbers_only(tmp_path, monkeypatch):
    import mnist1d.data

    from lightning_fedmut.datasets import _mnist1d_arrays, cache_folder

    made = []
    real = mnist1d.data.make_dataset
    monkeypatch.setattr(mnist1d.data, "make_dataset", lambda args: made.append(args.seed) or real(args))
    monkeypatch.setenv("LIGHTNING_FEDMUT_CACHE", str(tmp_path / "cache"))
    assert cache_folder() == tmp_path / "cache"

    def load():
        _mnist1d_arrays.cache_clear()  # a new process: only the disk is left
        return load_mnist1d_split()

    first = load()
    (stored,) = (tmp_path / "cache" / "mnist1d").glob("*.npz")
    assert made == [42] and stored.with_suffix(".sha256").read_text().startswith(
        hashlib.sha256(stored.read_bytes()).hexdigest())
    again = load()
    assert made == [42] and all(torch.equal(a, b) for a, b in zip(first[0].tensors + first[1].tensors,
                                                                     again[0].tensors + again[1].tensors))
    # a file that is not whole (its SHA-256 differs) is generated again, and written again
    raw = bytearray(stored.read_bytes())
    raw[-100] ^= 0xFF
    stored.write_bytes(bytes(raw))
    assert torch.equal(load()[0].tensors[0], first[0].tensors[0]) and made == [42, 42]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() in stored.with_suffix(".sha256").read_text()
    # a file holding objects, with a matching SHA-256, is never unpickled: numbers only
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([Payload()], dtype=object), y=np.zeros(1), x_test=np.zeros(1), y_test=np.zeros(1))
    stored.write_bytes(buffer.getvalue())
    stored.with_suffix(".sha256").write_text(hashlib.sha256(buffer.getvalue()).hexdigest() + "  recipe\n")
    assert torch.equal(load()[0].tensors[0], first[0].tensors[0]) and made == [42, 42, 42] and not marker.exists()
    # a broken archive with a matching SHA-256 is generated again too
    broken = b"PK\x03\x04" + bytes(40)
    stored.write_bytes(broken)
    stored.with_suffix(".sha256").write_text(hashlib.sha256(broken).hexdigest() + "  recipe\n")
    assert torch.equal(load()[0].tensors[0], first[0].tensors[0]) and made == [42] * 4
    # off: nothing is kept
    monkeypatch.setenv("LIGHTNING_FEDMUT_CACHE", "off")
    assert cache_folder() is None
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    load()
    load()
    assert made == [42] * 6 and sorted(p.name for p in tmp_path.iterdir()) == before


def test_unknown_name_and_aliases(tmp_path):
    with pytest.raises(ValueError, match=r"Expected `name` to be one of digits, mnist1d, synthetic, mnist, "
                                         r"fashion_mnist, cifar10, cifar100, got 'imagenet'\."):
        load_dataset("imagenet")
    make_mnist(tmp_path, "FashionMNIST")
    assert load_dataset("FashionMNIST", root=tmp_path, download=False).name == "fashion_mnist"
    assert DATASETS == ("digits", "mnist1d", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_mnist_idx_files_are_read_without_torchvision(tmp_path, monkeypatch, gz):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # the files are there: no torchvision needed
    images, labels = make_mnist(tmp_path, gz=gz)
    split = load_dataset("mnist", root=tmp_path, download=True)
    assert (split.num_classes, split.input_shape, len(split.train), len(split.test)) == (10, (1, 28, 28), 12, 5)
    x, y = split.train[3]
    expected = (torch.tensor(images["train"][3], dtype=torch.float32) / 255 - 0.1307) / 0.3081
    assert torch.allclose(x[0], expected, atol=1e-6) and y == int(labels["train"][3])
    assert labels_of(split.test).tolist() == labels["t10k"].tolist()


def test_torchvision_accepts_the_same_mnist_files(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    images, _labels = make_mnist(tmp_path)
    theirs = torchvision.datasets.MNIST(str(tmp_path), train=True, download=False)
    ours = load_dataset("mnist", root=tmp_path, download=False).train
    assert torch.equal(theirs.data, ours.images[:, 0]) and torch.equal(theirs.targets, ours.targets)
    assert theirs.data.numpy().tolist() == images["train"].tolist()


@pytest.mark.parametrize("hundred", [False, True], ids=["cifar10", "cifar100"])
def test_cifar_batches_are_read_without_torchvision(tmp_path, monkeypatch, hundred):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    content = make_cifar(tmp_path, hundred)
    trust_folder(monkeypatch, tmp_path / ("cifar-100-python" if hundred else "cifar-10-batches-py"),
                 "cifar100" if hundred else "cifar10")
    split = load_dataset("cifar100" if hundred else "cifar10", root=tmp_path)
    n_train = 3 if hundred else 15
    assert (split.num_classes, split.input_shape, len(split.train), len(split.test)) == (
        100 if hundred else 10, (3, 32, 32), n_train, 3)
    first = "train" if hundred else "data_batch_1"
    x, y = split.train[1]
    mean, std = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)) if hundred else (
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    raw = torch.tensor(content[first][0][1], dtype=torch.float32) / 255
    expected = (raw - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6) and y == content[first][1][1]
    test_name = "test" if hundred else "test_batch"
    assert labels_of(split.test).tolist() == content[test_name][1]


def _fake_torchvision(stdout_noise: bool = True):
    class MNIST:
        def __init__(self, root, train=True, download=False):
            if stdout_noise:  # what torchvision prints per mirror before giving up
                print("Downloading https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz")
                print("Failed to download (trying next):\n<urlopen error [Errno -3] Temporary failure in name resolution>")
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    class CIFAR10:
        def __init__(self, root, train=True, download=False):
            raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    module = types.ModuleType("torchvision")
    module.datasets = types.SimpleNamespace(MNIST=MNIST, FashionMNIST=MNIST, CIFAR10=CIFAR10, CIFAR100=CIFAR10)
    return module


def test_offline_download_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchvision", _fake_torchvision())
    with pytest.raises(DatasetDownloadError) as info:
        load_dataset("mnist", root=tmp_path)
    assert str(info.value) == (
        f"Cannot download MNIST into '{tmp_path}' (Error downloading train-images-idx3-ubyte.gz): the machine looks"
        f" offline. Copy the files to '{tmp_path / 'MNIST'}' from a machine with network access, {OFFLINE_TAIL}")
    assert capsys.readouterr().out == ""  # torchvision's per-mirror chatter is not shown
    with pytest.raises(DatasetDownloadError) as info:
        load_dataset("cifar10", root=tmp_path)
    assert str(info.value).startswith(
        f"Cannot download CIFAR10 into '{tmp_path}' ([Errno -3] Temporary failure in name resolution): the machine"
        " looks offline.")
    assert "\n" not in str(info.value)


def test_missing_files_without_torchvision_give_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(DatasetDownloadError) as info:
        load_dataset("fashion_mnist", root=tmp_path)
    assert str(info.value) == (
        f"FashionMNIST is not in '{tmp_path}' and downloading it needs torchvision: pip install"
        f" 'lightning_fedmut[vision]' (or copy the files to '{tmp_path / 'FashionMNIST'}', or use --data digits,"
        " mnist1d or synthetic).")
    with pytest.raises(DatasetDownloadError, match=r"files not found in .* and download=False"):
        load_dataset("cifar100", root=tmp_path, download=False)


def test_cli_reports_the_offline_error_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchvision", _fake_torchvision())
    code = main(["fit", "--data=cifar10", f"--data_dir={tmp_path}", "--logger=none"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.startswith(f"lightning-fedmut fit: error: Cannot download CIFAR10 into '{tmp_path}'")
    assert captured.err.endswith(f"{OFFLINE_TAIL}\n") and captured.err.count("\n") == 1


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x08\x03\x00\x00" + b"\x00" * 12)
    with pytest.raises(ValueError, match="is not an IDX file: bad magic number 08030000"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">HBBI", 0, 0x08, 1, 5) + b"\x01\x02")
    with pytest.raises(ValueError, match=r"is truncated: expected 5 bytes of data for shape \(5,\), got 2"):
        read_idx(short)


def test_labels_of_every_kind_of_dataset():
    images = np.zeros((4, 1, 2, 2), dtype=np.uint8)
    assert labels_of(ImageDataset(images, np.array([3, 1, 2, 0]), (0.0,), (1.0,))).tolist() == [3, 1, 2, 0]
    tensors = TensorDataset(torch.zeros(3, 2), torch.tensor([5, 6, 7]))
    assert labels_of(Subset(tensors, [2, 0])).tolist() == [7, 5]
    assert labels_of([(torch.zeros(1), 4), (torch.zeros(1), 9)]).tolist() == [4, 9]
    with pytest.raises(ValueError, match=r"Expected `images` to be a uint8 array \(N, C, H, W\)"):
        ImageDataset(np.zeros((2, 4)), np.array([0, 1]), (0.0,), (1.0,))
