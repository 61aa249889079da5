"""Server optimizers over the pseudo-gradient, as pure functions (Reddi et al., ICLR 2021; Jhunjhunwala et al., 2023).

The pseudo-gradient of a round is ``delta = mean_i(w_i) - w_glb``: the step plain FedAvg would take. A server
optimizer turns it into another step (momentum, an adaptive per-coordinate scale, an extrapolated length) and the
new global model is ``w_glb + step``. Every function works in place on lists of tensors, one per state entry,
with one ``torch._foreach_*`` call when the tensors share a device and dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_fedmut.functional.state import _groups

#: The second-moment rules of Reddi et al.'s Algorithm 2.
ADAPTIVE_RULES = ("adagrad", "adam", "yogi")


@torch.no_grad()
def pseudo_gradient_(mean: Sequence[Tensor], global_state: Sequence[Tensor]) -> None:
    """Turn ``mean`` (the clients' mean) into the pseudo-gradient ``mean - global_state``, in place.

    Examples:
        >>> mean = [torch.tensor([1.5, 0.0])]
        >>> pseudo_gradient_(mean, [torch.tensor([1.0, 1.0])]); mean
        [tensor([ 0.5000, -1.0000])]
    """
    if _groups(mean, global_state):
        torch._foreach_sub_(list(mean), list(global_state))
        return
    for m, g in zip(mean, global_state):
        m.sub_(g.to(device=m.device, dtype=m.dtype))


@torch.no_grad()
def apply_step_(step: Sequence[Tensor], global_state: Sequence[Tensor]) -> None:
    """Turn ``step`` into the new global model ``global_state + step``, in place.

    Examples:
        >>> step = [torch.tensor([0.5])]
        >>> apply_step_(step, [torch.tensor([1.0])]); step
        [tensor([1.5000])]
    """
    if _groups(step, global_state):
        torch._foreach_add_(list(step), list(global_state))
        return
    for s, g in zip(step, global_state):
        s.add_(g.to(device=s.device, dtype=s.dtype))


@torch.no_grad()
def momentum_step_(delta: Sequence[Tensor], momentum_buffer: Sequence[Tensor], server_lr: float,
                   momentum: float) -> None:
    """FedAvgM (Hsu et al. 2019): ``v = momentum * v + delta``; ``delta`` becomes the step ``server_lr * v``.

    Examples:
        >>> delta, v = [torch.tensor([1.0])], [torch.tensor([2.0])]
        >>> momentum_step_(delta, v, server_lr=0.5, momentum=0.9); delta, v
        ([tensor([1.4000])], [tensor([2.8000])])
    """
    if _groups(delta, momentum_buffer):
        torch._foreach_mul_(list(momentum_buffer), momentum)
        torch._foreach_add_(list(momentum_buffer), list(delta))
        torch._foreach_copy_(list(delta), list(momentum_buffer))
        torch._foreach_mul_(list(delta), server_lr)
        return
    for d, v in zip(delta, momentum_buffer):
        v.mul_(momentum).add_(d)
        d.copy_(v).mul_(server_lr)


@torch.no_grad()
def adaptive_step_(
    delta: Sequence[Tensor],
    exp_avg: Sequence[Tensor],
    exp_avg_sq: Sequence[Tensor],
    rule: str,
    server_lr: float,
    beta1: float,
    beta2: float,
    tau: float,
    step: int | None = None,
) -> None:
    r"""One step of FedAdagrad, FedAdam or FedYogi (Reddi et al. 2021, Algorithm 2); ``delta`` becomes the step.

    With ``d`` the pseudo-gradient: ``m = beta1 * m + (1 - beta1) * d``, then the second moment

    - ``"adagrad"``: ``v = v + d^2``;
    - ``"adam"``: ``v = beta2 * v + (1 - beta2) * d^2``;
    - ``"yogi"``: ``v = v - (1 - beta2) * d^2 * sign(v - d^2)``;

    and the step is ``server_lr * m / (sqrt(v) + tau)``. Algorithm 2 has no bias correction (``step=None``).
    Given ``step``, the step length is corrected as Adam's is: ``server_lr * sqrt(1 - beta2^step) / (1 -
    beta1^step)``. Adam's ``step`` is the 1-based count of server steps ``t``; Flower's ``FedAdam`` passes
    ``server_round + 1``, i.e. ``t + 1`` (see :class:`~lightning_fedmut.aggregators.FedAdam`).

    Examples:
        >>> d, m, v = [torch.tensor([0.1])], [torch.zeros(1)], [torch.zeros(1)]
        >>> adaptive_step_(d, m, v, "adam", server_lr=1.0, beta1=0.0, beta2=0.0, tau=0.0); d
        [tensor([1.])]
    """
    if rule not in ADAPTIVE_RULES:
        raise ValueError(f"Expected `rule` in {ADAPTIVE_RULES}, got {rule!r}.")
    lr = server_lr
    if step is not None:
        if step < 1:
            raise ValueError(f"Expected `step` to be an integer >= 1, got {step}.")
        lr = server_lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
    for d, m, v in zip(delta, exp_avg, exp_avg_sq):
        d = d if d.dtype == m.dtype and d.device == m.device else d.to(device=m.device, dtype=m.dtype)
        m.mul_(beta1).add_(d, alpha=1.0 - beta1)
        square = d * d
        if rule == "adagrad":
            v.add_(square)
        elif rule == "adam":
            v.mul_(beta2).add_(square, alpha=1.0 - beta2)
        else:
            v.sub_(square * torch.sign(v - square), alpha=1.0 - beta2)
    for d, m, v in zip(delta, exp_avg, exp_avg_sq):
        d.copy_(m / (v.sqrt() + tau) * lr)


def extrapolated_lr(weighted_sq_norms: float, mean_sq_norm: float, epsilon: float) -> float:
    r"""FedExP's server step size ``max(1, sum_i p_i |d_i|^2 / (2 (|d|^2 + epsilon)))``.

    ``weighted_sq_norms`` is ``sum_i p_i |d_i|^2`` over the round's clients (``p_i`` summing to 1), each
    ``d_i = w_i - w_glb`` a client's update, and ``mean_sq_norm`` is ``|d|^2`` of their mean ``d = sum_i p_i d_i``.
    Since ``|d|^2 <= sum_i p_i |d_i|^2`` the ratio is at least 1/2 before the maximum; it is large when the
    clients' updates disagree (they cancel in the mean), which is when FedExP extrapolates.

    Examples:
        >>> extrapolated_lr(weighted_sq_norms=2.0, mean_sq_norm=0.5, epsilon=0.0)
        2.0
        >>> extrapolated_lr(weighted_sq_norms=1.0, mean_sq_norm=1.0, epsilon=1e-3)
        1.0
    """
    if epsilon < 0:
        raise ValueError(f"Expected `epsilon` >= 0, got {epsilon}.")
    denominator = 2.0 * (mean_sq_norm + epsilon)
    if denominator == 0.0:
        return 1.0  # every client returned the global model: nothing to extrapolate
    return max(1.0, weighted_sq_norms / denominator)


@torch.no_grad()
def squared_norm(tensors: Sequence[Tensor]) -> float:
    """``sum_j |tensors[j]|^2`` in float64.

    Examples:
        >>> squared_norm([torch.tensor([3.0]), torch.tensor([4.0])])
        25.0
    """
    return float(sum(t.detach().double().pow(2).sum() for t in tensors)) if tensors else 0.0


@torch.no_grad()
def squared_distance(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """``sum_j |a[j] - b[j]|^2`` in float64.

    Examples:
        >>> squared_distance([torch.tensor([1.0, 2.0])], [torch.tensor([0.0, 0.0])])
        5.0
    """
    total = 0.0
    for x, y in zip(a, b):
        total += float((x.detach().double() - y.detach().to(x.device).double()).pow(2).sum())
    return total
