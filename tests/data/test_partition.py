import json
import re

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from lightning_fedmut.data import (
    check_partitions,
    load_partition_json,
    make_clients,
    partition_dirichlet,
    partition_iid,
    partition_shards,
    save_partition_json,
)


def _labels(n=1000, classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


def _is_partition(parts, n):
    allidx = np.concatenate(parts)
    return len(allidx) == n and len(np.unique(allidx)) == n


def test_iid():
    parts = partition_iid(103, 10, seed=1)
    assert _is_partition(parts, 103)
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition_iid(103, 10, seed=1)))


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_min_size_and_skew(alpha):
    y = _labels()
    parts = partition_dirichlet(y, num_clients=20, alpha=alpha, min_size=10, seed=0)
    assert _is_partition(parts, len(y))
    assert min(len(p) for p in parts) >= 10
    # mean number of classes that hold 90% of a client's data grows with alpha
    dominant = np.mean([np.max(np.bincount(y[p], minlength=10)) / len(p) for p in parts])
    if alpha == 0.1:
        assert dominant > 0.5
    if alpha == 100.0:
        assert dominant < 0.3


def test_dirichlet_reproducible_and_seed_dependent():
    y = _labels()
    a = partition_dirichlet(y, 10, 0.5, seed=3)
    b = partition_dirichlet(y, 10, 0.5, seed=3)
    c = partition_dirichlet(y, 10, 0.5, seed=4)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


def test_dirichlet_impossible_min_size():
    with pytest.raises(ValueError, match="min_size"):
        partition_dirichlet(_labels(100), 20, 0.1, min_size=10)
    with pytest.raises(RuntimeError, match="Lower `min_size`"):
        partition_dirichlet(_labels(100), 10, 0.01, min_size=10, max_tries=3)


def test_shards_labels_per_client():
    y = np.repeat(np.arange(10), 100)
    parts = partition_shards(y, num_clients=50, shards_per_client=2, seed=0)
    assert _is_partition(parts, 1000)
    assert all(len(np.unique(y[p])) <= 2 for p in parts)


def test_json_round_trip(tmp_path):
    parts = partition_iid(20, 3, seed=0)
    path = tmp_path / "p.json"
    save_partition_json(parts, path)
    assert json.loads(path.read_text())["1"] == parts[1].tolist()
    loaded = load_partition_json(path)
    assert list(loaded) == ["0", "1", "2"] and all(np.array_equal(loaded[str(i)], parts[i]) for i in range(3))
    clients = make_clients(TensorDataset(torch.arange(20.0)), loaded, batch_size=4)
    assert [c.id for c in clients] == ["0", "1", "2"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_partition_json(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        ([[0, 1], []], "client 1.* is empty"),
        ([[0, 1], [1, 2]], r"indices \[1\] to more than one client"),
        ([[0, 10]], "outside the dataset of 10 examples: \\[10\\]"),
        ([[0, -1]], "outside the dataset"),
        ([], "at least one client"),
    ],
)
def test_bad_partitions(parts, match):
    with pytest.raises(ValueError, match=match):
        check_partitions(parts, num_examples=10)


def test_make_clients_batches_and_bad_batch_size():
    ds = TensorDataset(torch.arange(10.0), torch.zeros(10, dtype=torch.long))
    clients = make_clients(ds, [[0, 1, 2, 3, 4], [5, 6]], batch_size=2)
    assert [len(c.data) for c in clients] == [3, 1]
    with pytest.raises(ValueError, match=r"`batch_size`.*got 0"):
        make_clients(ds, [[0]], batch_size=0)


def test_json_wrapped_train_data_form(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"dataset": "cifar10", "train_data": {"7": [4, 5], "9": [0]}}))
    loaded = load_partition_json(path)
    assert list(loaded) == ["7", "9"] and loaded["7"].tolist() == [4, 5] and loaded["9"].tolist() == [0]
    bad = tmp_path / "list.json"
    bad.write_text("[[0, 1]]")
    with pytest.raises(ValueError, match=r"Expected a JSON object \{client_id: \[indices\]\}.*got list"):
        load_partition_json(bad)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"0": [0, 1.9]}', "the indices of client '0' in {path} to be integers, got 1.9 at position 1"),
        ('{"0": [0], "1": [true, 2]}', "client '1' in {path} to be integers, got true \\(a boolean\\) at position 0"),
        ('{"a": [0, "2"]}', "client 'a' in {path} to be integers, got \"2\" \\(a string\\) at position 1"),
        ('{"0": [0, null]}', "client '0' in {path} to be integers, got null at position 1"),
        ('{"0": [0, [1]]}', "client '0' in {path} to be integers, got a JSON array at position 1"),
        ('{"0": [NaN]}', "client '0' in {path} to be integers, got nan at position 0"),
        ('{"0": [1, 1e300]}', "client '0' in {path} to fit in 64 bits, got 1e\\+300 at position 1"),
        ('{"0": [18446744073709551616]}', "client '0' in {path} to fit in 64 bits, got 18446744073709551616 at"),
        ('{"0": 3}', "the indices of client '0' in {path} to be a list, got 3\\."),
        ('{"0": [1], "1": [2], "0": [3]}', "Client '0' appears more than once in {path}"),
        ('{"dataset": "x", "train_data": {"7": [1], "7": [2]}}', "Client '7' appears more than once in {path}"),
        ('{"0": [1,', "{path} is not valid JSON: Expecting value at line 1, column 10"),
    ],
)
def test_json_edges_are_refused_naming_client_and_file(tmp_path, text, match):
    path = tmp_path / "parts.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match.format(path=re.escape(repr(str(path))))):
        load_partition_json(path)


