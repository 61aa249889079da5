"""DP-FedAvg and DP-FedMut: user-level central differential privacy (McMahan et al., ICLR 2018) as presets."""

from __future__ import annotations

from lightning_fedmut.aggregators.fedavg import FedAvg as FedAvgAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.callbacks.mutation import MutationCallback
from lightning_fedmut.privacy.aggregator import DPAggregator
from lightning_fedmut.privacy.callback import DifferentialPrivacy
from lightning_fedmut.sampling import PoissonSampler, UniformSampler

__all__ = ["DPFedAvg", "DPFedMut"]


class DPFedAvg(FederatedAlgorithm):
    r"""DP-FedAvg: clipped client updates, Gaussian noise on their sum, the noised mean as the next global model.

    Components: :class:`~lightning_fedmut.privacy.DifferentialPrivacy` (``delta``, ``target_epsilon``,
    ``accountant``) as the local component; :class:`~lightning_fedmut.privacy.DPAggregator` (``noise_multiplier``,
    ``clip_norm``, ``target_quantile``, ``clip_learning_rate``, ``count_stddev``, ``seed``) around
    ``FedAvg(weighted=False)``; :class:`~lightning_fedmut.sampling.PoissonSampler` (``sampling_rate``; ``None``:
    ``clients_per_round / N``), or, with ``poisson=False``, the uniform fixed-size sampler (RDP accounting only).

    Examples:
        >>> algo = DPFedAvg(noise_multiplier=1.1, clip_norm=0.5, sampling_rate=0.1)
        >>> type(algo.aggregator).__name__, type(algo.sampler).__name__, [type(c).__name__ for c in algo.local]
        ('DPAggregator', 'PoissonSampler', ['DifferentialPrivacy'])
    """

    def __init__(self, noise_multiplier: float | None = 1.0, clip_norm: float = 1.0, delta: float = 1e-5,
                 target_epsilon: float | None = None, accountant: str = "rdp", sampling_rate: float | None = None,
                 poisson: bool = True, target_quantile: float | None = None, clip_learning_rate: float = 0.2,
                 count_stddev: float | None = None, seed: int | None = None) -> None:
        if not isinstance(poisson, bool):
            raise TypeError(f"Expected `poisson` to be a bool, got {poisson!r}.")
        if not poisson and sampling_rate is not None:
            raise ValueError(f"Expected `sampling_rate`=None with poisson=False (the uniform sampler draws"
                             f" `clients_per_round` clients), got {sampling_rate!r}.")
        super().__init__(
            aggregator=DPAggregator(FedAvgAggregator(weighted=False), noise_multiplier=noise_multiplier,
                                    clip_norm=clip_norm, target_quantile=target_quantile,
                                    clip_learning_rate=clip_learning_rate, count_stddev=count_stddev, seed=seed),
            local=[DifferentialPrivacy(delta=delta, target_epsilon=target_epsilon, accountant=accountant)],
            sampler=PoissonSampler(rate=sampling_rate) if poisson else UniformSampler(),
        )
        self._save_init_args(noise_multiplier=noise_multiplier, clip_norm=clip_norm, delta=delta,
                             target_epsilon=target_epsilon, accountant=accountant, sampling_rate=sampling_rate,
                             poisson=poisson, target_quantile=target_quantile, clip_learning_rate=clip_learning_rate,
                             count_stddev=count_stddev, seed=seed)


class DPFedMut(FederatedAlgorithm):
    r"""DP-FedMut: FedMut's mutated start models with DP-FedAvg's clipping, noise and accounting.

    The mutation reads released global models only (the last two aggregates) and the server's own coefficient
    draws, so it is post-processing: the start models cost no privacy, and each client's clipped update is its change
    from the start model it was given. FedMut's coefficient table needs ``K`` clients every round, so the sampler is
    the uniform fixed-size one and the accountant RDP (sampling without replacement, replace-one-client neighbours).

    Components: :class:`~lightning_fedmut.MutationCallback` (``radius``, ``acceleration``, ``acceleration_rounds``,
    ``mutate_buffers``) as the start-model component, then what :class:`DPFedAvg` holds, with
    :class:`~lightning_fedmut.sampling.UniformSampler`.

    Examples:
        >>> algo = DPFedMut(noise_multiplier=1.0, radius=2.0)
        >>> type(algo.start_model).__name__, type(algo.sampler).__name__
        ('MutationCallback', 'UniformSampler')
    """

    def __init__(self, noise_multiplier: float | None = 1.0, clip_norm: float = 1.0, delta: float = 1e-5,
                 target_epsilon: float | None = None, radius: float = 4.0, acceleration: float = 0.3,
                 acceleration_rounds: int = 50, mutate_buffers: bool = False, target_quantile: float | None = None,
                 clip_learning_rate: float = 0.2, count_stddev: float | None = None, seed: int | None = None) -> None:
        super().__init__(
            aggregator=DPAggregator(FedAvgAggregator(weighted=False), noise_multiplier=noise_multiplier,
                                    clip_norm=clip_norm, target_quantile=target_quantile,
                                    clip_learning_rate=clip_learning_rate, count_stddev=count_stddev, seed=seed),
            start_model=MutationCallback(radius=radius, acceleration=acceleration,
                                         acceleration_rounds=acceleration_rounds, mutate_buffers=mutate_buffers),
            local=[DifferentialPrivacy(delta=delta, target_epsilon=target_epsilon, accountant="rdp")],
            sampler=UniformSampler(),
        )
        self._save_init_args(noise_multiplier=noise_multiplier, clip_norm=clip_norm, delta=delta,
                             target_epsilon=target_epsilon, radius=radius, acceleration=acceleration,
                             acceleration_rounds=acceleration_rounds, mutate_buffers=mutate_buffers,
                             target_quantile=target_quantile, clip_learning_rate=clip_learning_rate,
                             count_stddev=count_stddev, seed=seed)
