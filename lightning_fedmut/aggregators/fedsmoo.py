"""FedSMOO's server (Sun et al., ICML 2023): FedDyn's corrected mean and the global SAM correction ``s``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.nn import Module

from lightning_fedmut.aggregators.feddyn import FedDyn
from lightning_fedmut.utilities.validation import check_real

if TYPE_CHECKING:
    from lightning_fedmut.tasks import ClientResult

__all__ = ["FedSMOO"]

#: Added to ``|mean mu|`` in ``s`` (``server/FedSMOO.py`` of the reference code).
CORRECTION_EPS = 1e-7


class FedSMOO(FedDyn):
    r"""FedSMOO's server step, as ``server/FedSMOO.py`` of FL-Simulator (``woodenchild95/FL-Simulator``):

    - the global model is FedDyn's: ``w <- mean_{i in S} w_i - h / alpha`` with ``h <- h - alpha/m sum_{i in S}
      (w_i - w)`` (:class:`~lightning_fedmut.aggregators.FedDyn`; the reference's ``mean(h_i over all m clients)``
      is the same quantity);
    - the global correction the next round's clients perturb with is ``s = rho * mu / (|mu| + 1e-7)``, where
      ``mu = mean_{i in S} mu_i`` is the uniform mean of the round's clients' duals (sent in ``result.payload
      ["fedsmoo/dual"]`` by :class:`~lightning_fedmut.callbacks.FedSMOO`). The reference code drops the paper's
      ``s^_{i,K}`` term of this solution ("its norm is small"); so does this class.

    ``s`` (zero until the first round is aggregated) and ``h`` are server state, in the federated checkpoints. A
    round whose clients sent no dual (the aggregator used without the client side) leaves ``s`` as it was.
    Logs ``feddyn/h_norm`` and ``fedsmoo/correction_norm``.

    Args:
        alpha: FedDyn's ``alpha`` (the reference's ``lamb``) > 0, the same as the clients'.
        rho: the perturbation radius > 0, the same as the clients'.
        num_clients: ``m``; ``None``: the number of clients handed to ``fit``.

    Examples:
        >>> from types import SimpleNamespace
        >>> agg = FedSMOO(alpha=0.5, rho=0.2, num_clients=2)
        >>> agg.setup(torch.nn.Linear(2, 1, bias=False)); agg.reset()
        >>> for mu in ([[3.0, 0.0]], [[1.0, 2.0]]):
        ...     agg.update(SimpleNamespace(state={"weight": torch.zeros(1, 2)}, num_examples=1,
        ...                                payload={"fedsmoo/dual": {"weight": torch.tensor(mu)}}))
        >>> _ = agg.compute({"weight": torch.zeros(1, 2)})
        >>> [round(v, 6) for v in agg.correction["weight"].flatten().tolist()]  # 0.2 * (2, 1) / sqrt(5)
        [0.178885, 0.089443]
    """

    def __init__(self, alpha: float = 0.1, rho: float = 0.1, num_clients: int | None = None) -> None:
        super().__init__(alpha=alpha, num_clients=num_clients)
        self.rho = check_real("rho", rho, low=0.0, low_open=True)
        self._correction: list[Tensor]
        self._dual_sum: list[Tensor] = []
        self._duals: int
        self.add_state("_correction", [])
        self.add_state("_duals", 0, scope="round")

    @property
    def correction(self) -> dict[str, Tensor]:
        """The global correction ``s`` the clients perturb with, keyed by parameter name (zero at first)."""
        return dict(zip(self._names, self._correction))

    def setup(self, module: Module) -> None:
        super().setup(module)
        self._correction = [torch.zeros_like(h) for h in self._h]
        self._dual_sum = [torch.zeros_like(h) for h in self._h]

    @torch.no_grad()
    def update(self, result: ClientResult) -> None:
        super().update(result)
        dual = getattr(result, "payload", {}).get("fedsmoo/dual")
        if dual is None:
            return
        if self._duals == 0:
            for t in self._dual_sum:
                t.zero_()
        for name, acc in zip(self._names, self._dual_sum):
            acc.add_(dual[name].to(device=acc.device, dtype=acc.dtype))
        self._duals += 1

    @torch.no_grad()
    def compute(self, global_state: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        out = super().compute(global_state)
        if self._duals:
            mean = [t / self._duals for t in self._dual_sum]
            norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in mean))
            for s, m in zip(self._correction, mean):
                s.copy_(m * (self.rho / (norm + CORRECTION_EPS)))
        self._figures["fedsmoo/correction_norm"] = math.sqrt(
            sum(float(t.double().pow(2).sum()) for t in self._correction))
        return out
