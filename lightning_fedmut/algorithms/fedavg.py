"""FedAvg (McMahan et al., AISTATS 2017): the mean of the trained client models."""

from __future__ import annotations

from lightning_fedmut.aggregators.fedavg import FedAvg as FedAvgAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm

__all__ = ["FedAvg"]


class FedAvg(FederatedAlgorithm):
    r"""FedAvg: clients start from the global model; the server takes the mean of their models.

    Components: :class:`~lightning_fedmut.aggregators.FedAvg` (``weighted``), nothing else.

    Args:
        weighted: weight each client by its number of examples (McMahan et al.); ``False`` is the uniform mean.

    Examples:
        >>> algo = FedAvg(weighted=False)
        >>> algo.name, algo.hparams, type(algo.aggregator).__module__
        ('FedAvg', {'weighted': False}, 'lightning_fedmut.aggregators.fedavg')
    """

    def __init__(self, weighted: bool = True) -> None:
        super().__init__(aggregator=FedAvgAggregator(weighted=weighted))
        self._save_init_args(weighted=weighted)
