"""Crash, resume and compare: a resumed run ends bit for bit where the uninterrupted one does."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import Crash, TinyModule, state_of
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.checkpoint import list_checkpoints, load_checkpoint
from lightning_fedmut.data import partition_iid

ROUNDS = 6
T_B = 4  # acceleration reaches 0 after round 4; stopping after round 3 is "just before the end"


class InterruptingModule(TinyModule):
    interrupt_at = None  # (round, call) -> raise KeyboardInterrupt inside a client's training_step
    calls = 0

    def training_step(self, batch, batch_idx):
        InterruptingModule.calls += 1
        if InterruptingModule.interrupt_at is not None and InterruptingModule.calls == InterruptingModule.interrupt_at:
            raise KeyboardInterrupt
        return super().training_step(batch, batch_idx)


def _setup(synthetic, method, tmp_path=None, callbacks=(), module_cls=TinyModule, **kwargs):
    train, val = synthetic
    torch.manual_seed(0)
    model = module_cls(batch_norm=True)
    clients = make_clients(train, partition_iid(len(train), 8, seed=0), batch_size=16)
    mutation = [MutationCallback(radius=2.0, acceleration=0.3, acceleration_rounds=T_B)] if method == "fedmut" else []
    loop = FederatedLoop(rounds=ROUNDS, clients_per_round=4, local_epochs=1, aggregator=FedAvg(weighted=False),
                         callbacks=[*mutation, *callbacks], seed=3, enable_progress_bar=False,
                         checkpoint_dir=None if tmp_path is None else tmp_path / "ckpt", **kwargs)
    return model, clients, DataLoader(val, batch_size=60), loop


@pytest.fixture(scope="module")
def reference(request):
    cache = {}
    from helpers import make_synthetic

    for method in ("fedavg", "fedmut"):
        model, clients, val, loop = _setup(make_synthetic(), method)
        result = loop.fit(model, clients, val_dataloaders=val)
        cache[method] = (state_of(model), result.history, result.client_history)
    return cache


def _assert_same(model, result, ref):
    ref_state, ref_history, ref_clients = ref
    state = state_of(model)
    for k in ref_state:
        assert torch.equal(state[k], ref_state[k]), k
    assert result.history == ref_history
    assert result.client_history == ref_clients


@pytest.mark.parametrize("method", ["fedavg", "fedmut"])
@pytest.mark.parametrize("stop_after", [1, 3, 5])
def test_exception_then_resume_is_bitwise_equal(synthetic, tmp_path, reference, method, stop_after):
    model, clients, val, loop = _setup(synthetic, method, tmp_path, callbacks=[Crash(stop_after)])
    with pytest.raises(RuntimeError, match=f"crash at round {stop_after}"):
        loop.fit(model, clients, val_dataloaders=val)
    assert load_checkpoint(list_checkpoints(tmp_path / "ckpt")[-1])["rounds_done"] == stop_after

    model, clients, val, loop = _setup(synthetic, method, tmp_path)  # a fresh process would build these anew
    result = loop.fit(model, clients, val_dataloaders=val, ckpt_path="last")
    _assert_same(model, result, reference[method])


@pytest.mark.parametrize("method", ["fedavg", "fedmut"])
def test_keyboard_interrupt_checkpoints_then_resumes(synthetic, tmp_path, reference, method):
    # checkpoint only every 4 rounds: the interrupt itself must save the last completed round (round 2)
    InterruptingModule.calls = 0
    # 4 clients x 2 steps per round (30 examples, batch 16): call 2*8 + 5 falls inside round 2
    InterruptingModule.interrupt_at = 2 * 8 + 5
    model, clients, val, loop = _setup(synthetic, method, tmp_path, module_cls=InterruptingModule,
                                       checkpoint_every=4)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.fit(model, clients, val_dataloaders=val)
    finally:
        InterruptingModule.interrupt_at = None
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning's SIG_IGN is undone: Ctrl+C works again
    saved = load_checkpoint(list_checkpoints(tmp_path / "ckpt")[-1])
    assert saved["rounds_done"] == 2 and len(saved["history"]) == 2

    model, clients, val, loop = _setup(synthetic, method, tmp_path, module_cls=InterruptingModule)
    result = loop.fit(model, clients, val_dataloaders=val, ckpt_path="last")
    _assert_same(model, result, reference[method])


@pytest.mark.slow
def test_killed_process_then_resume(synthetic, tmp_path, reference):
    """SIGKILL a run after round 2 (no cleanup at all), resume here from what is on disk."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
        import torch
        torch.set_num_threads(1)
        from helpers import make_synthetic
        from lightning_fedmut import FederatedCallback
        from test_resume import _setup

        class Kill(FederatedCallback):
            def on_round_start(self, loop, module):
                if loop.round == 2:
                    os.kill(os.getpid(), signal.SIGKILL)

        model, clients, val, loop = _setup(make_synthetic(), "fedmut", __import__("pathlib").Path({str(tmp_path)!r}),
                                           callbacks=[Kill()])
        loop.fit(model, clients, val_dataloaders=val)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["round-00001.ckpt", "round-00002.ckpt"]
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".tmp")]

    model, clients, val, loop = _setup(synthetic, "fedmut", tmp_path)
    result = loop.fit(model, clients, val_dataloaders=val, ckpt_path=tmp_path / "ckpt" / "round-00002.ckpt")
    _assert_same(model, result, reference["fedmut"])


