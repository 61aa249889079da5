"""FedGen's conditional generator of latent features: one hidden layer, as in FedGen's and FedMut's code."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ConditionalGenerator"]


class ConditionalGenerator(nn.Module):
    r"""``G(z, y)``: noise and a one-hot label to a latent feature vector, the input of a classifier head.

    ``[z, onehot(y)] -> Linear(noise_dim + num_classes, hidden_dim) -> BatchNorm1d -> ReLU -> Linear(hidden_dim,
    latent_dim)`` (FedGen's generator without embedding; the FedMut code's sizes for CIFAR-10 are ``hidden_dim=512``,
    ``noise_dim=100``, ``latent_dim=84``, the input size of its CNN's last layer). The noise is an argument:
    whoever calls the generator draws it from a generator of its own.

    Args:
        num_classes: number of labels.
        latent_dim: size of a generated feature vector (the head's input size).
        hidden_dim: width of the hidden layer.
        noise_dim: size of the noise ``z``.

    Examples:
        >>> gen = ConditionalGenerator(num_classes=3, latent_dim=4, hidden_dim=8, noise_dim=5).eval()
        >>> gen(torch.tensor([0, 2]), torch.rand(2, 5)).shape
        torch.Size([2, 4])
    """

    def __init__(self, num_classes: int, latent_dim: int, hidden_dim: int = 512, noise_dim: int = 100) -> None:
        super().__init__()
        self.num_classes, self.latent_dim, self.noise_dim = num_classes, latent_dim, noise_dim
        self.hidden = nn.Sequential(nn.Linear(noise_dim + num_classes, hidden_dim), nn.BatchNorm1d(hidden_dim),
                                    nn.ReLU())
        self.representation = nn.Linear(hidden_dim, latent_dim)

    def forward(self, labels: Tensor, noise: Tensor) -> Tensor:
        """Latent features for ``labels`` (shape ``(B,)``) from ``noise`` (shape ``(B, noise_dim)``)."""
        onehot = torch.nn.functional.one_hot(labels.long(), self.num_classes).to(noise.dtype)
        return self.representation(self.hidden(torch.cat([noise, onehot], dim=1)))
