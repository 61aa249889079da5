"""MoFedSAM (Qu et al., ICML 2022, Algorithm 2): SAM client steps with a client-level momentum from the server."""

from __future__ import annotations

from lightning_fedmut.aggregators.fedavg import FedAvg as FedAvgAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.callbacks.mofedsam import MoSAM

__all__ = ["MoFedSAM"]


class MoFedSAM(FederatedAlgorithm):
    r"""MoFedSAM: every client steps with ``alpha * grad F(w + e) + (1 - alpha) * Delta``; the server averages.

    ``e = rho * g / |g|`` is SAM's perturbation and ``Delta = -(w_glb(t) - w_glb(t-1)) / (K eta_l)`` the last
    global update as a mean gradient (zero in round 0), kept by the server and checkpointed. Components:
    :class:`~lightning_fedmut.callbacks.mofedsam.MoSAM` (``rho``, ``alpha``) as the local component and
    :class:`~lightning_fedmut.aggregators.FedAvg` (``weighted``; the paper's and the reference code's mean is
    uniform, ``eta_g = 1``). The defaults are ``woodenchild95/FL-Simulator``'s ``alpha = 0.1`` and SAM's
    ``rho = 0.05``. ``alpha = 1`` is FedSAM. Where the paper and that code differ: see ``MoSAM``.

    Args:
        rho: SAM's perturbation radius ``rho`` > 0.
        alpha: the weight of the SAM gradient, in ``[0, 1]``.
        weighted: weight clients by their number of examples.

    Examples:
        >>> algo = MoFedSAM()
        >>> algo.hparams, [type(cb).__name__ for cb in algo.local]
        ({'rho': 0.05, 'alpha': 0.1, 'weighted': False}, ['MoSAM'])
    """

    def __init__(self, rho: float = 0.05, alpha: float = 0.1, weighted: bool = False) -> None:
        super().__init__(aggregator=FedAvgAggregator(weighted=weighted), local=[MoSAM(rho=rho, alpha=alpha)])
        self._save_init_args(rho=rho, alpha=alpha, weighted=weighted)
