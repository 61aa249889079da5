"""FedGen's losses (Zhu, Hong and Zhou, ICML 2021) as pure tensor functions, as the FedMut reference code computes them.

The server trains a conditional generator of latent features from the clients' classifier heads
(:func:`teacher_loss`, weighted by :func:`label_weights`, plus :func:`diversity_loss`); each client adds
:func:`latent_kl_gradient`'s term and a cross-entropy on generated features to its own loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["diversity_loss", "label_counts", "label_weights", "latent_kl_gradient", "teacher_loss"]


def label_counts(labels: Tensor, num_classes: int) -> list[int]:
    """How many examples of each class ``labels`` holds (a label outside ``[0, num_classes)`` is refused).

    Examples:
        >>> label_counts(torch.tensor([2, 0, 2, 2]), 4)
        [1, 0, 3, 0]
    """
    labels = labels.reshape(-1).long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"Expected labels in [0, {num_classes}) (the head's number of classes), got labels from"
                         f" {int(labels.min())} to {int(labels.max())}.")
    return [int(c) for c in torch.bincount(labels.cpu(), minlength=num_classes)]


def label_weights(counts: Tensor, min_samples: int = 1) -> tuple[Tensor, list[int]]:
    r"""Each client's share of each label among the round's clients, and the labels the generator learns.

    ``counts[k, c]`` is client ``k``'s number of examples of class ``c``. The weight of client ``k`` for label
    ``c`` is ``counts[k, c] / sum_j counts[j, c]`` (zero for a label no client has); a label is learnt when some
    client has more than ``min_samples`` examples of it (the reference's ``MIN_SAMPLES_PER_LABEL = 1``).

    Returns:
        ``(weights, labels)``: float64 weights of shape ``(num_classes, num_clients)`` and the learnt labels.

    Examples:
        >>> weights, labels = label_weights(torch.tensor([[3, 1, 0], [1, 1, 0]]))
        >>> weights.tolist(), labels
        ([[0.75, 0.25], [0.5, 0.5], [0.0, 0.0]], [0])
    """
    counts = counts.to(torch.float64)
    totals = counts.sum(dim=0)
    weights = torch.where(totals > 0, counts / totals.clamp_min(1.0), torch.zeros_like(counts)).T.contiguous()
    learnt = [c for c in range(counts.shape[1]) if float(counts[:, c].max()) > min_samples]
    return weights, learnt


def teacher_loss(logits: Sequence[Tensor], labels: Tensor, weights: Tensor) -> Tensor:
    r"""The generator's teacher loss: each client head's cross-entropy on generated features, weighted by label share.

    ``logits[k]`` is client ``k``'s head applied to the generated features of ``labels``; ``weights`` is
    :func:`label_weights`' ``(num_classes, num_clients)`` table. As both reference codes (FedGen's and FedMut's)
    compute it, the per-example cross-entropy (shape ``(B,)``) is multiplied by a ``(B, 1)`` column of weights,
    which broadcasts to ``(B, B)``: each client's term is ``mean_b CE_k(b) * mean_b w[y_b, k]``, the mean loss
    times the mean weight, not the mean of the per-example products. This follows the code, which produced the
    FedMut paper's FedGen column.

    Examples:
        >>> logits = [torch.zeros(2, 2), torch.tensor([[2.0, 0.0], [0.0, 2.0]])]
        >>> w = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
        >>> round(float(teacher_loss(logits, torch.tensor([0, 1]), w)), 6)   # ln 2 * 0.75 + 0.126928 * 0.25
        0.551592
    """
    total = logits[0].new_zeros(())
    for k, client_logits in enumerate(logits):
        ce = F.cross_entropy(client_logits, labels, reduction="none")
        share = weights[labels, k].to(ce.dtype)
        total = total + ce.mean() * share.mean()
    return total


def diversity_loss(noise: Tensor, features: Tensor) -> Tensor:
    r"""The generator's diversity term: ``exp(-mean_ij d_noise(i, j) * d_features(i, j))``.

    ``d_features`` is the mean absolute difference of two rows of ``features`` (flattened), ``d_noise`` the mean
    squared difference of the rows of ``noise`` that produced them (FedGen's ``DiversityLoss(metric="l1")``):
    small when different noise gives different features.

    Examples:
        >>> noise = torch.tensor([[0.0], [1.0]])
        >>> float(diversity_loss(noise, torch.tensor([[0.0, 0.0], [2.0, 4.0]])))  # exp(-(2 * 1 * 3) / 4)
        0.22313016653060913
    """
    features = features.reshape(features.shape[0], -1)
    feature_distance = torch.cdist(features, features, p=1.0) / features.shape[1]
    exact = "donot_use_mm_for_euclid_dist"  # the differences themselves, not |a|^2 + |b|^2 - 2ab
    noise = noise.detach()  # drawn, never learnt
    noise_distance = torch.cdist(noise, noise, compute_mode=exact).pow(2) / noise.shape[1]
    return torch.exp(torch.mean(-noise_distance * feature_distance))


def latent_kl_gradient(logits: Tensor, target: Tensor, beta: float) -> Tensor:
    r"""The gradient of ``beta * KL(target || softmax(logits))`` (batch mean) with respect to ``logits``.

    That is ``beta / B * (softmax(logits) - target)`` for rows of ``target`` that sum to one: the client's
    latent term, where ``target = softmax(head(G(z, y)))`` for the batch's labels ``y`` (PyTorch's
    ``KLDivLoss(reduction="batchmean")(log_softmax(logits), target)``).

    Examples:
        >>> g = latent_kl_gradient(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), beta=0.2)
        >>> [round(v, 6) for v in g[0].tolist()]
        [-0.1, 0.1]
    """
    return (torch.softmax(logits.detach().float(), dim=1) - target.float()).mul_(beta / logits.shape[0])
