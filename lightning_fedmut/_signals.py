"""SIGINT and SIGTERM during ``fit``: stop where the last completed round can be saved, and say how to resume."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from lightning_fedmut.exceptions import Preempted

if TYPE_CHECKING:
    from lightning_fedmut.loop import FederatedLoop

_NAMES = {signal.SIGINT: "SIGINT (Ctrl+C)", signal.SIGTERM: "SIGTERM"}


class SignalGuard:
    """Handles SIGINT and SIGTERM while a ``fit`` runs (in the main thread).

    Among a round's clients the signal stops the run at once (the clients' work is lost, the rounds before are
    saved). In any other phase (aggregation, evaluation, logging, saving) the round is finished and saved
    first, then the run stops. A second Ctrl+C stops at once, whatever the phase. SIGINT ends ``fit`` with
    ``KeyboardInterrupt``, SIGTERM with :class:`~lightning_fedmut.exceptions.Preempted` (exit code 143).
    """

    def __init__(self, loop: FederatedLoop) -> None:
        self.loop = loop
        self.pending: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        self.pending = None
        if threading.current_thread() is threading.main_thread():
            for signum in _NAMES:
                self._previous[signum] = signal.getsignal(signum)
                if self._previous[signum] is not signal.SIG_IGN:  # a worker that ignores Ctrl+C keeps ignoring it
                    signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.loop._in_client_phase or (self.pending is not None and signum == signal.SIGINT):
            self.pending = signum
            raise KeyboardInterrupt if signum == signal.SIGINT else Preempted("Stopped by SIGTERM.")
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
        if now:
            what = f"{_NAMES[signum]} among the clients of round {loop.round}"
        else:
            what = f"{_NAMES[signum]} in round {loop.round}, which was finished first"
        where = loop.checkpoint_dir
        saved = (f"; rounds 0-{loop.progress.last_saved - 1} are saved in {str(where)!r}. Resume with"
                 " `fit(..., ckpt_path='last')` (or `--ckpt_path last`)") if where and loop.progress.last_saved else (
            "; nothing was saved (no `checkpoint_dir`)" if where is None else "; no round had completed yet")
        return f"Stopped by {what}{saved}."

    def raise_pending(self) -> None:
        """After a round was finished and saved: stop if a signal came in during it."""
        if self.pending is not None:
            raise KeyboardInterrupt if self.pending == signal.SIGINT else Preempted("Stopped by SIGTERM.")
