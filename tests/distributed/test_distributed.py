"""Parallel workers on torch.distributed (gloo on 127.0.0.1): equal to one process, faults, resume, the CLI."""

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
from helpers import TinyModule, state_of, terminal_signals
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedCallback, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.data import partition_dirichlet
from lightning_fedmut.distributed import DistributedExecutor, WorkerError, balanced_owners, executor_for
from lightning_fedmut.execution import SequentialExecutor

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="workers are forked; tested on Linux"),
              pytest.mark.slow]
TIMEOUT = 60.0  # seconds a worker waits at an exchange: a dead rank never hangs a test


def _federation(synthetic, n=8):
    train, val = synthetic
    parts = partition_dirichlet(train.tensors[1].numpy(), n, alpha=0.5, min_size=5, seed=0)
    return make_clients(train, parts, batch_size=16), DataLoader(val, batch_size=60)


def _run(synthetic, workers, k=3, fedmut=True, weighted=False, callbacks=(), rounds=4, module=TinyModule,
         ckpt_path=None, **kwargs):
    clients, val = _federation(synthetic)
    torch.manual_seed(0)
    model = module(batch_norm=True, momentum=0.5)
    mutation = [MutationCallback(radius=2.0, acceleration_rounds=3)] if fedmut else []
    executor = None if workers is None else DistributedExecutor(workers=workers, timeout=TIMEOUT)
    loop = FederatedLoop(rounds=rounds, clients_per_round=k, local_epochs=2, aggregator=FedAvg(weighted=weighted),
                         callbacks=[*mutation, *callbacks], seed=7, enable_progress_bar=False, executor=executor,
                         **kwargs)
    return model, loop.fit(model, clients, val_dataloaders=val, ckpt_path=ckpt_path)


def _assert_same(a, b):
    (model_a, result_a), (model_b, result_b) = a, b
    sa, sb = state_of(model_a), state_of(model_b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert result_a.history == result_b.history
    assert result_a.client_history == result_b.client_history
    assert result_a.failures == result_b.failures


@pytest.mark.parametrize(("k", "fedmut", "weighted"), [(3, True, False), (4, True, False), (4, False, True)],
                         ids=["fedmut-odd-k", "fedmut-even-k", "fedavg-weighted"])
def test_two_workers_equal_one_process_bit_for_bit(synthetic, k, fedmut, weighted):
    _assert_same(_run(synthetic, None, k, fedmut, weighted), _run(synthetic, 2, k, fedmut, weighted))


class Trained(FederatedCallback):
    """Writes, from the process that trains it, each client's round, id and number of batches."""

    def __init__(self, path):
        self.path = path

    def on_client_fit_end(self, loop, module, result):
        with open(self.path, "a") as f:
            f.write(f"{result.task.round} {result.task.client.id} {len(result.task.client.data)} {os.getpid()}\n")


def test_clients_are_dealt_by_their_steps_and_the_run_equals_one_process(synthetic, tmp_path):
    """One client of 4 batches, four of 1: the rank that trains the big one trains one small one besides.

    Costs (steps + 1) are 5 and 2, 2, 2, 2: the big one to a rank, then three small ones to the other (loads 5 and
    6), the last to the first (7 and 6), whatever the sampled order; round-robin would deal by slot order.
    """
    train, val = synthetic
    parts = {i: list(range(64 + 16 * (i - 1), 64 + 16 * i)) if i else list(range(64)) for i in range(5)}
    clients = make_clients(train, parts, batch_size=16)
    log = tmp_path / "trained.txt"

    def run(workers, path=None):
        torch.manual_seed(0)
        model = TinyModule(momentum=0.5)
        loop = FederatedLoop(rounds=3, clients_per_round=5, local_epochs=1, aggregator=FedAvg(weighted=True),
                             callbacks=[MutationCallback(radius=2.0)] + ([Trained(path)] if path else []), seed=3,
                             enable_progress_bar=False,
                             executor=DistributedExecutor(workers=workers, timeout=TIMEOUT) if workers else None)
        return model, loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=30))

    one, two = run(None), run(2, log)
    rows = [line.split() for line in log.read_text().splitlines()]
    for r in range(3):
        batches_by_pid: dict[str, list[int]] = {}
        for round_, _, batches, pid in rows:
            if int(round_) == r:
                batches_by_pid.setdefault(pid, []).append(int(batches))
        assert sorted(sorted(b) for b in batches_by_pid.values()) == [[1, 1, 1], [1, 4]]
    _assert_same(one, two)