def test_checkpoint_contents_and_keep_last(synthetic, tmp_path):
    model, clients, val, loop = _setup(synthetic, "fedmut", tmp_path, keep_last=2, checkpoint_every=2)
    loop.fit(model, clients, val_dataloaders=val)
    files = list_checkpoints(tmp_path / "ckpt")
    assert [p.name for p in files] == ["round-00004.ckpt", "round-00006.ckpt"]
    saved = load_checkpoint(files[-1])
    assert saved["rounds_done"] == ROUNDS and len(saved["history"]) == ROUNDS
    assert set(saved["callbacks"]) == {"MutationCallback"}
    assert {"generator", "delta", "coefficients", "keys"} <= set(saved["callbacks"]["MutationCallback"])
    for k, v in state_of(model).items():
        assert torch.equal(saved["model"][k], v)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"clients_per_round": 3}, r"clients_per_round: checkpoint has 4, this run has 3"),
        ({"hidden": 32}, r"model_state: checkpoint has"),
        ({"seed": 4}, r"seed: checkpoint has 3, this run has 4"),
    ],
)
def test_resume_with_other_settings_fails_naming_the_mismatch(synthetic, tmp_path, change, match):
    model, clients, val, loop = _setup(synthetic, "fedavg", tmp_path)
    loop.rounds = 2
    loop.fit(model, clients, val_dataloaders=val)
    train, _ = synthetic
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True, hidden=change.get("hidden", 16))
    loop = FederatedLoop(rounds=ROUNDS, clients_per_round=change.get("clients_per_round", 4),
                         aggregator=FedAvg(weighted=False), seed=change.get("seed", 3),
                         checkpoint_dir=tmp_path / "ckpt", enable_progress_bar=False)
    with pytest.raises(ValueError, match=match):
        loop.fit(model, clients, val_dataloaders=val, ckpt_path="last")


def test_missing_checkpoint_errors_and_last_on_a_first_launch_starts_fresh(synthetic, tmp_path, caplog):
    model, clients, val, loop = _setup(synthetic, "fedavg", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"`ckpt_path` to be a checkpoint file or 'last', got '.*nope.ckpt'"):
        loop.fit(model, clients, ckpt_path=tmp_path / "nope.ckpt")
    fresh_model, clients, val, loop = _setup(synthetic, "fedavg", tmp_path)
    with caplog.at_level("INFO", logger="lightning_fedmut"):
        fresh = loop.fit(fresh_model, clients, val_dataloaders=val, ckpt_path="last")
    assert "no checkpoint" in caplog.text and "fresh" in caplog.text
    plain_model, clients, val, loop = _setup(synthetic, "fedavg")
    plain = loop.fit(plain_model, clients, val_dataloaders=val)
    assert fresh.history == plain.history
    assert all(torch.equal(v, state_of(plain_model)[k]) for k, v in state_of(fresh_model).items())
    model, clients, val, loop = _setup(synthetic, "fedavg")
    with pytest.raises(ValueError, match="needs the loop's `checkpoint_dir`"):
        loop.fit(model, clients, ckpt_path="last")
