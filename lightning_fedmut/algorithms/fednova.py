"""FedNova (Wang et al., NeurIPS 2020): each client's update normalised by its number of local steps."""

from __future__ import annotations

from lightning_fedmut.aggregators.fednova import FedNova as FedNovaAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm

__all__ = ["FedNova"]


class FedNova(FederatedAlgorithm):
    r"""FedNova: clients train as in FedAvg; the server averages their updates per local step, then rescales.

    Components: the aggregator :class:`~lightning_fedmut.aggregators.FedNova` (``momentum``, ``weighted``),
    which reads each client's real step count from ``ClientResult.num_steps``; nothing else. It corrects the
    objective inconsistency of FedAvg when clients take different numbers of steps (different data sizes,
    ``local_epochs``): with equal step counts it is FedAvg.

    Args:
        momentum: the clients' local SGD momentum (what their ``configure_optimizers`` uses), ``0`` for plain SGD.
        weighted: weight clients by their number of examples (the paper's setting).

    Examples:
        >>> algo = FedNova(momentum=0.5)
        >>> algo.name, algo.hparams, type(algo.aggregator).__module__
        ('FedNova', {'momentum': 0.5, 'weighted': True}, 'lightning_fedmut.aggregators.fednova')
    """

    def __init__(self, momentum: float = 0.0, weighted: bool = True) -> None:
        super().__init__(aggregator=FedNovaAggregator(momentum=momentum, weighted=weighted))
        self._save_init_args(momentum=momentum, weighted=weighted)
