"""FedGen (Zhu, Hong and Zhou, ICML 2021): data-free knowledge distillation, as the FedMut paper's Table 1 runs it."""

from __future__ import annotations

from typing import Any

from lightning_fedmut.aggregators.fedavg import FedAvg as FedAvgAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.callbacks.fedgen import FedGen as FedGenCallback
from lightning_fedmut.callbacks.fedgen import HeadSpec, LabelsFn

__all__ = ["FedGen"]


class FedGen(FederatedAlgorithm):
    r"""FedGen: the server trains a generator of latent features from the clients' heads; clients learn from it.

    Components: :class:`~lightning_fedmut.callbacks.FedGen` (the clients' regulariser and the server's generator
    training after each aggregation, with its settings) as the local component and
    :class:`~lightning_fedmut.aggregators.FedAvg` (``weighted``; example-weighted as in the FedMut reference code).
    The defaults are that code's; ``head`` names the split of the model into feature extractor and head (default:
    its last ``nn.Linear``).

    Args:
        alpha: client weight of the cross-entropy on generated features.
        beta: client weight of the KL term.
        head: the classifier head: a submodule path, a function of the module, or ``None``.
        labels: a function of a training batch that returns its labels, or ``None``.
        weighted: weight clients by their number of examples.
        batch_size: generated features per generator step and per client step.
        generator_steps: the generator's Adam steps per round.
        generator_lr: the generator's learning rate.
        generator_weight_decay: Adam's weight decay.
        teacher_weight: weight of the teacher loss.
        diversity_weight: weight of the diversity loss.
        hidden_dim: the generator's hidden width.
        noise_dim: the size of the generator's noise.
        reset_optimizer: a new Adam every round (the FedMut code); ``False`` keeps its moments.
        seed: seed of the server's draws and the generator's initial weights; ``None``: derived from the loop's.

    Examples:
        >>> algo = FedGen(head="net.9", generator_steps=20)
        >>> {k: algo.hparams[k] for k in ("alpha", "beta", "head", "weighted", "generator_steps")}
        {'alpha': 0.2, 'beta': 0.2, 'head': 'net.9', 'weighted': True, 'generator_steps': 20}
        >>> type(algo.local[0]).__module__
        'lightning_fedmut.callbacks.fedgen'
    """

    def __init__(self, alpha: float = 0.2, beta: float = 0.2, head: HeadSpec = None, labels: LabelsFn | None = None,
                 weighted: bool = True, batch_size: int = 128, generator_steps: int = 50, generator_lr: float = 3e-4,
                 generator_weight_decay: float = 1e-2, teacher_weight: float = 1.0, diversity_weight: float = 1.0,
                 hidden_dim: int = 512, noise_dim: int = 100, reset_optimizer: bool = True,
                 seed: int | None = None) -> None:
        settings: dict[str, Any] = {
            "batch_size": batch_size, "generator_steps": generator_steps, "generator_lr": generator_lr,
            "generator_weight_decay": generator_weight_decay, "teacher_weight": teacher_weight,
            "diversity_weight": diversity_weight, "hidden_dim": hidden_dim, "noise_dim": noise_dim,
            "reset_optimizer": reset_optimizer, "seed": seed}
        callback = FedGenCallback(alpha=alpha, beta=beta, head=head, labels=labels, **settings)
        super().__init__(aggregator=FedAvgAggregator(weighted=weighted), local=[callback])
        self._save_init_args(alpha=alpha, beta=beta, head=callback.head, labels=callback.labels, weighted=weighted,
                             **settings)
