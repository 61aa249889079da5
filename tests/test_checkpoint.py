"""Checkpoints are data: checksummed, loaded with weights_only=True only, a corrupt newest one skipped."""

import builtins
import hashlib
import io
import logging
import os
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyModule
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.checkpoint import (
    CHECKPOINT_VERSION,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_resume_checkpoint,
    remove_orphaned_temporaries,
    resolve_checkpoint,
    save_checkpoint,
)
from lightning_fedmut.data import partition_iid

torch.set_num_threads(1)

MAGIC = b"lightning_fedmut checkpoint\n"
TORCH_WORDS = ("PytorchStreamReader", "Weights only load failed", "miniz", "UnpicklingError")


def _state(rounds_done=1):
    g = torch.Generator().manual_seed(rounds_done)
    return {
        "format": "lightning_fedmut",
        "version": CHECKPOINT_VERSION,
        "rounds_done": rounds_done,
        "model": OrderedDict(w=torch.randn(4, 3, generator=g), b=torch.randn(3, generator=g).to(torch.bfloat16),
                             n=torch.tensor(7, dtype=torch.long), mask=torch.tensor([True, False])),
        "sampler": torch.Generator().manual_seed(5).get_state(),
        "history": [{"round": r, "val_acc": 0.25 * r, "ok": r % 2 == 0, "note": None} for r in range(rounds_done)],
        "client_history": [{"round": 0, "client": 3}, {"round": 0, "client": "site-b"}],
        "callbacks": {"MutationCallback": {"table": torch.tensor([[1.0, -0.7]]), "round": 2, 4: (1, 2.5, "x")}},
        "shape": torch.Size([2, 3]),
        "dtype": torch.float16,
        "blob": b"\x00\xff",
        "run_id": "abc123",
    }


def _assert_equal(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_equal(x, y)
    else:
        assert a == b


def _parse(path):
    """Split a checkpoint file by the layout the module documents; return the body."""
    data = Path(path).read_bytes()
    assert data.startswith(MAGIC)
    header, body = data[len(MAGIC):].split(b"\n", 1)
    _, digest, _, size = header.split(b" ")
    assert int(size) == len(body) and hashlib.sha256(body).hexdigest().encode() == digest
    assert body.startswith(b"version %d\n" % CHECKPOINT_VERSION)
    return body


def _frame(body):
    """A well-formed file around ``body``, made the way the module documents it."""
    return MAGIC + b"sha256 %s bytes %d\n" % (hashlib.sha256(body).hexdigest().encode(), len(body)) + body


def test_plain_state_round_trips_and_the_body_loads_with_weights_only(tmp_path):
    state = _state(3)
    path = save_checkpoint(state, tmp_path, keep_last=2)
    assert path == tmp_path / "round-00003.ckpt"
    _assert_equal(load_checkpoint(path), state)
    body = _parse(path)
    direct = torch.load(io.BytesIO(body[len(b"version 2\n"):]), weights_only=True)
    _assert_equal(direct, state)


@pytest.mark.parametrize(
    ("entry", "where", "what"),
    [
        ({"history": [{"round": 0}, {"val_acc": np.float64(0.5)}]}, r"state\['history'\]\[1\]\['val_acc'\]",
         "numpy.float64"),
        ({"callbacks": {"x": {"rng": np.random.default_rng(0)}}}, r"state\['callbacks'\]\['x'\]\['rng'\]",
         "numpy.random._generator.Generator"),
        ({"extra": {np.int64(3): 1}}, r"a key of state\['extra'\]", "numpy.int64"),
        ({"extra": [1, {2, 3}]}, r"state\['extra'\]\[1\]", "set"),
        ({"extra": lambda: 0}, r"state\['extra'\]", "function"),
    ],
)
def test_save_refuses_what_weights_only_would_refuse_before_writing(tmp_path, entry, where, what):
    state = {"rounds_done": 1, **entry}
    with pytest.raises(TypeError, match=rf"Cannot checkpoint `{where}`: it is a {what}, and a checkpoint holds only"):
        save_checkpoint(state, tmp_path / "ckpt", keep_last=1)
    assert not (tmp_path / "ckpt").exists()


def test_save_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"Expected `keep_last` to be an integer >= 1, got 0\."):
        save_checkpoint({"rounds_done": 1}, tmp_path, keep_last=0)
    with pytest.raises(ValueError, match=r"Expected `state` to be a dict holding `rounds_done`, got {'round': 1}"):
        save_checkpoint({"round": 1}, tmp_path, keep_last=1)
    with pytest.raises(TypeError, match=r"Cannot checkpoint `state\['rounds_done'\]`: it is a numpy.int64"):
        save_checkpoint({"rounds_done": np.int64(4)}, tmp_path, keep_last=1)
    assert list(tmp_path.iterdir()) == []


