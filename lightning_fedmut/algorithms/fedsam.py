"""FedSAM and FedASAM (Qu et al., ICML 2022; Caldarola et al., ECCV 2022): sharpness-aware local training."""

from __future__ import annotations

from lightning_fedmut.aggregators.fedavg import FedAvg as FedAvgAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.callbacks.sam import SAM

__all__ = ["FedASAM", "FedSAM"]


class FedSAM(FederatedAlgorithm):
    r"""FedSAM: every client takes SAM steps (the gradient at ``w + rho * g / |g|``); the server averages.

    Components: :class:`~lightning_fedmut.callbacks.SAM` (``rho``) as the local component and
    :class:`~lightning_fedmut.aggregators.FedAvg` (``weighted``). The client's own optimizer (from
    ``configure_optimizers``) takes the step. The default ``rho = 0.05`` is SAM's and FedSAM's (Qu et al.;
    Caldarola et al. on CIFAR).

    Args:
        rho: the perturbation radius ``rho`` > 0.
        weighted: weight clients by their number of examples.

    Examples:
        >>> algo = FedSAM()
        >>> algo.hparams, [type(cb).__name__ for cb in algo.local]
        ({'rho': 0.05, 'weighted': True}, ['SAM'])
    """

    def __init__(self, rho: float = 0.05, weighted: bool = True) -> None:
        super().__init__(aggregator=FedAvgAggregator(weighted=weighted), local=[SAM(rho=rho)])
        self._save_init_args(rho=rho, weighted=weighted)


class FedASAM(FederatedAlgorithm):
    r"""FedASAM: every client takes ASAM steps (``e = rho * T^2 g / |T g|``, ``T = |w| + eta``); the server averages.

    Components: :class:`~lightning_fedmut.callbacks.SAM` (``rho``, ``adaptive=True``, ``eta``) and
    :class:`~lightning_fedmut.aggregators.FedAvg` (``weighted``). ``T = |w| + eta`` element-wise on parameters
    whose name contains ``weight``, ``T = 1`` on the others (biases), as the ASAM authors' code. The defaults
    ``rho = 0.5``, ``eta = 0.2`` are Caldarola et al.'s for FedASAM (ASAM's own code defaults to ``eta = 0.01``).

    Args:
        rho: the perturbation radius ``rho`` > 0.
        eta: ``eta`` >= 0 in ``T = |w| + eta``.
        weighted: weight clients by their number of examples.

    Examples:
        >>> FedASAM().hparams
        {'rho': 0.5, 'eta': 0.2, 'weighted': True}
    """

    def __init__(self, rho: float = 0.5, eta: float = 0.2, weighted: bool = True) -> None:
        super().__init__(aggregator=FedAvgAggregator(weighted=weighted), local=[SAM(rho=rho, adaptive=True, eta=eta)])
        self._save_init_args(rho=rho, eta=eta, weighted=weighted)
