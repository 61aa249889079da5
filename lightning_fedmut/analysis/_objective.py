"""The loss of a module over a data set, measured without leaving a trace on the module or the run.

Every analysis function opens one :func:`objective` session. Inside it the module is in eval mode (dropout
off, BatchNorm on its running statistics), no ``Trainer`` is attached (so ``self.log`` in ``training_step``
is a no-op), and the global random state of torch, numpy and ``random`` is forked. On exit every parameter
and buffer is copied back from a snapshot, bit for bit, and every submodule gets its mode back.

The loss of the data set is the mean of the batch losses weighted by batch size: for a ``training_step``
that returns a batch mean, the mean over every example.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.data import extract_batch_size
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_fedmut.utilities.validation import check_int

LossFn = Callable[[nn.Module, Any], Tensor]
MetricFn = Callable[[nn.Module, Any], Any]

_NO_TRAINER_LOG = r"You are trying to `self.log\(\)` but the `self.trainer` reference is not registered"


def check_module(module: Any) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise TypeError(f"Expected `module` to be a LightningModule (or torch.nn.Module), got {type(module).__name__}.")
    return module


def check_loss_fn(loss_fn: Any, module: nn.Module | None = None) -> LossFn | None:
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"Expected `loss_fn` to be None or a callable loss_fn(module, batch), got {loss_fn!r}.")
    if loss_fn is None and module is not None and not callable(getattr(module, "training_step", None)):
        raise TypeError(
            f"`module` ({type(module).__name__}) has no `training_step`, which gives the loss by default:"
            " pass `loss_fn=lambda module, batch: ...`."
        )
    return loss_fn


def check_metric_fn(metric_fn: Any) -> MetricFn | None:
    if metric_fn is not None and not callable(metric_fn):
        raise TypeError(f"Expected `metric_fn` to be None or a callable metric_fn(module, batch), got {metric_fn!r}.")
    return metric_fn


def check_data(dataloader: Any) -> Iterable[Any]:
    if isinstance(dataloader, (str, bytes, Mapping)) or not isinstance(dataloader, Iterable):
        raise TypeError(
            f"Expected `dataloader` to be a DataLoader (or an iterable of batches), got {type(dataloader).__name__}."
        )
    return dataloader


def check_max_batches(max_batches: Any) -> int | None:
    return None if max_batches is None else check_int("max_batches", max_batches, low=1)


def check_seed(seed: Any) -> int:
    return check_int("seed", seed, low=0)


def trainable(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The floating-point parameters that require grad, by name: the weights an analysis moves."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad and p.is_floating_point()]
    if not named:
        raise ValueError(
            f"`module` ({type(module).__name__}) has no floating-point parameter that requires grad:"
            " nothing to analyse."
        )
    return named


def check_direction(direction: Any, named: list[tuple[str, nn.Parameter]], name: str) -> list[Tensor]:
    """The direction as tensors in the order of ``named``, on each parameter's device and dtype."""
    if not isinstance(direction, Mapping):
        raise TypeError(
            f"Expected `{name}` to be a dict {{parameter name: tensor}} (e.g. from random_direction),"
            f" got {type(direction).__name__}."
        )
    expected = [n for n, _ in named]
    missing = [n for n in expected if n not in direction]
    extra = [n for n in direction if n not in set(expected)]
    if missing or extra:
        raise ValueError(
            f"Expected `{name}` to hold one tensor per trainable parameter of `module`: missing {missing[:5]},"
            f" unknown {extra[:5]}."
        )
    out = []
    for n, p in named:
        d = direction[n]
        if not isinstance(d, Tensor) or tuple(d.shape) != tuple(p.shape):
            got = tuple(d.shape) if isinstance(d, Tensor) else type(d).__name__
            raise ValueError(f"Expected `{name}[{n!r}]` to be a tensor of shape {tuple(p.shape)}, got {got}.")
        out.append(d.detach().to(device=p.device, dtype=p.dtype))
    return out


def device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def draw(shape: torch.Size, generator: torch.Generator, like: Tensor, rademacher: bool = False) -> Tensor:
    """Normal (or +-1) numbers drawn on the CPU from ``generator``, then moved: the same on every device."""
    if rademacher:
        values = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8).mul_(2).sub_(1)
    else:
        values = torch.randn(shape, generator=generator, dtype=torch.float32)
    return values.to(device=like.device, dtype=like.dtype)


