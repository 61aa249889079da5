"""FedNova (Wang et al., NeurIPS 2020): normalised averaging, each client's update divided by its real step count."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.nn import Module

from lightning_fedmut.aggregators.base import Aggregator
from lightning_fedmut.functional.aggregation import accumulate_, finalize_mean_, integer_max_
from lightning_fedmut.functional.state import frozen_keys, is_floating
from lightning_fedmut.state import Figures
from lightning_fedmut.utilities.validation import check_real

if TYPE_CHECKING:
    from lightning_fedmut.tasks import ClientResult

__all__ = ["FedNova"]


def normalizing_factor(num_steps: int, momentum: float = 0.0) -> float:
    r"""FedNova's ``a_i``: the length of client ``i``'s local update in units of one gradient.

    ``a_i = tau_i`` for plain SGD; with local (heavy-ball) momentum ``rho``,
    ``a_i = [tau_i - rho (1 - rho^tau_i) / (1 - rho)] / (1 - rho)`` (Wang et al. 2020, eq. 8's vector ``a_i``
    summed).

    Examples:
        >>> normalizing_factor(4), normalizing_factor(1, momentum=0.5), normalizing_factor(2, momentum=0.5)
        (4.0, 1.0, 2.5)
    """
    if num_steps < 0:
        raise ValueError(f"Expected `num_steps` >= 0, got {num_steps}.")
    tau = float(num_steps)
    if momentum == 0.0:
        return tau
    return (tau - momentum * (1.0 - momentum**num_steps) / (1.0 - momentum)) / (1.0 - momentum)


class FedNova(Aggregator):
    r"""FedNova: average the clients' updates normalised by their number of local steps, then rescale.

    With ``w`` the global model, client ``i``'s update ``Delta_i = w_i - w``, its weight ``p_i``
    (``n_i / sum_j n_j`` with ``weighted=True``, else ``1 / K``) and its normalizing factor ``a_i``
    (the module's ``normalizing_factor`` of its real step count ``tau_i = result.num_steps``: ``tau_i`` for plain SGD),

    ``d_i = Delta_i / a_i``,  ``tau_eff = sum_i p_i a_i``,  ``w <- w + tau_eff * sum_i p_i d_i``.

    A client that took more steps (more data, more epochs) moves further; FedAvg would let it pull the global
    model towards its own optimum (objective inconsistency); FedNova counts its update per step. With equal
    ``tau_i`` it is FedAvg with the same weights. The normalisation applies to the module's parameters;
    **floating buffers** (BatchNorm's running statistics) are not the result of gradient steps and take the
    FedAvg mean with the same ``p_i``, and **integer state** the element-wise maximum, as
    :class:`~lightning_fedmut.aggregators.FedAvg` does. Frozen parameters (``requires_grad=False`` at ``setup``)
    are left out: the global copy stands bit for bit.

    ``tau_i`` is :attr:`ClientResult.num_steps <lightning_fedmut.tasks.ClientResult>`, the optimizer steps the
    client's Trainer took (one per ``accumulate_grad_batches`` batches, ``local_steps`` when set). A client
    whose training changed no weight (``num_steps == 0``, ``Delta_i = 0``) adds its weight to ``sum p_i`` and
    nothing to ``tau_eff`` nor to the update.

    Streaming, in memory of two models whatever the number of clients: the sum of ``p_i d_i`` over the
    parameters (each client's update is taken against the global module ``setup`` received, which holds the
    previous global model until the round is aggregated) and the sum of ``p_i w_i`` over the buffers. The
    round's ``tau_eff`` is in :meth:`metrics` (``fednova/tau_eff``).

    Args:
        momentum: the clients' local SGD momentum ``rho`` in ``[0, 1)`` (``0``: plain SGD).
        weighted: weight clients by their number of examples (the paper's ``p_i``); ``False``: uniformly.

    Examples:
        One parameter; a client that took 1 step of size 1 and one that took 4 steps of size 1:

        >>> from types import SimpleNamespace
        >>> class OneParameter(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.zeros(1))
        >>> agg = FedNova(weighted=False)
        >>> agg.setup(OneParameter())  # the global model: w = 0
        >>> agg.reset()
        >>> for w, steps in ((1.0, 1), (4.0, 4)):
        ...     agg.update(SimpleNamespace(state={"w": torch.tensor([w])}, num_examples=1, num_steps=steps))
        >>> agg.compute({"w": torch.tensor([0.0])})["w"].item(), agg.metrics()["fednova/tau_eff"]
        (2.5, 2.5)

        ``d = (1/1 + 4/4) / 2 = 1`` a step, taken ``tau_eff = (1 + 4) / 2 = 2.5`` times; FedAvg would also give
        2.5 here, but from ``(1.0, 8.0)`` after 1 and 4 steps FedNova gives ``2.5 * (1 + 2) / 2 = 3.75``, FedAvg 4.5.
    """

    def __init__(self, momentum: float = 0.0, weighted: bool = True) -> None:
        self.momentum = check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)
        if not isinstance(weighted, bool):
            raise TypeError(f"Expected `weighted` to be a bool, got {weighted!r}.")
        self.weighted = weighted
        self._module: Module | None = None
        self._parameter_names: set[str] = set()
        self._frozen: frozenset[str] = frozenset()
        self._keys: set[str] = set()
        self._param_keys: list[str] = []
        self._buffer_keys: list[str] = []
        self._int_keys: list[str] = []
        self._updates: list[Tensor] = []  # sum_i p_i d_i over the parameters (unnormalised p_i)
        self._buffers: list[Tensor] = []  # sum_i p_i w_i over the floating buffers
        self._ints: list[Tensor] = []
        self._total: float
        self._tau: float
        self._count: int
        self._figures: dict[str, float]
        self.add_state("_total", 0.0, scope="round")  # sum_i p_i
        self.add_state("_tau", 0.0, scope="round")  # sum_i p_i a_i
        self.add_state("_count", 0, scope="round")
        self.add_state("_figures", {}, scope="round")

    @property
    def metrics(self) -> Figures:  # type: ignore[override]  # also subscriptable, as the attribute it was
        """The round's ``fednova/tau_eff`` (``sum_i p_i a_i``, with normalised ``p_i``; none before :meth:`compute`)."""
        return Figures(self._figures)

    @property
    def num_updates(self) -> int:
        """Clients accumulated since the last :meth:`reset`."""
        return self._count

    def setup(self, module: Module) -> None:
        """Keep the global module (each update is measured against it) and read its parameters and frozen keys."""
        self._module = module
        self._frozen = frozen_keys(module)
        self._parameter_names = {name for name, _ in module.named_parameters()}
        self._keys = set()

    def reset(self) -> None:
        self.reset_state("round")

    # --8<-- [start:streaming]
    @torch.no_grad()
    def update(self, result: ClientResult) -> None:
        if self._module is None:
            raise RuntimeError(
                "FedNova.update() needs the global model to measure each client's update: call `setup(module)`"
                " first (the loop does, once per fit)."
            )
        steps = result.num_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(
                f"Expected the client's `num_steps` to be an integer >= 0 (its optimizer steps, set by the executor),"
                f" got {steps!r}: FedNova normalises each update by it."
            )
        weight = float(result.num_examples) if self.weighted else 1.0
        if weight <= 0:
            raise ValueError(f"Expected a client weight > 0, got {weight}.")
        state = result.state
        if state is None:
            raise ValueError("Expected a trained client's `state`, got None: a failed client is never aggregated.")
        if not self._keys or state.keys() != self._keys:
            self._allocate(state)
        if self._count == 0:
            for t in (*self._updates, *self._buffers):
                t.zero_()
            for acc, k in zip(self._ints, self._int_keys):
                acc.copy_(state[k])
        else:
            integer_max_(self._ints, [state[k] for k in self._int_keys])
        accumulate_(self._buffers, [state[k] for k in self._buffer_keys], weight)
        a = normalizing_factor(steps, self.momentum)
        if a > 0:
            reference = self._module.state_dict()
            for acc, k in zip(self._updates, self._param_keys):
                delta = state[k].to(device=acc.device, dtype=acc.dtype) - reference[k].to(acc.device, acc.dtype)
                acc.add_(delta, alpha=weight / a)
        self._total += weight
        self._tau += weight * a
        self._count += 1

    @torch.no_grad()
    def compute(self, global_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if self._count == 0:
            raise RuntimeError("FedNova.compute() called before any update(): no client has been aggregated.")
        tau_eff = self._tau / self._total
        out: dict[str, Tensor] = {}
        for acc, k in zip(self._updates, self._param_keys):
            current = global_state[k]
            step = acc.mul_(tau_eff / self._total)  # tau_eff * sum_i p_i d_i, p_i normalised
            out[k] = (current.to(step.dtype) + step.to(current.device)).to(current.dtype)
        finalize_mean_(self._buffers, self._total)
        out.update(zip(self._buffer_keys, self._buffers))
        out.update(zip(self._int_keys, self._ints))
        self._figures = {"fednova/tau_eff": tau_eff}
        return out

    # --8<-- [end:streaming]

    def _allocate(self, state: Mapping[str, Tensor]) -> None:
        self._keys = set(state)
        floating = [k for k, v in state.items() if is_floating(v) and k not in self._frozen]
        self._param_keys = [k for k in floating if k in self._parameter_names]
        self._buffer_keys = [k for k in floating if k not in self._parameter_names]
        self._int_keys = [k for k, v in state.items() if not is_floating(v) and k not in self._frozen]
        self._updates = [torch.zeros_like(state[k], dtype=torch.promote_types(state[k].dtype, torch.float32))
                         for k in self._param_keys]
        self._buffers = [torch.zeros_like(state[k], dtype=torch.promote_types(state[k].dtype, torch.float32))
                         for k in self._buffer_keys]
        self._ints = [state[k].detach().clone() for k in self._int_keys]
