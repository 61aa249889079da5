"""FedProx (Li et al., MLSys 2020): a proximal term keeps each client near its start model."""

from __future__ import annotations

from lightning_fedmut.aggregators.fedavg import FedAvg as FedAvgAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.callbacks.fedprox import FedProx as FedProxCallback

__all__ = ["FedProx"]


class FedProx(FederatedAlgorithm):
    r"""FedProx: every client minimises its loss plus ``mu / 2 * |w - w_start|^2``; the server averages.

    Components: :class:`~lightning_fedmut.callbacks.FedProx` (``mu``) as the local component and
    :class:`~lightning_fedmut.aggregators.FedAvg` (``weighted``).

    Args:
        mu: the proximal weight ``mu`` >= 0 (0: FedAvg bit for bit).
        weighted: weight clients by their number of examples.

    Examples:
        >>> algo = FedProx(mu=0.1)
        >>> algo.hparams, [type(cb).__name__ for cb in algo.local]
        ({'mu': 0.1, 'weighted': True}, ['FedProx'])
    """

    def __init__(self, mu: float = 0.01, weighted: bool = True) -> None:
        super().__init__(aggregator=FedAvgAggregator(weighted=weighted), local=[FedProxCallback(mu=mu)])
        self._save_init_args(mu=mu, weighted=weighted)
