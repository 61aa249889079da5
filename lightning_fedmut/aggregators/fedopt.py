"""The FedOpt family (Reddi et al., ICLR 2021): a server optimizer stepping along the clients' pseudo-gradient."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import Module

from lightning_fedmut.aggregators.base import Aggregator
from lightning_fedmut.aggregators.fedavg import FedAvg
from lightning_fedmut.functional.server_optim import (
    adaptive_step_,
    apply_step_,
    momentum_step_,
    pseudo_gradient_,
    squared_norm,
)
from lightning_fedmut.functional.state import frozen_keys, is_floating
from lightning_fedmut.state import Figures
from lightning_fedmut.utilities.validation import check_real

if TYPE_CHECKING:
    from lightning_fedmut.tasks import ClientResult



def check_positive(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite real > 0; a message naming ``name`` otherwise."""
    value = check_real(name, value)
    if value <= 0:
        raise ValueError(f"Expected `{name}` to be a float > 0, got {value}.")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"Expected `{name}` to be a bool, got {value!r}.")
    return value


#: The values of ``bias_correction``: none, Adam's at server step ``t``, Flower's ``FedAdam`` rule (at ``t + 1``).
BIAS_CORRECTIONS = (False, True, "flower")


def check_bias_correction(value: Any) -> bool | str:
    """``value`` if it is one of :data:`BIAS_CORRECTIONS`; a message naming ``bias_correction`` otherwise."""
    if isinstance(value, bool) or value == "flower":
        return value
    raise ValueError(f"Expected `bias_correction` to be False, True (Adam's, at server step t) or \"flower\""
                     f" (Flower's FedAdam, at t + 1), got {value!r}.")


class ServerOptimizer(Aggregator):
    r"""Base class of aggregators that step a server optimizer along the pseudo-gradient.

    Client models are averaged as :class:`~lightning_fedmut.aggregators.FedAvg` averages them (a stream,
    one model of sums; ``weighted`` as there). :meth:`compute` turns the mean into the pseudo-gradient
    ``delta = mean_i(w_i) - w_glb`` and the new global model is ``w_glb + step(delta)``, where
    :meth:`server_step_` (the one method a subclass overrides) turns ``delta`` into the step and updates the
    optimizer's own state. FedAvg is ``step(delta) = delta``.

    The server step applies to the module's **parameters** (the names ``setup`` reads from the module; every
    floating entry when the aggregator is used without ``setup``). Floating buffers (BatchNorm's running
    statistics) take the plain mean, as in FedAvg: an adaptive step could turn a running variance
    negative. Integer state takes the maximum, as in FedAvg. Frozen parameters (``requires_grad=False`` at
    ``setup``) are neither averaged nor stepped: the global copy stands bit for bit.

    The server state (moments, step count) is created at the first ``compute``, kept in :meth:`state_dict`
    and restored by :meth:`load_state_dict`, so a resumed run steps exactly as the uninterrupted one. Its
    figures of the round are what :meth:`metrics` returns, under the lowercase class name.
    """

    def __init__(self, server_lr: float, weighted: bool = False) -> None:
        self.server_lr = check_positive("server_lr", server_lr)
        self.weighted = check_bool("weighted", weighted)
        self._mean = FedAvg(weighted=self.weighted)
        self._parameter_names: set[str] | None = None
        self._keys: list[str]
        self._steps: int
        self._buffers: dict[str, list[Tensor]]
        self._figures: dict[str, float]
        self.add_state("_keys", [])
        self.add_state("_steps", 0)
        self.add_state("_buffers", {})  # loaded in place, where the buffers live
        self.add_state("_figures", {}, scope="round")

    # ------------------------------------------------------------ the one override
    def init_state(self, like: list[Tensor]) -> dict[str, list[Tensor]]:
        """The optimizer's buffers, each a list shaped like ``like`` (one tensor per stepped key)."""
        return {}

    def server_step_(self, delta: list[Tensor]) -> None:
        """Turn the pseudo-gradient ``delta`` into the server step, in place, updating the optimizer's buffers."""
        raise NotImplementedError

    # ------------------------------------------------------------------ properties
    @property
    def prefix(self) -> str:
        """The prefix of this aggregator's metrics: its lowercase class name."""
        return type(self).__name__.lower()

    @property
    def metrics(self) -> Figures:  # type: ignore[override]  # also subscriptable, as the attribute it was
        """The round's figures: the pseudo-gradient's and the step's norms (none before :meth:`compute`)."""
        return Figures(self._figures)

    @property
    def steps(self) -> int:
        """Server steps taken (rounds aggregated)."""
        return self._steps

    @property
    def num_updates(self) -> int:
        """Clients accumulated since the last :meth:`reset`."""
        return self._mean.num_updates

    def buffers(self) -> dict[str, dict[str, Tensor]]:
        """The optimizer's state, keyed by buffer then by state key (empty before the first step)."""
        return {name: dict(zip(self._keys, tensors)) for name, tensors in self._buffers.items()}

    # -------------------------------------------------------------- aggregator verbs
    def setup(self, module: Module) -> None:
        self._mean.setup(module)
        frozen = frozen_keys(module)
        self._parameter_names = {name for name, _ in module.named_parameters()} - frozen

    def reset(self) -> None:
        self._mean.reset()

    def update(self, result: ClientResult) -> None:
        self._mean.update(result)

    @torch.no_grad()
    def compute(self, global_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        new = self._mean.compute(global_state)
        keys = [k for k, v in new.items() if is_floating(v)
                and (self._parameter_names is None or k in self._parameter_names)]
        if not self._buffers and not self._keys:
            self._keys = keys
            self._buffers = self.init_state([new[k] for k in keys])
        elif keys != self._keys:
            raise ValueError(
                f"{type(self).__name__} steps the state keys {self._keys[:4]}..., but the clients returned"
                f" {keys[:4]}...: the model changed during the run."
            )
        delta = [new[k] for k in keys]
        current = [global_state[k] for k in keys]
        pseudo_gradient_(delta, current)
        pseudo_norm = math.sqrt(squared_norm(delta))
        self._steps += 1
        self.server_step_(delta)
        step_norm = math.sqrt(squared_norm(delta))
        apply_step_(delta, current)
        self._figures = {f"{self.prefix}/pseudo_gradient_norm": pseudo_norm, f"{self.prefix}/step_norm": step_norm}
        return new


class FedAvgM(ServerOptimizer):
    r"""FedAvg with server momentum (Hsu et al. 2019; the FedAvgM of Reddi et al. 2021).

    ``v = momentum * v + delta`` and ``w_glb = w_glb + server_lr * v``, with ``delta = mean_i(w_i) - w_glb``
    and ``v`` starting at zero. With ``momentum=0`` and ``server_lr=1`` it is FedAvg (up to float rounding:
    ``w + (mean - w)``).

    Args:
        server_lr: the server learning rate.
        momentum: the server momentum in ``[0, 1)``; Hsu et al. use 0.9.
        weighted: weight clients by their number of examples in the mean (FedAvg's ``weighted``).

    Examples:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> agg = FedAvgM(server_lr=1.0, momentum=0.5)
        >>> for target in (1.0, 1.0):  # two rounds whose clients all return 1.0, from a global at 0.0
        ...     agg.reset(); agg.update(SimpleNamespace(state={"w": torch.tensor([target])}, num_examples=1))
        ...     new = agg.compute({"w": torch.tensor([0.0])})["w"].item()
        >>> new  # v = 0.5 * 1.0 + 1.0
        1.5
    """

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9, weighted: bool = False) -> None:
        super().__init__(server_lr, weighted)
        self.momentum = check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)

    def init_state(self, like: list[Tensor]) -> dict[str, list[Tensor]]:
        return {"momentum_buffer": [torch.zeros_like(t) for t in like]}

    def server_step_(self, delta: list[Tensor]) -> None:
        momentum_step_(delta, self._buffers["momentum_buffer"], self.server_lr, self.momentum)


