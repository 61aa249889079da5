"""FedGloSS (Caldarola et al., CVPR 2025): global, server-side sharpness-aware minimisation."""

from __future__ import annotations

from lightning_fedmut.aggregators.fedgloss import FedGloSS as FedGloSSAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.callbacks.fedgloss import FedGloSS as FedGloSSClient
from lightning_fedmut.callbacks.fedgloss import GlobalPerturbation

__all__ = ["FedGloSS"]


class FedGloSS(FederatedAlgorithm):
    r"""FedGloSS: the server sends ``w + rho * d / |d|`` (``d`` the previous pseudo-gradient), clients take SAM steps
    with ADMM terms, and a server optimizer steps the unperturbed ``w`` along the clients' mean update.

    Components: :class:`~lightning_fedmut.callbacks.fedgloss.GlobalPerturbation` (the start model),
    :class:`~lightning_fedmut.callbacks.fedgloss.FedGloSS` (``rho_l``, ``beta``: client SAM and the ADMM dual in the
    client-state store) as the local component, and the aggregator
    :class:`~lightning_fedmut.aggregators.FedGloSS` (``rho``, ``beta``, ``server_lr``, ``momentum``: ``d``, the
    server dual ``sigma`` and the momentum, checkpointed). The updates follow the authors' code
    (``pietrocagnasso/fedgloss``); ``docs/concepts/global-sharpness.md`` writes them out and says where it differs
    from the paper. The defaults are the authors' CIFAR-10 script's (``--rho 0.15 --rho-l 0.15 --beta 10
    --server-lr 1 --server-momentum 0``; they also warm ``rho`` up over ``--T-s 2000`` of 10000 rounds).

    Args:
        rho: the server's radius >= 0.
        rho_l: the clients' SAM radius >= 0 (0: plain local steps).
        beta: the ADMM ``beta`` > 0; ``None``: no ADMM terms.
        server_lr: the server learning rate.
        momentum: the server momentum in ``[0, 1)``.
        num_clients: ``m`` in the server dual's update; ``None``: the number of clients handed to ``fit``.
        rho0: the first round's radius with ``warmup_rounds`` > 1.
        warmup_rounds: rounds over which both radii grow linearly from ``rho0`` (0: none).
        weighted: weight clients by their number of examples.

    Examples:
        >>> algo = FedGloSS(rho=0.1, rho_l=0.05)
        >>> algo.hparams["rho"], type(algo.start_model).__name__, [type(cb).__name__ for cb in algo.local]
        (0.1, 'GlobalPerturbation', ['FedGloSS'])
    """

    def __init__(self, rho: float = 0.15, rho_l: float = 0.15, beta: float | None = 10.0, server_lr: float = 1.0,
                 momentum: float = 0.0, num_clients: int | None = None, rho0: float = 0.001, warmup_rounds: int = 0,
                 weighted: bool = True) -> None:
        super().__init__(
            aggregator=FedGloSSAggregator(rho=rho, beta=beta, server_lr=server_lr, momentum=momentum,
                                          num_clients=num_clients, rho0=rho0, warmup_rounds=warmup_rounds,
                                          weighted=weighted),
            start_model=GlobalPerturbation(),
            local=[FedGloSSClient(rho_l=rho_l, beta=beta, rho0=rho0, warmup_rounds=warmup_rounds)])
        self._save_init_args(rho=rho, rho_l=rho_l, beta=beta, server_lr=server_lr, momentum=momentum,
                             num_clients=num_clients, rho0=rho0, warmup_rounds=warmup_rounds, weighted=weighted)
