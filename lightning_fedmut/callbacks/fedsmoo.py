"""FedSMOO's clients (Sun et al., ICML 2023): FedDyn's dynamic regulariser plus a SAM step corrected by dual variables."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from lightning_fedmut.callbacks.dual_sam import DualSharpnessStep
from lightning_fedmut.callbacks.feddyn import FedDyn
from lightning_fedmut.callbacks.sam import check_sam_loop
from lightning_fedmut.utilities.validation import check_real

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientResult, ClientTask

__all__ = ["DUAL_PAYLOAD_KEY", "FedSMOO"]

#: Where a client's ``mu_i`` travels to the aggregator in ``result.payload`` (a dict of CPU tensors keyed by name).
DUAL_PAYLOAD_KEY = "fedsmoo/dual"


class FedSMOO(FedDyn):
    r"""FedSMOO's client side, as ``client/fedsmoo.py`` and ``optimizer/DRegSAM.py`` of FL-Simulator
    (``woodenchild95/FL-Simulator``, the authors' code).

    Client ``i`` keeps FedDyn's linear term ``g_i`` (``-lamb * h_i`` in the reference code) and a dynamic dual
    ``mu_i`` (zero at first), both declared client state. Each local step, from ``w`` with the round's global
    correction ``s`` (:class:`~lightning_fedmut.aggregators.FedSMOO`'s, zero in the first round):

    1. ``g = grad L_i(w)``; ``g~ = g - mu_i - s``; ``e = rho * g~ / (|g~| + 1e-7)``; ``mu_i <- mu_i + e - s``;
    2. the gradient at ``w + e``, back to ``w``, plus FedDyn's ``alpha * (w - w_server) - g_i`` (the reference's
       weight decay ``lamb`` and ``lamb * <w, h_i - w_server>``), then gradient clipping (the reference clips at
       norm 10; here ``gradient_clip_val`` decides), then the optimizer's step.

    After training ``g_i <- g_i - alpha * (w_i - w_server)`` (FedDyn's rule) and ``mu_i`` goes to the aggregator in
    ``result.payload["fedsmoo/dual"]``. The server side (FedDyn's corrected mean and ``s = rho * mean_S mu_i /
    (|mean_S mu_i| + 1e-7)``) is :class:`~lightning_fedmut.aggregators.FedSMOO`; this callback checks in ``setup``
    that the aggregator has the same ``alpha`` and ``rho``.

    **Memory.** ``N`` linear terms and ``N`` duals, each the size of the trainable parameters, in the client-state
    store.

    Args:
        alpha: FedDyn's ``alpha`` (the reference's ``lamb``) > 0.
        rho: the perturbation radius > 0 (the reference's ``rho``).

    Examples:
        >>> FedSMOO(alpha=0.1, rho=0.05).hparams
        {'alpha': 0.1, 'rho': 0.05}
    """

    def __init__(self, alpha: float = 0.1, rho: float = 0.1) -> None:
        super().__init__(alpha=alpha)
        self.rho = check_real("rho", rho, low=0.0, low_open=True)
        self._dual: dict[str, Tensor] | None  # mu_i of the client in training (None: zero, its first round)
        self._steps: dict[int, DualSharpnessStep]
        self.add_state("_dual", None, scope="client")
        self.add_state("_steps", {}, scope="round")

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        from lightning_fedmut.aggregators.fedsmoo import FedSMOO as FedSMOOAggregator

        super().setup(loop, module, stage)
        check_sam_loop(loop, module)
        aggregator = loop.aggregator
        if isinstance(aggregator, FedSMOOAggregator) and aggregator.rho != self.rho:
            raise ValueError(f"Expected the FedSMOO aggregator's `rho` to be the clients' {self.rho}, got"
                             f" {aggregator.rho}.")

    def teardown(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        super().teardown(loop, module, stage)
        self._steps = {}

    def on_client_fit_start(self, loop: FederatedLoop, module: LightningModule, task: ClientTask) -> None:
        super().on_client_fit_start(loop, module, task)  # FedDyn's regulariser
        correction = getattr(loop.aggregator, "correction", None)
        dual = {n: t.clone() for n, t in self._dual.items()} if self._dual is not None else None
        if dual is None:
            dual = {n: p.detach().new_zeros(p.shape) for n, p in module.named_parameters() if n in set(self._names)}
        step = DualSharpnessStep(self.rho, self._names, dual=dual, correction=correction or None)
        self._steps[task.slot] = step
        task.callbacks.append(step)

    def on_client_fit_end(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        super().on_client_fit_end(loop, module, result)
        step = self._steps.pop(result.task.slot)
        assert step.dual is not None
        self._dual = {n: t.detach().cpu().clone() for n, t in step.dual.items()}
        result.payload[DUAL_PAYLOAD_KEY] = self._dual

    def on_client_fit_failure(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        super().on_client_fit_failure(loop, module, result)
        self._steps.pop(result.task.slot, None)  # its mu_i stays as it was
