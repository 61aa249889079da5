"""Clustered sampling (Fraboni et al., ICML 2021, Algorithm 2): one client from each cluster of similar clients."""

from __future__ import annotations

from lightning_fedmut.aggregators.fedavg import FedAvg as FedAvgAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.sampling import ClusteredSampler

__all__ = ["ClusteredSampling"]


class ClusteredSampling(FederatedAlgorithm):
    r"""Clustered sampling: FedAvg whose clients are drawn one per cluster of similar updates.

    Components: the sampler :class:`~lightning_fedmut.sampling.ClusteredSampler` (``similarity``, ``seed``) and
    :class:`~lightning_fedmut.aggregators.FedAvg` (``weighted``).

    Args:
        similarity: how two clients' updates are compared (see ``ClusteredSampler``).
        weighted: weight clients by their number of examples.
        seed: seed of the sampler's generator; ``None`` derives it from the loop's ``seed``.

    Examples:
        >>> ClusteredSampling().hparams
        {'similarity': 'arccos', 'weighted': True, 'seed': None}
    """

    def __init__(self, similarity: str = "arccos", weighted: bool = True, seed: int | None = None) -> None:
        super().__init__(aggregator=FedAvgAggregator(weighted=weighted),
                         sampler=ClusteredSampler(similarity=similarity, seed=seed))
        self._save_init_args(similarity=similarity, weighted=weighted, seed=seed)
