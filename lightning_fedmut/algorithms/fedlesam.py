"""FedLESAM (Fan et al., ICML 2024): SAM with a locally estimated global perturbation, one pass a step."""

from __future__ import annotations

from lightning_fedmut.aggregators.fedavg import FedAvg as FedAvgAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.callbacks.lesam import LESAM

__all__ = ["FedLESAM"]


class FedLESAM(FederatedAlgorithm):
    r"""FedLESAM: every client step takes its gradient at ``w + rho * (w_old - w_global) / |w_old - w_global|``;
    the server averages.

    The base method of the authors' code (not FedLESAM-S nor FedLESAM-D): one forward and backward pass a step,
    the perturbation fixed for a client's training. Components:
    :class:`~lightning_fedmut.callbacks.lesam.LESAM` (``rho``, ``estimate``) as the local component and
    :class:`~lightning_fedmut.aggregators.FedAvg` (``weighted``; the authors' code averages uniformly). With
    ``estimate="global"`` (default, the authors' code) ``w_old`` is the previous round's global model, kept once
    on the server; with ``"client"`` (the paper's) the global model this client received when it last trained,
    one model per client in the client-state store. Code-against-paper notes: see ``LESAM``.

    Args:
        rho: the perturbation radius ``rho`` > 0.
        estimate: ``"global"`` or ``"client"``.
        weighted: weight clients by their number of examples.

    Examples:
        >>> algo = FedLESAM()
        >>> algo.hparams, [type(cb).__name__ for cb in algo.local]
        ({'rho': 0.05, 'estimate': 'global', 'weighted': False}, ['LESAM'])
    """

    def __init__(self, rho: float = 0.05, estimate: str = "global", weighted: bool = False) -> None:
        super().__init__(aggregator=FedAvgAggregator(weighted=weighted), local=[LESAM(rho=rho, estimate=estimate)])
        self._save_init_args(rho=rho, estimate=estimate, weighted=weighted)
