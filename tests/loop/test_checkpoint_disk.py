"""Checkpoints on disk: last.ckpt by default, history stored once, the plain state dict, the size warning and
the lock file."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut.callbacks import GlobalModelCheckpoint, Scaffold
from lightning_fedmut.callbacks import model_checkpoint as model_ckpt
from lightning_fedmut.checkpoint import (
    HISTORY_FILE,
    CorruptCheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_resume_checkpoint,
    load_state_dict,
    save_checkpoint,
)
from lightning_fedmut.data import partition_iid
from lightning_fedmut.loop.connectors import checkpoint as connector
from tests.helpers import TinyModule

torch.set_num_threads(1)


def _run(synthetic, tmp_path, rounds=3, clients=4, per_round=2, ckpt_path=None, folder="ckpt", **kwargs):
    train, val = synthetic
    torch.manual_seed(0)
    model = TinyModule()
    federation = make_clients(train, partition_iid(len(train), clients, seed=0), batch_size=16)
    loop = FederatedLoop(rounds=rounds, clients_per_round=per_round, local_steps=1, seed=0,
                         enable_progress_bar=False, checkpoint_dir=tmp_path / folder, **kwargs)
    result = loop.fit(model, federation, val_dataloaders=DataLoader(val, batch_size=60), ckpt_path=ckpt_path)
    return model, result, loop


# ------------------------------------------------------------------------------------- last.ckpt by default
def test_checkpoint_dir_writes_last_ckpt_of_the_final_global_model(synthetic, tmp_path):
    model, _, _ = _run(synthetic, tmp_path)
    path = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(path, weights_only=True)
    final = model.state_dict()
    assert list(saved["state_dict"]) == list(final)
    for key, value in final.items():
        assert torch.equal(saved["state_dict"][key], value), key
    assert saved["epoch"] == saved["global_step"] == 2  # the 0-based round of the weights
    loaded = TinyModule.load_from_checkpoint(path)
    assert loaded.hparams == model.hparams
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, final[key]), key
    assert all(torch.equal(v, final[k]) for k, v in load_state_dict(path).items())


def test_enable_model_checkpoint_false_writes_no_last_ckpt(synthetic, tmp_path):
    _run(synthetic, tmp_path, enable_model_checkpoint=False)
    assert not (tmp_path / "ckpt" / "last.ckpt").exists()
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["round-00002.ckpt", "round-00003.ckpt"]
    with pytest.raises(TypeError, match=r"Expected `enable_model_checkpoint` to be a bool, got 'no'"):
        FederatedLoop(rounds=1, clients_per_round=1, enable_model_checkpoint="no")


def test_a_global_model_checkpoint_in_the_same_folder_replaces_the_default(synthetic, tmp_path, monkeypatch):
    calls = []
    write = model_ckpt.write_lightning_checkpoint
    monkeypatch.setattr(model_ckpt, "write_lightning_checkpoint",
                        lambda module, path, *a, **k: calls.append(path.name) or write(module, path, *a, **k))
    _run(synthetic, tmp_path, callbacks=[GlobalModelCheckpoint()])  # dirpath None: the loop's checkpoint_dir
    assert calls == ["last.ckpt"] * 3  # the callback's, once a round; the default is not written besides
    calls.clear()
    _run(synthetic, tmp_path, folder="same", callbacks=[GlobalModelCheckpoint(dirpath=tmp_path / "same",
                                                                               save_last=False, save_top_k=0)])
    assert calls == [] and not (tmp_path / "same" / "last.ckpt").exists()
    _run(synthetic, tmp_path, folder="own", callbacks=[GlobalModelCheckpoint(dirpath=tmp_path / "other",
                                                                              save_last=False, save_top_k=0)])
    assert calls == ["last.ckpt"] * 3 and (tmp_path / "own" / "last.ckpt").exists()


# ------------------------------------------------------------------------------------- history stored once
def test_a_checkpoint_does_not_grow_with_the_rounds(synthetic, tmp_path):
    _, short, _ = _run(synthetic, tmp_path, rounds=5, folder="short", enable_model_checkpoint=False)
    _, long, _ = _run(synthetic, tmp_path, rounds=50, folder="long", enable_model_checkpoint=False)
    size_5 = list_checkpoints(tmp_path / "short")[-1].stat().st_size
    size_50 = list_checkpoints(tmp_path / "long")[-1].stat().st_size
    print(f"checkpoint after 5 rounds: {size_5} bytes, after 50 rounds: {size_50} bytes")
    assert abs(size_50 - size_5) <= 300
    lines = (tmp_path / "long" / HISTORY_FILE).read_text().splitlines()
    assert len(lines) == 50
    state = load_checkpoint(list_checkpoints(tmp_path / "long")[-1])
    assert state["history"] == long.history and state["client_history"] == long.client_history
    assert state["timings"] == long.timings and state["failures"] == long.failures == []
    assert "history" not in load_checkpoint(list_checkpoints(tmp_path / "long")[-1], history=False)


def test_each_checkpoint_reads_back_the_rows_of_its_own_round(synthetic, tmp_path):
    _, result, _ = _run(synthetic, tmp_path, rounds=4, keep_last=4)
    paths = list_checkpoints(tmp_path / "ckpt")
    assert len(paths) == 4
    for rounds_done, path in enumerate(paths, start=1):
        state = load_checkpoint(path)
        assert state["history"] == result.history[:rounds_done]
        assert state["client_history"] == [r for r in result.client_history if r["round"] < rounds_done]


def test_resume_rewrites_the_history_and_ends_as_the_uninterrupted_run(synthetic, tmp_path):
    whole, reference, _ = _run(synthetic, tmp_path, rounds=6, folder="whole", enable_model_checkpoint=False)
    _run(synthetic, tmp_path, rounds=3, folder="part", enable_model_checkpoint=False)
    (tmp_path / "part" / HISTORY_FILE).open("ab").write(b'{"round": 3, "history": [{"half": ')  # a broken append
    model, resumed, _ = _run(synthetic, tmp_path, rounds=6, folder="part", ckpt_path="last",
                             enable_model_checkpoint=False)
    assert resumed.history == reference.history and resumed.client_history == reference.client_history
    assert all(torch.equal(v, whole.state_dict()[k]) for k, v in model.state_dict().items())
    import json

    def rows(folder):  # the timings are wall-clock: the rest is the same, line for line
        return [{k: v for k, v in json.loads(line).items() if k != "timings"}
                for line in (tmp_path / folder / HISTORY_FILE).read_text().splitlines()]

    assert len(rows("part")) == 6 and rows("part") == rows("whole")


def test_an_old_checkpoint_with_the_history_inline_still_resumes(synthetic, tmp_path):
    _, reference, _ = _run(synthetic, tmp_path, rounds=4, folder="whole")
    _run(synthetic, tmp_path, rounds=2, folder="new")
    state = load_checkpoint(list_checkpoints(tmp_path / "new")[-1])
    del state["history_log"]  # as an earlier release wrote it: the rows in the file itself
    old = save_checkpoint(state, tmp_path / "old", keep_last=1)
    assert not (tmp_path / "old" / HISTORY_FILE).exists()
    _, resumed, _ = _run(synthetic, tmp_path, rounds=4, folder="more", ckpt_path=old)
    assert resumed.history == reference.history
    newest = load_checkpoint(list_checkpoints(tmp_path / "more")[-1], history=False)
    assert "history" not in newest and newest["history_log"]["rounds"] == 4


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "missing"])
def test_a_damaged_history_file_is_named(synthetic, tmp_path, damage):
    _run(synthetic, tmp_path, rounds=2, keep_last=1)
    history = tmp_path / "ckpt" / HISTORY_FILE
    data = history.read_bytes()
    if damage == "truncated":
        history.write_bytes(data[:-5])
        match = rf"History file '{history}' of checkpoint .* is truncated: it holds {len(data) - 5} of the {len(data)}"
    elif damage == "corrupt":
        history.write_bytes(data.replace(b'"round":1', b'"round":7'))
        match = rf"History file '{history}' of checkpoint .* is corrupt: its SHA-256 checksum does not match"
    else:
        history.unlink()
        match = rf"History file '{history}' of checkpoint .* is missing"
    path = list_checkpoints(tmp_path / "ckpt")[-1]
    with pytest.raises(CorruptCheckpointError, match=match):
        load_checkpoint(path)
    with pytest.raises(CorruptCheckpointError, match=r"every checkpoint in it is truncated or corrupt"):
        load_resume_checkpoint("last", tmp_path / "ckpt")
    assert torch.equal(load_state_dict(path)["net.0.weight"], load_checkpoint(path, history=False)["model"]["net.0.weight"])


def test_history_rows_keep_their_types():
    from lightning_fedmut.checkpoint import HistoryLog, read_history

    rows = {"history": [{"round": 0, "ids": (1, "a"), "by_id": {3: 0.5}, "t": torch.tensor([1.5, 2.0], dtype=torch.bfloat16),
                         "nan": float("nan"), "big": 2**62, "third": 1 / 3, "none": None, "flag": True}],
            "client_history": [{"round": 0, "client_id": "x"}], "failures": [], "timings": []}
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        record = HistoryLog(d).write(rows, 1)
        back = read_history(Path(d, "round-00001.ckpt"), record)
    row = back["history"][0]
    assert row["ids"] == (1, "a") and type(row["ids"]) is tuple and row["by_id"] == {3: 0.5}
    assert row["t"].dtype == torch.bfloat16 and torch.equal(row["t"], rows["history"][0]["t"])
    assert math.isnan(row["nan"]) and row["big"] == 2**62 and row["third"] == 1 / 3
    assert row["none"] is None and row["flag"] is True and back["client_history"] == rows["client_history"]


# ------------------------------------------------------------------------------------- the plain state dict
def test_load_state_dict_is_the_global_model(synthetic, tmp_path):
    model, _, _ = _run(synthetic, tmp_path)
    got = load_state_dict(list_checkpoints(tmp_path / "ckpt")[-1])
    assert list(got) == list(model.state_dict())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in got.items())
    with pytest.raises(ValueError, match=r"is a Lightning checkpoint of the global model \(such as last.ckpt\)."
                                         r" Open it with `torch.load\(path, weights_only=True\)`"):
        load_checkpoint(tmp_path / "ckpt" / "last.ckpt")


# ------------------------------------------------------------------------------------- sizes and the warning
def test_the_size_estimate_equals_the_checkpoint_of_a_scaffold_run(synthetic, tmp_path):
    estimates = []

    class Estimate(FederatedCallback):
        def on_fit_start(self, loop, module):
            estimates.append(connector.estimate_checkpoint_bytes(loop, module))

    _run(synthetic, tmp_path, rounds=1, clients=4, per_round=4, callbacks=[Scaffold(), Estimate()],
         aggregator=FedAvg(weighted=False))
    state = load_checkpoint(list_checkpoints(tmp_path / "ckpt")[-1], history=False)
    assert len(state["client_states"]["states"]) == 4  # every client stored its control variate
    params = sum(p.numel() * 4 for p in TinyModule().parameters())
    assert estimates == [connector._tensor_bytes(state)]
    assert connector._tensor_bytes(state["client_states"]) == 4 * params


def test_large_checkpoints_are_warned_once_before_round_0(synthetic, tmp_path, monkeypatch):
    monkeypatch.setattr(connector, "WARN_KEPT_BYTES", 1000)
    seen = []

    class BeforeRound0(FederatedCallback):
        def on_round_start(self, loop, module):
            if loop.round == 0:
                seen.append(len(caught))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, loop = _run(synthetic, tmp_path, rounds=3, callbacks=[BeforeRound0()])
    sizes = [str(w.message) for w in caught if "Checkpoints of this run are large" in str(w.message)]
    assert len(sizes) == 1 and seen[0] >= 1
    size = connector.estimate_checkpoint_bytes(loop, TinyModule())
    assert f"about {size / 1e6:.1f} MB each, 3 written over 3 rounds (`checkpoint_every`=None (every 1 round" in sizes[0]
    assert "(`keep_last`=2)" in sizes[0] and "Raise `checkpoint_every`, lower `keep_last`" in sizes[0]


def test_checkpoint_every_none_spaces_large_checkpoints(synthetic, tmp_path, monkeypatch):
    monkeypatch.setattr(connector, "estimate_checkpoint_bytes", lambda loop, module: 50 * 10**6)  # 50 MB each
    _, _, loop = _run(synthetic, tmp_path, rounds=7, keep_last=5)
    assert loop.checkpoint_connector.interval == 3  # ceil(50 MB / 20 MB)
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == [
        "round-00003.ckpt", "round-00006.ckpt", "round-00007.ckpt"]  # the last round always


def test_checkpoint_plan():
    plan = connector.checkpoint_plan(10**9, rounds=100, start=40, every=25, keep_last=2, last_bytes=5)
    assert plan == {"count": 3, "written": 3 * (10**9 + 5), "kept": 2 * 10**9 + 5}  # rounds 50, 75, 100


# ------------------------------------------------------------------------------------- the lock file
def test_the_lock_file_is_removed_after_the_run_and_only_by_its_holder(synthetic, tmp_path):
    _run(synthetic, tmp_path, rounds=1)
    assert not (tmp_path / "ckpt" / ".lock").exists()
    holder = connector.CheckpointConnector(tmp_path / "held", None, 1)
    holder.lock()
    lock = tmp_path / "held" / ".lock"
    assert lock.read_text().startswith("pid ")
    lock.unlink()
    lock.write_text("another run's lock")  # the file is someone else's now: left alone
    holder.unlock()
    assert lock.read_text() == "another run's lock"
