"""Starting the other workers of a run from a plain ``python script.py``: by forking, at ``fit``.

Why fork. The loop is handed live objects (the module, the clients and their data loaders); forked workers
inherit them as they are, so nothing has to be picklable, the script is not run again (no guard against
re-running top-level code is needed, and notebooks work), and a worker starts in milliseconds instead of
re-importing torch and Lightning. The price: CUDA must not be initialised before ``fit`` (a forked process
cannot use the parent's CUDA context), and the parent's thread pools are not inherited, so each worker
sets its own thread count. Under ``torchrun`` or ``srun`` nothing is forked: the launcher's processes join
one process group.

Every worker but rank 0 is a child of the process that called ``fit``. The children ignore Ctrl+C (the
parent handles it, saves and ends them), leave at once on SIGTERM (exit code 143: the parent then stops the
run as for its own SIGTERM, naming the worker), die with the parent (``PR_SET_PDEATHSIG``), print no warnings
(rank 0 prints each once), report an exception's traceback through a pipe and leave with ``os._exit`` so that
none of the parent's exit handlers (W&B's, the user's) run twice. The parent ends every child by its PID when
``fit`` ends, however it ends.

The workers meet through a ``FileStore`` in a private folder (mode 0700, removed at the end), not a TCP store:
a TCP store's server listens on every interface. Each child sends a heartbeat through a second pipe twice a
second, from a thread of its own; while the parent waits for the workers it reads them, and a worker silent
for ``answer_timeout_s`` (stopped, or stuck where Python does not run) fails the run with a
:class:`WorkerError` naming its rank and PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from lightning_fedmut.distributed.environment import WorkerEnvironment
from lightning_fedmut.distributed.group import release_abandoned, wait_released
from lightning_fedmut.loop.connectors import signals as _signals
from lightning_fedmut.utilities.warnings import silence_worker_warnings

__all__ = ["WorkerError"]

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1
#: Seconds between two heartbeats of a forked worker.
BEAT_S = 0.5


class WorkerError(RuntimeError):
    """A worker process of a run failed or died; the message names its rank and says what happened."""


@dataclass
class _Child:
    rank: int
    pid: int
    errors: int  # read end of the pipe its traceback comes through
    beats: int  # read end of the pipe its heartbeats come through
    last_beat: float
    ended: str | None = None
    code: int | None = None  # its exit code, or minus the signal that ended it

    def status(self) -> str | None:
        """How the child ended (``None`` while it runs); the child is reaped once."""
        if self.ended is not None:
            return self.ended
        try:
            pid, code = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.ended = "ended"
            return self.ended
        if pid == 0:
            return None
        if os.WIFSIGNALED(code):
            self.ended = f"was killed by signal {os.WTERMSIG(code)} ({signal.Signals(os.WTERMSIG(code)).name})"
            self.code = -os.WTERMSIG(code)
        else:
            self.ended = f"exited with code {os.WEXITSTATUS(code)}"
            self.code = os.WEXITSTATUS(code)
        return self.ended

    def error(self) -> BaseException:
        """What ends the run now that this child failed: a SIGTERM it received stops the run as preempted."""
        who = f"worker rank {self.rank} (pid {self.pid})"
        if self.code in (-signal.SIGTERM, _signals.WORKER_SIGTERM_EXIT):
            return _signals.worker_signalled(who)
        text = self.traceback().strip()
        detail = f":\n{text}" if text else "."
        return WorkerError(f"Worker rank {self.rank} (pid {self.pid}) {self.ended}{detail}")

    def heard(self) -> bool:
        """Whether a heartbeat came since the last call."""
        got = False
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.beats, 4096):
                got = True
        return got

    def traceback(self) -> str:
        os.set_blocking(self.errors, False)
        try:
            return os.read(self.errors, 1 << 20).decode(errors="replace")
        except BlockingIOError:
            return ""


def fork_workers(workers: int, threads: int, run: Callable[[WorkerEnvironment, Callable[..., None] | None], T],
                 answer_timeout_s: float = 120.0) -> T:
    """Run ``run(env, watch)`` in ``workers`` processes: this one as rank 0, the others forked from it now.

    ``watch`` is ``None`` in the children; in rank 0 it checks the children (called while rank 0 waits for
    them). Returns rank 0's result. Raises :class:`WorkerError`, naming the rank, when a worker fails, dies or
    stays silent for ``answer_timeout_s``, and :class:`~lightning_fedmut.exceptions.Preempted` when a worker
    received SIGTERM.
    """
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        raise RuntimeError(
            "`workers` > 1 forks the worker processes at `fit`, and CUDA was already initialised in this process,"
            " which forked workers cannot use. Start the script with `torchrun --nproc_per_node N` instead (the"
            " loop then joins torchrun's processes), or do not touch CUDA before `fit`."
        )
    folder = tempfile.mkdtemp(prefix="lightning_fedmut-workers-")  # mode 0700: this user's only
    store_path = os.path.join(folder, "store")
    parent = os.getpid()
    children: list[_Child] = []
    sys.stdout.flush()
    sys.stderr.flush()
    wait_released()  # an earlier fit's group, being freed by a thread: no thread may be inside gloo at the fork
    # Garbage of an earlier fit (a gloo group, a store) must never be freed in a child, which would join threads it
    # does not have and abort: what exists now is frozen out of the collector's reach for the children (and not
    # written to by collections, as the gc module advises before a fork); the parent unfreezes it after forking.
    gc.freeze()
    try:
        for rank in range(1, workers):
            read, write = os.pipe()
            beat_read, beat_write = os.pipe()
            pid = os.fork()
            if pid == 0:  # a worker: never returns
                for fd in (read, beat_read, *(f for c in children for f in (c.errors, c.beats))):
                    os.close(fd)
                _run_child(rank, workers, store_path, threads, parent, write, beat_write, run)
            os.close(write)
            os.close(beat_write)
            os.set_blocking(beat_read, False)
            children.append(_Child(rank=rank, pid=pid, errors=read, beats=beat_read, last_beat=time.monotonic()))
    finally:
        gc.unfreeze()
    env = WorkerEnvironment(world_size=workers, rank=0, local_rank=0, main_address="127.0.0.1", main_port=0,
                            source="fork", store_path=store_path)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    grace_s = 0.5  # after a failure nobody waits for the workers; after a normal end they are leaving too
    try:
        out = run(env, _Watch(children, answer_timeout_s))
        grace_s = 5.0
        return out
    except BaseException as exc:
        # a collective that failed because a worker died or failed: name the worker, with its traceback
        failed = _failed_child(children) if _is_communication_error(exc) else None
        if failed is not None:
            raise failed from exc
        raise
    finally:
        torch.set_num_threads(previous_threads)
        _end_children(children, grace_s)
        release_abandoned()
        # the group's file store is freed with it, and reads its file as it goes: not before it is gone
        wait_released()
        shutil.rmtree(folder, ignore_errors=True)


class _Watch:
    """Rank 0's check of its children while it waits for them: raises when one ended or stopped answering."""

    def __init__(self, children: list[_Child], answer_timeout_s: float) -> None:
        self.children = children
        self.answer_timeout_s = answer_timeout_s

    def __call__(self, failed: bool = False) -> None:
        now = time.monotonic()
        for child in self.children:
            status = child.status()
            if status is not None and status != "exited with code 0":
                raise child.error()
            if child.heard():
                child.last_beat = now
            elif status is None and now - child.last_beat > self.answer_timeout_s:
                raise WorkerError(
                    f"Worker rank {child.rank} (pid {child.pid}) did not answer for {self.answer_timeout_s:g} s: it"
                    " is stopped (SIGSTOP, a debugger) or stuck where Python does not run. The run stops; resume"
                    " from the last checkpoint with `ckpt_path='last'`. `DistributedExecutor(answer_timeout=...)`"
                    " sets how long a worker may stay silent."
                )
        if failed:  # the exchange failed: a worker that is about to be seen ended is named
            error = _failed_child(self.children)
            if error is not None:
                raise error


