"""Data folders are data, never code: CIFAR files verified and read as plain data, IDX files checked for truncation."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import sys

import numpy as np
import pytest

from lightning_fedmut import datasets
from lightning_fedmut.cli import main
from lightning_fedmut.datasets import (
    CIFAR_CHECKSUMS,
    DatasetDownloadError,
    DatasetIntegrityError,
    load_dataset,
    read_idx,
)

CIFAR10_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


# ------------------------------------------------------------------------------------------ writing files
def _py2_string(raw: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle writes it: SHORT_BINSTRING or BINSTRING."""
    return b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<I", len(raw)) + raw


def _py2_int(value: int) -> bytes:
    return b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value)


def py2_pickle(batch: dict[str, object]) -> bytes:
    """``batch`` pickled as the published CIFAR files are: cPickle protocol 2 under Python 2 with numpy 1.

    Keys and strings are Python 2 ``str`` (SHORT_BINSTRING), the images a ``numpy.core.multiarray._reconstruct``
    of a uint8 ``ndarray`` whose raw bytes are one BINSTRING, the labels a list of small ints.
    """
    out = [b"\x80\x02}("]
    for key, value in batch.items():
        out.append(_py2_string(key.encode()))
        if isinstance(value, np.ndarray):
            assert value.dtype == np.uint8 and value.ndim == 2
            dtype = (b"cnumpy\ndtype\n" + _py2_string(b"u1") + b"K\x00K\x01\x87R"
                     + b"(K\x03" + _py2_string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
            shape = b"".join(_py2_int(n) for n in value.shape) + b"\x86"
            out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_string(b"b")
                       + b"\x87R(K\x01" + shape + dtype + b"\x89" + _py2_string(value.tobytes()) + b"tb")
        elif isinstance(value, list):
            out.append(b"](" + b"".join(_py2_int(v) for v in value) + b"e")
        else:
            out.append(_py2_string(str(value).encode()))
    out.append(b"u.")
    return b"".join(out)


