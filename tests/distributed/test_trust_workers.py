"""Trust and failure model of the workers: loopback only, data-only exchange, signals, silent workers, client time
limits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import TinyModule, make_synthetic, terminal_signals
from lightning.pytorch import Callback

from lightning_fedmut import FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut.data import partition_iid
from lightning_fedmut.distributed import DistributedExecutor, WorkerError
from lightning_fedmut.exceptions import Preempted

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="workers are forked; tested on Linux")
TESTS = str(Path(__file__).parents[1])


def _clients(n=4):
    train, _ = make_synthetic()
    return make_clients(train, partition_iid(len(train), n, seed=0), batch_size=16)


def _children(pid):
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _socket_inodes(pid):
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _listening(inodes):
    """(file, local address in hex) of every LISTEN socket among ``inodes``, from /proc/net/tcp and tcp6."""
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                found.append((table, fields[1].split(":")[0]))
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1 as /proc/net writes them


class ListenCheck(FederatedCallback):
    """In round 1, on rank 0, lists the LISTEN sockets of the run's processes (this one and its workers)."""

    def __init__(self):
        self.found = None
        self.before = set(_children(os.getpid()))  # processes other tests left running (W&B's service ...)

    def on_round_start(self, loop, module):
        if loop.round == 1 and loop.executor.rank == 0:
            pids = [os.getpid(), *(set(_children(os.getpid())) - self.before)]
            self.found = (len(pids), _listening(set().union(*(_socket_inodes(p) for p in pids))))


@pytest.mark.slow
def test_forked_workers_listen_on_the_loopback_interface_only():
    check = ListenCheck()
    loop = FederatedLoop(rounds=2, clients_per_round=2, local_steps=1, workers=2, callbacks=[check],
                         enable_progress_bar=False)
    loop.fit(TinyModule(), _clients())
    processes, listening = check.found
    assert processes == 2
    assert listening, "gloo's own listening sockets were not found: the check looked in the wrong place"
    assert [addr for _, addr in listening if addr not in LOOPBACK] == []


def test_what_workers_exchange_is_read_as_data_and_never_runs_code(tmp_path):
    from lightning_fedmut.distributed.group import _from_bytes, _to_bytes

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with pytest.raises(TypeError, match=r"Workers exchange tensors and plain data only"):
        _from_bytes(_to_bytes({"client_state": Payload()}))
    assert not marker.exists()
    record = {"slot": 1, "metrics": {"loss": 0.25}, "state": {"w": torch.arange(3.0)}, "error": ("ValueError", "x", "")}
    back = _from_bytes(_to_bytes(record))
    assert back["slot"] == 1 and back["metrics"] == {"loss": 0.25} and back["error"] == ("ValueError", "x", "")
    assert torch.equal(back["state"]["w"], torch.arange(3.0))


class StopSelf(FederatedCallback):
    """Rank ``rank`` sends itself ``signum`` at the start of round ``at_round``."""

    def __init__(self, at_round, rank, signum):
        self.at_round, self.rank, self.signum = at_round, rank, signum

    def on_round_start(self, loop, module):
        if loop.round == self.at_round and loop.executor.rank == self.rank:
            os.kill(os.getpid(), self.signum)


@pytest.mark.slow
def test_a_worker_that_stops_answering_is_named_and_the_rounds_before_are_saved(tmp_path):
    executor = DistributedExecutor(workers=2, timeout=60.0, answer_timeout=2.0)
    loop = FederatedLoop(rounds=5, clients_per_round=2, local_steps=1, executor=executor, checkpoint_dir=tmp_path,
                         callbacks=[StopSelf(2, rank=1, signum=signal.SIGSTOP)], enable_progress_bar=False)
    before = set(_children(os.getpid()))  # processes other tests left running (W&B's service ...)
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"^Worker rank 1 \(pid \d+\) did not answer for 2 s: it is stopped"):
        loop.fit(TinyModule(), _clients())
    assert time.monotonic() - start < 20
    assert sorted(p.name for p in tmp_path.glob("round-*.ckpt")) == ["round-00001.ckpt", "round-00002.ckpt"]
    assert set(_children(os.getpid())) - before == set()  # the stopped worker was ended by its PID


@pytest.mark.slow
def test_sigterm_to_a_worker_stops_the_run_as_preempted_naming_it(tmp_path):
    loop = FederatedLoop(rounds=5, clients_per_round=2, local_steps=1, workers=2, checkpoint_dir=tmp_path,
                         callbacks=[StopSelf(2, rank=1, signum=signal.SIGTERM)], enable_progress_bar=False)
    with pytest.raises(Preempted) as caught:
        loop.fit(TinyModule(), _clients())
    assert caught.value.code == 143
    message = str(caught.value)
    assert message.startswith("Stopped by SIGTERM to worker rank 1 (pid ")
    assert message.endswith(f") among the clients of round 2; rounds 0-1 are saved in {str(tmp_path)!r}. Resume"
                            " with `fit(..., ckpt_path='last')` (or `--ckpt_path last`).")
    assert sorted(p.name for p in tmp_path.glob("round-*.ckpt")) == ["round-00001.ckpt", "round-00002.ckpt"]


SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from helpers import TinyModule, make_synthetic
    from lightning_fedmut import FederatedCallback, FederatedLoop, make_clients
    from lightning_fedmut.data import partition_iid

    class StopRank1(FederatedCallback):
        def on_round_start(self, loop, module):
            if loop.round == 2 and loop.executor.rank == 1:
                print("STOPPING", os.getpid(), flush=True)
                os.kill(os.getpid(), signal.SIGSTOP)

    train, _ = make_synthetic()
    clients = make_clients(train, partition_iid(len(train), 4, seed=0), batch_size=16)
    loop = FederatedLoop(rounds=5, clients_per_round=2, local_steps=1, workers=2, callbacks=[StopRank1()],
                         checkpoint_dir={ckpt!r}, enable_progress_bar=False)
    try:
        loop.fit(TinyModule(), clients)
    except KeyboardInterrupt as exc:  # as the CLI does
        print(exc, file=sys.stderr, flush=True)
        sys.exit(130)
