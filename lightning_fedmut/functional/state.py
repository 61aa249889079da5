"""Helpers over model state: which entries are floating or frozen, and in-place copies grouped for ``_foreach``."""

from __future__ import annotations

import weakref
from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor


def is_floating(tensor: Tensor) -> bool:
    """Whether ``tensor`` takes part in arithmetic (floating point or complex).

    Examples:
        >>> is_floating(torch.zeros(2)), is_floating(torch.zeros(2, dtype=torch.long))
        (True, False)
    """
    return tensor.is_floating_point() or tensor.is_complex()


def frozen_keys(module: torch.nn.Module) -> frozenset[str]:
    """The ``state_dict`` keys of ``module``'s frozen parameters: those with ``requires_grad=False``.

    The one rule for what no federated method touches: a frozen parameter is neither sent through the
    average, nor stepped by a server optimizer, nor mutated, nor recombined; the global copy stands bit for
    bit. During a ``fit`` whose :class:`~lightning_fedmut.federation.FederationPolicy` keeps entries local or
    frozen, those are included (``set_unshared``). Components read it once per fit, from the global module at
    setup. Buffers (BatchNorm running statistics) are not parameters and are never frozen by this rule. A parameter shared under two names
    is frozen under both.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Embedding(5, 2), torch.nn.Linear(2, 2))
        >>> _ = net[0].weight.requires_grad_(False)
        >>> sorted(frozen_keys(net))
        ['0.weight']
    """
    grad_frozen = frozenset(name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad)
    return grad_frozen | _UNSHARED.get(module, frozenset())


