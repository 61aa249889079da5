"""LEAF-format data: one client per user, from small generated files; and the Shakespeare character LSTM."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader

from lightning_fedmut import FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.data import LEAF_LETTERS, load_leaf
from lightning_fedmut.models import CharLSTM


def _write(path, users, data):
    path.write_text(json.dumps({"users": users, "num_samples": [len(data[u]["y"]) for u in users],
                                "user_data": data}))


def _shakespeare(tmp_path, speakers=4, lines=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    folder = tmp_path / "shakespeare"
    folder.mkdir()
    text = LEAF_LETTERS[1:]
    for part in range(2):  # LEAF splits a data set into several files
        users = [f"speaker_{part}_{s}" for s in range(speakers // 2)]
        data = {}
        for u in users:
            xs, ys = [], []
            for _ in range(lines):
                idx = torch.randint(0, len(text), (81,), generator=g).tolist()
                line = "".join(text[i] for i in idx)
                xs.append(line[:80])
                ys.append(line[80])
            data[u] = {"x": xs, "y": ys}
        _write(folder / f"train_{part}.json", users, data)
    return folder


def test_text_is_read_as_letter_indices_with_one_partition_per_speaker(tmp_path):
    folder = _shakespeare(tmp_path)
    dataset, parts = load_leaf(folder)
    x, y = dataset.tensors
    assert x.shape == (24, 80) and x.dtype == torch.long and y.shape == (24,)
    assert list(parts) == ["speaker_0_0", "speaker_0_1", "speaker_1_0", "speaker_1_1"]
    files = sorted(folder.glob("*.json"))
    first = json.loads(files[0].read_text())["user_data"]["speaker_0_0"]
    assert "".join(LEAF_LETTERS[i] for i in x[parts["speaker_0_0"][2]]) == first["x"][2]
    assert LEAF_LETTERS[int(y[parts["speaker_0_0"][2]])] == first["y"][2]
    assert sorted(i for p in parts.values() for i in p.tolist()) == list(range(24))


def test_femnist_like_features_are_floats(tmp_path):
    g = torch.Generator().manual_seed(1)
    data = {u: {"x": torch.rand(3, 784, generator=g).tolist(), "y": [1, 2, 3]} for u in ("w1", "w2")}
    _write(tmp_path / "femnist.json", ["w1", "w2"], data)
    dataset, parts = load_leaf(tmp_path / "femnist.json")
    assert dataset.tensors[0].dtype == torch.float32 and dataset.tensors[0].shape == (6, 784)
    torch.testing.assert_close(dataset.tensors[0][parts["w2"]], torch.tensor(data["w2"]["x"]), rtol=0, atol=0)


@pytest.mark.parametrize(("content", "match"), [
    ({"users": ["a"]}, r"is not a LEAF file: it has no 'num_samples', 'user_data'"),
    ({"users": ["a"], "num_samples": [2], "user_data": {"a": {"x": ["ab"], "y": ["c"]}}},
     r"user 'a' has 1 x, 1 y and num_samples 2"),
    ({"users": ["a"], "num_samples": [1], "user_data": {}}, r"user 'a' has no `user_data` with `x` and `y`"),
    ({"users": ["a"], "num_samples": [1], "user_data": {"a": {"x": ["ab\u00e9"], "y": ["c"]}}},
     r"holds '\u00e9', which is not in LEAF_LETTERS"),
])
def test_bad_leaf_files_name_the_problem(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        load_leaf(path)


def test_a_user_in_two_files_and_a_missing_path_are_refused(tmp_path):
    for name in ("a.json", "b.json"):
        _write(tmp_path / name, ["same"], {"same": {"x": ["ab"], "y": ["c"]}})
    with pytest.raises(ValueError, match=r"User 'same' appears twice .* \(again in b.json\)"):
        load_leaf(tmp_path)
    with pytest.raises(FileNotFoundError, match="LEAF JSON file or a folder of them"):
        load_leaf(tmp_path / "nothing")


def test_the_char_lstm_federates_one_client_per_speaker(tmp_path):
    dataset, parts = load_leaf(_shakespeare(tmp_path))
    clients = make_clients(dataset, parts, batch_size=4)
    torch.manual_seed(0)
    model = CharLSTM(hidden=16, lr=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    result = FederatedLoop(rounds=2, clients_per_round=2, local_epochs=1, callbacks=[MutationCallback(radius=1.0)],
                           enable_progress_bar=False, seed=0).fit(model, clients,
                                                                   val_dataloaders=DataLoader(dataset, batch_size=24))
    assert {c["client_id"] for c in result.client_history} <= set(parts)
    assert [(c["round"], c["num_examples"]) for c in result.client_history] == [(0, 6), (0, 6), (1, 6), (1, 6)]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # every tensor trained
    assert 0.0 <= result.history[-1]["val_acc"] <= 1.0 and "clients/train_loss" in result.history[-1]