def test_balanced_owners_deal_the_costliest_first_to_the_least_loaded():
    assert balanced_owners([5, 2, 2, 2, 2], 2, capacity=5) == [0, 1, 1, 1, 0]
    assert balanced_owners([2, 2, 2, 2, 5], 2, capacity=5) == [1, 1, 1, 0, 0]  # the order of the slots does not matter
    assert balanced_owners([1] * 5, 2, capacity=5) == [0, 1, 0, 1, 0]  # equal costs: round-robin
    assert balanced_owners([9, 1, 1, 1], 2, capacity=2) == [0, 1, 1, 0]  # at most 2 each, though 9 > 1 + 1 + 1
    with pytest.raises(ValueError, match=r"Expected `capacity` \* `world_size` >= the number of tasks \(5\), got 2 \* 2"):
        balanced_owners([1] * 5, 2, capacity=2)


def test_executors_are_chosen_by_workers():
    sequential = SequentialExecutor()
    assert executor_for(sequential, None) is sequential and executor_for(sequential, 1) is sequential
    wrapped = executor_for(sequential, 3)
    assert isinstance(wrapped, DistributedExecutor) and wrapped.inner is sequential and wrapped.world_size == 3
    with pytest.raises(ValueError, match="`executor` has 3 workers but `workers`=2"):
        executor_for(wrapped, 2)
    loop = FederatedLoop(rounds=1, clients_per_round=2, workers=2)
    assert loop.hparams["workers"] == 2 and isinstance(loop.executor, DistributedExecutor)
    with pytest.raises(ValueError, match="`workers` to be an integer >= 1, got 0"):
        FederatedLoop(rounds=1, clients_per_round=1, workers=0)


class FailOn(TinyModule):
    """Raises in training_step on a batch holding the example ``bad`` (a class attribute the test sets)."""

    bad = None

    def training_step(self, batch, batch_idx):
        x, _ = batch
        if FailOn.bad is not None and bool((x == FailOn.bad).all(dim=1).any()):
            raise ValueError("bad labels on this client")
        return super().training_step(batch, batch_idx)


def test_a_client_failing_on_rank_1_is_a_failed_client_as_in_one_process(synthetic):
    clients, _ = _federation(synthetic)
    model, probe = _run(synthetic, None, k=4, fedmut=False)
    # a client of round 1 that rank 1 trains with two workers (clients are dealt by their steps, 2 epochs each)
    round_1 = sorted((r["slot"], r["client_id"]) for r in probe.client_history if r["round"] == 1)
    by_id = {c.id: c for c in clients}
    owners = balanced_owners([2 * len(by_id[i].data) + 1 for _, i in round_1], 2, capacity=4)
    slot, victim = next(entry for entry, owner in zip(round_1, owners) if owner == 1)
    victim_data = next(c.data for c in clients if c.id == victim)
    FailOn.bad = victim_data.dataset[0][0]  # an example only the victim holds
    try:
        one = _run(synthetic, None, k=4, fedmut=False, module=FailOn)
        two = _run(synthetic, 2, k=4, fedmut=False, module=FailOn)
    finally:
        FailOn.bad = None
    assert [(f["round"], f["slot"], f["client_id"], f["type"]) for f in two[1].failures if f["round"] == 1] == [
        (1, slot, victim, "ValueError")]
    assert two[1].failures[0]["message"] == "bad labels on this client"
    _assert_same(one, two)


class Crash(FederatedCallback):
    def __init__(self, at_round, rank=None):
        self.at_round, self.rank = at_round, rank

    def on_round_start(self, loop, module):
        if loop.round == self.at_round and self.rank in (None, loop.executor.rank):
            if self.rank is None:
                raise RuntimeError(f"crash at round {loop.round}")
            os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_rank_stops_the_run_naming_it_and_the_last_checkpoint_resumes(synthetic, tmp_path):
    reference = _run(synthetic, None)
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"Worker rank 1 \(pid \d+\) was killed by signal 9 \(SIGKILL\)"):
        _run(synthetic, 2, callbacks=[Crash(2, rank=1)], checkpoint_dir=tmp_path)
    assert time.monotonic() - start < 30
    assert sorted(p.name for p in tmp_path.glob("round-*.ckpt")) == ["round-00001.ckpt", "round-00002.ckpt"]
    _assert_same(reference, _run(synthetic, None, checkpoint_dir=tmp_path, ckpt_path="last"))


@pytest.mark.parametrize(("first", "then"), [(2, None), (None, 2)], ids=["2-workers-then-1", "1-then-2-workers"])
def test_resume_with_another_number_of_workers_gives_the_same_run(synthetic, tmp_path, first, then):
    reference = _run(synthetic, None, k=4)
    with pytest.raises(RuntimeError, match="crash at round 2"):
        _run(synthetic, first, k=4, callbacks=[Crash(2)], checkpoint_dir=tmp_path)
    _assert_same(reference, _run(synthetic, then, k=4, checkpoint_dir=tmp_path, ckpt_path="last"))


