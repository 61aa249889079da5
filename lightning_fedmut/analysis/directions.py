"""Filter-normalised random directions in weight space (Li et al., "Visualizing the Loss Landscape of
Neural Nets", NeurIPS 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_fedmut.analysis._objective import check_module, check_seed, draw, trainable

__all__ = ["random_direction"]

_EPS = 1e-10


def filter_normalised(
    named: list[tuple[str, nn.Parameter]], generator: torch.Generator, ignore_bias_bn: bool = True
) -> dict[str, Tensor]:
    """One direction drawn from ``generator``: see :func:`random_direction`."""
    direction = {}
    for name, p in named:
        d = draw(p.shape, generator, p)  # drawn for every parameter, so the stream does not depend on the options
        w = p.detach()
        if w.dim() <= 1:
            if ignore_bias_bn:
                d.zero_()
            else:
                d.mul_(w.norm() / (d.norm() + _EPS))
        else:
            rows = d.view(d.shape[0], -1)
            rows.mul_((w.reshape(w.shape[0], -1).norm(dim=1) / (rows.norm(dim=1) + _EPS)).unsqueeze(1))
        direction[name] = d
    return direction


def random_direction(module: nn.Module, seed: int = 0, *, ignore_bias_bn: bool = True) -> dict[str, Tensor]:
    """A random direction in the space of ``module``'s trainable weights, normalised filter by filter.

    Each entry is drawn from a standard normal distribution (a ``torch.Generator`` seeded with ``seed``,
    on the CPU, so the numbers do not depend on the device), then every filter is rescaled to the norm of
    the corresponding weights: for a parameter of two or more dimensions (a convolution's
    ``out x in x kh x kw`` kernel, a linear layer's ``out x in`` matrix), each slice ``d[i]`` along the first
    dimension gets the norm of ``w[i]``. Moving along such a direction changes every filter by the same
    fraction of its size, which makes landscapes of different models (and of layers of different scales)
    comparable (Li et al. 2018).

    Parameters of one dimension or none (biases, BatchNorm and LayerNorm weights) are zeroed, as in the
    reference method; with ``ignore_bias_bn=False`` each is rescaled as a whole to the norm of the
    parameter instead.

    Args:
        module: the model; its floating-point parameters that require grad are the weights.
        seed: seed of the direction's generator: the same seed gives the same direction.
        ignore_bias_bn: zero the direction on parameters with fewer than two dimensions.

    Returns:
        A dict ``{parameter name: tensor}`` of the parameters' shapes, devices and dtypes.

    Examples:
        >>> layer = torch.nn.Linear(3, 2)
        >>> d = random_direction(layer, seed=0)
        >>> sorted(d), d["weight"].shape
        (['bias', 'weight'], torch.Size([2, 3]))
        >>> torch.allclose(d["weight"].norm(dim=1), layer.weight.norm(dim=1))
        True
        >>> d["bias"].abs().sum().item()
        0.0
        >>> torch.equal(d["weight"], random_direction(layer, seed=0)["weight"])
        True
    """
    check_module(module)
    seed = check_seed(seed)
    if not isinstance(ignore_bias_bn, bool):
        raise TypeError(f"Expected `ignore_bias_bn` to be a bool, got {ignore_bias_bn!r}.")
    return filter_normalised(trainable(module), torch.Generator().manual_seed(seed), ignore_bias_bn)