class _Payload:
    """Unpickling this runs ``exec`` on code that writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _evil_files(tmp_path):
    """A bare torch file and a correctly framed one whose state holds the payload; the payload really runs."""
    marker = tmp_path / "MARKER"
    bare = tmp_path / "round-00001.ckpt"
    torch.save({"format": "lightning_fedmut", "version": 1, "rounds_done": 1, "x": _Payload(marker)}, bare)
    buf = io.BytesIO()
    torch.save({"format": "lightning_fedmut", "version": 2, "rounds_done": 2, "x": _Payload(marker)}, buf)
    framed = tmp_path / "round-00002.ckpt"
    framed.write_bytes(_frame(b"version 2\n" + buf.getvalue()))
    # the payload is live: unpickling it the unsafe way does write the marker
    probe = tmp_path / "probe"
    torch.save(_Payload(probe), tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.read_text() == "ran"
    return marker, bare, framed


def test_pickled_payload_is_refused_without_running_it(tmp_path):
    marker, bare, framed = _evil_files(tmp_path)
    for path in (bare, framed):
        with pytest.raises(UnsafeCheckpointError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert message.startswith(f"Refusing to load {str(path)!r}: it holds a pickled object (exec) besides")
        assert "could run code" in message and not any(w in message for w in TORCH_WORDS)
        assert isinstance(info.value, ValueError)
    # resuming "last" refuses it too, rather than falling back past it
    with pytest.raises(UnsafeCheckpointError, match=r"round-00002.ckpt"):
        load_resume_checkpoint("last", tmp_path)
    assert not marker.exists()


def _real_checkpoint(tmp_path):
    model = TinyModule(batch_norm=True)
    state = {"format": "lightning_fedmut", "version": CHECKPOINT_VERSION, "rounds_done": 1,
             "model": {k: v.clone() for k, v in model.state_dict().items()}, "history": [{"round": 0, "val_acc": 0.5}]}
    return save_checkpoint(state, tmp_path, keep_last=1)


@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_every_flipped_byte_is_detected(tmp_path, mask):
    path = _real_checkpoint(tmp_path)
    good = path.read_bytes()
    broken = tmp_path / "broken.ckpt"
    for i in range(len(good)):
        data = bytearray(good)
        data[i] ^= mask
        broken.write_bytes(bytes(data))
        with pytest.raises(CorruptCheckpointError) as info:
            load_checkpoint(broken)
        message = str(info.value)
        assert message.startswith(f"Checkpoint {str(broken)!r} is "), (i, message)
        assert not any(w in message for w in TORCH_WORDS)
    data = bytearray(good)
    data[len(good) // 2] ^= mask  # a byte in the middle of the tensors: the checksum says so
    broken.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="its SHA-256 checksum does not match its contents"):
        load_checkpoint(broken)
    _assert_equal(load_checkpoint(path)["model"], torch.load(io.BytesIO(_parse(path)[10:]), weights_only=True)["model"])


@pytest.mark.parametrize(
    ("cut", "reason"),
    [
        (lambda n: 0, "is truncated: the file is empty"),
        (lambda n: 10, "is truncated: it ends inside its header"),
        (lambda n: len(MAGIC) + 20, "is truncated: it ends inside its header"),
        (lambda n: n // 2, "is truncated: it holds"),
        (lambda n: n - 1, "is truncated: it holds"),
    ],
)
def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, cut, reason):
    paths = [save_checkpoint(_state(r), tmp_path, keep_last=3) for r in (1, 2, 3)]
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: cut(len(data))])
    with pytest.warns(UserWarning) as caught:
        path, state = load_resume_checkpoint("last", tmp_path)
    assert path == paths[1]
    _assert_equal(state, _state(2))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"Checkpoint {str(paths[2])!r} {reason}")
    assert message.endswith(f"Resuming from the previous checkpoint, {str(paths[1])!r}, instead.")
    # the same file passed explicitly is an error, in our words
    with pytest.raises(CorruptCheckpointError, match=reason) as info:
        load_resume_checkpoint(paths[2], tmp_path)
    assert str(paths[2]) in str(info.value) and not any(w in str(info.value) for w in TORCH_WORDS)


def test_fallback_skips_every_corrupt_checkpoint_and_fails_when_none_is_left(tmp_path):
    paths = [save_checkpoint(_state(r), tmp_path, keep_last=3) for r in (1, 2, 3)]
    for p in paths[1:]:
        data = bytearray(p.read_bytes())
        data[-5] ^= 0x10
        p.write_bytes(bytes(data))
    with pytest.warns(UserWarning) as caught:
        path, state = load_resume_checkpoint("last", tmp_path)
    assert path == paths[0] and state["rounds_done"] == 1
    assert [str(w.message).split(" is ")[0] for w in caught] == [f"Checkpoint {str(paths[2])!r}",
                                                                  f"Checkpoint {str(paths[1])!r}"]
    assert str(paths[1]) in str(caught[0].message) and str(paths[0]) in str(caught[1].message)
    paths[0].write_bytes(paths[0].read_bytes()[:100])
    with pytest.warns(UserWarning), pytest.raises(CorruptCheckpointError) as info:
        load_resume_checkpoint("last", tmp_path)
    message = str(info.value)
    assert message.startswith(f"Cannot resume from `checkpoint_dir`={str(tmp_path)!r}: every checkpoint")
    assert all(str(p) in message for p in paths)


def test_last_on_a_first_launch_starts_fresh(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lightning_fedmut"):
        assert load_resume_checkpoint("last", tmp_path / "not-yet") is None
        assert resolve_checkpoint("last", tmp_path) is None
    assert [r.name for r in caplog.records] == ["lightning_fedmut", "lightning_fedmut"]
    assert caplog.records[0].getMessage() == (
        f"`ckpt_path='last'` found no checkpoint in `checkpoint_dir`={str(tmp_path / 'not-yet')!r}: starting fresh."
    )
    with pytest.raises(ValueError, match="`ckpt_path='last'` needs the loop's `checkpoint_dir`"):
        load_resume_checkpoint("last", None)
    with pytest.raises(FileNotFoundError, match=r"got '.*nope\.ckpt': no such file"):
        load_resume_checkpoint(tmp_path / "nope.ckpt", tmp_path)


def test_other_files_and_versions_are_named(tmp_path):
    old = tmp_path / "old.ckpt"
    torch.save({"format": "lightning_fedmut", "version": 1, "rounds_done": 2, "model": {}}, old)
    with pytest.raises(ValueError, match=rf"Checkpoint {str(old)!r} has checkpoint version 1; this lightning_fedmut"
                                         r" reads version 2 \(checksummed\) only"):
        load_checkpoint(old)
    future = tmp_path / "future.ckpt"
    buf = io.BytesIO()
    torch.save({"rounds_done": 1}, buf)
    future.write_bytes(_frame(b"version 3\n" + buf.getvalue()))
    with pytest.raises(ValueError, match="has checkpoint version 3; this lightning_fedmut reads version 2"):
        load_checkpoint(future)
    foreign = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="is not a lightning_fedmut checkpoint: it is a plain torch file"):
        load_checkpoint(foreign)
    broken_zip = tmp_path / "broken.pt"
    broken_zip.write_bytes(old.read_bytes()[:200])
    with pytest.raises(ValueError, match="it has no checkpoint header, and it does not read as an older") as info:
        load_checkpoint(broken_zip)
    assert not any(w in str(info.value) for w in TORCH_WORDS)
    text = tmp_path / "notes.ckpt"
    text.write_text("hello\n")
    with pytest.raises(ValueError, match="is not a lightning_fedmut checkpoint: it does not start with"):
        load_checkpoint(text)


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    save_checkpoint(_state(1), tmp_path, keep_last=2)

    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_state(2), tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-00001.ckpt"]


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temporaries(d):
    host = "".join(c if c.isalnum() or c == "." else "_" for c in socket.gethostname())[:64]
    old = time.time() - 7200
    files = {  # name -> (age, should be removed)
        f".tmp-{os.getpid()}@{host}-aaaaaaaa.ckpt": (None, True),  # this process saves nothing meanwhile
        f".tmp-{_dead_pid()}@{host}-bbbbbbbb.ckpt": (None, True),  # its writer is gone
        f".tmp-{os.getppid()}@{host}-cccccccc.ckpt": (None, False),  # a live writer, right now
        f".tmp-{os.getppid()}@{host}-dddddddd.ckpt": (old, True),  # live pid, but untouched for two hours
        ".tmp-1@elsewhere.example-eeeeeeee.ckpt": (None, False),  # another machine's: cannot tell yet
        ".tmp-1@elsewhere.example-ffffffff.ckpt": (old, True),
        ".tmp-k2j4h1.ckpt": (None, False),  # an older name, recent
        ".tmp-x9y8z7.ckpt": (old, True),
    }
    for name, (age, _) in files.items():
        (d / name).write_bytes(b"\x00" * 1000)
        if age is not None:
            os.utime(d / name, (age, age))
    (d / "notes.tmp").write_text("not ours")
    return {name for name, (_, gone) in files.items() if not gone} | {"notes.tmp"}


@pytest.mark.parametrize("when", ["save", "list", "resume", "explicit"])
def test_orphaned_temporary_files_are_removed(tmp_path, when):
    if sys.platform == "win32":
        pytest.skip("process ids are not checked on Windows")
    first = save_checkpoint(_state(1), tmp_path, keep_last=3)
    kept = _temporaries(tmp_path) | {first.name}
    if when == "save":
        kept.add(save_checkpoint(_state(2), tmp_path, keep_last=3).name)
    elif when == "list":
        assert list_checkpoints(tmp_path) == [first]
    elif when == "resume":
        assert load_resume_checkpoint("last", tmp_path)[0] == first
    else:
        assert [p.name for p in remove_orphaned_temporaries(tmp_path)] != []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_a_loop_checkpoint_is_plain_data(synthetic, tmp_path):
    train, val = synthetic
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True)
    clients = make_clients(train, partition_iid(len(train), 6, seed=0), batch_size=16)
    loop = FederatedLoop(rounds=2, clients_per_round=4, local_steps=2, aggregator=FedAvg(weighted=False),
                         callbacks=[MutationCallback(radius=2.0)], seed=1, enable_progress_bar=False,
                         checkpoint_dir=tmp_path, keep_last=2)
    result = loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=60))
    paths = list_checkpoints(tmp_path)
    assert [p.name for p in paths] == ["round-00001.ckpt", "round-00002.ckpt"]
    body = _parse(paths[-1])
    direct = torch.load(io.BytesIO(body[len(b"version 2\n"):]), map_location="cpu", weights_only=True)
    _assert_equal(direct, load_checkpoint(paths[-1], history=False))  # the rows live once, in history.jsonl
    assert direct["rounds_done"] == 2 and load_checkpoint(paths[-1])["history"] == result.history
    final = model.state_dict()
    for k, v in direct["model"].items():
        assert torch.equal(v, final[k]), k
    assert load_resume_checkpoint("last", tmp_path)[0] == paths[-1]
