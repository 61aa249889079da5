"""MoFedSAM's client side (Qu et al., ICML 2022, Algorithm 2): SAM steps mixed with the server's last global
update direction, a client-level momentum."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback
from torch import Tensor

from lightning_fedmut.callbacks.base import LocalCallback
from lightning_fedmut.callbacks.sam import SharpnessAwareStep, check_sam_loop
from lightning_fedmut.functional.state import federated_parameters, snapshot
from lightning_fedmut.utilities.validation import check_real

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

    from lightning_fedmut.aggregators.base import Aggregator
    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientResult, ClientTask

__all__ = ["GlobalMomentum", "MoSAM", "momentum_mix_", "pseudo_gradient_"]


@torch.no_grad()
def momentum_mix_(grads: Sequence[Tensor], direction: Sequence[Tensor], alpha: float) -> None:
    """``g <- alpha * g + (1 - alpha) * direction``, in place.

    Examples:
        >>> g = [torch.tensor([1.0, 2.0])]
        >>> momentum_mix_(g, [torch.tensor([-4.0, 0.0])], alpha=0.25); g
        [tensor([-2.7500,  0.5000])]
    """
    for g, d in zip(grads, direction):
        g.mul_(alpha).add_(d.to(device=g.device, dtype=g.dtype), alpha=1.0 - alpha)


@torch.no_grad()
def pseudo_gradient_(out: Sequence[Tensor], previous: Sequence[Tensor], current: Sequence[Tensor],
                     step_sums: Sequence[float]) -> None:
    """``out <- (previous - current) / step_sum``, entry by entry (``0`` where ``step_sum`` is 0): the global
    update as a mean gradient, ``-(w_glb(t) - w_glb(t-1)) / (K eta_l)`` for ``K`` steps of size ``eta_l``.

    Examples:
        >>> out = [torch.zeros(2)]
        >>> pseudo_gradient_(out, [torch.tensor([1.0, 1.0])], [torch.tensor([0.5, 2.0])], [0.5]); out
        [tensor([ 1., -2.])]
    """
    for o, p, c, s in zip(out, previous, current, step_sums):
        if s > 0:
            torch.sub(p, c.to(p), out=o).div_(s)
        else:
            o.zero_()


class GlobalMomentum(Callback):
    r"""A Lightning callback for one MoFedSAM client: mixes each step's gradient with the server direction.

    In ``on_before_optimizer_step`` (once per step, before Lightning's gradient clipping; with
    ``SharpnessAwareStep``, on the gradient at ``w + e``) each named parameter
    with a gradient gets ``g <- alpha * g + (1 - alpha) * direction``. It also adds, per parameter, the learning
    rate of its parameter group at each step to ``step_sums`` (``K * eta_l`` for ``K`` steps at a constant
    rate), which the server divides the next global update by.
    """

    def __init__(self, names: list[str], direction: list[Tensor], alpha: float) -> None:
        self.names = list(names)
        self.alpha = float(alpha)
        self._direction = list(direction)
        self.step_sums = [0.0] * len(self.names)
        self._params: list[Tensor] = []
        self._moved: list[Tensor] = []
        self._index: dict[int, int] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        named = dict(pl_module.named_parameters())
        missing = [n for n in self.names if n not in named]
        if missing:
            raise ValueError(f"MoFedSAM's direction names parameters the client model lacks: {missing[:5]}.")
        self._params = [named[n] for n in self.names]
        self._moved = [d.to(device=p.device, dtype=p.dtype) for d, p in zip(self._direction, self._params)]
        self._index = {id(p): i for i, p in enumerate(self._params)}
        self.step_sums = [0.0] * len(self.names)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        grads, direction = [], []
        for group in optimizer.param_groups:
            lr = float(group["lr"])
            for p in group["params"]:
                i = self._index.get(id(p))
                if i is None or p.grad is None:
                    continue
                grads.append(p.grad)
                direction.append(self._moved[i])
                self.step_sums[i] += lr
        momentum_mix_(grads, direction, self.alpha)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._params, self._moved, self._index = [], [], {}


class MoSAM(LocalCallback):
    r"""MoFedSAM's client side: SAM steps whose gradient is mixed with the server's last global update direction.

    Each client step (Algorithm 2 of Qu et al.) is: ``e = rho * g / |g|`` with ``g`` the gradient at ``w``;
    ``v = alpha * grad F(w + e) + (1 - alpha) * Delta``; the optimizer's step with ``v`` (plain SGD:
    ``w <- w - eta_l * v``); with the server direction ``Delta = -(w_glb(t) - w_glb(t-1)) / (K eta_l)``, the last global update as a mean
    gradient (``0`` before the first aggregation). ``K eta_l`` is the sum of the learning rates of the client's
    steps, averaged over the round's clients (per parameter, read from its optimizer group as it steps), so it is
    ``K eta_l`` with ``K`` steps at a constant rate. ``Delta`` is declared server state (checkpointed, so a resumed
    run steps bit for bit as the uninterrupted one); computing it costs one more model on the server while it
    aggregates. The global model is the aggregator's (the paper's uniform mean with ``eta_g = 1``).

    The gradients are mixed in ``on_before_optimizer_step``, once per step on the gradient at ``w + e``, before
    Lightning's gradient clipping, so ``gradient_clip_val`` clips ``v``.

    **Paper and code.** The paper's and ``woodenchild95/FL-Simulator``'s step are both ``alpha * g_SAM + (1 -
    alpha) * Delta`` with ``Delta = -mean_i(w_i - w) / (K eta_l)``; this class follows them. The code (its
    ``ESAM`` optimizer scales the loss at ``w + e`` by ``alpha`` and ``mofedsam`` adds ``(1 - alpha) <w, Delta>``)
    differs in details: it clips ``v`` to norm 10 (``trainer_kwargs={"gradient_clip_val": 10.0}``), takes ``K`` as
    the first client's number of batches times the epochs for every client, ``eta_l`` as the previous round's
    rate, adds ``1e-7`` (here ``1e-12``) to ``|g|``, uses SGD with weight decay and mixes ``Delta`` into the
    gradient of every parameter, where this class mixes it into the parameters that have a gradient in the step.

    Refused before any client trains, as SAM: manual optimization, ``accumulate_grad_batches`` other than 1 and
    ``precision='16-mixed'``.

    Args:
        rho: SAM's perturbation radius ``rho`` > 0.
        alpha: the weight of the SAM gradient, in ``[0, 1]`` (1: FedSAM).

    Examples:
        >>> MoSAM(rho=0.05, alpha=0.1).hparams
        {'rho': 0.05, 'alpha': 0.1}
    """

    def __init__(self, rho: float = 0.05, alpha: float = 0.1) -> None:
        self.rho = check_real("rho", rho, low=0.0, low_open=True)
        self.alpha = check_real("alpha", alpha, low=0.0, high=1.0)
        self._previous: list[Tensor] = []  # w_glb(t-1) while the server aggregates (not saved: rebuilt each round)
        self._names: list[str]
        self._direction: list[Tensor]
        self._clients: dict[int, GlobalMomentum]
        self._step_sums: dict[int, list[float]]
        self._figures: dict[str, float]
        self.add_state("_names", [])
        self.add_state("_direction", [])
        self.add_state("_clients", {}, scope="round")
        self.add_state("_step_sums", {}, reduce="cat", scope="round")  # slot -> the client's sums, every worker's
        self.add_state("_figures", {}, scope="round")

    @property
    def direction(self) -> dict[str, Tensor]:
        """The server direction ``Delta`` by parameter name."""
        return dict(zip(self._names, self._direction))

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        check_sam_loop(loop, module)
        params = federated_parameters(module)
        self._names = [n for n, _ in params]
        self._direction = [torch.zeros_like(p.detach()) for _, p in params]

    def teardown(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        self._previous, self._clients = [], {}

    def on_client_fit_start(self, loop: FederatedLoop, module: LightningModule, task: ClientTask) -> None:
        mixer = GlobalMomentum(self._names, self._direction, self.alpha)
        self._clients[task.slot] = mixer
        task.callbacks.extend([SharpnessAwareStep(self.rho), mixer])

    def on_client_fit_end(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        self._step_sums[result.task.slot] = list(self._clients.pop(result.task.slot).step_sums)

    def on_client_fit_failure(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        self._clients.pop(result.task.slot, None)

    def on_before_aggregate(self, loop: FederatedLoop, module: LightningModule, aggregator: Aggregator) -> None:
        named = dict(module.named_parameters())
        self._previous = snapshot(self._previous, [named[n] for n in self._names])

    @torch.no_grad()
    def on_after_aggregate(self, loop: FederatedLoop, module: LightningModule) -> None:
        slots = sorted(self._step_sums)  # every worker's clients, summed in slot order as one process does
        if not slots:
            return
        sums = [sum(self._step_sums[s][i] for s in slots) / len(slots) for i in range(len(self._names))]
        named = dict(module.named_parameters())
        if [d.device for d in self._direction] != [p.device for p in self._previous]:  # a resumed run on a GPU
            self._direction = [d.to(p.device) for d, p in zip(self._direction, self._previous)]
        pseudo_gradient_(self._direction, self._previous, [named[n].detach() for n in self._names], sums)
        norm = math.sqrt(sum(float(d.double().pow(2).sum()) for d in self._direction))
        self._figures = {"mofedsam/direction_norm": norm}

    def metrics(self) -> dict[str, float]:
        """The round's ``mofedsam/direction_norm`` (``|Delta|`` after the update)."""
        return dict(self._figures)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._names and list(state_dict["names"]) != self._names:
            raise ValueError(f"MoSAM state does not match the model: the checkpoint mixes parameters"
                             f" {list(state_dict['names'])[:5]}..., this model {self._names[:5]}...")
        super().load_state_dict(state_dict)
        self._names = list(self._names)
