"""Stop (or warn about) a run that diverges, naming the round, before it trains on for nothing."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from lightning_fedmut.exceptions import DivergenceError
from lightning_fedmut.utilities.validation import check_int, check_real
from lightning_fedmut.utilities.warnings import warn_user

if TYPE_CHECKING:
    from lightning_fedmut.loop import FederatedLoop

__all__ = ["DivergenceMonitor", "negative_variances"]

_ACTIONS = ("stop", "warn")


def negative_variances(state: Mapping[str, Tensor]) -> list[str]:
    """Keys of BatchNorm running variances (``*running_var``) holding a negative value.

    A negative variance makes BatchNorm's output NaN in evaluation while every weight stays finite; FedMut's
    reference mutation of buffers (``mutate_buffers=True``) can produce one.

    Examples:
        >>> import torch
        >>> negative_variances({"bn.running_var": torch.tensor([1.0, -0.5]), "bn.weight": torch.tensor([-1.0])})
        ['bn.running_var']
    """
    return [k for k, v in state.items() if k.endswith("running_var") and v.is_floating_point() and bool((v < 0).any())]


class DivergenceMonitor:
    """Watches a run for divergence; the loop calls it after each round's clients and each evaluation.

    It acts (raises :class:`~lightning_fedmut.DivergenceError`, or warns) when:

    - at least ``nonfinite_fraction`` of a round's clients return NaN/Inf weights, ``patience`` rounds in a row;
    - the global model's evaluation loss (``monitor``) is NaN or Inf, or exceeds its first evaluated value
      times ``loss_factor``;
    - a BatchNorm running variance of the global model is negative (named in the message).

    The message names the round, what was seen and the likely causes (the callbacks' hints: FedMut's radius,
    then the learning rate). While a run looks divergent, the checkpoint of the last good round is kept.

    Args:
        action: ``"stop"`` raises, ``"warn"`` warns and goes on.
        nonfinite_fraction: the fraction of a round's clients with non-finite weights that counts as divergent.
        patience: how many divergent rounds in a row it takes.
        loss_factor: how many times its first value the evaluation loss may grow.
        monitor: the evaluation metric holding the loss.

    Examples:
        >>> DivergenceMonitor().hparams
        {'action': 'stop', 'nonfinite_fraction': 0.5, 'patience': 3, 'loss_factor': 10.0, 'monitor': 'val_loss'}
    """

    def __init__(self, action: str = "stop", nonfinite_fraction: float = 0.5, patience: int = 3,
                 loss_factor: float = 10.0, monitor: str = "val_loss") -> None:
        if action not in _ACTIONS:
            raise ValueError(f"Expected `action` in {_ACTIONS}, got {action!r}.")
        self.action = action
        self.nonfinite_fraction = check_real("nonfinite_fraction", nonfinite_fraction, low=0.0, high=1.0,
                                             low_open=True)
        self.patience = check_int("patience", patience, low=1)
        self.loss_factor = check_real("loss_factor", loss_factor, low=1.0, low_open=True)
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"Expected `monitor` to be a metric name, got {monitor!r}.")
        self.monitor = monitor
        self.streak: list[tuple[int, int, int]] = []  # (round, non-finite clients, sampled clients)
        self.reference_loss: float | None = None
        self.last_good = 0  # rounds_done of the last round before the current streak

    @property
    def hparams(self) -> dict[str, Any]:
        return {"action": self.action, "nonfinite_fraction": self.nonfinite_fraction, "patience": self.patience,
                "loss_factor": self.loss_factor, "monitor": self.monitor}

    @property
    def protected(self) -> list[int]:
        """Checkpoints (by completed rounds) to keep: the last good round's, while a streak lasts."""
        return [self.last_good] if self.streak and self.last_good > 0 else []

    def reset(self) -> None:
        self.streak, self.reference_loss, self.last_good = [], None, 0

    def on_clients(self, loop: FederatedLoop, nonfinite: int, sampled: int) -> None:
        """After a round's clients: count the round as divergent when enough came back non-finite."""
        if sampled and nonfinite / sampled >= self.nonfinite_fraction:
            self.streak.append((loop.round, nonfinite, sampled))
            if len(self.streak) >= self.patience:
                seen = ", ".join(f"round {r}: {n} of {k}" for r, n, k in self.streak[-self.patience:])
                self._act(loop, f"At least {self.nonfinite_fraction:.0%} of the clients returned NaN or Inf weights"
                                f" in {self.patience} rounds in a row ({seen}): training diverged.")
        else:
            self.streak = []
            self.last_good = loop.round + 1

    def on_evaluation(self, loop: FederatedLoop, metrics: Mapping[str, float], state: Mapping[str, Tensor]) -> None:
        """After an evaluation of the global model: a non-finite or exploding loss, or a negative variance."""
        negative = negative_variances(state)
        where = f" The global model's BatchNorm running variance is negative in {negative[0]!r}." if negative else ""
        loss = metrics.get(self.monitor)
        if loss is None:
            if negative:
                self._act(loop, f"Round {loop.round}:{where}")
            return
        if not math.isfinite(loss):
            self._act(loop, f"Round {loop.round}: the global model's `{self.monitor}` is {loss}.{where}")
        elif self.reference_loss is None:
            self.reference_loss = float(loss)
        elif loss > self.loss_factor * self.reference_loss:
            self._act(loop, f"Round {loop.round}: the global model's `{self.monitor}` is {loss:.4g}, more than"
                            f" {self.loss_factor:g} times its first value ({self.reference_loss:.4g}).{where}")
        elif negative:
            self._act(loop, f"Round {loop.round}:{where}")

    def _act(self, loop: FederatedLoop, what: str) -> None:
        from lightning_fedmut._failures import divergence_causes

        kept = f" The checkpoint after round {self.last_good - 1} is kept." if self.protected else ""
        message = f"{what} Likely causes: {divergence_causes(loop)}.{kept}"
        if self.action == "stop":
            raise DivergenceError(message)
        warn_user(message)

    def state_dict(self) -> dict[str, Any]:
        return {"streak": [list(s) for s in self.streak], "reference_loss": self.reference_loss,
                "last_good": self.last_good}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.streak = [tuple(s) for s in state_dict["streak"]]
        self.reference_loss = state_dict["reference_loss"]
        self.last_good = int(state_dict["last_good"])


