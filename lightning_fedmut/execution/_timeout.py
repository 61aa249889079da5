"""A client's time limit: ``client_timeout`` ends a client that trains too long, as that client's failure.

The mechanism is a real-time interval timer (``signal.setitimer``): when it expires, SIGALRM's handler raises
:class:`~lightning_fedmut.exceptions.ClientTimeoutError` in the main thread, inside the client's training, and
the executor records the client as failed. It interrupts Python code and waits Python can interrupt
(``time.sleep``, a lock, a blocking read); a client stuck inside one C call that never returns to Python is not
interrupted. The timer needs the main thread and a platform with SIGALRM (Linux, macOS); the user's own
SIGALRM handler and timer are put back after each client.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from lightning_fedmut.exceptions import ClientTimeoutError

__all__ = ["check_time_limit", "time_limit"]


def check_time_limit(seconds: float | None) -> None:
    """Refuse a ``client_timeout`` that this process cannot enforce, before training starts.

    Examples:
        >>> check_time_limit(None)
        >>> check_time_limit(30.0)
    """
    if seconds is None:
        return
    if not hasattr(signal, "setitimer"):
        raise ValueError(
            f"`client_timeout`={seconds} needs SIGALRM, which this platform lacks. Pass `client_timeout=None`."
        )
    if threading.current_thread() is not threading.main_thread():
        raise ValueError(
            f"`client_timeout`={seconds} interrupts a client with SIGALRM, which only the main thread receives, and"
            f" `fit` runs in the thread {threading.current_thread().name!r}. Call `fit` from the main thread, or"
            " pass `client_timeout=None`."
        )


@contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Raise :class:`~lightning_fedmut.exceptions.ClientTimeoutError` in the block after ``seconds``.

    ``None`` sets no limit. ``what`` names the client in the error.

    Examples:
        >>> import time
        >>> try:
        ...     with time_limit(0.05, "client 'c0' in round 1"):
        ...         time.sleep(5)
        ... except ClientTimeoutError as err:
        ...     print(err)
        client 'c0' in round 1 trained longer than `client_timeout`=0.05 s
        >>> with time_limit(None, "client 'c0'"):
        ...     pass
    """
    if seconds is None:
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise ClientTimeoutError(f"{what} trained longer than `client_timeout`={seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    start = time.monotonic()
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
        if outer > 0:  # the user's own timer goes on, less the time spent here (at least a moment)
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-3))
