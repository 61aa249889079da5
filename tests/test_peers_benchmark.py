"""benchmarks/peers.py: its implementations do the same work (same final model quality), timings aside."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def peers() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("peers_benchmark", ROOT / "benchmarks" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    threads = torch.get_num_threads()
    try:
        spec.loader.exec_module(module)
    finally:
        torch.set_num_threads(threads)  # the benchmark pins one thread at import
    module.overhead.silence_lightning_console()
    module.overhead.FEDLOOP_KWARGS["enable_progress_bar"] = False
    yield module
    sys.modules.pop(spec.name, None)


def test_one_round_of_ours_and_of_plain_pytorch_ends_at_the_same_model_quality(peers, monkeypatch, tmp_path):
    """Workload B (the smallest), one round: FederatedLoop and the plain loop validate the same global model."""
    monkeypatch.chdir(tmp_path)
    wl = peers.workload_b(rounds=1)
    ours = peers.overhead.run_fedloop(wl)
    plain = peers.overhead.run_plain_torch(wl)
    assert ours["val_acc"] == pytest.approx(plain["val_acc"], abs=1e-6)
    assert ours["val_loss"] == pytest.approx(plain["val_loss"], abs=1e-5)
    # and not a model that did nothing: one round of ten clients moved the loss away from the initial model's
    x_val, y_val = wl.val_tensors
    with torch.no_grad():
        initial = torch.nn.functional.cross_entropy(peers.overhead.fresh_model(wl).eval()(x_val), y_val).item()
    assert ours["val_loss"] < initial - 1e-4  # 2.30486 after the round, 2.30503 before


def test_pfl_ends_at_the_same_model_quality_where_installed(peers, monkeypatch, tmp_path):
    run_pfl, version = peers.pfl_runner()
    if run_pfl is None:
        pytest.skip(f"pfl: {version}")
    monkeypatch.chdir(tmp_path)
    wl = peers.workload_b(rounds=1)
    theirs, plain = run_pfl(wl), peers.overhead.run_plain_torch(wl)
    assert theirs["val_acc"] == pytest.approx(plain["val_acc"], abs=1e-6)
    assert theirs["val_loss"] == pytest.approx(plain["val_loss"], abs=1e-5)


def test_the_clients_are_fed_in_stored_order_in_batches_as_pfl_slices_them(peers):
    wl = peers.workload_c(rounds=1, width=4, clients=4, per_client=6, batch_size=4)
    x, y = wl.client_tensors[1]
    batches = list(wl.clients[1].data)
    assert [len(b[1]) for b in batches] == [4, 2]
    assert torch.equal(torch.cat([b[0] for b in batches]), x)
    assert torch.equal(torch.cat([b[1] for b in batches]), y)


def test_rotated_order_and_sample_spread(peers):
    assert list(peers.rotations(["a", "b"], 3)) == [["a", "b"], ["b", "a"], ["a", "b"]]
    assert peers.spread([1.0, 2.0, 4.0]) == pytest.approx((7 / 3) ** 0.5, rel=1e-12)  # sd with n - 1
    assert peers.spread([3.0]) == 0.0


def test_the_benchmarks_examples_run(peers):
    import doctest

    assert doctest.testmod(peers, optionflags=doctest.ELLIPSIS).failed == 0
