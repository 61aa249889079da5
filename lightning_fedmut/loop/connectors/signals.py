"""SIGINT and SIGTERM during ``fit``: stop where the last completed round can be saved, and say how to resume."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from lightning_fedmut.exceptions import Preempted

if TYPE_CHECKING:
    from typing_extensions import Self

    from lightning_fedmut.loop import FederatedLoop

_NAMES: dict[int, str] = {signal.SIGINT: "SIGINT (Ctrl+C)", signal.SIGTERM: "SIGTERM"}
#: Exit code of a forked worker that received SIGTERM (128 + 15, as a shell reports it).
WORKER_SIGTERM_EXIT = 143
#: How long a wait for the workers goes on after a signal outside the clients' phase, to let the round finish.
WAIT_GRACE_S = 2.0
_active: SignalGuard | None = None


def worker_sigterm(signum: int, frame: FrameType | None) -> None:
    """A forked worker's SIGTERM handler: leave at once with exit code 143; rank 0 sees it and stops the run."""
    os._exit(WORKER_SIGTERM_EXIT)


def check_waiting() -> None:
    """Called by a wait for the other workers: stop now if a signal came more than ``WAIT_GRACE_S`` ago.

    Among a round's clients a signal stops the run at once anyway; in another phase the round is finished
    first, unless it waits for workers that do not come (stopped, or stuck): then it is not finished.
    """
    guard = _active
    if guard is not None and guard.pending is not None and time.monotonic() - guard.pending_at > WAIT_GRACE_S:
        guard.waited = True
        raise KeyboardInterrupt if guard.pending == signal.SIGINT else Preempted("Stopped by SIGTERM.")


def worker_signalled(who: str) -> Preempted:
    """The error that ends the run when a forked worker (``who``: its rank and PID) received SIGTERM."""
    if _active is not None:
        _active.pending, _active.source = signal.SIGTERM, who
    return Preempted(f"Stopped by SIGTERM to {who}.")


class SignalGuard:
    """Handles SIGINT and SIGTERM while a ``fit`` runs (in the main thread).

    Among a round's clients the signal stops the run at once (the clients' work is lost, the rounds before are
    saved). In any other phase (aggregation, evaluation, logging, saving) the round is finished and saved
    first, then the run stops. A second Ctrl+C stops at once, whatever the phase. SIGINT ends ``fit`` with
    ``KeyboardInterrupt``, SIGTERM with :class:`~lightning_fedmut.exceptions.Preempted` (exit code 143).

    With workers, the signals are rank 0's (the process the user started): a wait for the other workers
    handles them too, and stops the run within :data:`WAIT_GRACE_S` seconds when the workers do not come
    (stopped, or stuck in a client). A forked worker that receives SIGTERM leaves at once; rank 0 then stops
    the run as for its own SIGTERM, naming the worker.
    """

    def __init__(self, loop: FederatedLoop) -> None:
        self.loop = loop
        self.pending: int | None = None
        self.pending_at = 0.0
        self.source: str | None = None  # a worker that received the signal, when it was not this process
        self.waited = False  # stopped in a wait for the workers, before the round was finished
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        global _active
        self.pending, self.source, self.waited = None, None, False
        if threading.current_thread() is threading.main_thread():
            _active = self
            for signum in _NAMES:
                self._previous[signum] = signal.getsignal(signum)
                # a forked worker keeps ignoring Ctrl+C, and leaves on SIGTERM
                if self._previous[signum] not in (signal.SIG_IGN, worker_sigterm):
                    signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        global _active
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}
        if _active is self:
            _active = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.loop._in_client_phase or (self.pending is not None and signum == signal.SIGINT):
            self.pending = signum
            raise KeyboardInterrupt if signum == signal.SIGINT else Preempted("Stopped by SIGTERM.")
        if self.pending is None:
            self.pending_at = time.monotonic()
        self.pending = signum

    def explain(self, exc: BaseException, now: bool) -> None:
        """Word ``exc`` (the interrupt ending ``fit``) with what was saved and how to resume, and log it."""
        signum = self.pending if self.pending is not None else signal.SIGINT
        message = self.message(signum, now)
        if isinstance(exc, Preempted):
            exc.message = message
        else:
            exc.args = (message,)
        if self.loop.is_global_zero:
            logging.getLogger("lightning_fedmut").warning(message)

    def message(self, signum: int, now: bool) -> str:
        """What stopped the run, what is saved, and how to resume."""
        loop = self.loop
        name = _NAMES[signum] if self.source is None else f"{_NAMES[signum]} to {self.source}"
        if self.waited:
            what = f"{name} while round {loop.round} waited for the workers (the round is not finished)"
        elif now:
            what = f"{name} among the clients of round {loop.round}"
        else:
            what = f"{name} in round {loop.round}, which was finished first"
        where = loop.checkpoint_dir
        saved = (f"; rounds 0-{loop.progress.last_saved - 1} are saved in {str(where)!r}. Resume with"
                 " `fit(..., ckpt_path='last')` (or `--ckpt_path last`)") if where and loop.progress.last_saved else (
            "; nothing was saved (no `checkpoint_dir`)" if where is None else "; no round had completed yet")
        return f"Stopped by {what}{saved}."

    def raise_pending(self) -> None:
        """After a round was finished and saved: stop if a signal came in during it."""
        if self.pending is not None:
            raise KeyboardInterrupt if self.pending == signal.SIGINT else Preempted("Stopped by SIGTERM.")