def federated_parameters(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """``module``'s parameters that federated methods move, by name, in ``named_parameters`` order: trainable and
    not in :func:`frozen_keys` (what the fit's federation policy keeps local or frozen is left out too).

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Embedding(5, 2), torch.nn.Linear(2, 2))
        >>> _ = net[0].weight.requires_grad_(False)
        >>> [name for name, _ in federated_parameters(net)]
        ['1.weight', '1.bias']
    """
    unshared = frozen_keys(module)
    return [(name, p) for name, p in module.named_parameters() if p.requires_grad and name not in unshared]


#: Entries a ``fit``'s federation policy keeps local or frozen, per global module (see ``set_unshared``).
_UNSHARED: weakref.WeakKeyDictionary[torch.nn.Module, frozenset[str]] = weakref.WeakKeyDictionary()


def set_unshared(module: torch.nn.Module, keys: Collection[str] | None) -> None:
    """During a ``fit``, :func:`frozen_keys` of ``module`` includes ``keys`` (its federation policy's local and
    frozen entries), so every component leaves them alone; ``None`` ends that.

    Examples:
        >>> net = torch.nn.Linear(2, 2)
        >>> set_unshared(net, {"bias"}); sorted(frozen_keys(net))
        ['bias']
        >>> set_unshared(net, None); sorted(frozen_keys(net))
        []
    """
    if keys is None:
        _UNSHARED.pop(module, None)
    else:
        _UNSHARED[module] = frozenset(keys)


def frozen_hint(saved_keys: Sequence[str], frozen: Collection[str]) -> str:
    """A sentence for a checkpoint that holds state for parameters now ``frozen``, else ``""``.

    Examples:
        >>> frozen_hint(["embed.weight", "out.weight"], {"embed.weight"})[:59]
        " The checkpoint holds state for frozen parameters (['embed."
        >>> frozen_hint(["out.weight"], {"embed.weight"})
        ''
    """
    extra = [k for k in saved_keys if k in frozen]
    if not extra:
        return ""
    return (f" The checkpoint holds state for frozen parameters ({extra[:5]}; requires_grad=False), which are no"
            " longer mutated nor recombined: a checkpoint written before cannot be resumed with them frozen;"
            " start a new run.")


def floating_keys(
    state: Mapping[str, Tensor], parameter_names: set[str] | None = None, include_buffers: bool = True,
    frozen: Collection[str] = (),
) -> list[str]:
    """Keys of ``state`` whose tensors are floating, in ``state`` order, less the ``frozen`` ones.

    Args:
        state: a ``state_dict``.
        parameter_names: names of the module's parameters; needed only when ``include_buffers`` is False.
        include_buffers: keep floating buffers (e.g. BatchNorm running statistics) too.
        frozen: keys to leave out: the module's frozen parameters (:func:`frozen_keys`).

    Examples:
        >>> bn = torch.nn.BatchNorm1d(2)
        >>> floating_keys(bn.state_dict())
        ['weight', 'bias', 'running_mean', 'running_var']
        >>> floating_keys(bn.state_dict(), {"weight", "bias"}, include_buffers=False)
        ['weight', 'bias']
        >>> floating_keys(bn.state_dict(), frozen={"weight"})
        ['bias', 'running_mean', 'running_var']
    """
    keys = [k for k, v in state.items() if is_floating(v) and k not in frozen]
    if include_buffers:
        return keys
    if parameter_names is None:
        raise ValueError("`parameter_names` is required when `include_buffers=False`.")
    return [k for k in keys if k in parameter_names]


def same_device_and_dtype(tensors: Sequence[Tensor]) -> bool:
    """Whether all ``tensors`` (at least one) share one device and dtype, so one ``_foreach`` call fits.

    Examples:
        >>> same_device_and_dtype([torch.zeros(1), torch.ones(2)])
        True
        >>> same_device_and_dtype([torch.zeros(1, dtype=torch.float64), torch.zeros(1)])
        False
    """
    if not tensors:
        return False
    device, dtype = tensors[0].device, tensors[0].dtype
    return all(t.device == device and t.dtype == dtype for t in tensors)


def _groups(dst: Sequence[Tensor], src: Sequence[Tensor]) -> bool:
    """True when ``dst`` and ``src`` pair up on one device and dtype."""
    return bool(dst) and same_device_and_dtype([*dst, *src])


@torch.no_grad()
def copy_(dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
    """Copy ``src`` into ``dst`` element-wise, in place (across devices and dtypes if needed).

    Examples:
        >>> a, b = [torch.zeros(2)], [torch.ones(2)]
        >>> copy_(a, b); a
        [tensor([1., 1.])]
    """
    if _groups(dst, src):
        torch._foreach_copy_(list(dst), list(src))
        return
    for d, s in zip(dst, src):
        d.copy_(s)


@torch.no_grad()
def snapshot(kept: list[Tensor], src: Sequence[Tensor]) -> list[Tensor]:
    """A copy of ``src`` that reuses ``kept``'s tensors: copied into in place when they match ``src``'s (count,
    shapes, dtypes, devices), else fresh clones (the first time, or after the model moved).

    Examples:
        >>> kept = snapshot([], [torch.ones(2)]); kept
        [tensor([1., 1.])]
        >>> again = snapshot(kept, [torch.zeros(2)])
        >>> again[0] is kept[0], again
        (True, [tensor([0., 0.])])
        >>> snapshot(kept, [torch.zeros(2, dtype=torch.float64)])[0].dtype  # another dtype: a fresh clone
        torch.float64
    """
    if len(kept) == len(src) and all(k.shape == s.shape and k.dtype == s.dtype and k.device == s.device
                                     for k, s in zip(kept, src)):
        copy_(kept, src)
        return kept
    return [s.detach().clone() for s in src]


@torch.no_grad()
def first_non_finite(state: Mapping[str, Tensor]) -> str | None:
    """The first key of ``state`` whose floating tensor holds NaN or Inf, or ``None``.

    One fused test (the max-norm of every floating tensor, which is NaN or Inf exactly when the tensor holds
    one) answers the common case with a single host sync; the per-tensor scan runs only to name the culprit.

    Examples:
        >>> first_non_finite({"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")]), "n": torch.tensor(3)})
        'b'
        >>> first_non_finite({"a": torch.ones(2)}) is None
        True
    """
    floats = [(k, v) for k, v in state.items() if is_floating(v) and v.numel()]
    if not floats:
        return None
    tensors = [v for _, v in floats]
    if same_device_and_dtype(tensors) and not tensors[0].is_complex():
        norms = torch._foreach_norm(tensors, float("inf"))
        if bool(torch.stack(norms).isfinite().all()):
            return None
    for name, tensor in floats:
        if not bool(torch.isfinite(tensor).all()):
            return name
    return None
