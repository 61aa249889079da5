"""A SAM step whose perturbation may be corrected by dual variables, and whose gradient hooks see the restored weights.

FedSMOO (Sun et al., ICML 2023) perturbs along the gradient corrected by a client dual ``mu_i`` and a global
correction ``s``, and updates ``mu_i`` with the perturbation; FedGloSS (Caldarola et al., CVPR 2025) and FedSMOO both
add their dynamic-regularisation terms after the weights came back from ``w + e`` to ``w``. The step here does both;
with no dual it is SAM with the hooks at ``w``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_fedmut.callbacks.sam import (
    SharpnessAwareStep,
    _frozen_running_stats,
    _quiet_logging,
    lightning_inner_closure,
)
from lightning_fedmut.utilities.validation import check_real

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

__all__ = ["DualSharpnessStep", "dual_perturbation_"]


@torch.no_grad()
def dual_perturbation_(grads: Sequence[Tensor], rho: float, dual: Sequence[Tensor | None] | None = None,
                       correction: Sequence[Tensor | None] | None = None, eps: float = 1e-7) -> list[Tensor]:
    r"""FedSMOO's perturbation ``e = rho * g~ / (|g~| + eps)`` with ``g~ = g - mu - s``; then ``mu <- mu + e - s``.

    ``dual`` (``mu``, updated in place) and ``correction`` (``s``) hold one tensor per gradient, or ``None`` for
    zero; without either it is SAM's ``e = rho * g / (|g| + eps)``. ``|.|`` is the L2 norm over all the tensors
    together, in float64.

    Examples:
        >>> mu = [torch.tensor([1.0, 0.0])]
        >>> e = dual_perturbation_([torch.tensor([4.0, 3.0])], rho=1.0, dual=mu, correction=[torch.tensor([0.0, -1.0])],
        ...                        eps=0.0)
        >>> e[0].tolist(), mu[0].tolist()  # g~ = (3, 4): e = (0.6, 0.8); mu = (1 + 0.6 - 0, 0 + 0.8 + 1)
        ([0.6000000238418579, 0.800000011920929], [1.600000023841858, 1.7999999523162842])
    """
    dual = [None] * len(grads) if dual is None else list(dual)
    correction = [None] * len(grads) if correction is None else list(correction)
    corrected = []
    for g, mu, s in zip(grads, dual, correction):
        c = g.detach().clone()
        if mu is not None:
            c.sub_(mu.to(c.dtype))
        if s is not None:
            c.sub_(s.to(c.dtype))
        corrected.append(c)
    norm = math.sqrt(sum(float(c.double().pow(2).sum()) for c in corrected))
    factor = rho / (norm + eps)
    perturbation = [c.mul_(factor) for c in corrected]
    for e, mu, s in zip(perturbation, dual, correction):
        if mu is not None:
            mu.add_(e.to(mu.dtype))
            if s is not None:
                mu.sub_(s.to(mu.dtype))
    return perturbation


def _no_closure() -> None:
    return None


class DualSharpnessStep(SharpnessAwareStep):
    r"""A Lightning callback: SAM steps whose perturbation uses ``g - mu - s``, with the hooks run at ``w``.

    Each optimizer step (automatic optimization, Lightning's closure):

    1. the inner closure at ``w`` (``training_step``, ``zero_grad``, ``backward``): gradients ``g``;
    2. ``e = rho * g~ / (|g~| + eps)`` with ``g~ = g - mu - s`` (:func:`dual_perturbation_`), and ``mu <- mu + e - s``
       when a dual is given; ``w <- w + e``;
    3. the inner closure again at ``w + e`` (quiet: no logging, BatchNorm running statistics untouched), then
       ``w`` restored exactly;
    4. Lightning's ``on_before_optimizer_step`` hooks (FedDyn's terms) and gradient clipping, at ``w``, on the
       gradients of step 3; the optimizer steps from ``w``.

    Step 4 is where this differs from ``SharpnessAwareStep`` (FedSAM's step), whose hooks run
    inside the second closure, at ``w + e``: FedSMOO's and FedGloSS's reference codes add their regularisation
    after the weights came back to ``w``. A closure without Lightning's structure is refused.

    Args:
        rho: the perturbation radius ``rho`` > 0.
        names: the parameter names ``dual`` and ``correction`` are keyed by.
        dual: the client's ``mu`` (CPU or device tensors keyed by name, updated in place: read it after training),
            or ``None``.
        correction: the global ``s``, keyed by name, or ``None``.
        eps: added to the norm (FedSMOO's code: ``1e-7``).
    """

    def __init__(self, rho: float, names: Sequence[str] = (), dual: dict[str, Tensor] | None = None,
                 correction: dict[str, Tensor] | None = None, eps: float = 1e-7) -> None:
        super().__init__(rho)
        self.eps = check_real("eps", eps, low=0.0)
        self.names = list(names)
        self.dual = dual
        self.correction = correction
        self._by_param: dict[int, str] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        named = dict(pl_module.named_parameters())
        self._by_param = {id(named[n]): n for n in self.names if n in named}
        if self.dual is not None:
            for n, mu in self.dual.items():
                if n in named:
                    self.dual[n] = mu.to(device=named[n].device, dtype=named[n].dtype)
        super().on_train_start(trainer, pl_module)

    def _sam_step(self, optimizer: Any, base_step: Callable[..., Any], closure: Callable[[], Any] | None = None,
                  **kwargs: Any) -> Any:
        inner = lightning_inner_closure(closure)
        if closure is None or inner is None:
            raise RuntimeError("This SAM step needs the closure Lightning passes to `optimizer.step` in automatic"
                               " optimization (partial(Precision._wrap_closure, model, optimizer, closure)); got"
                               f" {closure!r}.")
        self.split_closure = True
        first = inner()
        saved = inner._result
        if first is None:  # training_step returned None: Lightning skips the step
            return None
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            closure.func(*closure.args[:2], _no_closure)  # type: ignore[attr-defined]
            return base_step(**kwargs)
        names = [self._by_param.get(id(p)) for p in params]
        dual = None if self.dual is None else [None if n is None else self.dual.get(n) for n in names]
        correction = None if self.correction is None else [
            None if n is None or n not in self.correction else self.correction[n].to(p.device)
            for n, p in zip(names, params)]
        perturbation = dual_perturbation_([p.grad for p in params], self.rho, dual, correction, self.eps)
        start = [p.detach().clone() for p in params]
        with torch.no_grad():
            torch._foreach_add_(params, [e.to(p.dtype) for e, p in zip(perturbation, params)])
        assert self._module is not None
        with _quiet_logging(self._module), _frozen_running_stats(self._module):
            inner()  # gradients at w + e, without the hooks
        with torch.no_grad():
            torch._foreach_copy_(params, start)
        closure.func(*closure.args[:2], _no_closure)  # type: ignore[attr-defined]  # hooks and clipping, at w
        inner._result = saved  # the step's outputs (loss, progress bar) are those at w
        self.steps += 1
        base_step(**kwargs)
        return first
