"""What workers send each other: tensors as raw bytes beside a ``torch.save`` skeleton, read back exactly."""

from __future__ import annotations

import io
from collections import OrderedDict

import pytest
import torch

from lightning_fedmut.distributed.group import _MAGIC, _from_bytes, _to_bytes


def test_every_tensor_comes_back_equal_with_its_dtype_shape_and_container():
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(6, 5, generator=g)
    obj = {
        "state": OrderedDict(w=torch.randn(3, 4, generator=g), b=torch.zeros(0), n=torch.tensor(7)),
        "bf16": torch.randn(5, generator=g).to(torch.bfloat16),
        "half": torch.randn(3, generator=g).half(),
        "f64": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "mask": torch.tensor([True, False, True]),
        "complex": torch.randn(3, generator=g, dtype=torch.complex64),
        "strided": wide[:, 1::2],  # not contiguous
        "param": torch.nn.Parameter(torch.ones(2)),
        "nested": [(1, torch.arange(5, dtype=torch.int16)), {"deep": [torch.full((1,), 2.5)]}],
        "plain": ("a", 1, 2.5, None, True),
        5: torch.tensor([1.0]),  # an int key
    }
    back = _from_bytes(_to_bytes(obj))
    assert type(back["state"]) is OrderedDict and list(back["state"]) == ["w", "b", "n"]
    assert type(back["nested"]) is list and type(back["nested"][0]) is tuple and back["plain"] == obj["plain"]

    def same(a, b):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)

    assert all(same(obj["state"][k], back["state"][k]) for k in obj["state"])
    for key in ("bf16", "half", "f64", "mask", "complex", "strided", 5):
        assert same(obj[key], back[key]), key
    assert same(obj["nested"][0][1], back["nested"][0][1]) and same(obj["nested"][1]["deep"][0],
                                                                     back["nested"][1]["deep"][0])
    assert back["param"].requires_grad and torch.equal(back["param"], obj["param"].detach())


def test_tensors_without_plain_bytes_travel_as_torch_save_writes_them():
    obj = {"sparse": torch.eye(3).to_sparse(), "meta": torch.ones(2, device="meta"), "plain": torch.ones(2)}
    back = _from_bytes(_to_bytes(obj))
    assert back["sparse"].is_sparse and torch.equal(back["sparse"].to_dense(), torch.eye(3))
    assert back["meta"].is_meta and back["meta"].shape == (2,) and torch.equal(back["plain"], torch.ones(2))


def test_a_received_tensor_owns_its_storage():
    """A view into the received buffer would make ``torch.save`` of one state write every client's bytes."""
    back = _from_bytes(_to_bytes([{"w": torch.ones(10)}, {"w": torch.zeros(1000)}]))
    assert back[0]["w"].untyped_storage().nbytes() == 40
    saved = io.BytesIO()
    torch.save(back[0]["w"], saved)
    assert saved.getbuffer().nbytes < 2000


def test_bytes_of_another_format_or_with_a_strange_dtype_are_refused():
    with pytest.raises(ValueError, match="Expected the bytes of a worker's exchange"):
        _from_bytes(torch.zeros(32, dtype=torch.uint8))
    buffer = io.BytesIO()
    torch.save((None, [((), "os.system", (1,), 0, False, "cpu")]), buffer)  # a table naming no dtype
    head = buffer.getvalue()
    raw = _MAGIC + len(head).to_bytes(8, "little") + head + bytes(64)
    with pytest.raises(ValueError, match=r"Expected a torch dtype in a worker's exchange, got 'os\.system'"):
        _from_bytes(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