class _Adaptive(ServerOptimizer):
    """FedAdagrad, FedAdam and FedYogi: one class each, one rule apart."""

    rule = "adam"

    def __init__(self, server_lr: float, beta1: float, beta2: float, tau: float, bias_correction: bool | str,
                 initial_accumulator: float | None, weighted: bool) -> None:
        super().__init__(server_lr, weighted)
        self.beta1 = check_real("beta1", beta1, low=0.0, high=1.0, high_open=True)
        self.beta2 = check_real("beta2", beta2, low=0.0, high=1.0, high_open=True)
        self.tau = check_positive("tau", tau)
        self.bias_correction = check_bias_correction(bias_correction)
        self.initial_accumulator = (
            None if initial_accumulator is None else check_real("initial_accumulator", initial_accumulator, low=0.0))

    def init_state(self, like: list[Tensor]) -> dict[str, list[Tensor]]:
        v0 = self.tau**2 if self.initial_accumulator is None else self.initial_accumulator
        return {"exp_avg": [torch.zeros_like(t) for t in like], "exp_avg_sq": [torch.full_like(t, v0) for t in like]}

    @property
    def correction_step(self) -> int | None:
        """The exponent ``t`` of this step's bias correction (``None``: no correction).

        Adam's (``bias_correction=True``) is the 1-based server step ``t``; Flower's ``FedAdam`` computes it at
        ``server_round + 1`` with rounds numbered from 1, i.e. at ``t + 1`` (``bias_correction="flower"``).
        """
        if self.bias_correction is False:
            return None
        return self._steps + 1 if self.bias_correction == "flower" else self._steps

    def server_step_(self, delta: list[Tensor]) -> None:
        adaptive_step_(delta, self._buffers["exp_avg"], self._buffers["exp_avg_sq"], self.rule, self.server_lr,
                       self.beta1, self.beta2, self.tau, step=self.correction_step)


