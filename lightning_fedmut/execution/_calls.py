"""Calling a short-lived Trainer: Ctrl+C handed back to the caller, metrics as plain floats, and the trained
state checked."""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
from lightning.pytorch import Trainer
from torch import Tensor

from lightning_fedmut.exceptions import NonFiniteWeightsError
from lightning_fedmut.functional.state import first_non_finite


def interruptible(trainer: Trainer, method: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``trainer.fit``/``validate`` and turn Lightning's handling of Ctrl+C back into ``KeyboardInterrupt``.

    Lightning answers Ctrl+C inside ``fit`` with ``sys.exit(1)`` and ignores SIGINT from then on; the loop
    needs the interrupt itself (to checkpoint and stop) and the user's SIGINT handler back.
    """
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        out = method(*args, **kwargs)
    except SystemExit as exc:
        # Lightning's sys.exit(1) after a KeyboardInterrupt; other exits (preemption) go through as they are
        if type(exc) is SystemExit and trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if handler is not None and signal.getsignal(signal.SIGINT) is not handler:
            signal.signal(signal.SIGINT, handler)
    if trainer.interrupted:
        raise KeyboardInterrupt
    return out


def merged_scalars(results: list[dict[str, Any]]) -> dict[str, float]:
    """The scalars of ``Trainer.validate``'s results (one dict per loader), merged into one dict.

    Examples:
        >>> merged_scalars([{"val_acc": torch.tensor(0.5)}, {"val_loss/dataloader_idx_1": 2.0}])
        {'val_acc': 0.5, 'val_loss/dataloader_idx_1': 2.0}
    """
    merged: dict[str, float] = {}
    for d in results:
        merged.update(scalars(d))
    return merged


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar entries of ``metrics`` as floats.

    Examples:
        >>> scalars({"loss": torch.tensor(0.5), "vec": torch.zeros(2), "n": 3})
        {'loss': 0.5, 'n': 3.0}
    """
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            if v.numel() == 1:
                out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def trained_state(module: torch.nn.Module) -> dict[str, Tensor]:
    """``module``'s state after a client trained it; :class:`NonFiniteWeightsError` if an entry holds NaN or Inf
    (the client fails, the round goes on).

    Examples:
        >>> trained_state(torch.nn.Linear(1, 1)).keys()
        odict_keys(['weight', 'bias'])
    """
    state = module.state_dict()
    bad = first_non_finite(state)
    if bad is not None:
        raise NonFiniteWeightsError(f"trained weights hold NaN or Inf in {bad!r}")
    return state