def test_json_whole_floats_are_indices(tmp_path):
    path = tmp_path / "parts.json"
    path.write_text('{"0": [0, 2.0, 5], "1": []}')
    loaded = load_partition_json(path)
    assert loaded["0"].dtype == np.int64 and loaded["0"].tolist() == [0, 2, 5]
    assert loaded["1"].dtype == np.int64 and loaded["1"].tolist() == []


@pytest.mark.parametrize("partition", [
    lambda y: partition_dirichlet(y, num_clients=4, alpha=0.5, min_size=2, seed=0),
    lambda y: partition_shards(y, num_clients=4, shards_per_client=2, seed=0),
])
def test_nan_and_fractional_labels_are_refused(partition):
    y = _labels(200, classes=5).astype(np.float64)
    bad = y.copy()
    bad[[7, 50]] = np.nan
    with pytest.raises(ValueError, match=r"Expected `labels` to be integer class labels, got nan at index 7 \(2 such"):
        partition(bad)
    bad = y.copy()
    bad[3] = 1.5
    with pytest.raises(ValueError, match=r"got 1.5 at index 3 \(1 such label\)"):
        partition(bad)
    bad[3] = np.inf
    with pytest.raises(ValueError, match=r"got inf at index 3"):
        partition(bad)
    with pytest.raises(TypeError, match="Expected `labels` to be integer class labels, got an array of dtype <U"):
        partition(np.array(["cat", "dog"] * 100))
    # whole-number float labels (a float tensor of targets) split exactly as the integer ones do
    reference = partition(y.astype(np.int64))
    for same in (partition(y), partition(torch.tensor(y, dtype=torch.float32))):
        assert len(same) == len(reference) and all(np.array_equal(a, b) for a, b in zip(same, reference))


def test_numpy_integers_are_integers():
    ds = TensorDataset(torch.arange(30.0))
    clients = make_clients(ds, [list(range(20)), list(range(20, 30))], batch_size=np.int64(10))
    assert [c.data.batch_size for c in clients] == [10, 10] and type(clients[0].data.batch_size) is int
    assert [len(c.data) for c in clients] == [2, 1]
    for a, b in zip(partition_iid(np.int64(20), np.int32(4), seed=np.uint8(3)), partition_iid(20, 4, seed=3)):
        assert np.array_equal(a, b)
    y = _labels(300, classes=5)
    got = partition_dirichlet(y, np.int64(5), np.float32(0.5), min_size=np.int16(5), seed=np.int64(2))
    want = partition_dirichlet(y, 5, 0.5, min_size=5, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    got = partition_shards(y, np.int64(5), shards_per_client=np.uint16(2), seed=np.int64(2))
    assert all(np.array_equal(a, b) for a, b in zip(got, partition_shards(y, 5, 2, seed=2)))
    with pytest.raises(TypeError, match=r"Expected `batch_size` to be an integer, got .*True.* of type bool"):
        make_clients(ds, [[0]], batch_size=np.True_)
    with pytest.raises(TypeError, match=r"Expected `batch_size` to be an integer, got 2.0 of type float"):
        make_clients(ds, [[0]], batch_size=2.0)
    with pytest.raises(TypeError, match=r"Expected `num_clients` to be an integer, got True of type bool"):
        partition_iid(10, True)
    with pytest.raises(ValueError, match=r"Expected `seed` to be an integer >= 0, got -1"):
        partition_dirichlet(y, 5, 0.5, seed=-1)
    with pytest.raises(ValueError, match=r"Expected `max_tries` to be an integer >= 1, got 0"):
        partition_dirichlet(y, 5, 0.5, max_tries=0)
