"""Warnings that point at the user's line, however deep in the package they are raised, and printed once for a run
with several workers."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from types import FrameType

_PACKAGE = str(Path(__file__).resolve().parent.parent)


def warn_user(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside lightning_fedmut (the user's ``fit`` call).

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_user("look here")
        >>> str(caught[0].message), caught[0].filename.startswith(_PACKAGE)
        ('look here', False)
    """
    level = 1
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)


def silence_worker_warnings(rank: int) -> None:
    """In a worker process other than rank 0, drop every warning: each worker runs the same code, so rank 0's
    warning is the one shown, not one copy per process.

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     silence_worker_warnings(1)
        ...     warnings.warn("seen once")
        >>> caught
        []
    """
    if rank != 0:
        warnings.simplefilter("ignore")
