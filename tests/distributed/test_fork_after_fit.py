"""A later fit with workers in the same process (a notebook, a sweep): its forked workers inherit what the earlier
fits left for the garbage collector, such as the gloo group of a fit whose worker was killed, and must survive
collecting it (freeing a group in a child that lacks its threads aborted the child)."""

from __future__ import annotations

import gc
import os
import signal

import pytest
import torch
from helpers import TinyModule, make_synthetic

from lightning_fedmut import FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut.aggregators import FedAvg
from lightning_fedmut.data import partition_iid


class SignalRankOne(FederatedCallback):
    def __init__(self, signum):
        self.signum = signum

    def on_round_start(self, loop, module):
        if loop.round == 1 and loop.executor.rank == 1:
            os.kill(os.getpid(), self.signum)


class CollectGarbage(FederatedCallback):
    """Runs the garbage collector in every worker, as Python may at any allocation."""

    def on_round_start(self, loop, module):
        gc.collect()


def fit_once(callbacks):
    train, _ = make_synthetic(n_train=80)
    clients = make_clients(train, partition_iid(len(train), 4, seed=0), batch_size=10)
    torch.manual_seed(0)
    loop = FederatedLoop(rounds=2, clients_per_round=4, local_steps=1, aggregator=FedAvg(), callbacks=callbacks,
                         workers=2, enable_progress_bar=False, seed=0)
    return loop.fit(TinyModule(), clients)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_workers_of_a_later_fit_survive_collecting_an_earlier_fits_garbage(signum):
    from lightning_fedmut.distributed.launcher import WorkerError
    from lightning_fedmut.exceptions import Preempted

    def stopped_fit():  # its exception, kept as a test keeps it, ends up in a reference cycle: garbage
        with pytest.raises((Preempted, WorkerError), match="rank 1") as caught:
            fit_once([SignalRankOne(signum)])
        return caught.type

    def too_long(signum, frame):
        raise TimeoutError("the fit after the stopped one hung: a worker deadlocked freeing inherited garbage")

    gc.disable()  # the cycle is still uncollected when the next fit forks, as happens between collections
    previous = signal.signal(signal.SIGALRM, too_long)
    try:
        stopped_fit()
        signal.alarm(60)
        result = fit_once([CollectGarbage()])  # a worker that aborted would raise WorkerError naming it
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        gc.enable()
    assert [row["round"] for row in result.history] == [0, 1]


def test_a_closed_group_is_freed_by_a_thread_that_the_next_fork_waits_for(monkeypatch):
    """`WorkerGroup.close` leaves the freeing of the gloo group (about 20 ms of waiting) to a thread, and
    `fork_workers` joins such threads before it forks (no thread may be inside gloo when a worker is forked) and
    before it removes the workers' folder (the group's file store reads its file as it is freed)."""
    import threading
    import time

    from lightning_fedmut.distributed import group as group_module
    from lightning_fedmut.distributed import launcher

    group_module.wait_released()  # those of earlier tests' fits
    freed = threading.Event()

    class Group:  # stands for a gloo group whose destruction takes a while
        def shutdown(self):
            pass

        def __del__(self):
            time.sleep(0.2)
            freed.set()

    worker_group = group_module.WorkerGroup.__new__(group_module.WorkerGroup)
    worker_group._pg, worker_group._store, worker_group._waiting = Group(), object(), False
    worker_group.close()
    assert worker_group._pg is None
    assert not freed.is_set()  # close returned before the group was freed
    [thread] = group_module._releasing
    assert thread.name == "lightning_fedmut-release-group"

    forked_after_free = []
    real_fork = os.fork

    def fork():
        forked_after_free.append(freed.is_set())
        return real_fork()

    monkeypatch.setattr(launcher.os, "fork", fork)
    assert launcher.fork_workers(2, 1, lambda env, watch: env.rank) == 0
    assert forked_after_free == [True]
    assert group_module._releasing == []

    # a group closed at the end of the run (its store reads the run's folder as it is freed): the folder is
    # removed only once the group is freed
    freed.clear()
    removed_after_free = []
    real_rmtree = launcher.shutil.rmtree

    def rmtree(path, **kwargs):
        removed_after_free.append(freed.is_set())
        return real_rmtree(path, **kwargs)

    def run(env, watch):
        last = group_module.WorkerGroup.__new__(group_module.WorkerGroup)
        last._pg, last._store, last._waiting = Group(), object(), False
        last.close()
        return env.rank

    monkeypatch.setattr(launcher.shutil, "rmtree", rmtree)
    assert launcher.fork_workers(2, 1, run) == 0
    assert removed_after_free == [True]


def test_closing_a_group_twice_starts_no_second_release():
    from lightning_fedmut.distributed import group as group_module

    group_module.wait_released()
    worker_group = group_module.WorkerGroup.__new__(group_module.WorkerGroup)
    worker_group._pg, worker_group._store, worker_group._waiting = None, None, False
    worker_group.close()
    assert group_module._releasing == []