def test_only_rank_zero_logs_and_checkpoints(synthetic, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="run")
    model, result = _run(synthetic, 2, logger=logger, checkpoint_dir=tmp_path / "ckpt")
    rows = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # a header and one row per round, written once
    assert len(list((tmp_path / "ckpt").glob("round-*.ckpt"))) == 2 and not list(tmp_path.glob("**/.tmp-*"))


SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from lightning.pytorch import Callback
    sys.path.insert(0, {tests!r})
    from helpers import TinyModule, make_synthetic
    from lightning_fedmut import FederatedCallback, FederatedLoop, make_clients
    from lightning_fedmut.data import partition_iid

    class Sleep(Callback):
        def on_train_start(self, trainer, pl_module):
            print("READY", flush=True)  # rank 0 trains slot 0 of round 2: Ctrl+C arrives among the clients
            time.sleep(60)

    class SlowRound2(FederatedCallback):
        def on_client_fit_start(self, loop, module, task):
            if task.round == 2 and task.slot == 0:
                task.callbacks.append(Sleep())

    train, _ = make_synthetic()
    clients = make_clients(train, partition_iid(len(train), 4, seed=0), batch_size=16)
    loop = FederatedLoop(rounds=5, clients_per_round=2, local_steps=1, workers=2, callbacks=[SlowRound2()],
                         checkpoint_dir={ckpt!r}, enable_progress_bar=False)
    loop.fit(TinyModule(), clients)
""")


def _processes_running(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_ctrl_c_ends_every_worker_and_saves_the_last_round(tmp_path):
    script = tmp_path / "interrupt_me.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parents[1]), ckpt=str(tmp_path / "ckpt")))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=terminal_signals,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True)
    try:
        line = proc.stdout.readline().strip()
        if line != "READY":
            proc.kill()
            pytest.fail(f"the script did not start: {proc.communicate()[1][-3000:]}")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert "Stopped by SIGINT (Ctrl+C) among the clients of round 2; rounds 0-1 are saved" in err
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("round-*.ckpt")) == ["round-00001.ckpt", "round-00002.ckpt"]
    deadline = time.monotonic() + 5
    while _processes_running(str(script)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_running(str(script)) == []


def test_the_cli_takes_workers(tmp_path, capsys):
    import json

    from lightning_fedmut.cli import main

    flags = ["--data=synthetic", "--partition.num_clients=4", "--loop.clients_per_round=2", "--loop.rounds=2",
             "--loop.local_steps=1", "--loop.enable_progress_bar=false", "--logger=none"]
    assert main(["fit", *flags, f"--history_file={tmp_path / 'one.json'}"]) == 0
    assert main(["fit", *flags, "--loop.workers=2", f"--history_file={tmp_path / 'two.json'}"]) == 0
    capsys.readouterr()
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["config"]["loop"]["workers"] == 2
    assert one["history"] == two["history"]


TORCHRUN_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, {tests!r})
    from helpers import TinyModule, make_synthetic
    from torch.utils.data import DataLoader
    from lightning_fedmut import FedAvg, FederatedLoop, MutationCallback, make_clients
    from lightning_fedmut.data import partition_iid

    train, val = make_synthetic()
    clients = make_clients(train, partition_iid(len(train), 6, seed=0), batch_size=16)
    torch.manual_seed(0)
    model = TinyModule()
    loop = FederatedLoop(rounds=3, clients_per_round=3, local_steps=2, aggregator=FedAvg(weighted=False),
                         callbacks=[MutationCallback(radius=2.0)], enable_progress_bar=False, seed=1)
    result = loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=60))
    state = {{k: v.tolist() for k, v in model.state_dict().items()}}
    rank = loop.executor.rank
    with open({out!r} + f"/rank{{rank}}.json", "w") as f:
        json.dump({{"world": loop.executor.world_size, "state": state, "history": result.history}}, f)
""")


def test_under_torchrun_the_loop_joins_its_processes(tmp_path):
    import json
    import socket

    script = tmp_path / "under_torchrun.py"
    script.write_text(TORCHRUN_SCRIPT.format(tests=str(Path(__file__).parents[1]), out=str(tmp_path)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--node_rank=0",
               "--master_addr=127.0.0.1", f"--master_port={port}", "--rdzv_backend=static", str(script)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    subprocess.run([sys.executable, str(script)], check=True, timeout=120, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})  # the same script in one process: rank 0 alone
    alone = json.loads((tmp_path / "rank0.json").read_text())
    assert [r["world"] for r in ranks] == [2, 2] and alone["world"] == 1
    assert ranks[0]["state"] == ranks[1]["state"] == alone["state"]
    assert ranks[0]["history"] == ranks[1]["history"] == alone["history"]
