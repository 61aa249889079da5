"""FedLESAM's client side (Fan et al., ICML 2024): SAM with a perturbation the client estimates from the global
models, one forward and backward pass a step.

FedLESAM replaces SAM's ascent step (a first gradient at ``w``) by the direction the global model came from: the
difference of the last two global models, ``w_old - w_global``. Each client step is then the optimizer's step from
``w`` with the gradient taken at ``w + rho * (w_old - w_global) / |w_old - w_global|``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_fedmut.callbacks.base import LocalCallback
from lightning_fedmut.callbacks.sam import OptimizerStepWrapper, check_sam_loop, sam_perturbation
from lightning_fedmut.functional.state import copy_, federated_parameters, snapshot
from lightning_fedmut.utilities.validation import check_real

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

    from lightning_fedmut.aggregators.base import Aggregator
    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientTask

__all__ = ["ESTIMATES", "LESAM", "FixedPerturbationStep"]

#: Where the previous global model comes from: the server's last one (the authors' code) or the one this client
#: received the last time it trained (the paper's).
ESTIMATES = ("global", "client")


class FixedPerturbationStep(OptimizerStepWrapper):
    r"""A Lightning callback: each optimizer step takes its gradient at ``w + e`` for a fixed ``e``, then steps from
    ``w``, in one forward and backward pass.

    ``perturbation`` maps parameter names to ``e`` (parameters it does not name are not perturbed). The optimizer's
    own step runs with a closure that adds ``e`` to the parameters, runs Lightning's closure (``training_step``,
    ``zero_grad``, ``backward``, the ``on_before_optimizer_step`` hooks and gradient clipping, once) and copies
    ``w`` back exactly, so any optimizer that calls its closure works. The forward pass runs at ``w + e``: the
    logged loss, and BatchNorm's running statistics, are those of ``w + e`` (as in the FedLESAM authors' code).
    Refusals as ``SharpnessAwareStep``'s (``lightning_fedmut.callbacks.sam``).

    Examples:
        >>> step = FixedPerturbationStep({"weight": torch.tensor([0.1, 0.0])})
        >>> step.steps, sorted(step.perturbation)
        (0, ['weight'])
    """

    def __init__(self, perturbation: dict[str, Tensor]) -> None:
        super().__init__()
        self.perturbation = dict(perturbation)
        self.steps = 0
        self._params: list[Tensor] = []
        self._shifts: list[Tensor] = []
        self._start: list[Tensor] = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.steps = 0
        named = dict(pl_module.named_parameters())
        missing = sorted(set(self.perturbation) - set(named))
        if missing:
            raise ValueError(f"Expected the perturbation to name parameters of the client model, got {missing[:5]},"
                             " which it lacks.")
        self._params = [named[n] for n in self.perturbation]
        self._shifts = [e.to(device=p.device, dtype=p.dtype) for e, p in zip(self.perturbation.values(), self._params)]
        self._start = [p.detach().clone() for p in self._params]  # one buffer for the whole training
        super().on_train_start(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._params, self._shifts, self._start = [], [], []

    def wrapped_step(self, optimizer: Any, base_step: Callable[..., Any], closure: Callable[[], Any] | None = None,
                     **kwargs: Any) -> Any:
        if closure is None:
            raise RuntimeError("LESAM needs the closure Lightning passes to `optimizer.step` in automatic"
                               " optimization; got a step without one (manual optimization or a gradient scaler).")
        if not self._params:
            return base_step(closure=closure, **kwargs)

        def perturbed() -> Any:
            with torch.no_grad():
                copy_(self._start, self._params)
                torch._foreach_add_(self._params, self._shifts)
            try:
                return closure()
            finally:
                with torch.no_grad():
                    copy_(self._params, self._start)  # w exactly, not w + e - e

        self.steps += 1
        return base_step(closure=perturbed, **kwargs)


class LESAM(LocalCallback):
    r"""FedLESAM's client side: every client step takes its gradient at ``w + e``, with
    ``e = rho * (w_old - w_global) / |w_old - w_global|`` fixed for the client's whole training, in one forward and
    backward pass (SAM takes two).

    ``w_global`` is the global model the client receives this round; ``w_old`` the previous global model:

    - ``estimate="global"`` (default; the authors' code, ``MediaBrain-SJTU/FedLESAM``): the server's global model
      of the previous round, so ``w_old - w_global`` is minus the last global update, the same for every client.
      The server keeps it as declared server state: **one model** (and one more, reused, while it aggregates),
      whatever the number of clients, and it travels to the workers with the callback.
    - ``estimate="client"`` (the paper's "global models received in the previous active and current rounds"):
      the global model this client received the last time it trained, kept in the loop's client-state store:
      **one model per client that has trained** (``N`` models for a federation of ``N``, in memory and in the
      checkpoints). With every client in every round both are the same.

    Until there is a previous global model (round 0; with ``"client"``, a client's first round) the client takes
    plain steps, as the authors' code does. Only trainable federated parameters are perturbed; ``|.|`` is the L2
    norm over all of them together (plus ``1e-12``).

    **Against the authors' code.** Its ``LESAM`` optimizer indexes the flattened update vector with each
    parameter tensor's position (``g_update[idx]``), so it shifts every entry of the ``idx``-th parameter tensor
    by one scalar, and divides by the sum of those scalars' absolute values (plus ``1e-7``) instead of the
    vector's norm; this class follows the paper's perturbation. The code's client also clips the gradient to norm
    10 (``trainer_kwargs={"gradient_clip_val": 10.0}`` does the same here) and uses SGD with weight decay
    ``1e-3``. Its variants FedLESAM-S (SCAFFOLD's correction) and FedLESAM-D (FedDyn's regulariser) are not
    presets; FedLESAM-S is ``SCAFFOLD``'s local component next to this one.

    Refused before any client trains, as SAM: manual optimization, ``accumulate_grad_batches`` other than 1 and
    ``precision='16-mixed'``.

    Args:
        rho: the perturbation radius ``rho`` > 0.
        estimate: ``"global"`` (the server's last two global models) or ``"client"`` (the last two this client
            received).

    Examples:
        >>> LESAM(rho=0.05).hparams
        {'rho': 0.05, 'estimate': 'global'}
    """

    def __init__(self, rho: float = 0.05, estimate: str = "global") -> None:
        self.rho = check_real("rho", rho, low=0.0, low_open=True)
        if estimate not in ESTIMATES:
            raise ValueError(f"Expected `estimate` in {list(ESTIMATES)}, got {estimate!r}.")
        self.estimate = estimate
        self._previous: list[Tensor] = []  # w_glb(t-1) while the server aggregates (not saved: rebuilt each round)
        self._names: list[str]
        self._direction: list[Tensor]
        self._received: list[Tensor] | None
        self._figures: dict[str, float]
        self.add_state("_names", [])
        self.add_state("_direction", [])  # w_glb(t-1) - w_glb(t), empty before the first aggregation
        if estimate == "client":
            self.add_state("_received", None, scope="client")  # the global model this client last received
        self.add_state("_figures", {}, scope="round")

    @property
    def direction(self) -> dict[str, Tensor]:
        """The server's ``w_old - w_global`` by parameter name (empty before the first aggregation)."""
        return dict(zip(self._names, self._direction))

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        check_sam_loop(loop, module)
        self._names = [n for n, _ in federated_parameters(module)]
        self._direction = []

    def teardown(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        self._previous = []

    def on_client_fit_start(self, loop: FederatedLoop, module: LightningModule, task: ClientTask) -> None:
        current = [task.start_state[n] for n in self._names]
        if self.estimate == "global":
            direction = self._direction
        else:
            old = self._received
            direction = [] if old is None else [o.to(c) - c for o, c in zip(old, current)]
            self._received = [c.detach().cpu().clone() for c in current]
        perturbation = sam_perturbation(direction, self.rho) if direction else []
        task.callbacks.append(FixedPerturbationStep(dict(zip(self._names, perturbation))))

    def on_before_aggregate(self, loop: FederatedLoop, module: LightningModule, aggregator: Aggregator) -> None:
        if self.estimate == "global":
            named = dict(module.named_parameters())
            self._previous = snapshot(self._previous, [named[n] for n in self._names])

    @torch.no_grad()
    def on_after_aggregate(self, loop: FederatedLoop, module: LightningModule) -> None:
        if self.estimate != "global":
            return
        named = dict(module.named_parameters())
        if [d.device for d in self._direction] != [p.device for p in self._previous]:  # first round, or resumed
            self._direction = [torch.empty_like(p) for p in self._previous]
        for d, old, n in zip(self._direction, self._previous, self._names):
            torch.sub(old, named[n].detach(), out=d)  # w_old - w_global
        norm = sum(float(d.double().pow(2).sum()) for d in self._direction) ** 0.5
        self._figures = {"fedlesam/direction_norm": norm}

    def metrics(self) -> dict[str, float]:
        """The round's ``fedlesam/direction_norm`` (``|w_old - w_global|``, ``estimate="global"``)."""
        return dict(self._figures)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._names and list(state_dict["names"]) != self._names:
            raise ValueError(f"LESAM state does not match the model: the checkpoint perturbs parameters"
                             f" {list(state_dict['names'])[:5]}..., this model {self._names[:5]}...")
        super().load_state_dict(state_dict)
        self._names = list(self._names)
