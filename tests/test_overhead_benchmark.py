"""benchmarks/overhead.py: every name its breakdown instruments exists, is called, and a missing one is named."""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from lightning_fedmut.data import make_clients, partition_iid
from tests.helpers import TinyModule, make_synthetic

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def overhead() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("overhead_benchmark", ROOT / "benchmarks" / "overhead.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    threads = torch.get_num_threads()
    try:
        spec.loader.exec_module(module)
    finally:
        torch.set_num_threads(threads)  # the benchmark pins one thread at import
    yield module
    sys.modules.pop(spec.name, None)


def test_wrapping_a_missing_function_names_it(overhead):
    attr = overhead.Attribution("rest")
    with pytest.raises(AttributeError) as info:
        attr.wrap(types.ModuleType("pkg.loop"), "_check_finite", "finite")
    assert str(info.value) == (
        "benchmarks/overhead.py instruments `pkg.loop._check_finite`, but `pkg.loop` defines no `_check_finite`"
        " (renamed or removed?); close names it defines: none. Update instrument() to the name the code uses now.")
    assert attr.target_calls == {}


def test_wrapping_a_missing_method_names_the_class_and_close_names(overhead):
    class Loop:
        def check_finite(self) -> None: ...

    with pytest.raises(AttributeError, match=r"instruments `.*Loop\._check_finite`, .* close names it defines: "
                                             r"\['check_finite'\]"):
        overhead.Attribution("rest").wrap(Loop, "_check_finite", "finite")


def test_never_called_lists_wrapped_names_no_run_called(overhead):
    module = types.ModuleType("pkg.functional")
    module.used = lambda: 1
    module.unused = lambda: 2
    attr = overhead.Attribution("rest")
    attr.wrap(module, "used", "weights")
    attr.wrap(module, "unused", "finite")
    attr.run(lambda: module.used() + module.used())
    attr.unwrap()
    assert attr.never_called() == ["pkg.functional.unused"]
    assert attr.target_calls == {"pkg.functional.used": 2, "pkg.functional.unused": 0}
    assert dict(attr.calls) == {"weights": 2, "rest": 1}


@pytest.fixture(scope="module")
def tiny_workload(overhead):
    train, val = make_synthetic()
    clients = make_clients(train, partition_iid(len(train), 4, seed=0), batch_size=30)
    return overhead.Workload(name="tiny", description="synthetic", make_model=TinyModule, clients=clients,
                             val_loader=DataLoader(val, batch_size=60), clients_per_round=2, local_epochs=1,
                             rounds=1, steps_per_client=2.0)


def test_the_loops_checks_and_weight_copies_are_measured(overhead, tiny_workload, monkeypatch, tmp_path):
    """The loop's finiteness checks and its weight copies are timed (they read zero when the names moved)."""
    monkeypatch.chdir(tmp_path)
    overhead.FEDLOOP_KWARGS["enable_progress_bar"] = False
    attr = overhead.Attribution("rest")
    overhead.instrument(attr, tiny_workload)
    try:
        attr.run(functools.partial(overhead.run_fedloop, tiny_workload))
    finally:
        attr.unwrap()
    # per client: the trained weights checked once and the start state copied in; per round: the aggregate
    # checked and copied into the global model
    assert attr.calls["finite"] == 2 + 1
    assert attr.target_calls["lightning_fedmut.execution._calls.first_non_finite"] == 2
    assert attr.target_calls["lightning_fedmut.loop.connectors.failures.check_global_finite"] == 1
    assert attr.target_calls["lightning_fedmut.execution.sequential.copy_"] == 2
    assert attr.target_calls["lightning_fedmut.loop.loop.copy_"] == 1
    assert attr.totals["finite"] > 0.0


def test_the_benchmark_has_no_what_if_mode(overhead):
    with pytest.raises(SystemExit) as info:
        overhead.main(["--what-if", "--quick"])
    assert info.value.code == 2  # argparse: unrecognized argument
