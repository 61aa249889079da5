"""Sharpness-aware local training: FedSAM (SAM on every client) and FedASAM (adaptive SAM on every client).

SAM (Foret et al., ICLR 2021) takes each optimizer step with the gradient at a perturbed point ``w + e``, where
``e`` is the steepest ascent direction of length ``rho``. FedSAM (Qu et al., ICML 2022; Caldarola et al., ECCV
2022) runs it on every client; FedASAM (Caldarola et al.) runs ASAM (Kwon et al., ICML 2021), whose perturbation
is scaled by the weights' magnitude.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_fedmut.callbacks.base import LocalCallback
from lightning_fedmut.utilities.validation import check_real

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientTask

#: Added to the gradient norm so that a zero gradient gives a zero perturbation (as the SAM and ASAM codes do).
NORM_EPS = 1e-12


@torch.no_grad()
def sam_perturbation(grads: Sequence[Tensor], rho: float, scales: Sequence[Tensor | None] | None = None
                     ) -> list[Tensor]:
    r"""SAM's perturbation ``e = rho * g / |g|``, or ASAM's ``e = rho * T^2 g / |T g|`` when ``scales`` gives ``T``.

    ``|.|`` is the L2 norm over all the tensors together (plus ``1e-12``, so a zero gradient gives ``e = 0``).
    ``scales`` holds one ``T`` per gradient, element-wise, or ``None`` for ``T = 1``.

    Examples:
        >>> e = sam_perturbation([torch.tensor([3.0]), torch.tensor([4.0])], rho=0.5)
        >>> [round(t.item(), 6) for t in e]
        [0.3, 0.4]
        >>> e = sam_perturbation([torch.tensor([1.0, 1.0])], rho=1.0, scales=[torch.tensor([2.0, 0.0])])
        >>> [round(v, 6) for v in e[0].tolist()]  # T g = (2, 0), |T g| = 2, T^2 g = (4, 0)
        [2.0, 0.0]
    """
    if scales is None:
        scales = [None] * len(grads)
    scaled = [g if t is None else g * t for g, t in zip(grads, scales)]  # T g
    norm = math.sqrt(sum(float(s.double().pow(2).sum()) for s in scaled)) if scaled else 0.0
    factor = rho / (norm + NORM_EPS)
    return [(s if t is None else s * t) * factor for s, t in zip(scaled, scales)]  # rho T (T g) / |T g|


@torch.no_grad()
def asam_scales(named_params: Sequence[tuple[str, Tensor]], eta: float) -> list[Tensor | None]:
    """ASAM's element-wise ``T = |w| + eta`` for a parameter whose name contains ``weight``, ``None`` (``T = 1``)
    for the others (biases), as the ASAM authors' code decides.

    Examples:
        >>> layer = torch.nn.Linear(1, 1)
        >>> with torch.no_grad():
        ...     _ = layer.weight.fill_(-0.5)
        >>> t = asam_scales(list(layer.named_parameters()), eta=0.2)
        >>> round(t[0].item(), 6), t[1]
        (0.7, None)
    """
    return [p.detach().abs().add(eta) if "weight" in name else None for name, p in named_params]


class OptimizerStepWrapper(Callback):
    """A Lightning callback that wraps each optimizer's ``step`` from ``on_train_start`` to the end of training.

    Subclasses implement :meth:`wrapped_step`, which receives the optimizer, its own ``step`` and the closure
    Lightning passes in automatic optimization. ``setup`` refuses, before any step, the setups in which Lightning
    steps without a closure or with a partial one (:func:`check_sam_trainer`). The optimizer's ``step`` is restored
    when training ends, fails or the Trainer tears down.
    """

    def __init__(self) -> None:
        self._module: LightningModule | None = None
        self._names: dict[int, str] = {}
        self._wrapped: list[tuple[Any, Any]] = []  # (optimizer, its own instance `step` or None)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_sam_trainer(pl_module.automatic_optimization, trainer.accumulate_grad_batches,
                          getattr(trainer.precision_plugin, "scaler", None) is not None)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._module = pl_module
        self._names = {id(p): n for n, p in pl_module.named_parameters()}
        for optimizer in trainer.optimizers:
            own = optimizer.__dict__.get("step")  # an LR scheduler may have wrapped it already
            base = optimizer.step
            setattr(optimizer, "step", functools.partial(self.wrapped_step, optimizer, base))  # noqa: B010
            self._wrapped.append((optimizer, own))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._unwrap()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._unwrap()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._unwrap()

    def _unwrap(self) -> None:
        for optimizer, own in reversed(self._wrapped):
            if own is None:
                optimizer.__dict__.pop("step", None)
            else:
                setattr(optimizer, "step", own)  # noqa: B010
        self._wrapped, self._module = [], None

    def wrapped_step(self, optimizer: Any, base_step: Callable[..., Any], closure: Callable[[], Any] | None = None,
                     **kwargs: Any) -> Any:
        """Called in place of ``optimizer.step(closure=closure, **kwargs)``; ``base_step`` is the optimizer's own."""
        raise NotImplementedError


