"""FedGloSS's start model and clients (Caldarola et al., CVPR 2025): the server's SAM ascent, client SAM with ADMM."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lightning_fedmut.aggregators.fedgloss import scheduled_rho
from lightning_fedmut.callbacks.base import LocalCallback, StartModelCallback
from lightning_fedmut.callbacks.dual_sam import DualSharpnessStep
from lightning_fedmut.callbacks.feddyn import DynamicRegularizer
from lightning_fedmut.callbacks.sam import NORM_EPS, check_sam_loop
from lightning_fedmut.functional.state import federated_parameters
from lightning_fedmut.utilities.validation import check_int, check_real

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientResult, ClientTask

__all__ = ["FedGloSS", "GlobalPerturbation"]


def _fedgloss_aggregator(loop: FederatedLoop) -> object:
    from lightning_fedmut.aggregators.fedgloss import FedGloSS as FedGloSSAggregator

    if not isinstance(loop.aggregator, FedGloSSAggregator):
        raise TypeError(f"Expected the loop's aggregator to be aggregators.FedGloSS (it holds the pseudo-gradient the"
                        f" server ascends along), got {type(loop.aggregator).__name__}.")
    return loop.aggregator


class GlobalPerturbation(StartModelCallback):
    r"""FedGloSS's server ascent: every client of round ``t`` starts from ``w + rho_t * d / |d|``.

    ``d`` is the previous round's pseudo-gradient and ``rho_t`` the server's radius, both held by the aggregator
    :class:`~lightning_fedmut.aggregators.FedGloSS` (required, checked in ``setup``), which also removes the
    perturbation before its step. The start model is written in place, one client at a time: no copy of the model
    is kept. In the first round (``d = 0``) the clients start from ``w``.

    Examples:
        >>> isinstance(GlobalPerturbation(), StartModelCallback)
        True
    """

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        _fedgloss_aggregator(loop)

    @torch.no_grad()
    def on_client_fit_start(self, loop: FederatedLoop, module: LightningModule, task: ClientTask) -> None:
        aggregator = _fedgloss_aggregator(loop)
        scale = aggregator.ascent_scale()  # type: ignore[attr-defined]
        if scale == 0.0:
            return
        for key, d in aggregator.direction.items():  # type: ignore[attr-defined]
            target = task.start_state[key]
            target.add_(d.to(device=target.device, dtype=target.dtype), alpha=scale)


class FedGloSS(LocalCallback):
    r"""FedGloSS's client side, as ``models/clients/fedgloss_client.py`` and ``FedGloSSOpt`` of
    ``pietrocagnasso/fedgloss``: SAM steps plus the ADMM terms.

    Client ``i`` starts from the model the server sent (``w~ = w + e``), keeps a dual ``lambda_i`` (declared client
    state, zero at first) and takes SAM steps with radius ``rho_l`` whose gradient, taken at the perturbed point,
    gets ``(v - w~) / beta - lambda_i`` once the weights are back at ``v`` (a
    :class:`~lightning_fedmut.callbacks.dual_sam.DualSharpnessStep` and FedDyn's regulariser with ``alpha = 1 /
    beta``); after training ``lambda_i <- lambda_i - (v - w~) / beta``. ``rho_l = 0`` gives plain local steps with
    the ADMM terms (the paper's SGD clients); ``beta = None`` gives client SAM alone. ``rho_l`` follows the same
    warm-up as the server's ``rho`` (``rho0``, ``warmup_rounds``).

    This callback also tells the aggregator :class:`~lightning_fedmut.aggregators.FedGloSS` the federation size
    when it has no ``num_clients``, and checks that it has the same ``beta``.

    Args:
        rho_l: the clients' SAM radius >= 0.
        beta: the ADMM ``beta`` > 0, or ``None``.
        rho0: the first round's ``rho_l`` with ``warmup_rounds`` > 1.
        warmup_rounds: rounds over which ``rho_l`` grows linearly from ``rho0`` (0: none).

    Examples:
        >>> FedGloSS(rho_l=0.1, beta=10.0).hparams
        {'rho_l': 0.1, 'beta': 10.0, 'rho0': 0.001, 'warmup_rounds': 0}
    """

    def __init__(self, rho_l: float = 0.15, beta: float | None = 10.0, rho0: float = 0.001,
                 warmup_rounds: int = 0) -> None:
        self.rho_l = check_real("rho_l", rho_l, low=0.0)
        self.beta = None if beta is None else check_real("beta", beta, low=0.0, low_open=True)
        self.rho0 = check_real("rho0", rho0, low=0.0)
        self.warmup_rounds = check_int("warmup_rounds", warmup_rounds, low=0)
        self._names: list[str] = []
        self._clients: dict[int, DynamicRegularizer]
        self._dual: dict[str, Tensor] | None  # lambda_i of the client in training (None: zero)
        self.add_state("_clients", {}, scope="round")
        self.add_state("_dual", None, scope="client")

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        from lightning_fedmut.aggregators.fedgloss import FedGloSS as FedGloSSAggregator

        self._names = [n for n, _ in federated_parameters(module)]
        if self.rho_l > 0:
            check_sam_loop(loop, module)
        aggregator = loop.aggregator
        if isinstance(aggregator, FedGloSSAggregator):
            if aggregator.beta != self.beta:
                raise ValueError(f"Expected the FedGloSS aggregator's `beta` to be the clients' {self.beta}, got"
                                 f" {aggregator.beta}.")
            if aggregator.num_clients is None:
                aggregator.federation_size = loop.num_clients

    def teardown(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        self._clients = {}

    def on_client_fit_start(self, loop: FederatedLoop, module: LightningModule, task: ClientTask) -> None:
        rho = scheduled_rho(loop.round, self.rho_l, self.rho0, self.warmup_rounds)
        if rho > 0:
            task.callbacks.append(DualSharpnessStep(rho, eps=NORM_EPS))
        if self.beta is not None:
            regularizer = DynamicRegularizer(1.0 / self.beta, self._names, self._dual)
            self._clients[task.slot] = regularizer
            task.callbacks.append(regularizer)

    def on_client_fit_end(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        regularizer = self._clients.pop(result.task.slot, None)
        if regularizer is not None and regularizer.new_linear is not None:
            self._dual = regularizer.new_linear  # stored with the client's state by the loop

    def on_client_fit_failure(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        self._clients.pop(result.task.slot, None)
