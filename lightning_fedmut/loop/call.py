"""The one place the federated callbacks' hooks are dispatched (Lightning's ``trainer/call.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["call_hook"]


def call_hook(loop: Any, callbacks: Sequence[Any], hook: str, *args: Any) -> None:
    """Call ``hook`` on every callback, in order, with the loop first: ``callback.<hook>(loop, *args)``.

    Examples:
        >>> class Say:
        ...     def __init__(self, name): self.name = name
        ...     def on_round_start(self, loop, module): print(self.name, loop, module)
        >>> call_hook("loop", [Say("a"), Say("b")], "on_round_start", "model")
        a loop model
        b loop model
    """
    for callback in callbacks:
        getattr(callback, hook)(loop, *args)
