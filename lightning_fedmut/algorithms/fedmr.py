"""FedMR (Hu et al., IEEE TMC 2023): the trained client models, recombined layer by layer, start the next round."""

from __future__ import annotations

from lightning_fedmut.aggregators.fedavg import FedAvg as FedAvgAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.callbacks.fedmr import FedMR as FedMRCallback

__all__ = ["FedMR"]


class FedMR(FederatedAlgorithm):
    r"""FedMR: model recombination as the start-model component; the global model is the clients' mean.

    Components: :class:`~lightning_fedmut.callbacks.FedMR` (``first_stage_bound``, ``seed``) as the start-model
    component and :class:`~lightning_fedmut.aggregators.FedAvg` (``weighted``).

    Args:
        first_stage_bound: the first round whose trained models are recombined (round ``first_stage_bound + 1``
            is the first to start from them), as ``first_stage_bound`` in the authors' code.
        weighted: weight clients by their number of examples.
        seed: seed of the permutation generator; ``None`` derives it from the loop's ``seed``.

    Examples:
        >>> FedMR(first_stage_bound=50).hparams
        {'first_stage_bound': 50, 'weighted': True, 'seed': None}
    """

    def __init__(self, first_stage_bound: int = 0, weighted: bool = True, seed: int | None = None) -> None:
        super().__init__(aggregator=FedAvgAggregator(weighted=weighted),
                         start_model=FedMRCallback(first_stage_bound=first_stage_bound, seed=seed))
        self._save_init_args(first_stage_bound=first_stage_bound, weighted=weighted, seed=seed)