def _is_communication_error(exc: BaseException) -> bool:
    dist_error = getattr(dist, "DistError", ())
    return (bool(dist_error) and isinstance(exc, dist_error)) or (
        isinstance(exc, RuntimeError) and any(m in str(exc) for m in ("gloo", "Connection closed", "timed out")))


def _run_child(rank: int, workers: int, store_path: str, threads: int, parent: int, errors: int, beats: int,
               run: Callable[[WorkerEnvironment, Any], Any]) -> None:
    code = 1
    try:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle
        signal.signal(signal.SIGTERM, _signals.worker_sigterm)  # leave; the parent stops the run
        threading.Thread(target=_beat, args=(beats,), name="lightning_fedmut-heartbeat", daemon=True).start()
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(workers))
        silence_worker_warnings(rank)  # rank 0 shows each warning once, not one copy per worker
        torch.set_num_threads(threads)
        env = WorkerEnvironment(world_size=workers, rank=rank, local_rank=rank, main_address="127.0.0.1",
                                main_port=0, source="fork", store_path=store_path)
        run(env, None)
        code = 0
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        with contextlib.suppress(OSError):
            os.write(errors, traceback.format_exc().encode())
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _beat(fd: int) -> None:
    """A child's heartbeat: one byte every ``BEAT_S`` seconds (dropped while the pipe is full)."""
    os.set_blocking(fd, False)
    while True:
        try:
            os.write(fd, b".")
        except BlockingIOError:
            pass
        except OSError:
            return
        time.sleep(BEAT_S)


def _failed_child(children: list[_Child], grace_s: float = 2.0) -> BaseException | None:
    """The first child that failed or died (waiting up to ``grace_s`` for one that is about to), as an error."""
    deadline = time.monotonic() + grace_s
    while True:
        for child in children:
            status = child.status()
            if status is not None and status != "exited with code 0":
                return child.error()
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _end_children(children: list[_Child], grace_s: float) -> None:
    """Wait for the children to leave on their own, then end the rest by PID: SIGTERM, then SIGKILL."""
    deadline = time.monotonic() + grace_s
    pending = list(children)
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            for child in pending:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, sig)
                    if sig == signal.SIGTERM:  # a stopped child handles it once it runs again
                        os.kill(child.pid, signal.SIGCONT)
            deadline = time.monotonic() + 2.0
        pause = 0.001  # a worker that is leaving is gone within milliseconds: look again soon, then less often
        while pending and time.monotonic() < deadline:
            pending = [c for c in pending if c.status() is None]
            if pending:
                time.sleep(pause)
                pause = min(2 * pause, 0.02)
        if not pending:
            break
    for child in children:
        for fd in (child.errors, child.beats):
            with contextlib.suppress(OSError):
                os.close(fd)
