"""FedSMOO (Sun et al., ICML 2023): dynamic regularised sharpness-aware minimisation in federated learning."""

from __future__ import annotations

from lightning_fedmut.aggregators.fedsmoo import FedSMOO as FedSMOOAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.callbacks.fedsmoo import FedSMOO as FedSMOOCallback

__all__ = ["FedSMOO"]


class FedSMOO(FederatedAlgorithm):
    r"""FedSMOO: FedDyn's dynamic regulariser plus SAM steps whose perturbation a global correction aligns.

    Components: :class:`~lightning_fedmut.callbacks.FedSMOO` (``alpha``, ``rho``; each client's FedDyn term and
    dual ``mu_i`` in the client-state store) as the local component, and the aggregator
    :class:`~lightning_fedmut.aggregators.FedSMOO` (``alpha``, ``rho``, ``num_clients``; FedDyn's ``h`` and the
    global correction ``s``, checkpointed), which averages uniformly as the reference code does. The updates
    follow the authors' code (FL-Simulator's ``client/fedsmoo.py``, ``optimizer/DRegSAM.py``,
    ``server/FedSMOO.py``); ``docs/concepts/global-sharpness.md`` writes them out. The defaults ``alpha = 0.1``,
    ``rho = 0.1`` are the reference code's argument defaults (``--lamb 0.1 --rho 0.1`` in ``train.py``).

    Args:
        alpha: FedDyn's ``alpha`` (``lamb``) > 0.
        rho: the perturbation radius > 0.
        num_clients: ``m`` in FedDyn's server update; ``None``: the number of clients handed to ``fit``.

    Examples:
        >>> algo = FedSMOO(alpha=0.1, rho=0.05)
        >>> algo.hparams, [type(cb).__name__ for cb in algo.local], type(algo.aggregator).__module__
        ({'alpha': 0.1, 'rho': 0.05, 'num_clients': None}, ['FedSMOO'], 'lightning_fedmut.aggregators.fedsmoo')
    """

    def __init__(self, alpha: float = 0.1, rho: float = 0.1, num_clients: int | None = None) -> None:
        super().__init__(aggregator=FedSMOOAggregator(alpha=alpha, rho=rho, num_clients=num_clients),
                         local=[FedSMOOCallback(alpha=alpha, rho=rho)])
        self._save_init_args(alpha=alpha, rho=rho, num_clients=num_clients)
