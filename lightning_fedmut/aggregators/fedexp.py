"""FedExP (Jhunjhunwala, Wang and Joshi, ICLR 2023): FedAvg with an adaptive, extrapolating server step."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import Module

from lightning_fedmut.aggregators.base import Aggregator
from lightning_fedmut.aggregators.fedavg import FedAvg
from lightning_fedmut.aggregators.fedopt import check_bool
from lightning_fedmut.callbacks.base import FederatedCallback
from lightning_fedmut.functional.server_optim import (
    apply_step_,
    extrapolated_lr,
    pseudo_gradient_,
    squared_distance,
    squared_norm,
)
from lightning_fedmut.functional.state import copy_, frozen_keys, is_floating
from lightning_fedmut.state import Figures
from lightning_fedmut.utilities.validation import check_real

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientResult

__all__ = ["FedExP", "FedExPReport"]


class FedExP(Aggregator):
    r"""FedExP: step ``eta_g`` times further along the clients' mean update, with ``eta_g`` from the round itself.

    With ``d_i = w_i - w_glb`` each client's update and ``d = sum_i p_i d_i`` their mean,

    ``eta_g = max(1, sum_i p_i |d_i|^2 / (2 (|d|^2 + epsilon)))`` and ``w_glb = w_glb + eta_g * d``.

    ``eta_g`` is large when the clients' updates point different ways (they cancel in the mean): the
    server then extrapolates. ``eta_g = 1`` is FedAvg. ``p_i`` is uniform (``weighted=False``, the paper's
    setting) or proportional to the number of examples. Like the FedOpt aggregators, the step applies to the
    module's parameters and the norms are taken over them; floating buffers take the plain mean and
    integer state the maximum. Frozen parameters (``requires_grad=False`` at ``setup``) are left out of the
    mean, the norms and the step: the global copy stands bit for bit.

    The squared distances ``|d_i|^2`` are accumulated client by client against the global module, which
    ``setup`` receives from the loop (it holds the previous global model until the round is aggregated);
    the memory is FedAvg's one model of sums. The round's ``eta_g`` is in :meth:`metrics`
    (``fedexp/server_lr``).

    **The last two iterates.** FedExP's iterates oscillate, and the authors report (evaluate) the average of
    the last two global models while training goes on from the last one. The method
    ``lightning_fedmut.algorithms.FedExP(average_last_two=True)`` does so: it bundles this aggregator with
    :class:`FedExPReport`, FedExP's report (pass it in ``callbacks`` to use the aggregator on its own); the global
    model itself, the clients' start model and the checkpoints stay the FedExP iterate.

    **Against the authors' code.** The FedExP authors' repository (Divyansh03/FedExP, ``main.py``) adds
    ``|S| * epsilon`` rather than ``epsilon`` to ``|d|^2``, weights clients by their data, and decays ``epsilon`` by
    ``0.998^2`` and the local learning rate by 0.998 every round. The copy in the FedMut authors' FedMR
    repository (HMHelloWorld/FedMR, ``Algorithm/Training_FedExP.py``) adds ``|S| * 0.1`` with no decay. This
    class implements the paper's formula with a constant ``epsilon``.

    Args:
        epsilon: ``epsilon`` >= 0 of the formula (the paper uses 1e-3 for CIFAR and 0.1 for EMNIST).
        weighted: weight clients by their number of examples.

    Examples:
        Two clients that moved the one parameter in opposite directions, and a little forward on the whole:

        >>> import torch
        >>> from types import SimpleNamespace
        >>> class OneParameter(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.zeros(1))
        >>> agg = FedExP(epsilon=0.0)
        >>> agg.setup(OneParameter())  # the global model: w = 0
        >>> agg.reset()
        >>> for w in (1.5, -0.5):
        ...     agg.update(SimpleNamespace(state={"w": torch.tensor([w])}, num_examples=1))
        >>> agg.compute({"w": torch.tensor([0.0])})["w"].item(), agg.metrics()["fedexp/server_lr"]
        (1.25, 2.5)

        ``eta_g = ((1.5^2 + 0.5^2) / 2) / (2 * 0.5^2) = 2.5``: the mean step 0.5, taken 2.5 times.
    """

    def __init__(self, epsilon: float = 1e-3, weighted: bool = False) -> None:
        self.epsilon = check_real("epsilon", epsilon, low=0.0)
        self.weighted = check_bool("weighted", weighted)
        self._mean = FedAvg(weighted=self.weighted)
        self._module: Module | None = None
        self._parameter_names: set[str] | None = None
        self._keys: list[str] | None = None
        self._weighted_sq_norms = 0.0
        self._figures: dict[str, float]
        self.add_state("_figures", {}, scope="round")

    @property
    def metrics(self) -> Figures:  # type: ignore[override]  # also subscriptable, as the attribute it was
        """The round's ``fedexp/server_lr`` (``eta_g``) and the mean update's norm (none before :meth:`compute`)."""
        return Figures(self._figures)

    @property
    def num_updates(self) -> int:
        """Clients accumulated since the last :meth:`reset`."""
        return self._mean.num_updates

    def setup(self, module: Module) -> None:
        self._module = module
        self._mean.setup(module)
        self._parameter_names = {name for name, _ in module.named_parameters()} - frozen_keys(module)
        self._keys = None

    def reset(self) -> None:
        self._mean.reset()
        self._weighted_sq_norms = 0.0

    @torch.no_grad()
    def update(self, result: ClientResult) -> None:
        if self._module is None:
            raise RuntimeError(
                "FedExP.update() needs the global model to measure each client's update: call"
                " `setup(module)` first (the loop does, once per fit)."
            )
        reference = self._module.state_dict()
        state = result.state
        assert state is not None and self._parameter_names is not None  # a client that trained; set in setup()
        if self._keys is None:
            self._keys = [k for k, v in state.items() if is_floating(v) and k in self._parameter_names]
        weight = float(result.num_examples) if self.weighted else 1.0
        self._mean.update(result)  # checks the weight
        distance = squared_distance([state[k] for k in self._keys], [reference[k] for k in self._keys])
        self._weighted_sq_norms += weight * distance

    @torch.no_grad()
    def compute(self, global_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        total = self._mean.total_weight
        new = self._mean.compute(global_state)
        keys = self._keys if self._keys is not None else [k for k, v in new.items() if is_floating(v)]
        delta = [new[k] for k in keys]
        current = [global_state[k] for k in keys]
        pseudo_gradient_(delta, current)
        mean_sq_norm = squared_norm(delta)
        server_lr = extrapolated_lr(self._weighted_sq_norms / total, mean_sq_norm, self.epsilon)
        if server_lr != 1.0:
            torch._foreach_mul_(delta, server_lr)
        apply_step_(delta, current)
        self._figures = {
            "fedexp/server_lr": server_lr,
            "fedexp/pseudo_gradient_norm": math.sqrt(mean_sq_norm),
            "fedexp/client_update_norm": math.sqrt(self._weighted_sq_norms / total),
        }
        return new


class FedExPReport(FederatedCallback):
    r"""FedExP's report: evaluate the average of the last two global models, as FedExP's authors report it.

    FedExP's iterates oscillate, so the authors evaluate ``(w_glb(t) + w_glb(t+1)) / 2`` while training goes on
    from ``w_glb(t+1)``. The global module holds that average while it is evaluated (between
    ``on_validation_start`` and ``on_validation_end``) and the last iterate again right after, so the clients,
    the aggregator and the federated checkpoints see the iterate and the validation metrics are the average's.
    The first aggregated round is evaluated as it is (there is no earlier iterate), as in the authors' code.
    Only the module's federated floating parameters are averaged (buffers are the last iterate's). It works with any
    aggregator; it holds one copy of the parameters, and a second one while the evaluation runs.
    ``lightning_fedmut.algorithms.FedExP(average_last_two=True)`` adds it after the method's other components.

    Place it after callbacks that evaluate or save the global model themselves in ``on_validation_end`` if they
    must see the average, before them if they must see the iterate.

    Examples:
        >>> from lightning_fedmut import FederatedLoop
        >>> loop = FederatedLoop(rounds=10, clients_per_round=5, aggregator=FedExP(), callbacks=[FedExPReport()])
        >>> loop.hparams["callbacks"][0]["class_path"]
        'lightning_fedmut.aggregators.fedexp.FedExPReport'
    """

    def __init__(self) -> None:
        self._stash: list[Tensor] | None = None
        self._keys: list[str]
        self._previous: list[Tensor]
        self._previous_iterate: int
        self._iterates: int
        self.add_state("_keys", [])
        self.add_state("_previous", [])
        self.add_state("_previous_iterate", -1)  # which iterate `_previous` holds (0: the initial model)
        self.add_state("_iterates", 0)  # aggregations done: the global module holds iterate number `_iterates`

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        self._iterates, self._previous_iterate, self._stash = 0, -1, None
        state = module.state_dict()
        names = {name for name, _ in module.named_parameters()} - frozen_keys(module)  # frozen ones never move
        self._keys = [k for k, v in state.items() if k in names and is_floating(v)]
        self._previous = [state[k].detach().clone() for k in self._keys]

    def teardown(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        self._restore(module)
        self._previous = []

    def on_before_aggregate(self, loop: FederatedLoop, module: LightningModule, aggregator: Aggregator) -> None:
        state = module.state_dict()
        copy_(self._previous, [state[k] for k in self._keys])
        self._previous_iterate = self._iterates

    def on_after_aggregate(self, loop: FederatedLoop, module: LightningModule) -> None:
        self._iterates += 1

    @torch.no_grad()
    def on_validation_start(self, loop: FederatedLoop, module: LightningModule) -> None:
        if self._previous_iterate < 1 or self._previous_iterate >= self._iterates:
            return
        state = module.state_dict()
        current = [state[k] for k in self._keys]
        self._stash = [t.detach().clone() for t in current]
        for t, previous in zip(current, self._previous):
            t.add_(previous.to(device=t.device, dtype=t.dtype)).mul_(0.5)

    def on_validation_end(self, loop: FederatedLoop, module: LightningModule) -> None:
        self._restore(module)

    def on_exception(self, loop: FederatedLoop, module: LightningModule, exception: BaseException) -> None:
        self._restore(module)

    def _restore(self, module: LightningModule) -> None:
        if self._stash is not None:
            state = module.state_dict()
            copy_([state[k] for k in self._keys], self._stash)
            self._stash = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        saved = list(state_dict["keys"])
        if self._keys and saved != self._keys and set(self._keys) <= set(saved):  # written when frozen ones were kept
            previous = dict(zip(saved, state_dict["previous"]))
            state_dict = {**state_dict, "keys": list(self._keys), "previous": [previous[k] for k in self._keys]}
        if self._keys and list(state_dict["keys"]) != self._keys:
            raise ValueError(f"Expected the FedExPReport state of parameters {self._keys[:5]}..., got one of"
                             f" {list(state_dict['keys'])[:5]}...: the checkpoint is of another model.")
        super().load_state_dict(state_dict)  # the previous iterate is loaded in place, where it lives
        self._keys = list(self._keys)
        self._previous_iterate, self._iterates = int(self._previous_iterate), int(self._iterates)