class FedAdagrad(_Adaptive):
    r"""FedAdagrad (Reddi et al. 2021, Algorithm 2): ``v = v + delta^2``.

    ``m = beta1 * m + (1 - beta1) * delta`` and ``w_glb = w_glb + server_lr * m / (sqrt(v) + tau)``, with
    ``m`` starting at zero and ``v`` at ``tau^2`` (Algorithm 2 asks for ``v_{-1} >= tau^2``), or at
    ``initial_accumulator``. No bias correction (``bias_correction=True`` adds Adam's).

    Args:
        server_lr: the server learning rate ``eta``.
        beta1: the first-moment decay (0 gives plain Adagrad on the pseudo-gradient).
        tau: the adaptivity ``tau`` > 0: the smaller, the more adaptive.
        bias_correction: scale the step by ``sqrt(1 - beta2^t) / (1 - beta1^t)`` (with ``beta2 = 0`` here) at
            server step ``t`` (``True``) or at ``t + 1`` (``"flower"``).
        initial_accumulator: the start value of ``v``; ``None`` is ``tau^2``.
        weighted: weight clients by their number of examples in the mean.

    Examples:
        >>> FedAdagrad().hparams["server_lr"], FedAdagrad().hparams["tau"]
        (0.1, 0.001)
    """

    rule = "adagrad"

    def __init__(self, server_lr: float = 0.1, beta1: float = 0.9, tau: float = 1e-3, bias_correction: bool | str = False,
                 initial_accumulator: float | None = None, weighted: bool = False) -> None:
        super().__init__(server_lr, beta1, 0.0, tau, bias_correction, initial_accumulator, weighted)


class FedAdam(_Adaptive):
    r"""FedAdam (Reddi et al. 2021, Algorithm 2): ``v = beta2 * v + (1 - beta2) * delta^2``.

    ``m = beta1 * m + (1 - beta1) * delta`` and ``w_glb = w_glb + server_lr * m / (sqrt(v) + tau)``, with
    ``m`` starting at zero and ``v`` at ``tau^2``, or at ``initial_accumulator``.

    **Bias correction.** Reddi et al.'s Algorithm 2 has none, and neither has this class by default.
    ``bias_correction=True`` is Adam's (Kingma and Ba): the step length is
    ``server_lr * sqrt(1 - beta2^t) / (1 - beta1^t)`` at server step ``t = 1, 2, ...``. Flower's ``FedAdam``
    (``flwr.server.strategy.FedAdam``, 1.42) evaluates the same factor at ``server_round + 1`` with rounds
    numbered from 1, i.e. at ``t + 1`` (its first step is 0.742 times ``eta`` where Adam's is 1.000 times,
    with ``beta1=0.9, beta2=0.99``), starts ``v`` at zero and weights the clients by their data:
    ``FedAdam(bias_correction="flower", initial_accumulator=0.0, weighted=True)`` reproduces it (tested
    against numbers Flower's own code produced).

    Args:
        server_lr: the server learning rate ``eta``.
        beta1: the first-moment decay.
        beta2: the second-moment decay.
        tau: the adaptivity ``tau`` > 0.
        bias_correction: ``False`` (none, Algorithm 2), ``True`` (Adam's, at server step ``t``) or ``"flower"``
            (Flower's ``FedAdam``, at ``t + 1``).
        initial_accumulator: the start value of ``v``; ``None`` is ``tau^2``.
        weighted: weight clients by their number of examples in the mean.

    Examples:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> agg = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
        >>> agg.reset(); agg.update(SimpleNamespace(state={"w": torch.tensor([0.5])}, num_examples=1))
        >>> round(agg.compute({"w": torch.tensor([0.0])})["w"].item(), 4)  # 0.1 * 0.05 / (sqrt(0.0025) + 0.001)
        0.098
    """

    rule = "adam"

    def __init__(self, server_lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
                 bias_correction: bool | str = False, initial_accumulator: float | None = None,
                 weighted: bool = False) -> None:
        super().__init__(server_lr, beta1, beta2, tau, bias_correction, initial_accumulator, weighted)


class FedYogi(_Adaptive):
    r"""FedYogi (Reddi et al. 2021, Algorithm 2): ``v = v - (1 - beta2) * delta^2 * sign(v - delta^2)``.

    As :class:`FedAdam` otherwise: ``m = beta1 * m + (1 - beta1) * delta`` and
    ``w_glb = w_glb + server_lr * m / (sqrt(v) + tau)``; ``v`` starts at ``tau^2``. Yogi's second moment
    grows or shrinks by at most ``(1 - beta2) * delta^2`` a round, so it adapts more slowly than Adam's.

    Args:
        server_lr: the server learning rate ``eta``.
        beta1: the first-moment decay.
        beta2: the second-moment decay.
        tau: the adaptivity ``tau`` > 0.
        bias_correction: ``False``, ``True`` (Adam's, at server step ``t``) or ``"flower"`` (at ``t + 1``).
        initial_accumulator: the start value of ``v``; ``None`` is ``tau^2``.
        weighted: weight clients by their number of examples in the mean.

    Examples:
        >>> FedYogi(server_lr=0.01).hparams["beta2"]
        0.99
    """

    rule = "yogi"

    def __init__(self, server_lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
                 bias_correction: bool | str = False, initial_accumulator: float | None = None,
                 weighted: bool = False) -> None:
        super().__init__(server_lr, beta1, beta2, tau, bias_correction, initial_accumulator, weighted)
