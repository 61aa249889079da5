"""FedMut (Hu et al., AAAI 2024): the aggregated model mutated into the next round's start models."""

from __future__ import annotations

from lightning_fedmut.aggregators.fedavg import FedAvg as FedAvgAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.callbacks.mutation import MutationCallback

__all__ = ["FedMut"]


class FedMut(FederatedAlgorithm):
    r"""FedMut: FedAvg whose next start models are the global model mutated along its last step.

    Components: :class:`~lightning_fedmut.MutationCallback` (``radius``, ``acceleration``,
    ``acceleration_rounds``, ``mutate_buffers``, ``seed``) as the start-model component and
    :class:`~lightning_fedmut.aggregators.FedAvg` (``weighted``; uniform by default, as the reference code).

    Args:
        radius: the mutation radius ``alpha``.
        acceleration: ``beta_0`` in ``[0, 1)``.
        acceleration_rounds: ``T_b``, the round at which ``beta_t`` reaches 0.
        mutate_buffers: also mutate floating buffers (BatchNorm running statistics).
        weighted: weight clients by their number of examples (warned: the reference code uses the uniform mean).
        seed: seed of the coefficient generator; ``None`` derives it from the loop's ``seed``.

    Examples:
        >>> FedMut(radius=2.0).hparams
        {'radius': 2.0, 'acceleration': 0.3, 'acceleration_rounds': 50, 'mutate_buffers': False, 'weighted': False, 'seed': None}
    """

    def __init__(self, radius: float = 4.0, acceleration: float = 0.3, acceleration_rounds: int = 50,
                 mutate_buffers: bool = False, weighted: bool = False, seed: int | None = None) -> None:
        super().__init__(
            aggregator=FedAvgAggregator(weighted=weighted),
            start_model=MutationCallback(radius=radius, acceleration=acceleration,
                                         acceleration_rounds=acceleration_rounds, mutate_buffers=mutate_buffers,
                                         seed=seed),
        )
        self._save_init_args(radius=radius, acceleration=acceleration, acceleration_rounds=acceleration_rounds,
                             mutate_buffers=mutate_buffers, weighted=weighted, seed=seed)
