"""FedDyn's clients (Acar et al., ICLR 2021): a dynamic regulariser that aligns local and global optima."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from lightning.pytorch import Callback
from torch import Tensor

from lightning_fedmut.callbacks.base import LocalCallback
from lightning_fedmut.functional.state import federated_parameters
from lightning_fedmut.utilities.validation import check_real

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientResult, ClientTask

#: Key of a client's linear term ``g_i`` in its client state (a dict of tensors keyed by parameter name).
#: Where each client's linear term ``g_i`` lives in its client-state dict (the declared client state ``_gradient``).
CLIENT_GRADIENT_KEY = "FedDyn/gradient"


class DynamicRegularizer(Callback):
    r"""A Lightning callback for one FedDyn client: adds ``alpha * (w - w_start) - g_i`` to every gradient.

    That is the gradient of ``- <g_i, w> + alpha / 2 * |w - w_start|^2``: training with it minimises the client's
    loss plus FedDyn's two terms. ``w_start`` is the parameters when training starts (the global model, or the
    start model a start-model component wrote); ``g_i`` is ``linear`` (``None``: zero), one tensor per name of
    ``names``. The terms are added in ``on_before_optimizer_step`` (once per step, before gradient clipping);
    a parameter without a gradient in a step is left alone. When training ends,
    ``new_linear = g_i - alpha * (w - w_start)`` (CPU tensors keyed by name).
    """

    def __init__(self, alpha: float, names: list[str], linear: dict[str, Tensor] | None = None) -> None:
        self.alpha = check_real("alpha", alpha, low=0.0, low_open=True)
        self.names = list(names)
        self._linear_in = linear
        self.new_linear: dict[str, Tensor] | None = None
        self._params: list[Tensor] = []
        self._start: list[Tensor] = []
        self._linear: list[Tensor] = []
        self._index: dict[int, int] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        named = dict(pl_module.named_parameters())
        missing = [n for n in self.names if n not in named]
        if missing:
            raise ValueError(f"Expected FedDyn's parameters in the client model, got a model without {missing[:5]}.")
        self._params = [named[n] for n in self.names]
        self._start = [p.detach().clone() for p in self._params]
        self._linear = [torch.zeros_like(p) if self._linear_in is None
                        else self._linear_in[n].to(device=p.device, dtype=p.dtype)
                        for n, p in zip(self.names, self._params)]
        self._index = {id(p): i for i, p in enumerate(self._params)}

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        idx = [self._index[id(p)] for group in optimizer.param_groups for p in group["params"]
               if id(p) in self._index and p.grad is not None]
        if not idx:
            return
        grads = [cast(Tensor, self._params[i].grad) for i in idx]
        drift = torch._foreach_sub([self._params[i] for i in idx], [self._start[i] for i in idx])
        torch._foreach_add_(grads, drift, alpha=self.alpha)
        torch._foreach_add_(grads, [self._linear[i] for i in idx], alpha=-1.0)

    @torch.no_grad()
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.new_linear = {}
        for name, p, start, g in zip(self.names, self._params, self._start, self._linear):
            dtype = torch.promote_types(p.dtype, torch.float32)
            new = g.to(dtype) - self.alpha * (p.detach() - start).to(dtype)
            self.new_linear[name] = new.cpu()
        self._params, self._start, self._linear = [], [], []


class FedDyn(LocalCallback):
    r"""FedDyn's client side: client ``i`` minimises ``L_i(w) - <g_i, w> + alpha / 2 * |w - w_server|^2``.

    ``g_i`` (the client's linear term, zero until its first round) is declared client state (``_gradient``,
    kept in the loop's client-state store under ``"FedDyn/gradient"``) and updated after the client trains as ``g_i <- g_i - alpha * (w_i - w_server)``
    (Algorithm 1 of Acar et al.: ``g_i`` is the client's estimate of ``grad L_i`` at its last model). Each client's
    Trainer gets a ``DynamicRegularizer`` (a Lightning callback of this module); any optimizer works (the paper
    uses SGD). ``w_server`` is the model the client starts from: the global model, unless a start-model component
    (FedMut) gives another.

    The server side is the aggregator :class:`~lightning_fedmut.aggregators.FedDyn` (``h`` and the corrected
    mean); this callback checks in ``setup`` that an aggregator of that type has the same ``alpha`` and tells it
    the federation size when it has no ``num_clients``. With another aggregator the clients are FedDyn's and the
    server is that aggregator.

    **Memory.** ``N`` linear terms of the size of the trainable parameters live in the client-state store (and in
    the checkpoints).

    Args:
        alpha: FedDyn's ``alpha`` > 0 (0.01, the paper's most common value).

    Examples:
        >>> FedDyn(alpha=0.1).hparams
        {'alpha': 0.1}
    """

    def __init__(self, alpha: float = 0.01) -> None:
        self.alpha = check_real("alpha", alpha, low=0.0, low_open=True)
        self._names: list[str] = []
        self._clients: dict[int, DynamicRegularizer]
        self._gradient: dict[str, Tensor] | None  # g_i of the client in training (None: zero, its first round)
        self.add_state("_clients", {}, scope="round")
        self.add_state("_gradient", None, scope="client")

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        from lightning_fedmut.aggregators.feddyn import FedDyn as FedDynAggregator

        self._names = [n for n, _ in federated_parameters(module)]  # not frozen, nor kept local by the policy
        aggregator = loop.aggregator
        if isinstance(aggregator, FedDynAggregator):
            if aggregator.alpha != self.alpha:
                raise ValueError(f"Expected the FedDyn aggregator's `alpha` to be the clients' {self.alpha}, got"
                                 f" {aggregator.alpha}.")
            if aggregator.num_clients is None:
                aggregator.federation_size = loop.num_clients

    def teardown(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        self._clients = {}

    def on_client_fit_start(self, loop: FederatedLoop, module: LightningModule, task: ClientTask) -> None:
        regularizer = DynamicRegularizer(self.alpha, self._names, self._gradient)
        self._clients[task.slot] = regularizer
        task.callbacks.append(regularizer)

    def on_client_fit_end(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        regularizer = self._clients.pop(result.task.slot)
        if regularizer.new_linear is not None:
            self._gradient = regularizer.new_linear  # stored with the client's state by the loop

    def on_client_fit_failure(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        self._clients.pop(result.task.slot, None)  # its g_i stays as it was
