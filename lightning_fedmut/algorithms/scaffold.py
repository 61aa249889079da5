"""SCAFFOLD (Karimireddy et al., ICML 2020): control variates that correct the clients' drift."""

from __future__ import annotations

from lightning_fedmut.aggregators.fedavg import FedAvg as FedAvgAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.callbacks.scaffold import Scaffold

__all__ = ["SCAFFOLD"]


class SCAFFOLD(FederatedAlgorithm):
    r"""SCAFFOLD (option II): each client's gradients are corrected to ``g - c_i + c``; the server averages.

    Components: :class:`~lightning_fedmut.callbacks.Scaffold` (``num_clients``) as the local component and
    :class:`~lightning_fedmut.aggregators.FedAvg` (``weighted``).

    Args:
        num_clients: ``N`` in the server's control update ``c += |S| / N * mean(delta c_i)``; ``None``: the
            federation's number of clients.
        weighted: weight clients by their number of examples.

    Examples:
        >>> SCAFFOLD().hparams
        {'num_clients': None, 'weighted': True}
    """

    def __init__(self, num_clients: int | None = None, weighted: bool = True) -> None:
        super().__init__(aggregator=FedAvgAggregator(weighted=weighted), local=[Scaffold(num_clients=num_clients)])
        self._save_init_args(num_clients=num_clients, weighted=weighted)