class SharpnessAwareStep(OptimizerStepWrapper):
    r"""A Lightning callback that turns the optimizers' steps into SAM (or ASAM) steps, whatever the optimizer.

    From ``on_train_start`` to the end of training it wraps each optimizer's ``step``. Given the closure Lightning
    passes in automatic optimization (``training_step``, ``zero_grad``, ``backward``), a step is:

    1. the closure at ``w``: gradients ``g`` of every parameter the optimizer steps;
    2. ``e = rho * g / |g|`` (SAM) or ``e = rho * T^2 g / |T g|`` with ``T = |w| + eta`` on weights, ``1`` on
       biases (ASAM, :func:`asam_scales`); ``w <- w + e``;
    3. the closure again at ``w + e`` (gradients zeroed first, as every closure does), then ``w`` restored
       exactly (a copy, not ``w + e - e``);
    4. the optimizer's own step from ``w`` with the gradients taken at ``w + e``.

    Lightning's ``on_before_optimizer_step`` hooks (FedProx's and FedDyn's gradient terms, SCAFFOLD's
    correction) and gradient clipping run once per step, on the gradients of step 3: the clipped gradient is the
    one the optimizer steps with. Step 1 runs Lightning's inner closure alone (``training_step``, ``zero_grad``,
    ``backward``), so ``e`` comes from the unclipped loss gradient; norm clipping would not change ``e`` anyway
    (``e`` does not depend on the scale of ``g``). :attr:`split_closure` says whether Lightning's closure had the
    expected structure; if not, both passes run the whole closure (hooks and clipping twice).

    The second pass is quiet: ``self.log`` calls in it are dropped (the logged ``train_loss`` is the loss at
    ``w``, also what the step returns), and BatchNorm running statistics are left as the first pass made them.
    Metric objects updated inside ``training_step`` do see both passes.

    Not supported, refused in ``setup`` before any step: manual optimization (SAM needs Lightning's closure),
    ``accumulate_grad_batches > 1`` (the closure would then not hold a whole step's gradient) and 16-bit mixed
    precision with a gradient scaler (Lightning then steps without a closure); ``bf16-mixed`` works.

    Args:
        rho: the perturbation radius ``rho`` > 0.
        adaptive: ASAM's scaled perturbation instead of SAM's.
        eta: ASAM's ``eta`` >= 0 in ``T = |w| + eta`` (unused by SAM).

    Examples:
        >>> step = SharpnessAwareStep(rho=0.05)
        >>> step.rho, step.adaptive, step.steps
        (0.05, False, 0)
    """

    def __init__(self, rho: float, adaptive: bool = False, eta: float = 0.0) -> None:
        super().__init__()
        self.rho = check_real("rho", rho, low=0.0, low_open=True)
        self.adaptive = _check_bool("adaptive", adaptive)
        self.eta = check_real("eta", eta, low=0.0)
        self.steps = 0
        self.split_closure: bool | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.steps, self.split_closure = 0, None
        super().on_train_start(trainer, pl_module)

    def wrapped_step(self, optimizer: Any, base_step: Callable[..., Any], closure: Callable[[], Any] | None = None,
                     **kwargs: Any) -> Any:
        return self._sam_step(optimizer, base_step, closure, **kwargs)

    def _sam_step(self, optimizer: Any, base_step: Callable[..., Any], closure: Callable[[], Any] | None = None,
                  **kwargs: Any) -> Any:
        if closure is None:
            raise RuntimeError("SAM needs the closure Lightning passes to `optimizer.step` in automatic optimization;"
                               " got a step without one (manual optimization or a gradient scaler).")
        inner = lightning_inner_closure(closure)
        self.split_closure = inner is not None
        first = (inner or closure)()
        saved = inner._result if inner is not None else None
        if first is None:  # training_step returned None: Lightning skips the step
            return None
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return base_step(**kwargs)
        grads = [p.grad for p in params]
        scales = asam_scales([(self._names.get(id(p), ""), p) for p in params], self.eta) if self.adaptive else None
        perturbation = sam_perturbation(grads, self.rho, scales)
        start = [p.detach().clone() for p in params]
        with torch.no_grad():
            torch._foreach_add_(params, [e.to(p.dtype) for e, p in zip(perturbation, params)])
        assert self._module is not None
        with _quiet_logging(self._module), _frozen_running_stats(self._module):
            closure()  # gradients at w + e, with the hooks and the clipping
        with torch.no_grad():
            torch._foreach_copy_(params, start)
        if inner is not None:
            inner._result = saved  # the step's outputs (loss, progress bar) are those at w
        self.steps += 1
        base_step(**kwargs)
        return first


def lightning_inner_closure(closure: Any) -> Any:
    """The inner closure (``training_step``, ``zero_grad``, ``backward``) of the closure Lightning's precision
    plugin hands to ``optimizer.step`` (``partial(Precision._wrap_closure, model, optimizer, closure)``), or
    ``None`` when ``closure`` does not have that structure."""
    from lightning.pytorch.loops.optimization.automatic import Closure

    if isinstance(closure, functools.partial) and getattr(closure.func, "__name__", "") == "_wrap_closure" \
            and len(closure.args) == 3 and isinstance(closure.args[2], Closure) and not closure.keywords:
        return closure.args[2]
    return None