""")


@pytest.mark.parametrize(("signum", "code", "name"), [(signal.SIGINT, 130, "SIGINT (Ctrl+C)"),
                                                      (signal.SIGTERM, 143, "SIGTERM")], ids=["sigint", "sigterm"])
@pytest.mark.slow
def test_a_signal_stops_a_run_whose_worker_is_stopped_within_seconds(tmp_path, signum, code, name):
    script = tmp_path / "stuck_worker.py"
    script.write_text(SCRIPT.format(tests=TESTS, ckpt=str(tmp_path / "ckpt")))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=terminal_signals, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    worker = None
    try:
        line = proc.stdout.readline().split()
        if not line or line[0] != "STOPPING":
            proc.kill()
            pytest.fail(f"the script did not start: {proc.communicate()[1][-3000:]}")
        worker = int(line[1])
        time.sleep(1.0)  # rank 0 trains its client of round 2 and waits for the stopped worker
        start = time.monotonic()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if worker is not None and Path(f"/proc/{worker}").exists():
            os.kill(worker, signal.SIGKILL)
    assert proc.returncode == code, err[-3000:]
    assert elapsed < 15  # seconds, not the exchange's 30-minute timeout (bounded loosely: CI machines are shared)
    assert f"Stopped by {name} among the clients of round 2; rounds 0-1 are saved in" in err
    assert "ckpt_path='last'" in err
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("round-*.ckpt")) == ["round-00001.ckpt",
                                                                                "round-00002.ckpt"]
    deadline = time.monotonic() + 5
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{worker}").exists()


AGGREGATE_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    from helpers import TinyModule, make_synthetic
    from lightning_fedmut import FederatedCallback, FederatedLoop, make_clients
    from lightning_fedmut.data import partition_iid

    class ReduceBeforeAggregate(FederatedCallback):  # as a callback that sums over workers does
        def on_before_aggregate(self, loop, module, aggregator):
            if loop.round == 2 and loop.executor.rank == 1:
                os.kill(os.getpid(), signal.SIGSTOP)
            if loop.round == 2:
                print("REDUCING", flush=True)
            loop.executor.all_reduce_([torch.zeros(1)])

    train, _ = make_synthetic()
    clients = make_clients(train, partition_iid(len(train), 4, seed=0), batch_size=16)
    loop = FederatedLoop(rounds=5, clients_per_round=2, local_steps=1, workers=2, callbacks=[ReduceBeforeAggregate()],
                         checkpoint_dir={ckpt!r}, enable_progress_bar=False)
    loop.fit(TinyModule(), clients)
""")


@pytest.mark.slow
def test_ctrl_c_outside_the_clients_stops_a_wait_for_a_stopped_worker(tmp_path):
    script = tmp_path / "stuck_reduce.py"
    script.write_text(AGGREGATE_SCRIPT.format(tests=TESTS, ckpt=str(tmp_path / "ckpt")))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=terminal_signals, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        if proc.stdout.readline().strip() != "REDUCING":
            proc.kill()
            pytest.fail(f"the script did not start: {proc.communicate()[1][-3000:]}")
        time.sleep(0.5)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert 2.0 < elapsed < 15  # the round is given two seconds to finish, then given up (loose bound: shared CI)
    assert ("Stopped by SIGINT (Ctrl+C) while round 2 waited for the workers (the round is not finished);"
            " rounds 0-1 are saved in") in err
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("round-*.ckpt")) == ["round-00001.ckpt",
                                                                                "round-00002.ckpt"]


class Hang(Callback):
    def on_train_start(self, trainer, pl_module):
        time.sleep(3600)


class HangInRound1(FederatedCallback):
    """The client in slot 1 of round 1 never finishes training (with two workers, rank 1 trains it)."""

    def on_client_fit_start(self, loop, module, task):
        if task.round == 1 and task.slot == 1:
            task.callbacks.append(Hang())


@pytest.mark.slow
@pytest.mark.parametrize("workers", [None, 2], ids=["one-process", "two-workers"])
def test_client_timeout_fails_a_stuck_client_naming_it(workers):
    loop = FederatedLoop(rounds=3, clients_per_round=2, local_steps=1, client_timeout=2, callbacks=[HangInRound1()],
                         enable_progress_bar=False, seed=3, workers=workers)
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match=r"failed in round 1 \(slot 1\) .*: ClientTimeoutError: client "):
        result = loop.fit(TinyModule(), _clients())
    assert time.monotonic() - start < 15
    [failure] = result.failures
    stuck = failure["client_id"]
    assert stuck not in [r["client_id"] for r in result.client_history if r["round"] == 1]
    assert failure == {"round": 1, "client_id": stuck, "slot": 1, "type": "ClientTimeoutError",
                       "message": f"client {stuck!r} in round 1 trained longer than `client_timeout`=2 s"}
    assert [(r["round"], r["slot"]) for r in result.client_history] == [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1)]
    assert loop.hparams["client_timeout"] == 2.0


@pytest.mark.parametrize(("value", "error", "message"), [
    (0, ValueError, "Expected `client_timeout` in (0.0, inf), got 0.0."),
    ("10", TypeError, "Expected `client_timeout` to be a real number, got '10' of type str."),
])
def test_client_timeout_is_checked(value, error, message):
    with pytest.raises(error) as caught:
        FederatedLoop(rounds=1, clients_per_round=1, client_timeout=value)
    assert str(caught.value) == message
