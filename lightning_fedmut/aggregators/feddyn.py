"""FedDyn's server (Acar et al., ICLR 2021): the uniform mean of the clients, corrected by the server state ``h``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module

from lightning_fedmut.aggregators.fedavg import FedAvg
from lightning_fedmut.functional.server_optim import squared_norm
from lightning_fedmut.functional.state import federated_parameters
from lightning_fedmut.utilities.validation import check_int, check_real

__all__ = ["FedDyn"]


class FedDyn(FedAvg):
    r"""FedDyn's server step (Algorithm 1 of Acar et al.): with ``S`` the round's clients and ``m`` the federation,

    ``h <- h - alpha * (1/m) * sum_{i in S} (w_i - w)``, then ``w <- mean_{i in S} w_i - h / alpha``

    where ``w`` is the previous global model and the mean is uniform. ``h`` (zero at first) covers the trainable
    parameters and is saved in the federated checkpoints; floating buffers (BatchNorm's running statistics) are
    the plain uniform mean and integer state the maximum, as in :class:`~lightning_fedmut.aggregators.FedAvg`.
    The clients' side (the linear and quadratic terms of their objective) is
    :class:`~lightning_fedmut.callbacks.FedDyn`, which also tells this aggregator ``m`` when ``num_clients`` is
    ``None``. Logs ``feddyn/h_norm``, ``|h|`` after the round.

    Args:
        alpha: FedDyn's ``alpha`` > 0, the same as the clients' (0.01, the paper's most common value).
        num_clients: ``m``; ``None``: the number of clients handed to ``fit`` (set by the client-side component).

    Examples:
        >>> from types import SimpleNamespace
        >>> agg = FedDyn(alpha=0.5, num_clients=4)
        >>> agg.setup(torch.nn.Linear(1, 1, bias=False)); agg.reset()
        >>> for w in (1.0, 3.0):
        ...     agg.update(SimpleNamespace(state={"weight": torch.tensor([[w]])}, num_examples=1))
        >>> agg.compute({"weight": torch.tensor([[0.0]])})["weight"].item()
        3.0

        ``h = 0 - 0.5 * (1 + 3) / 4 = -0.5``, and the new global is ``2 - (-0.5) / 0.5 = 3``.
    """

    def __init__(self, alpha: float = 0.01, num_clients: int | None = None) -> None:
        super().__init__(weighted=False)
        self.alpha = check_real("alpha", alpha, low=0.0, low_open=True)
        self.num_clients = None if num_clients is None else check_int("num_clients", num_clients, low=1)
        self.federation_size = self.num_clients
        self._names: list[str]
        self._h: list[Tensor]
        self._figures: dict[str, float]
        self.add_state("_names", [])
        self.add_state("_h", [])
        self.add_state("_figures", {}, scope="round")

    @property
    def h(self) -> dict[str, Tensor]:
        """The server state ``h``, keyed by parameter name."""
        return dict(zip(self._names, self._h))

    def setup(self, module: Module) -> None:
        """Allocate ``h`` (zero) over the module's trainable parameters, once per fit; ``m`` must be known."""
        super().setup(module)
        if self.federation_size is None:
            raise ValueError("Expected FedDyn's aggregator to know the federation size m: pass `num_clients`, or run"
                             " it with the client-side callbacks.FedDyn (as the FedDyn algorithm does); got neither.")
        params = federated_parameters(module)  # not frozen, nor kept local by the federation policy
        self._names = [n for n, _ in params]
        self._h = [torch.zeros(p.shape, dtype=torch.promote_types(p.dtype, torch.float32)) for _, p in params]

    @torch.no_grad()
    def compute(self, global_state: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        if global_state is None:
            raise ValueError("Expected `global_state` (the previous global model) for FedDyn's server step, got None.")
        count = self.num_updates
        out = super().compute(global_state)  # uniform means, in FedAvg's buffers
        assert self.federation_size is not None  # checked by setup
        step = self.alpha * count / self.federation_size  # alpha * |S| / m
        for i, (name, h) in enumerate(zip(self._names, self._h)):
            if name not in out:
                continue
            mean = out[name]
            if h.device != mean.device or h.dtype != mean.dtype:
                h = self._h[i] = h.to(device=mean.device, dtype=mean.dtype)
            h.sub_(mean - global_state[name].to(mean.dtype), alpha=step)  # sum_i (w_i - w) = |S| (mean - w)
            mean.sub_(h, alpha=1.0 / self.alpha)
        self._figures = {"feddyn/h_norm": math.sqrt(squared_norm(self._h))}
        return out

    def metrics(self) -> dict[str, float]:
        """The round's ``feddyn/h_norm`` (none before :meth:`compute`)."""
        return dict(self._figures)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._names and list(state_dict["names"]) != self._names:
            raise ValueError(f"Expected FedDyn's server state over the parameters {self._names[:5]}..., got one over"
                             f" {list(state_dict['names'])[:5]}...: the checkpoint is of another model.")
        super().load_state_dict(state_dict)
        self._names = list(self._names)
