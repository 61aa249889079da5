"""Stop a run that diverges, naming the round, before it trains on for nothing; warn about what only looks like it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from torch import Tensor

from lightning_fedmut.exceptions import DivergenceError
from lightning_fedmut.utilities.validation import check_int, check_real
from lightning_fedmut.utilities.warnings import warn_user

if TYPE_CHECKING:
    from lightning_fedmut.loop import FederatedLoop

__all__ = ["DivergenceMonitor", "chance_level", "negative_variances", "round_client_mean"]

_ACTIONS = ("stop", "warn")
#: At chance: an accuracy within this fraction of the way from chance to 1, either side (10 classes: 0.055 to 0.145).
AT_CHANCE = 0.05
#: Clearly above chance: at least this fraction of the way from chance to 1 (10 classes: >= 0.28).
ABOVE_CHANCE = 0.2


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


def chance_level(state: Mapping[str, Tensor]) -> tuple[float, int] | None:
    """The accuracy of guessing, ``1 / num_classes``, and ``num_classes``, read from a classifier's state.

    The number of classes is the number of rows of the last weight with two or more dimensions in ``state``
    order: a classifier's output layer (one row, a single logit, counts as two classes). ``None`` when the
    state holds no such weight. Pass ``DivergenceMonitor(chance=...)`` when the output layer is not last.

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 4))
        >>> chance_level(net.state_dict())
        (0.25, 4)
        >>> chance_level(torch.nn.Linear(8, 1).state_dict())
        (0.5, 2)
    """
    weights = [v for v in state.values() if v.is_floating_point() and v.dim() >= 2]
    if not weights:
        return None
    classes = max(2, int(weights[-1].shape[0]))
    return 1.0 / classes, classes


def round_client_mean(rows: list[dict[str, Any]], round_index: int, name: str) -> float | None:
    """The example-weighted mean of the clients' ``name`` in round ``round_index``, from ``client_history`` rows.

    Rows are scanned from the end (the round's rows are the last ones); ``None`` when no client of the round
    logged ``name``.

    Examples:
        >>> rows = [{"round": 0, "num_examples": 1, "train_loss": 9.0},
        ...         {"round": 1, "num_examples": 3, "train_loss": 1.0}, {"round": 1, "num_examples": 1, "train_loss": 5.0}]
        >>> round_client_mean(rows, 1, "train_loss"), round_client_mean(rows, 1, "loss")
        (2.0, None)
    """
    total = weight = 0.0
    for row in reversed(rows):
        if row["round"] != round_index:
            break
        if name in row:
            total += row["num_examples"] * float(row[name])
            weight += row["num_examples"]
    return total / weight if weight else None


def _check_name(name: str, value: Any, optional: bool) -> str | None:
    if (value is None and optional) or (isinstance(value, str) and value):
        return value
    expected = "a metric name or None" if optional else "a metric name"
    raise TypeError(f"Expected `{name}` to be {expected} (e.g. 'train_loss'), got {value!r}.")


class DivergenceMonitor:
    """Watches a run for divergence; the loop calls it after each round's clients and each evaluation.

    It acts (raises :class:`~lightning_fedmut.DivergenceError`, or warns with ``action="warn"``) when:

    - at least ``nonfinite_fraction`` of a round's clients return NaN/Inf weights, ``patience`` rounds in a row;
    - the global model's evaluation loss (``monitor``) is NaN or Inf;
    - the evaluation loss exceeds its first evaluated value times ``loss_factor`` **and** the clients' training
      loss (``train_monitor``, their example-weighted mean in the evaluated round) has risen above its value in
      that first evaluated round, or is not logged: training exploded too;
    - a BatchNorm running variance of the global model is negative (named in the message).

    (NaN or Inf in the aggregated global weights always stops the run, before evaluation.)

    **Not divergence.** An evaluation loss above ``loss_factor`` times its first value while the clients'
    training loss is at or below its first value, with finite weights, is a model that fits its training data
    and generalises worse (overfitting, or an evaluation set that differs from the clients' data). The run
    goes on and one warning names the round, both losses and why it does not stop; it is said again only
    after the evaluation loss has come back under the bound.

    **Collapse to chance.** When the global model's accuracy (``accuracy_monitor``) falls to chance after an
    earlier evaluation was clearly above it, one warning names the round (whatever ``action``): the weights can
    be finite and the loss bounded while the model predicts one class. Chance is ``chance`` or, when ``None``,
    ``1 / num_classes`` with the number of classes read from the model's output layer
    (:func:`chance_level`). "At chance" is an accuracy within 5% of the way from chance to 1, either side
    (10 classes: 0.055 to 0.145; far below chance the model has learnt something, e.g. the evaluation labels
    are permuted); "clearly above" is at least 20% of the way (10 classes: 0.28). It is said again only after
    the accuracy has been clearly above chance again.

    The message names the round, what was seen and the likely causes (the callbacks' hints: FedMut's radius,
    then the learning rate). While a run looks divergent, the checkpoint of the last good round is kept. The
    references (first losses, best accuracy) are part of the checkpoint, so a resumed run judges as the
    uninterrupted one would.

    Args:
        action: ``"stop"`` raises, ``"warn"`` warns and goes on.
        nonfinite_fraction: the fraction of a round's clients with non-finite weights that counts as divergent.
        patience: how many divergent rounds in a row it takes.
        loss_factor: how many times its first value the evaluation loss may grow.
        monitor: the evaluation metric holding the loss.
        train_monitor: the clients' training metric holding their loss, which tells a diverging run from one
            whose evaluation loss rises while it trains well; ``None``: the evaluation loss alone decides.
        accuracy_monitor: the evaluation metric holding the accuracy watched for a collapse to chance;
            ``None``: not watched.
        chance: the accuracy of guessing, in ``(0, 1)``; ``None`` reads it from the model.

    Examples:
        >>> DivergenceMonitor().hparams
        {'action': 'stop', 'nonfinite_fraction': 0.5, 'patience': 3, 'loss_factor': 10.0, 'monitor': 'val_loss', \
'train_monitor': 'train_loss', 'accuracy_monitor': 'val_acc', 'chance': None}
        >>> DivergenceMonitor(chance=1.5)
        Traceback (most recent call last):
        ...
        ValueError: Expected `chance` in (0.0, 1.0), got 1.5.
    """

    def __init__(self, action: str = "stop", nonfinite_fraction: float = 0.5, patience: int = 3,
                 loss_factor: float = 10.0, monitor: str = "val_loss", train_monitor: str | None = "train_loss",
                 accuracy_monitor: str | None = "val_acc", chance: float | None = None) -> None:
        if action not in _ACTIONS:
            raise ValueError(f"Expected `action` in {_ACTIONS}, got {action!r}.")
        self.action = action
        self.nonfinite_fraction = check_real("nonfinite_fraction", nonfinite_fraction, low=0.0, high=1.0,
                                             low_open=True)
        self.patience = check_int("patience", patience, low=1)
        self.loss_factor = check_real("loss_factor", loss_factor, low=1.0, low_open=True)
        self.monitor = cast(str, _check_name("monitor", monitor, optional=False))  # not optional: never None
        self.train_monitor = _check_name("train_monitor", train_monitor, optional=True)
        self.accuracy_monitor = _check_name("accuracy_monitor", accuracy_monitor, optional=True)
        self.chance = None if chance is None else check_real("chance", chance, low=0.0, high=1.0, low_open=True,
                                                             high_open=True)
        self.reset()

    @property
    def hparams(self) -> dict[str, Any]:
        return {"action": self.action, "nonfinite_fraction": self.nonfinite_fraction, "patience": self.patience,
                "loss_factor": self.loss_factor, "monitor": self.monitor, "train_monitor": self.train_monitor,
                "accuracy_monitor": self.accuracy_monitor, "chance": self.chance}

    @property
    def protected(self) -> list[int]:
        """Checkpoints (by completed rounds) to keep: the last good round's, while a streak lasts."""
        return [self.last_good] if self.streak and self.last_good > 0 else []

    def reset(self) -> None:
        self.streak: list[tuple[int, int, int]] = []  # (round, non-finite clients, sampled clients)
        self.reference_loss: float | None = None
        self.reference_train: float | None = None  # the clients' training loss in the first evaluated round
        self.last_train: float | None = None  # the clients' training loss in the last evaluated round with one
        self.last_good = 0  # rounds_done of the last round before the current streak
        self.rising_since: int | None = None  # the round a warned-about rise of the evaluation loss began
        self.best_accuracy: tuple[int, float] | None = None  # (round, accuracy)
        self.collapsed_at: int | None = None  # the round a warned-about collapse to chance began

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
        """After an evaluation of the global model: a non-finite or exploding loss, a negative variance, or a
        collapse to chance."""
        negative = negative_variances(state)
        where = f" The global model's BatchNorm running variance is negative in {negative[0]!r}." if negative else ""
        loss = metrics.get(self.monitor)
        acted = loss is not None and self._check_loss(loop, float(loss), where)
        if negative and not acted:
            self._act(loop, f"Round {loop.round}:{where}")
        self._check_accuracy(loop, metrics, state)

    # ------------------------------------------------------------------ the rules
    def _check_loss(self, loop: FederatedLoop, loss: float, where: str) -> bool:
        """Whether it acted (and said ``where``)."""
        if not math.isfinite(loss):
            self._act(loop, f"Round {loop.round}: the global model's `{self.monitor}` is {loss}.{where}")
            return True
        train = None if self.train_monitor is None else round_client_mean(loop.client_history, loop.round,
                                                                           self.train_monitor)
        history = loop.client_history
        if train is None and not (history and history[-1]["round"] == loop.round):
            train = self.last_train  # no client trained (a skipped round): the model and its training loss stand
        elif train is not None:
            self.last_train = train
        if self.reference_loss is None:
            self.reference_loss = loss
        if self.reference_train is None and train is not None and math.isfinite(train):
            self.reference_train = train
        bound = self.loss_factor * self.reference_loss
        if loss <= bound:
            self.rising_since = None  # the episode, if any, is over
            return False
        risen = (f"`{self.monitor}` is {loss:.4g}, more than {self.loss_factor:g} times its first value"
                 f" ({self.reference_loss:.4g})")
        if train is not None and self.reference_train is not None and math.isfinite(train) \
                and train <= self.reference_train:
            if self.rising_since is None:
                self.rising_since = loop.round
                self._warn(loop, f"Round {loop.round}: the global model's {risen}, but the clients'"
                                 f" `{self.train_monitor}` is {train:.4g}, at or below its first value"
                                 f" ({self.reference_train:.4g}), and the weights are finite: the model fits its"
                                 " training data and does worse on the evaluation data (overfitting, or an"
                                 " evaluation set unlike the clients' data), which is not divergence. The run goes"
                                 f" on; this is said again after `{self.monitor}` is back under {bound:.4g}.")
            return False
        if self.train_monitor is None:
            why = ""
        elif train is None or self.reference_train is None:
            why = (f" The clients log no `{self.train_monitor}` to tell a diverging run from an overfitting one;"
                   " set `DivergenceMonitor(train_monitor=...)` to their training loss.")
        else:
            why = (f" The clients' `{self.train_monitor}` rose too, from {self.reference_train:.4g} to"
                   f" {train:.4g}: training diverged.")
        self._act(loop, f"Round {loop.round}: the global model's {risen}.{why}{where}")
        return True

    def _check_accuracy(self, loop: FederatedLoop, metrics: Mapping[str, float], state: Mapping[str, Tensor]) -> None:
        accuracy = None if self.accuracy_monitor is None else metrics.get(self.accuracy_monitor)
        if accuracy is None or not math.isfinite(float(accuracy)):
            return
        accuracy = float(accuracy)
        found = (self.chance, None) if self.chance is not None else chance_level(state)
        if found is None:
            return
        chance, classes = found
        above = accuracy >= chance + ABOVE_CHANCE * (1.0 - chance)
        if self.best_accuracy is None or accuracy > self.best_accuracy[1]:
            self.best_accuracy = (loop.round, accuracy)
        if above:
            self.collapsed_at = None
            return
        best_round, best = self.best_accuracy
        if self.collapsed_at is not None or abs(accuracy - chance) > AT_CHANCE * (1.0 - chance) \
                or best < chance + ABOVE_CHANCE * (1.0 - chance):
            return
        self.collapsed_at = loop.round
        from lightning_fedmut.loop.connectors.failures import divergence_causes

        source = f"{classes} classes, read from the model's output layer" if classes else "`chance`"
        self._warn(loop, f"Round {loop.round}: the global model fell to chance: `{self.accuracy_monitor}` is"
                         f" {accuracy:.4g} (chance {chance:.4g}: {source}) after {best:.4g} in round {best_round},"
                         f" with finite weights. Likely causes: {divergence_causes(loop)}. Pass"
                         " `DivergenceMonitor(chance=...)` if chance is another value.")

    # ------------------------------------------------------------------ actions
    def _act(self, loop: FederatedLoop, what: str) -> None:
        from lightning_fedmut.loop.connectors.failures import divergence_causes

        kept = f" The checkpoint after round {self.last_good - 1} is kept." if self.protected else ""
        message = f"{what} Likely causes: {divergence_causes(loop)}.{kept}"
        if self.action == "stop":
            raise DivergenceError(message)
        warn_user(message)

    @staticmethod
    def _warn(loop: FederatedLoop, message: str) -> None:
        if getattr(loop, "is_global_zero", True):  # every worker judges alike; one says it
            warn_user(message)

    def state_dict(self) -> dict[str, Any]:
        return {"streak": [list(s) for s in self.streak], "reference_loss": self.reference_loss,
                "last_good": self.last_good, "reference_train": self.reference_train, "last_train": self.last_train,
                "rising_since": self.rising_since,
                "best_accuracy": None if self.best_accuracy is None else list(self.best_accuracy),
                "collapsed_at": self.collapsed_at}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.streak = [tuple(s) for s in state_dict["streak"]]
        self.reference_loss = state_dict["reference_loss"]
        self.last_good = int(state_dict["last_good"])
        # absent from checkpoints written before these rules: judged afresh from the next evaluation
        self.reference_train = state_dict.get("reference_train")
        self.last_train = state_dict.get("last_train")
        self.rising_since = state_dict.get("rising_since")
        best = state_dict.get("best_accuracy")
        self.best_accuracy = None if best is None else (int(best[0]), float(best[1]))
        self.collapsed_at = state_dict.get("collapsed_at")
