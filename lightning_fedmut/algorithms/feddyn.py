"""FedDyn (Acar et al., ICLR 2021): federated learning based on dynamic regularization."""

from __future__ import annotations

from lightning_fedmut.aggregators.feddyn import FedDyn as FedDynAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.callbacks.feddyn import FedDyn as FedDynCallback

__all__ = ["FedDyn"]


class FedDyn(FederatedAlgorithm):
    r"""FedDyn: clients minimise ``L_i(w) - <g_i, w> + alpha / 2 * |w - w_server|^2``; the server corrects the mean.

    Components: :class:`~lightning_fedmut.callbacks.FedDyn` (``alpha``; each client's ``g_i`` in the client-state
    store) as the local component and the aggregator :class:`~lightning_fedmut.aggregators.FedDyn` (``alpha``,
    ``num_clients``; the server state ``h``, checkpointed), which averages uniformly as the paper does. The default
    ``alpha = 0.01`` is the paper's most common value.

    Args:
        alpha: FedDyn's ``alpha`` > 0.
        num_clients: ``m`` in the server's ``h`` update; ``None``: the number of clients handed to ``fit``.

    Examples:
        >>> algo = FedDyn(alpha=0.1)
        >>> algo.hparams, [type(cb).__module__ for cb in algo.local], type(algo.aggregator).__module__
        ({'alpha': 0.1, 'num_clients': None}, ['lightning_fedmut.callbacks.feddyn'], 'lightning_fedmut.aggregators.feddyn')
    """

    def __init__(self, alpha: float = 0.01, num_clients: int | None = None) -> None:
        super().__init__(aggregator=FedDynAggregator(alpha=alpha, num_clients=num_clients),
                         local=[FedDynCallback(alpha=alpha)])
        self._save_init_args(alpha=alpha, num_clients=num_clients)