def check_sam_trainer(automatic_optimization: bool, accumulate_grad_batches: int, grad_scaler: bool) -> None:
    """Refuse, in one message, a training setup SAM's step cannot run in.

    Examples:
        >>> check_sam_trainer(True, 2, False)
        Traceback (most recent call last):
        ...
        ValueError: Expected `accumulate_grad_batches` = 1 with SAM (each SAM step needs its own two gradients), got 2.
    """
    if not automatic_optimization:
        raise ValueError("Expected automatic optimization with SAM (it wraps the closure Lightning passes to"
                         " `optimizer.step`), got a module with `automatic_optimization = False`.")
    if accumulate_grad_batches != 1:
        raise ValueError("Expected `accumulate_grad_batches` = 1 with SAM (each SAM step needs its own two"
                         f" gradients), got {accumulate_grad_batches}.")
    if grad_scaler:
        raise ValueError("Expected a precision without a gradient scaler with SAM ('32-true', '64-true' or"
                         " 'bf16-mixed'), got '16-mixed', whose scaler steps without a closure.")


def check_sam_loop(loop: FederatedLoop, module: LightningModule) -> None:
    """:func:`check_sam_trainer` on the loop's client Trainer settings (``trainer_kwargs``) and ``module``."""
    kwargs = loop.trainer_kwargs or {}
    check_sam_trainer(module.automatic_optimization, kwargs.get("accumulate_grad_batches", 1),
                      str(kwargs.get("precision", "")) in ("16-mixed", "16"))


@contextlib.contextmanager
def _quiet_logging(module: LightningModule) -> Iterator[None]:
    """``module.log`` and ``module.log_dict`` do nothing inside."""
    saved: dict[str, Any] = {name: module.__dict__[name] for name in ("log", "log_dict") if name in module.__dict__}
    module.__dict__["log"] = module.__dict__["log_dict"] = _no_log
    try:
        yield
    finally:
        for name in ("log", "log_dict"):
            module.__dict__.pop(name, None)
        module.__dict__.update(saved)


def _no_log(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def _frozen_running_stats(module: LightningModule) -> Iterator[None]:
    """BatchNorm layers normalise with the batch's statistics inside, but their running statistics and
    ``num_batches_tracked`` come out unchanged (momentum 0, the counter restored)."""
    layers = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(layers, saved):
            m.momentum = momentum
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"Expected `{name}` to be a bool, got {value!r}.")
    return value


class SAM(LocalCallback):
    r"""FedSAM / FedASAM's client side: every client trains with sharpness-aware steps.

    The callback gives each client's Trainer a ``SharpnessAwareStep`` (a Lightning callback of this module),
    which wraps the optimizer that the module's ``configure_optimizers`` returns (any optimizer): each step takes
    the gradient at ``w + e`` with ``e = rho * g / |g|`` (SAM), or ``e = rho * T^2 g / |T g|``, ``T = |w| + eta`` element-wise on parameters
    whose name contains ``weight`` and ``T = 1`` on the others (ASAM, as the ASAM authors' code), then steps from
    ``w``. Each step costs two forward and backward passes. The aggregator is the method's (FedAvg for FedSAM).
    It keeps no state across rounds.

    Refused in ``setup``, before any training: a module with manual optimization, ``accumulate_grad_batches``
    other than 1 in ``trainer_kwargs``, and ``precision='16-mixed'`` (its gradient scaler steps without a
    closure).

    Args:
        rho: the perturbation radius ``rho`` > 0 (FedSAM's 0.05; ASAM's 0.5).
        adaptive: ASAM's scaled perturbation (FedASAM) instead of SAM's.
        eta: ASAM's ``eta`` >= 0 (unused by SAM).

    Examples:
        >>> from lightning_fedmut import FederatedLoop, FedAvg
        >>> loop = FederatedLoop(rounds=10, clients_per_round=5, aggregator=FedAvg(), callbacks=[SAM(rho=0.05)])
        >>> loop.hparams["callbacks"][0]["init_args"]
        {'rho': 0.05, 'adaptive': False, 'eta': 0.0}
    """

    def __init__(self, rho: float = 0.05, adaptive: bool = False, eta: float = 0.0) -> None:
        self.rho = check_real("rho", rho, low=0.0, low_open=True)
        self.adaptive = _check_bool("adaptive", adaptive)
        self.eta = check_real("eta", eta, low=0.0)

    @property
    def hparams(self) -> dict[str, Any]:
        """The constructor arguments, for run configs (it declares no state, so they are not derived)."""
        return {"rho": self.rho, "adaptive": self.adaptive, "eta": self.eta}

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        check_sam_loop(loop, module)

    def on_client_fit_start(self, loop: FederatedLoop, module: LightningModule, task: ClientTask) -> None:
        task.callbacks.append(SharpnessAwareStep(self.rho, adaptive=self.adaptive, eta=self.eta))