def make_published_layout(root, hundred: bool = False, n: int = 4, py2: bool = True):
    """A CIFAR folder with the real file names, each file written the way the published ones are.

    ``py2=False`` writes the dicts Python 3 reads back with ``encoding="bytes"`` (``b"data"`` keys), pickled at
    protocol 2. Returns ``{file name: (images (n, 3, 32, 32), labels)}``.
    """
    rng = np.random.default_rng(7)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    content = {}
    for name in (["train", "test"] if hundred else CIFAR10_NAMES):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 100 if hundred else 10, n)]
        batch: dict = {"batch_label": f"{name} of 1", label_key: labels, "data": data}
        if hundred:
            batch["coarse_labels"] = [y // 5 for y in labels]
        if py2:
            (folder / name).write_bytes(py2_pickle(batch))
        else:
            (folder / name).write_bytes(pickle.dumps({k.encode(): v for k, v in batch.items()}, protocol=2))
        content[name] = (data.reshape(n, 3, 32, 32), labels)
    return folder, content


def trust(monkeypatch, folder, hundred: bool = False) -> dict[str, tuple[int, str]]:
    """Patch the published sums with those of the files in ``folder``, as if they were the published files."""
    sums = {}
    for path in folder.iterdir():
        data = path.read_bytes()
        sums[path.name] = (len(data), hashlib.md5(data).hexdigest())
    monkeypatch.setitem(CIFAR_CHECKSUMS, "cifar100" if hundred else "cifar10", sums)
    return sums


class Payload:
    """A pickle that, when unpickled by ``pickle``, runs ``call(*args)``: here, one that creates a marker file."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def payloads(marker) -> dict[str, object]:
    code = f"open({str(marker)!r}, 'w').close()"
    return {"os.system": Payload(os.system, f"touch {marker}"), "builtins.exec": Payload(exec, code),
            "builtins.open": Payload(open, str(marker), "w")}


def hint(folder) -> str:
    return (f"Delete {str(folder)!r} and run again with download enabled (the default; needs torchvision and network"
            f" access), or unpack {CIFAR10_URL} into {str(folder.parent)!r}.")


# ------------------------------------------------------------------------------------------------- CIFAR
def test_the_sum_table_is_the_published_one():
    assert CIFAR_CHECKSUMS == {
        "cifar10": {"data_batch_1": (31035704, "c99cafc152244af753f735de768cd75f"),
                    "data_batch_2": (31035320, "d4bba439e000b95fd0a9bffe97cbabec"),
                    "data_batch_3": (31035999, "54ebc095f3ab1f0389bbae665268c751"),
                    "data_batch_4": (31035696, "634d18415352ddfa80567beed471001a"),
                    "data_batch_5": (31035623, "482c414d41f54cd18b22e5b47cb7c3cb"),
                    "test_batch": (31035526, "40351d587109b95175f43aff81a1287e")},
        "cifar100": {"train": (155249918, "16019d7e3df5f24257cddd939b257f8d"),
                     "test": (31049707, "f0ef6b0ae62326f3e7ffdfab6717acfc")},
    }


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "builtins.open"])
def test_a_crafted_batch_runs_nothing(tmp_path, monkeypatch, payload):
    marker = tmp_path / "ran"
    folder, _ = make_published_layout(tmp_path / "data")
    crafted = pickle.dumps(payloads(marker)[payload], protocol=2)
    (folder / "data_batch_1").write_bytes(crafted)
    with pytest.raises(DatasetIntegrityError) as info:  # the published sums: refused before it is unpickled
        load_dataset("cifar10", root=tmp_path / "data", download=False)
    assert str(info.value) == (f"{str(folder / 'data_batch_1')!r} is partial or not the published file:"
                               f" {len(crafted)} bytes, expected 31035704 bytes. {hint(folder)}")
    assert not marker.exists()

    trust(monkeypatch, folder)  # right size, right sum: still data only
    with pytest.raises(DatasetIntegrityError) as info:
        load_dataset("cifar10", root=tmp_path / "data", download=False)
    module, name = {"os.system": ("posix", "system"), "builtins.exec": ("__builtin__", "exec"),  # protocol 2
                    "builtins.open": ("io", "open")}[payload]
    assert str(info.value) == (
        f"{str(folder / 'data_batch_1')!r} is not plain data: it asks to load {module}.{name}, which a data set file"
        f" never needs; it was refused and nothing in the file was run. {hint(folder)}")
    assert not marker.exists()


def test_a_payload_inside_a_genuine_looking_batch_is_refused(tmp_path, monkeypatch):
    """A batch whose data and labels are right but which also carries a payload under another key."""
    marker = tmp_path / "ran"
    folder, _ = make_published_layout(tmp_path / "data")
    batch = {"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [1, 2], "extra": payloads(marker)["os.system"]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    trust(monkeypatch, folder)
    with pytest.raises(DatasetIntegrityError, match=r"'.*test_batch' is not plain data: it asks to load posix\.system"):
        load_dataset("cifar10", root=tmp_path / "data", download=False)
    assert not marker.exists()


def test_a_truncated_or_altered_batch_is_refused_naming_the_file(tmp_path, monkeypatch):
    folder, _ = make_published_layout(tmp_path / "data")
    sums = trust(monkeypatch, folder)
    path = folder / "data_batch_3"
    whole = path.read_bytes()
    path.write_bytes(whole[:-100])
    with pytest.raises(DatasetIntegrityError) as info:
        load_dataset("cifar10", root=tmp_path / "data", download=False)
    assert str(info.value) == (f"{str(path)!r} is partial or not the published file: {len(whole) - 100} bytes,"
                               f" expected {len(whole)} bytes. {hint(folder)}")
    assert "\n" not in str(info.value)

    altered = bytearray(whole)
    altered[-10] ^= 0xFF  # one pixel: same size, another sum
    path.write_bytes(bytes(altered))
    with pytest.raises(DatasetIntegrityError) as info:
        load_dataset("cifar10", root=tmp_path / "data", download=False)
    assert str(info.value) == (
        f"{str(path)!r} is not the published file: size {len(whole)} bytes, MD5 {hashlib.md5(altered).hexdigest()},"
        f" expected MD5 {sums['data_batch_3'][1]}. {hint(folder)}")


def test_sizes_are_checked_before_any_file_is_unpickled(tmp_path, monkeypatch):
    """The first batch holds a payload with its sum trusted, the test batch is partial: no file is unpickled."""
    folder, _ = make_published_layout(tmp_path / "data")
    trust(monkeypatch, folder)
    unpickled = []
    original = datasets._read_cifar_batch
    monkeypatch.setattr(datasets, "_read_cifar_batch", lambda data, source, *a: unpickled.append(source)
                        or original(data, source, *a))
    (folder / "test_batch").write_bytes(b"\x80\x02")
    with pytest.raises(DatasetIntegrityError, match=r"'.*test_batch' is partial or not the published file: 2 bytes"):
        load_dataset("cifar10", root=tmp_path / "data", download=False)
    assert unpickled == []


@pytest.mark.parametrize("py2", [True, False], ids=["python2-str-keys", "python3-bytes-keys"])
@pytest.mark.parametrize("hundred", [False, True], ids=["cifar10", "cifar100"])
def test_the_published_layout_still_loads(tmp_path, monkeypatch, hundred, py2):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    folder, content = make_published_layout(tmp_path / "data", hundred=hundred, py2=py2)
    if py2:  # the helper writes what pickle itself reads back as the published files read
        first = (folder / ("train" if hundred else "data_batch_1")).read_bytes()
        plain = pickle.loads(first, encoding="latin1")
        assert plain["data"].dtype == np.uint8 and plain["data"].tobytes() == content[
            "train" if hundred else "data_batch_1"][0].tobytes()
    name = "cifar100" if hundred else "cifar10"
    with pytest.raises(DatasetIntegrityError, match="is partial or not the published file"):
        load_dataset(name, root=tmp_path / "data", download=False)  # not the published files: refused ...
    trust(monkeypatch, folder, hundred)
    split = load_dataset(name, root=tmp_path / "data", download=False)  # ... until their sums are the expected ones
    train_names, test_name = (["train"], "test") if hundred else (CIFAR10_NAMES[:5], "test_batch")
    assert np.array_equal(split.train.images.numpy(), np.concatenate([content[n][0] for n in train_names]))
    assert split.train.targets.tolist() == [y for n in train_names for y in content[n][1]]
    assert np.array_equal(split.test.images.numpy(), content[test_name][0])
    assert split.test.targets.tolist() == content[test_name][1]
    assert (split.num_classes, split.input_shape) == (100 if hundred else 10, (3, 32, 32))


def test_a_batch_of_the_wrong_shape_or_labels_is_refused(tmp_path, monkeypatch):
    folder, _ = make_published_layout(tmp_path / "data")
    path = folder / "data_batch_2"
    path.write_bytes(py2_pickle({"data": np.zeros((2, 100), dtype=np.uint8), "labels": [0, 1]}))
    trust(monkeypatch, folder)
    with pytest.raises(DatasetIntegrityError) as info:
        load_dataset("cifar10", root=tmp_path / "data", download=False)
    assert str(info.value) == (f"{str(path)!r} is not a CIFAR batch: expected 'data' to be a uint8 array (N, 3072),"
                               f" got uint8 (2, 100). {hint(folder)}")
    path.write_bytes(py2_pickle({"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 10]}))
    trust(monkeypatch, folder)
    with pytest.raises(DatasetIntegrityError) as info:
        load_dataset("cifar10", root=tmp_path / "data", download=False)
    assert str(info.value) == (f"{str(path)!r} is not a CIFAR batch: expected 'labels' to be a list of 2 integers"
                               f" in [0, 10). {hint(folder)}")


def test_a_partial_folder_names_the_missing_file(tmp_path):
    folder, _ = make_published_layout(tmp_path / "data")
    (folder / "data_batch_4").unlink()
    with pytest.raises(DatasetDownloadError) as info:
        load_dataset("cifar10", root=tmp_path / "data", download=False)
    assert str(info.value) == (f"CIFAR10 files not found in {str(folder)!r} and download=False: data_batch_4 missing."
                               f" {hint(folder)}")


def test_fit_refuses_a_crafted_folder_before_training(tmp_path, capsys):
    marker = tmp_path / "ran"
    folder, _ = make_published_layout(tmp_path / "data")
    (folder / "data_batch_1").write_bytes(pickle.dumps(payloads(marker)["os.system"], protocol=2))
    code = main(["fit", "--data=cifar10", "--download=false", f"--data_dir={tmp_path / 'data'}", "--logger=none",
                 f"--loop.checkpoint_dir={tmp_path / 'ckpt'}", f"--history_file={tmp_path / 'history.json'}"])
    err = capsys.readouterr().err
    assert code == 1 and not marker.exists()
    assert err.startswith(f"lightning-fedmut fit: error: {str(folder / 'data_batch_1')!r} is partial or not the"
                          " published file: ") and err.endswith(f"{hint(folder)}\n") and err.count("\n") == 1
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "history.json").exists()


# --------------------------------------------------------------------------------------------- MNIST / IDX
def _idx(shape: tuple[int, ...], body: bytes) -> bytes:
    return struct.pack(">HBB", 0, 0x08, len(shape)) + struct.pack(f">{len(shape)}I", *shape) + body


def test_idx_files_whose_length_disagrees_with_their_header_are_refused(tmp_path):
    cases = {
        "header": (_idx((3, 28, 28), b"")[:9],
                   "is truncated: its header needs 16 bytes for 3 dimensions, the file holds 9."),
        "longer": (_idx((3,), b"\x01\x02\x03\x04"),
                   "is longer than its header says: expected 3 bytes of data for shape (3,), got 4."),
        # 65536**4 = 2**64 wraps around to 0 in a numpy int64 product: an empty body must not pass for it
        "forged": (_idx((65536,) * 4, b""),
                   f"is truncated: expected {2 ** 64} bytes of data for shape {(65536,) * 4}, got 0."),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DatasetIntegrityError) as info:
            read_idx(tmp_path / name)
        assert str(info.value) == f"{str(tmp_path / name)!r} {message}"
    whole = gzip.compress(_idx((4,), b"\x01\x02\x03\x04"))
    (tmp_path / "cut.gz").write_bytes(whole[:-12])
    with pytest.raises(DatasetIntegrityError) as info:
        read_idx(tmp_path / "cut.gz")
    assert str(info.value).startswith(f"{str(tmp_path / 'cut.gz')!r} is truncated: Compressed file ended")


def _mnist(root, labels: np.ndarray) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(_idx((len(labels), 28, 28), bytes(len(labels) * 784)))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(_idx((len(labels),), labels.astype(np.uint8).tobytes()))


def test_mnist_labels_and_truncation_are_checked_before_training(tmp_path, capsys):
    _mnist(tmp_path / "bad_labels", np.array([0, 3, 12]))
    raw = tmp_path / "bad_labels" / "MNIST" / "raw"
    mnist_hint = (f"Delete {str(raw)!r} and run again with download enabled (the default; needs torchvision and"
                  " network access), or copy the published files there from a machine that has them.")
    with pytest.raises(DatasetIntegrityError) as info:
        load_dataset("mnist", root=tmp_path / "bad_labels", download=False)
    assert str(info.value) == (f"{str(raw / 'train-labels-idx1-ubyte')!r} holds labels outside [0, 10): from 0 to 12."
                               f" {mnist_hint}")

    _mnist(tmp_path / "cut", np.array([0, 3, 1]))
    images = tmp_path / "cut" / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-784])
    code = main(["fit", "--data=mnist", "--download=false", f"--data_dir={tmp_path / 'cut'}", "--logger=none"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"lightning-fedmut fit: error: {str(images)!r} is truncated: expected 2352 bytes of data"
                          " for shape (3, 28, 28), got 1568. Delete ")
