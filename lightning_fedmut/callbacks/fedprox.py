"""FedProx (Li et al., MLSys 2020): a proximal term that keeps each client near its start model."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback
from torch import Tensor

from lightning_fedmut.callbacks.base import LocalCallback
from lightning_fedmut.functional.server_optim import squared_distance
from lightning_fedmut.utilities.validation import check_real

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

    from lightning_fedmut.aggregators.base import Aggregator
    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientResult, ClientTask



class ProximalTerm(Callback):
    r"""A Lightning callback that adds ``mu * (w - w_start)`` to every gradient before each optimizer step.

    That is the gradient of ``mu / 2 * |w - w_start|^2``: training the module with this callback minimises its
    own loss plus the proximal term. ``w_start`` is the module's trainable parameters when training starts
    (``on_train_start``), so it is whatever start model the federated callbacks wrote; frozen parameters
    (``requires_grad=False``) have no term and do not move. The term is added in
    ``on_before_optimizer_step``: once per optimizer step whatever ``accumulate_grad_batches``, to unscaled
    gradients under mixed precision, and before gradient clipping. Parameters without a gradient in a step
    are left alone.

    Args:
        mu: the proximal weight ``mu`` >= 0.

    Examples:
        >>> term = ProximalTerm(mu=0.1)
        >>> term.mu, term.drift is None
        (0.1, True)
    """

    def __init__(self, mu: float) -> None:
        self.mu = check_real("mu", mu, low=0.0)
        self.drift: float | None = None
        self._params: list[Tensor] = []
        self._start: list[Tensor] = []
        self._by_optimizer: dict[int, list[int]] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._params = [p for p in pl_module.parameters() if p.requires_grad]
        self._start = [p.detach().clone() for p in self._params]
        self._by_optimizer = {}
        self.drift = None

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        indices = self._by_optimizer.get(id(optimizer))
        if indices is None:  # the parameters this optimizer steps, found once
            stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
            indices = self._by_optimizer[id(optimizer)] = [i for i, p in enumerate(self._params) if id(p) in stepped]
        pairs = [(self._params[i], self._start[i]) for i in indices if self._params[i].grad is not None]
        if not pairs:
            return
        params, start = [p for p, _ in pairs], [s for _, s in pairs]
        grads = [p.grad for p, _ in pairs if p.grad is not None]  # every pair has one (filtered above)
        torch._foreach_add_(grads, torch._foreach_sub(params, start), alpha=self.mu)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.drift = math.sqrt(squared_distance(self._params, self._start))
        self._params, self._start, self._by_optimizer = [], [], {}  # release the start model


class FedProx(LocalCallback):
    r"""FedProx: every client minimises its loss plus ``mu / 2 * |w - w_start|^2``.

    The callback gives each client's Trainer a :class:`ProximalTerm`, which adds ``mu * (w - w_start)`` to the
    gradients before every optimizer step; ``w_start`` is that client's start model as it trains from it,
    so after FedMut's mutation when :class:`~lightning_fedmut.MutationCallback` runs too (FedMut + FedProx:
    each client is pulled back to its own mutated start). Any optimizer and aggregator work with it; with
    ``mu = 0`` it is FedAvg bit for bit. The paper FedMut compares with uses ``mu = 0.01``.

    Each round it logs ``fedprox/mu`` and ``fedprox/client_drift``, the clients' mean distance
    ``|w_i - w_start,i|`` from their start model after training. It keeps no state across rounds.

    Args:
        mu: the proximal weight ``mu`` >= 0.

    Examples:
        >>> from lightning_fedmut import FederatedLoop, FedAvg
        >>> loop = FederatedLoop(rounds=10, clients_per_round=5, aggregator=FedAvg(weighted=False),
        ...                      callbacks=[FedProx(mu=0.01)])
        >>> loop.hparams["callbacks"][0]["init_args"]
        {'mu': 0.01}
    """

    def __init__(self, mu: float = 0.01) -> None:
        self.mu = check_real("mu", mu, low=0.0)
        self._terms: dict[int, ProximalTerm]
        self._drifts: dict[int, float]
        self._figures: dict[str, float]
        self.add_state("_terms", {}, scope="round")
        # by slot: the clients this process trained, then (reduced by the loop) the round's, in slot order
        self.add_state("_drifts", {}, reduce="cat", scope="round")
        self.add_state("_figures", {}, scope="round")

    def on_client_fit_start(self, loop: FederatedLoop, module: LightningModule, task: ClientTask) -> None:
        term = ProximalTerm(self.mu)
        self._terms[task.slot] = term
        task.callbacks.append(term)

    def on_client_fit_end(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        term = self._terms.pop(result.task.slot, None)
        if term is not None and term.drift is not None:
            self._drifts[result.task.slot] = term.drift

    def on_client_fit_failure(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        self._terms.pop(result.task.slot, None)

    def on_before_aggregate(self, loop: FederatedLoop, module: LightningModule, aggregator: Aggregator) -> None:
        # every worker's clients are in `_drifts` now: summed in slot order whatever the number of workers
        drifts = self._drifts
        self._figures = {"fedprox/mu": self.mu}
        if drifts:
            self._figures["fedprox/client_drift"] = sum(drifts[s] for s in sorted(drifts)) / len(drifts)

    def metrics(self) -> dict[str, float]:
        """The round's ``fedprox/mu`` and ``fedprox/client_drift`` (none for a round skipped for too few clients)."""
        return dict(self._figures)
