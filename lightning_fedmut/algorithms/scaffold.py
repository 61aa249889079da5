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
        weighted: weight clients by their number of examples in the global model's mean.
        control_weights: ``"uniform"`` (the paper's control update) or ``"data"`` (by data share, as the reference
            code of the FedMut authors' lab); see :class:`~lightning_fedmut.callbacks.Scaffold`.
        gradient_clip: clip each local step's raw gradients to this total norm before the correction (the
            reference code uses 10); ``None``: no clipping.

    The reference code's configuration is ``SCAFFOLD(weighted=False, control_weights="data", gradient_clip=10.0)``.

    Examples:
        >>> SCAFFOLD().hparams
        {'num_clients': None, 'weighted': True, 'control_weights': 'uniform', 'gradient_clip': None}
    """

    def __init__(self, num_clients: int | None = None, weighted: bool = True, control_weights: str = "uniform",
                 gradient_clip: float | None = None) -> None:
        super().__init__(aggregator=FedAvgAggregator(weighted=weighted),
                         local=[Scaffold(num_clients=num_clients, control_weights=control_weights,
                                         gradient_clip=gradient_clip)])
        self._save_init_args(num_clients=num_clients, weighted=weighted, control_weights=control_weights,
                             gradient_clip=gradient_clip)
