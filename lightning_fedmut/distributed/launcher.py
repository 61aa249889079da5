"""Starting the other workers of a run from a plain ``python script.py``: by forking, at ``fit``.

Why fork. The loop is handed live objects (the module, the clients and their data loaders); forked workers
inherit them as they are, so nothing has to be picklable, the script is not run again (no guard against
re-running top-level code is needed, and notebooks work), and a worker starts in milliseconds instead of
re-importing torch and Lightning. The price: CUDA must not be initialised before ``fit`` (a forked process
cannot use the parent's CUDA context), and the parent's thread pools are not inherited, so each worker
sets its own thread count. Under ``torchrun`` or ``srun`` nothing is forked: the launcher's processes join
one process group.

Every worker but rank 0 is a child of the process that called ``fit``. The children ignore Ctrl+C (the
parent handles it, saves and ends them), die with the parent (``PR_SET_PDEATHSIG``), report an exception's
traceback through a pipe and leave with ``os._exit`` so that none of the parent's exit handlers (W&B's, the
user's) run twice. The parent ends every child by its PID when ``fit`` ends, however it ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from lightning_fedmut.distributed.environment import WorkerEnvironment, free_port

__all__ = ["WorkerError"]

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1


class WorkerError(RuntimeError):
    """A worker process of a run failed or died; the message names its rank and says what happened."""


@dataclass
class _Child:
    rank: int
    pid: int
    errors: int  # read end of the pipe its traceback comes through
    ended: str | None = None

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
        else:
            self.ended = f"exited with code {os.WEXITSTATUS(code)}"
        return self.ended

    def traceback(self) -> str:
        os.set_blocking(self.errors, False)
        try:
            return os.read(self.errors, 1 << 20).decode(errors="replace")
        except BlockingIOError:
            return ""


def fork_workers(workers: int, timeout_s: float, threads: int, run: Callable[[WorkerEnvironment], T]) -> T:
    """Run ``run(env)`` in ``workers`` processes: this one as rank 0, the others forked from it now.

    Returns rank 0's result. Raises :class:`WorkerError`, naming the rank, when a worker fails or dies.
    """
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        raise RuntimeError(
            "`workers` > 1 forks the worker processes at `fit`, and CUDA was already initialised in this process,"
            " which forked workers cannot use. Start the script with `torchrun --nproc_per_node N` instead (the"
            " loop then joins torchrun's processes), or do not touch CUDA before `fit`."
        )
    port = free_port()
    parent = os.getpid()
    children: list[_Child] = []
    sys.stdout.flush()
    sys.stderr.flush()
    for rank in range(1, workers):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # a worker: never returns
            os.close(read)
            _run_child(rank, workers, port, timeout_s, threads, parent, write, run)
        os.close(write)
        children.append(_Child(rank=rank, pid=pid, errors=read))
    env = WorkerEnvironment(world_size=workers, rank=0, local_rank=0, main_address="127.0.0.1", main_port=port,
                            source="fork")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    grace_s = 0.5  # after a failure nobody waits for the workers; after a normal end they are leaving too
    try:
        out = run(env)
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


def _is_communication_error(exc: BaseException) -> bool:
    dist_error = getattr(dist, "DistError", ())
    return (bool(dist_error) and isinstance(exc, dist_error)) or (
        isinstance(exc, RuntimeError) and any(m in str(exc) for m in ("gloo", "Connection closed", "timed out")))


def _run_child(rank: int, workers: int, port: int, timeout_s: float, threads: int, parent: int, errors: int,
               run: Callable[[WorkerEnvironment], Any]) -> None:
    code = 1
    try:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(workers))
        torch.set_num_threads(threads)
        env = WorkerEnvironment(world_size=workers, rank=rank, local_rank=rank, main_address="127.0.0.1",
                                main_port=port, source="fork")
        run(env)
        code = 0
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        with contextlib.suppress(OSError):
            os.write(errors, traceback.format_exc().encode())
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _failed_child(children: list[_Child], grace_s: float = 2.0) -> WorkerError | None:
    """The first child that failed or died (waiting up to ``grace_s`` for one that is about to), as an error."""
    deadline = time.monotonic() + grace_s
    while True:
        for child in children:
            status = child.status()
            if status is not None and status != "exited with code 0":
                text = child.traceback().strip()
                detail = f":\n{text}" if text else "."
                return WorkerError(f"Worker rank {child.rank} (pid {child.pid}) {status}{detail}")
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
            deadline = time.monotonic() + 2.0
        while pending and time.monotonic() < deadline:
            pending = [c for c in pending if c.status() is None]
            if pending:
                time.sleep(0.02)
        if not pending:
            break
    for child in children:
        with contextlib.suppress(OSError):
            os.close(child.errors)