def dot(a: list[Tensor], b: list[Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def norm(a: list[Tensor]) -> float:
    return dot(a, a) ** 0.5


@contextlib.contextmanager
def _no_trainer(module: nn.Module) -> Iterator[None]:
    """Detach every (sub)module's Trainer: ``self.log`` then returns at once instead of raising mid-run."""
    attached = [(m, m._trainer) for m in module.modules() if isinstance(m, LightningModule)]
    for m, _ in attached:
        m._trainer = None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NO_TRAINER_LOG)
            yield
    finally:
        for m, trainer in attached:
            m._trainer = trainer


@contextlib.contextmanager
def _forked_rng(module: nn.Module) -> Iterator[None]:
    """The global random state of torch (CPU and the module's CUDA devices), numpy and ``random``, restored."""
    cuda = sorted({t.device.index or 0 for t in module.parameters() if t.device.type == "cuda"})
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class Objective:
    """The batches of one session and the loss over them as a function of the module's weights."""

    def __init__(self, module: nn.Module, loss_fn: LossFn | None, batches: list[tuple[int, Any, float]]) -> None:
        self.module = module
        self.loss_fn = loss_fn
        self.batches = batches  # (batch_idx, batch on the module's device, weight n_b / N)
        self.named = trainable(module)
        self.params = [p for _, p in self.named]
        self.names = [n for n, _ in self.named]
        self.origin = [p.detach().clone() for p in self.params]

    def batch_loss(self, batch_idx: int, batch: Any) -> Tensor:
        if self.loss_fn is not None:
            out = self.loss_fn(self.module, batch)
            where = "`loss_fn`"
        else:
            out = cast(Any, self.module).training_step(batch, batch_idx)  # checked callable by check_loss_fn
            where = f"{type(self.module).__name__}.training_step"
        if isinstance(out, Mapping):
            if "loss" not in out:
                raise ValueError(f"{where} returned a dict without a 'loss' key (keys: {sorted(out)}).")
            out = out["loss"]
        if not isinstance(out, Tensor) or out.numel() != 1 or not out.is_floating_point():
            got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor) else repr(out)
            raise TypeError(f"Expected {where} to return a scalar floating-point loss tensor, got {got}.")
        return out.reshape(())

    def loss(self, metric_fn: MetricFn | None = None) -> tuple[float, float | None]:
        """The mean loss (and metric) over the batches at the current weights."""
        total, metric = 0.0, 0.0
        with torch.no_grad():
            for idx, batch, weight in self.batches:
                total += weight * float(self.batch_loss(idx, batch))
                if metric_fn is not None:
                    metric += weight * float(metric_fn(self.module, batch))
        return total, (metric if metric_fn is not None else None)

    def gradient(self) -> tuple[list[Tensor], float]:
        """The gradient of the mean loss with respect to the trainable parameters, and the loss."""
        grads = [torch.zeros_like(p) for p in self.params]
        total = 0.0
        with torch.enable_grad():
            for idx, batch, weight in self.batches:
                loss = self.batch_loss(idx, batch)
                total += weight * float(loss.detach())
                if loss.requires_grad:
                    parts = torch.autograd.grad(loss, self.params, allow_unused=True, materialize_grads=True)
                    torch._foreach_add_(grads, parts, alpha=weight)
        return grads, total

    def hvp(self, vector: list[Tensor]) -> list[Tensor]:
        """The Hessian of the mean loss times ``vector``, by double backward, batch by batch."""
        out = [torch.zeros_like(p) for p in self.params]
        with torch.enable_grad():
            for idx, batch, weight in self.batches:
                loss = self.batch_loss(idx, batch)
                if not loss.requires_grad:
                    continue
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True,
                                            materialize_grads=True)
                inner = cast(Tensor, sum((g * v).sum() for g, v in zip(grads, vector)))  # one term per parameter
                if not inner.requires_grad:  # the loss is linear in the weights here
                    continue
                parts = torch.autograd.grad(inner, self.params, allow_unused=True, materialize_grads=True)
                torch._foreach_add_(out, parts, alpha=weight)
        return out

    def move_to(self, *steps: tuple[float, list[Tensor]]) -> None:
        """Set the weights to ``origin + sum(coefficient * direction)``; zero coefficients give the origin exactly."""
        with torch.no_grad():
            for i, p in enumerate(self.params):
                target = self.origin[i].clone()
                for coefficient, direction in steps:
                    if coefficient != 0.0:
                        target.add_(direction[i], alpha=coefficient)
                p.copy_(target)

    def recompute_batch_norm(self) -> None:
        """Reset every BatchNorm's running statistics and re-estimate them over the batches (cumulative mean)."""
        norms = [m for m in self.module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
        if not norms:
            return
        saved = [(m, m.momentum, m.training) for m in norms]
        try:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None
                m.train()
            with torch.no_grad():
                for idx, batch, _ in self.batches:
                    self.batch_loss(idx, batch)
        finally:
            for m, momentum, training in saved:
                m.momentum = momentum
                m.train(training)


def _read_batches(
    module: nn.Module, dataloader: Iterable[Any], max_batches: int | None
) -> list[tuple[int, Any, float]]:
    device = device_of(module)
    batches, sizes = [], []
    for idx, batch in enumerate(dataloader):
        if max_batches is not None and idx >= max_batches:
            break
        if isinstance(module, LightningModule):
            batch = module.transfer_batch_to_device(batch, device, 0)
        else:
            batch = move_data_to_device(batch, device)
        try:
            size = extract_batch_size(batch)
        except MisconfigurationException:  # a batch with no tensor: each counts once
            size = 1
        batches.append((idx, batch))
        sizes.append(size)
    if not batches:
        raise ValueError("Expected `dataloader` to yield at least one batch, got none.")
    total = float(sum(sizes))
    return [(idx, batch, size / total) for (idx, batch), size in zip(batches, sizes)]


@contextlib.contextmanager
def objective(
    module: nn.Module,
    dataloader: Iterable[Any],
    loss_fn: LossFn | None,
    max_batches: int | None = None,
    seed: int = 0,
) -> Iterator[Objective]:
    """A session over ``module`` and ``dataloader``; the module is restored bit for bit when it closes.

    The batches are read once, moved to the module's device and kept for the session, so every evaluation
    sees the same data. They are read with the global generators of torch, numpy and ``random`` seeded with
    ``seed`` (inside the fork), so a shuffling loader gives the same batches for the same seed.
    """
    saved = [t.detach().clone() for t in [*module.parameters(), *module.buffers()]]
    modes = [(m, m.training) for m in module.modules()]
    try:
        with _forked_rng(module), _no_trainer(module):
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
            batches = _read_batches(module, dataloader, max_batches)
            module.eval()
            session = Objective(module, loss_fn, batches)
            if loss_fn is None and isinstance(module, LightningModule):
                # a Trainer calls this before an epoch's training steps; training_step may rely on it
                module.on_train_epoch_start()
            yield session
    finally:
        with torch.no_grad():
            for tensor, value in zip([*module.parameters(), *module.buffers()], saved):
                tensor.copy_(value)
        for m, training in modes:
            m.training = training
