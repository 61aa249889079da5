"""Stochastic weight averaging on the server (Caldarola et al., ECCV 2022): a running mean of the global models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback
from torch import Tensor

from lightning_fedmut.callbacks.base import FederatedCallback
from lightning_fedmut.functional.state import frozen_keys, is_floating
from lightning_fedmut.utilities.validation import check_int, check_real

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientTask

__all__ = ["SWA", "CyclicLearningRate", "cyclic_lr"]


def cyclic_lr(round_index: int, cycle: int, lr: float, swa_lr: float) -> float:
    """The clients' learning rate of round ``round_index`` (0-based): ``(1 - t) lr + t swa_lr`` with
    ``t = (round_index mod cycle + 1) / cycle`` (``schedule_cycling_lr`` of ``debcaldarola/fedsam``).

    Examples:
        >>> [round(cyclic_lr(r, 4, 0.1, 0.02), 6) for r in range(8, 13)]
        [0.08, 0.06, 0.04, 0.02, 0.08]
    """
    t = (round_index % cycle + 1) / cycle
    return (1 - t) * lr + t * swa_lr


class CyclicLearningRate(Callback):
    """A Lightning callback for one client: at the start of training each parameter group's ``lr`` becomes
    ``(1 - t) * lr + t * swa_lr`` (``t`` given), from the ``lr`` that ``configure_optimizers`` set."""

    def __init__(self, t: float, swa_lr: float) -> None:
        self.t = t
        self.swa_lr = swa_lr

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = (1 - self.t) * group["lr"] + self.t * self.swa_lr


class SWA(FederatedCallback):
    r"""Server-side SWA, as ``models/main.py`` of ``debcaldarola/fedsam`` (FedSAM/FedASAM + SWA), for any method.

    From round ``start`` (0-based; ``None``: ``int(0.75 * rounds)``, the reference's default) the server keeps the
    running mean of the global models aggregated at rounds ``start + cycle``, ``start + 2 * cycle``, ... (the
    reference's ``i > swa_start and (i - swa_start) % swa_c == 0``, after the aggregation). With ``cycle > 1`` the
    clients of rounds ``>= start`` train with the cyclical learning rate ``(1 - t) lr + t swa_lr``, ``t = (round mod
    cycle + 1) / cycle`` (:func:`cyclic_lr`; ``lr`` is what the module's ``configure_optimizers`` sets); with
    ``cycle = 1`` their rate is left alone, as in the reference.

    **Which model is evaluated and returned.** Once the mean holds a model, every evaluation is of the averaged
    model (the reference evaluates its SWA model from ``start`` on; before the first average it evaluates a stale
    copy of the model of round ``start``, here the global model), and ``fit`` returns the module holding the
    average. The training itself goes on from the global model. The federated checkpoints keep the global model,
    and the mean with its count as this callback's server state, so a resumed run averages the same models.

    **BatchNorm.** The reference averages the parameters only (its CIFAR CNN has no BatchNorm); its SWA model keeps
    the buffers of the copy made at ``start``. Here the parameters are averaged, and the evaluated model uses the
    current global model's buffers (running statistics, ``num_batches_tracked``); ``average_buffers=True`` averages
    the floating buffers too. Torch's ``update_bn`` (a pass over training data to recompute the statistics) is not
    run: the server has no data.

    Args:
        start: the first round of the SWA phase; ``None``: ``int(0.75 * rounds)``.
        cycle: ``c`` >= 1, rounds between two averaged models (and the length of the learning-rate cycle).
        swa_lr: the cycle's lowest client learning rate > 0 (the reference's ``--swa-lr``, 1e-4).
        average_buffers: also average the floating buffers.

    Examples:
        >>> swa = SWA(start=6, cycle=2)
        >>> [r for r in range(10) if swa.averages_at(r, rounds=10)]
        [8]
        >>> swa.hparams
        {'start': 6, 'cycle': 2, 'swa_lr': 0.0001, 'average_buffers': False}
    """

    def __init__(self, start: int | None = None, cycle: int = 10, swa_lr: float = 1e-4,
                 average_buffers: bool = False) -> None:
        self.start = None if start is None else check_int("start", start, low=0)
        self.cycle = check_int("cycle", cycle, low=1)
        self.swa_lr = check_real("swa_lr", swa_lr, low=0.0, low_open=True)
        if not isinstance(average_buffers, bool):
            raise TypeError(f"Expected `average_buffers` to be a bool, got {average_buffers!r}.")
        self.average_buffers = average_buffers
        self._keys: list[str]
        self._mean: list[Tensor]
        self._count: int
        self._swapped: bool
        self.add_state("_keys", [])
        self.add_state("_mean", [])
        self.add_state("_count", 0)
        self.add_state("_swapped", False)

    @property
    def count(self) -> int:
        """How many global models the mean holds."""
        return self._count

    @property
    def average(self) -> dict[str, Tensor]:
        """The running mean, keyed by state key (empty before the first averaged round)."""
        return dict(zip(self._keys, self._mean)) if self._count else {}

    def first_round(self, rounds: int) -> int:
        """The SWA phase's first round for a run of ``rounds`` rounds."""
        return int(0.75 * rounds) if self.start is None else self.start

    def averages_at(self, round_index: int, rounds: int) -> bool:
        """Whether the global model aggregated at ``round_index`` enters the mean."""
        start = self.first_round(rounds)
        return round_index > start and (round_index - start) % self.cycle == 0

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        unshared = frozen_keys(module)
        params = {n for n, _ in module.named_parameters()}
        self._keys = [k for k, v in module.state_dict().items() if k not in unshared and is_floating(v)
                      and (self.average_buffers or k in params)]
        self._mean = [v.detach().clone() for k, v in module.state_dict().items() if k in set(self._keys)]
        self._count, self._swapped = 0, False

    def on_fit_start(self, loop: FederatedLoop, module: LightningModule) -> None:
        if self._swapped:  # a checkpoint written while the average was being evaluated
            self._swap(module)

    def on_client_fit_start(self, loop: FederatedLoop, module: LightningModule, task: ClientTask) -> None:
        if self.cycle > 1 and loop.round >= self.first_round(loop.rounds):
            t = (loop.round % self.cycle + 1) / self.cycle
            task.callbacks.append(CyclicLearningRate(t, self.swa_lr))

    @torch.no_grad()
    def on_after_aggregate(self, loop: FederatedLoop, module: LightningModule) -> None:
        if not self.averages_at(loop.round, loop.rounds):
            return
        state = module.state_dict()
        self._count += 1
        for key, mean in zip(self._keys, self._mean):
            current = state[key].to(mean.dtype)
            weight = 1.0 / self._count  # the reference's update_swa_model(1 / (n + 1))
            mean.mul_(1.0 - weight).add_(current, alpha=weight)

    def on_validation_start(self, loop: FederatedLoop, module: LightningModule) -> None:
        if self._count and not self._swapped:
            self._swap(module)

    def on_validation_end(self, loop: FederatedLoop, module: LightningModule) -> None:
        if self._swapped:
            self._swap(module)

    def on_exception(self, loop: FederatedLoop, module: LightningModule, exception: BaseException) -> None:
        if self._swapped:
            self._swap(module)

    @torch.no_grad()
    def on_fit_end(self, loop: FederatedLoop, module: LightningModule) -> None:
        if self._count:
            state = module.state_dict()
            for key, mean in zip(self._keys, self._mean):
                state[key].copy_(mean)

    @torch.no_grad()
    def _swap(self, module: LightningModule) -> None:
        """Exchange the module's entries and the mean's, one tensor at a time (no second model in memory)."""
        state = module.state_dict()
        for key, mean in zip(self._keys, self._mean):
            held = state[key].detach().clone()
            state[key].copy_(mean)
            mean.copy_(held)
        self._swapped = not self._swapped

    def metrics(self) -> dict[str, Any]:
        """``swa/models``: how many global models the mean holds."""
        return {"swa/models": float(self._count)}
