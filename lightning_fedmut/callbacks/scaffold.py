"""SCAFFOLD (Karimireddy et al., ICML 2020): control variates that correct the clients' drift."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback
from torch import Tensor

from lightning_fedmut.callbacks.base import LocalCallback
from lightning_fedmut.functional.aggregation import accumulate_
from lightning_fedmut.functional.server_optim import squared_norm
from lightning_fedmut.functional.state import federated_parameters
from lightning_fedmut.utilities.validation import check_int, check_real

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

    from lightning_fedmut.aggregators.base import Aggregator
    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientResult, ClientTask

#: Key of a client's control variate ``c_i`` in its client state (a dict of tensors keyed by parameter name).
CLIENT_CONTROL_KEY = "scaffold/control"

#: How the server weights the clients' control variates: the paper's, or by data share as the reference code.
CONTROL_WEIGHTS = ("uniform", "data")


def step_size(group: dict[str, Any]) -> float:
    """How far one step of an optimizer's parameter group moves per unit of gradient, for option II.

    The learning rate; for ``torch.optim.SGD`` with momentum ``m``, dampening ``d`` (and no Nesterov), the
    steady-state step ``lr * (1 - d) / (1 - m)`` (a gradient ``g`` repeated forever moves the weights by
    ``lr * (1 - d) / (1 - m) * g`` a step); with Nesterov, ``lr * (1 + m (1 - d) / (1 - m))``.

    Examples:
        >>> step_size({"lr": 0.1}), step_size({"lr": 0.01, "momentum": 0.5, "dampening": 0.0})
        (0.1, 0.02)
    """
    lr = float(group["lr"])
    momentum = float(group.get("momentum", 0.0) or 0.0)
    if not momentum or "dampening" not in group:  # not SGD-like momentum
        return lr
    damped = (1.0 - float(group.get("dampening", 0.0))) / (1.0 - momentum)
    return lr * (1.0 + momentum * damped) if group.get("nesterov") else lr * damped


class ControlVariateCorrection(Callback):
    r"""A Lightning callback for one SCAFFOLD client: corrects each gradient to ``g - c_i + c``, then updates ``c_i``.

    ``server_control`` holds ``c`` and ``client_control`` the client's ``c_i`` (``None``: zero), one tensor per
    parameter of ``names``. ``server_scale * c - c_i`` is added to the gradients in ``on_before_optimizer_step``
    (once per optimizer step, before Lightning's clipping; ``server_scale`` is 1 but for the reference's data
    weighting, see :class:`Scaffold`). With ``gradient_clip``, the raw gradients of all the module's parameters
    are first clipped to that total norm, and the correction is added after. When training ends, option II gives
    the client's new control variate

    ``c_i+ = c_i - c + (x - y) / sum_k eta_k``

    with ``x`` the start and ``y`` the trained parameters and ``sum_k eta_k`` the sum, over the client's
    optimizer steps, of each step's size read from the optimizer's parameter group as it steps
    (:func:`step_size`: the learning rate, or SGD's momentum-adjusted one). For plain SGD with a constant
    learning rate that is ``K * eta_l`` as in the paper, and ``(x - y) / (K eta_l)`` is exactly the mean
    corrected gradient; with another optimizer it is an estimate of it. ``new_control`` (``c_i+``) and
    ``delta_control`` (``c_i+ - c_i``) are then CPU tensors keyed by parameter name; a parameter that never
    stepped keeps its ``c_i``.
    """

    def __init__(self, names: list[str], server_control: list[Tensor],
                 client_control: dict[str, Tensor] | None = None, server_scale: float = 1.0,
                 gradient_clip: float | None = None) -> None:
        self.names = list(names)
        self.server_scale = float(server_scale)
        self.gradient_clip = gradient_clip
        self._c = [c.detach().cpu() for c in server_control]
        self._ci = [torch.zeros_like(c) if client_control is None else client_control[n].detach().cpu().to(c.dtype)
                    for n, c in zip(self.names, self._c)]
        self.new_control: dict[str, Tensor] | None = None
        self.delta_control: dict[str, Tensor] | None = None
        self.steps = 0
        self._params: list[Tensor] = []
        self._start: list[Tensor] = []
        self._correction: list[Tensor] = []
        self._step_sums: list[float] = []
        self._index: dict[int, int] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        named = dict(pl_module.named_parameters())
        missing = [n for n in self.names if n not in named]
        if missing:
            raise ValueError(f"SCAFFOLD's control variates name parameters the client model lacks: {missing[:5]}.")
        self._params = [named[n] for n in self.names]
        self._correction = [(c * self.server_scale - ci).to(device=p.device, dtype=p.dtype)
                            for c, ci, p in zip(self._c, self._ci, self._params)]
        self._start = [p.detach().clone() for p in self._params]
        self._step_sums = [0.0] * len(self._params)
        self._index = {id(p): i for i, p in enumerate(self._params)}
        self.steps = 0

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if self.gradient_clip is not None:  # the raw gradients, before the correction (the reference's order)
            torch.nn.utils.clip_grad_norm_([p for p in pl_module.parameters() if p.grad is not None],
                                           max_norm=self.gradient_clip)
        grads, corrections = [], []
        for group in optimizer.param_groups:
            size = step_size(group)
            for p in group["params"]:
                i = self._index.get(id(p))
                if i is None or p.grad is None:
                    continue
                grads.append(p.grad)
                corrections.append(self._correction[i])
                self._step_sums[i] += size
        if grads:
            torch._foreach_add_(grads, corrections)
        self.steps += 1

    @torch.no_grad()
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.new_control, self.delta_control = {}, {}
        for name, p, x, c, ci, total in zip(self.names, self._params, self._start, self._c, self._ci,
                                            self._step_sums):
            if total > 0:
                mean_step = (x - p.detach()).cpu().to(c.dtype).div_(total)  # (x - y) / sum eta
                self.delta_control[name] = mean_step - c  # c_i+ - c_i = -c + (x - y) / sum eta
                self.new_control[name] = ci + self.delta_control[name]
            else:
                self.delta_control[name] = torch.zeros_like(c)
                self.new_control[name] = ci.clone()
        self._params, self._start, self._correction = [], [], []


class Scaffold(LocalCallback):
    r"""SCAFFOLD with option II control variates: local gradients corrected to ``g - c_i + c``.

    Each client ``i`` keeps a control variate ``c_i`` in the loop's client-state store (zero until its first
    round) and the server keeps ``c`` (zero at first). Every client trains with its gradients corrected to
    ``g - c_i + c`` (a :class:`ControlVariateCorrection` in its Trainer), then updates

    ``c_i+ = c_i - c + (x - y) / (K eta_l)``

    from its start ``x``, its trained weights ``y``, its ``K`` optimizer steps and the learning rate
    ``eta_l`` (read from the optimizer as it steps, so schedules count; SGD momentum is accounted for, see
    :func:`step_size`). It stores ``c_i+`` and keeps ``delta c_i = c_i+ - c_i`` by slot (with workers, each
    worker its own clients', gathered in slot order once the round's clients are done, so the sum is the one
    process's to the bit); once every client of the round has trained, the server updates ``c += (|S| / N) * mean_i(delta c_i)`` (``|S|`` clients that
    trained, ``N`` in the federation). The global model is whatever the aggregator makes of the clients;
    the paper's ``x += eta_g mean_i(y_i - x)`` with ``eta_g = 1`` is ``FedAvg(weighted=False)``.

    **Assumptions.** Option II is exact for plain SGD: the trained weights are then the start minus the
    learning rate times the sum of corrected gradients. With momentum or an adaptive optimizer (any
    optimizer that ``configure_optimizers`` returns works) ``c_i+`` is an estimate of the client's mean
    gradient. Only parameters that require gradients are controlled; a parameter without a gradient in a
    step is not corrected in that step.

    **Memory.** ``N`` control variates of the size of the trainable parameters live in the client-state store
    (and in checkpoints), plus ``c`` and the round's sum of ``delta c_i`` on the server.

    Logs ``scaffold/control_norm`` (``|c|`` after the update) and ``scaffold/delta_control_norm`` (``|c|``'s
    change) every round. With FedMut, ``x`` is each client's mutated start model.

    **Against the reference code.** This class follows the paper. The SCAFFOLD server of the FedMut authors'
    lab (zenghui9977/FLLIB_develop, ``fllib/server/scaffold.py`` and ``fllib/client/scaffold.py``) differs in
    four ways when clients hold different amounts of data:

    - it weights the control variates by data share: with ``p_i = N n_i / n`` (``n_i`` the client's examples,
      ``n`` the federation's), the server updates ``c += (1 / N) * sum_i p_i delta c_i`` and client ``i``
      corrects its steps by ``c / p_i - c_i``. ``control_weights="data"`` does the same; the default
      ``"uniform"`` is the paper's (``p_i = 1``). With equal client sizes the two are the same;
    - it clips the raw gradients to a total norm of 10 before each step and adds the correction after
      (``gradient_clip=10.0``; Lightning's ``gradient_clip_val`` would clip the corrected gradients instead);
    - its global model is the clients' uniform mean (``FedAvg(weighted=False)``);
    - its option II divides by a step count common to all clients (the mean client's batches times the local
      epochs), where this class counts each client's own steps; and it applies the correction to the weights
      after the optimizer step, which is the same as correcting the gradient for plain SGD only.

    ``SCAFFOLD(weighted=False, control_weights="data", gradient_clip=10.0)`` is the reference's configuration up
    to the last point.

    Args:
        num_clients: ``N``; ``None`` takes the number of clients handed to ``fit``.
        control_weights: ``"uniform"`` (the paper's server update) or ``"data"`` (the reference code's weighting
            of the control variates by data share).
        gradient_clip: clip each step's raw gradients to this total norm before the correction (the reference
            code uses 10); ``None``: no clipping.

    Examples:
        >>> from lightning_fedmut import FederatedLoop, FedAvg
        >>> loop = FederatedLoop(rounds=10, clients_per_round=5, aggregator=FedAvg(weighted=False),
        ...                      callbacks=[Scaffold()])
        >>> loop.hparams["callbacks"][0]
        {'class_path': 'lightning_fedmut.callbacks.scaffold.Scaffold', 'init_args': {'num_clients': None, 'control_weights': 'uniform', 'gradient_clip': None}}
    """

    def __init__(self, num_clients: int | None = None, control_weights: str = "uniform",
                 gradient_clip: float | None = None) -> None:
        self.num_clients = None if num_clients is None else check_int("num_clients", num_clients, low=1)
        if control_weights not in CONTROL_WEIGHTS:
            raise ValueError(f"Expected `control_weights` in {CONTROL_WEIGHTS}, got {control_weights!r}.")
        self.control_weights = control_weights
        self.gradient_clip = None if gradient_clip is None else check_real("gradient_clip", gradient_clip, low=0.0,
                                                                           low_open=True)
        self._examples = 0  # the federation's examples, for control_weights="data"
        self._delta_sum: list[Tensor] = []
        self._federation = 0
        self._names: list[str]
        self._control: list[Tensor]
        self._count: int
        self._clients: dict[int, ControlVariateCorrection]
        self._owned: dict[int, list[Tensor]]
        self._figures: dict[str, float]
        self.add_state("_names", [])
        self.add_state("_control", [])
        self.add_state("_count", 0, scope="round")
        self.add_state("_clients", {}, scope="round")
        # with workers: this worker's clients' changes by slot, then (reduced by the loop) every worker's
        self.add_state("_owned", {}, reduce="cat", scope="round")
        self.add_state("_figures", {}, scope="round")

    @property
    def control(self) -> dict[str, Tensor]:
        """The server control variate ``c``, keyed by parameter name."""
        return dict(zip(self._names, self._control))

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        params = federated_parameters(module)  # not frozen, nor kept local by the federation policy
        self._names = [n for n, _ in params]
        dtypes = [torch.promote_types(p.dtype, torch.float32) for _, p in params]
        self._control = [torch.zeros(p.shape, dtype=d) for (_, p), d in zip(params, dtypes)]
        self._delta_sum = [torch.zeros_like(c) for c in self._control]
        self._federation = self.num_clients or _federation_size(loop)
        if self._federation < loop.clients_per_round:
            raise ValueError(
                f"Expected `num_clients` >= clients_per_round={loop.clients_per_round}, got {self._federation}.")
        if self.control_weights == "data":
            self._examples = _federation_examples(loop)

    def teardown(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        self._clients = {}

    def on_round_start(self, loop: FederatedLoop, module: LightningModule) -> None:
        for s in self._delta_sum:
            s.zero_()

    def data_weight(self, num_examples: int | None) -> float:
        """``p_i = N n_i / n`` for ``control_weights="data"`` (the reference code's), 1 for ``"uniform"``."""
        if self.control_weights == "uniform":
            return 1.0
        if not num_examples:
            raise ValueError("Scaffold(control_weights='data') weighs clients by their number of examples: give every"
                             f" client a sized dataset with at least one example, got num_examples={num_examples!r}.")
        return self._federation * num_examples / self._examples

    def on_client_fit_start(self, loop: FederatedLoop, module: LightningModule, task: ClientTask) -> None:
        weight = self.data_weight(task.client.num_examples)
        corrector = ControlVariateCorrection(self._names, self._control, task.client_state.get(CLIENT_CONTROL_KEY),
                                             server_scale=1.0 / weight, gradient_clip=self.gradient_clip)
        self._clients[task.slot] = corrector
        task.callbacks.append(corrector)

    def on_client_fit_end(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        corrector = self._clients.pop(result.task.slot)
        assert result.client_state is not None and corrector.delta_control is not None  # the client trained
        result.client_state[CLIENT_CONTROL_KEY] = corrector.new_control
        delta = [corrector.delta_control[n] for n in self._names]
        weight = self.data_weight(result.task.client.num_examples)
        if weight != 1.0:  # the reference's sum_i p_i delta c_i
            delta = [d * weight for d in delta]
        if loop.executor.world_size == 1:  # clients end in slot order: add as they come
            accumulate_(self._delta_sum, delta, 1.0)
            self._count += 1
        else:
            self._owned[result.task.slot] = delta

    def on_client_fit_failure(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        self._clients.pop(result.task.slot, None)  # its c_i stays as it was

    @torch.no_grad()
    def on_before_aggregate(self, loop: FederatedLoop, module: LightningModule, aggregator: Aggregator) -> None:
        if loop.executor.world_size > 1:
            # every worker's changes are in `_owned` now, by slot: summed in slot order, as one process does
            for slot in sorted(self._owned):
                accumulate_(self._delta_sum, self._owned[slot], 1.0)
            self._count = len(self._owned)
            self._owned = {}
        if self._count:
            # c += |S|/N * mean(delta c_i) = sum(delta c_i) / N
            accumulate_(self._control, self._delta_sum, 1.0 / self._federation)
        self._figures = {"scaffold/control_norm": math.sqrt(squared_norm(self._control)),
                         "scaffold/delta_control_norm": math.sqrt(squared_norm(self._delta_sum)) / self._federation}

    def metrics(self) -> dict[str, float]:
        """The round's ``scaffold/control_norm`` and ``scaffold/delta_control_norm``."""
        return dict(self._figures)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._names and list(state_dict["names"]) != self._names:
            raise ValueError(
                "Scaffold state does not match the model: the checkpoint controls parameters"
                f" {state_dict['names'][:5]}..., this model {self._names[:5]}..."
            )
        super().load_state_dict(state_dict)
        self._names = list(self._names)
        self._delta_sum = [torch.zeros_like(c) for c in self._control]


def _federation_size(loop: FederatedLoop) -> int:
    """The number of clients handed to ``fit``."""
    return int(loop.num_clients)  # set by fit before any callback's setup


def _federation_examples(loop: FederatedLoop) -> int:
    """The number of training examples of all the clients handed to ``fit``."""
    clients = loop.clients
    sizes = [c.num_examples for c in clients]
    if any(not n for n in sizes):
        raise ValueError("Scaffold(control_weights='data') weighs clients by their number of examples: give every"
                         " client a sized dataset (`Client(num_examples=...)`).")
    return int(sum(sizes))  # type: ignore[arg-type]  # all set, checked above
