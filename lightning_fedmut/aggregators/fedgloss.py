"""FedGloSS's server (Caldarola et al., CVPR 2025): SAM on the server along the previous pseudo-gradient, with ADMM."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor
from torch.nn import Module

from lightning_fedmut.aggregators.fedopt import FedAvgM
from lightning_fedmut.callbacks.sam import NORM_EPS
from lightning_fedmut.functional.server_optim import momentum_step_, squared_norm
from lightning_fedmut.utilities.validation import check_int, check_real

__all__ = ["FedGloSS", "scheduled_rho"]


def scheduled_rho(round_index: int, rho: float, rho0: float, warmup_rounds: int) -> float:
    """``rho`` of round ``round_index`` (0-based): from ``rho0`` up to ``rho`` in ``warmup_rounds`` equal steps, then
    ``rho`` (FedGloSS's ``T_s`` schedule); ``warmup_rounds`` <= 1: always ``rho``.

    Examples:
        >>> [scheduled_rho(t, 0.5, 0.1, 4) for t in range(6)]
        [0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.5]
    """
    if warmup_rounds <= 1:
        return rho
    return rho0 + (rho - rho0) / warmup_rounds * min(round_index, warmup_rounds)


class FedGloSS(FedAvgM):
    r"""FedGloSS's server, as ``models/servers/fedgloss_server.py`` of ``pietrocagnasso/fedgloss``.

    The clients of round ``t`` start from ``w + e`` with ``e = rho_t * d / |d|``, where ``d = w_prev - mean`` is the
    previous round's pseudo-gradient (``e = 0`` in the first round; the start model is written by
    :class:`~lightning_fedmut.callbacks.fedgloss.GlobalPerturbation`, which reads :meth:`ascent`). With
    ``Delta = mean_i w_i - (w + e)`` (the clients' mean update, ``weighted`` as in FedAvg):

    1. ``sigma <- sigma - Delta / (beta * m)`` (the ADMM dual; ``m`` the federation size);
    2. ``d <- -Delta``, kept for the next round's ascent;
    3. the server optimizer steps the *unperturbed* ``w`` along ``-d``: SGD with ``server_lr`` and ``momentum``
       (``v <- momentum * v + Delta``, ``w <- w + server_lr * v``, as :class:`FedAvgM`);
    4. ``w <- w - beta * sigma``.

    ``sigma``, ``d``, the momentum and the step count are server state, in the federated checkpoints. Parameters
    only: floating buffers take FedAvg's mean and integer state the maximum. ``beta=None`` leaves out the ADMM
    terms (steps 1 and 4). The reference divides the sum of the updates by ``beta * m * |S|`` for ``sigma`` (a
    uniform mean) while the pseudo-gradient is the example-weighted mean; here both are this aggregator's mean
    (equal with clients of equal sizes, as in the paper's splits, or with ``weighted=False``).

    Args:
        rho: the server's radius ``rho`` >= 0.
        beta: the ADMM ``beta`` > 0, the clients' (``None``: no ADMM).
        server_lr: the server learning rate > 0.
        momentum: the server momentum in ``[0, 1)``.
        num_clients: ``m``; ``None``: the number of clients handed to ``fit`` (set by the client side).
        rho0: the first round's ``rho`` with ``warmup_rounds`` > 1.
        warmup_rounds: ``T_s``: rounds over which ``rho`` grows linearly from ``rho0`` (0: none).
        weighted: weight clients by their number of examples in the mean.

    Examples:
        >>> from types import SimpleNamespace
        >>> agg = FedGloSS(rho=1.0, beta=None, weighted=False)
        >>> def round_of(target, w):
        ...     agg.reset(); agg.update(SimpleNamespace(state={"w": torch.tensor([target])}, num_examples=1))
        ...     return agg.compute({"w": torch.tensor([w])})["w"].item()
        >>> round_of(2.0, 0.0), round(agg.ascent_scale(), 9)  # d = -2: the next clients start from w + d / |d|
        (2.0, 0.5)
        >>> round_of(4.0, 2.0)  # Delta = 4 - (2 - 1) = 3
        5.0
    """

    def __init__(self, rho: float = 0.15, beta: float | None = 10.0, server_lr: float = 1.0, momentum: float = 0.0,
                 num_clients: int | None = None, rho0: float = 0.001, warmup_rounds: int = 0,
                 weighted: bool = True) -> None:
        super().__init__(server_lr=server_lr, momentum=momentum, weighted=weighted)
        self.rho = check_real("rho", rho, low=0.0)
        self.beta = None if beta is None else check_real("beta", beta, low=0.0, low_open=True)
        self.num_clients = None if num_clients is None else check_int("num_clients", num_clients, low=1)
        self.rho0 = check_real("rho0", rho0, low=0.0)
        self.warmup_rounds = check_int("warmup_rounds", warmup_rounds, low=0)
        self.federation_size = self.num_clients
        self._scale = 0.0

    def setup(self, module: Module) -> None:
        super().setup(module)
        if self.beta is not None and self.federation_size is None:
            raise ValueError("Expected FedGloSS's aggregator to know the federation size m for its ADMM step: pass"
                             " `num_clients`, or run it with callbacks.fedgloss.FedGloSS (as the FedGloSS algorithm"
                             " does), or pass beta=None; got neither.")

    def init_state(self, like: list[Tensor]) -> dict[str, list[Tensor]]:
        state = super().init_state(like)
        state["direction"] = [torch.zeros_like(t) for t in like]
        if self.beta is not None:
            state["sigma"] = [torch.zeros_like(t) for t in like]
        return state

    @property
    def direction(self) -> dict[str, Tensor]:
        """``d``, the last pseudo-gradient ``w_prev - mean``, keyed by parameter name (empty before a round)."""
        return dict(zip(self._keys, self._buffers.get("direction", [])))

    def ascent_scale(self) -> float:
        """``rho_t / |d|`` for the round about to train (``t`` = the rounds aggregated so far); 0 while ``d = 0``."""
        directions = self._buffers.get("direction", [])
        norm = math.sqrt(squared_norm(directions)) if directions else 0.0
        if norm == 0.0:
            return 0.0
        return scheduled_rho(self._steps, self.rho, self.rho0, self.warmup_rounds) / (norm + NORM_EPS)

    def ascent(self) -> dict[str, Tensor]:
        """The perturbation ``e = rho_t * d / |d|`` of the round about to train, keyed by parameter name (a copy)."""
        scale = self.ascent_scale()
        return {k: d * scale for k, d in self.direction.items()}

    @torch.no_grad()
    def compute(self, global_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self._scale = self.ascent_scale()  # the perturbation this round's clients started from
        out = super().compute(global_state)
        self._figures["fedgloss/rho"] = scheduled_rho(self._steps - 1, self.rho, self.rho0, self.warmup_rounds)
        if self.beta is not None:
            self._figures["fedgloss/sigma_norm"] = math.sqrt(squared_norm(self._buffers["sigma"]))
        return out

    def server_step_(self, delta: list[Tensor]) -> None:
        direction = self._buffers["direction"]
        if self._scale:
            torch._foreach_add_(delta, direction, alpha=-self._scale)  # Delta = mean - (w + e)
        if self.beta is not None:
            assert self.federation_size is not None  # checked by setup
            torch._foreach_add_(self._buffers["sigma"], delta, alpha=-1.0 / (self.beta * self.federation_size))
        torch._foreach_copy_(direction, delta)
        torch._foreach_neg_(direction)
        momentum_step_(delta, self._buffers["momentum_buffer"], self.server_lr, self.momentum)
        if self.beta is not None:
            torch._foreach_add_(delta, self._buffers["sigma"], alpha=-self.beta)

    @property
    def prefix(self) -> str:
        return "fedgloss"
