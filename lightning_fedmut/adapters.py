"""Adapter-only federation: with a ``peft`` model (LoRA ...) only the adapters' entries are federated.

:func:`adapter_keys` asks ``peft`` which ``state_dict`` entries of a module are adapter weights (its own
``get_peft_model_state_dict``, the entries ``save_pretrained`` writes), and :func:`adapter_policy` freezes every
other entry: the base model's weights and buffers are never sent, aggregated, mutated nor checkpointed by the
server; each client trains the adapters on top of the same base.

``peft`` and ``transformers`` are an optional extra: ``pip install "lightning_fedmut[lora]"``.

Examples:
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> base = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> model = get_peft_model(base, LoraConfig(r=2, target_modules=["0"]))
    >>> adapter_keys(model)
    ['base_model.model.0.lora_A.default.weight', 'base_model.model.0.lora_B.default.weight']
    >>> federated, local, frozen = adapter_policy().split(model)
    >>> federated, sorted(frozen)[:2]
    (['base_model.model.0.lora_A.default.weight', 'base_model.model.0.lora_B.default.weight'], ['base_model.model.0.base_layer.bias', 'base_model.model.0.base_layer.weight'])
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from torch import nn

from lightning_fedmut.federation import FederationPolicy

__all__ = ["NonAdapterEntries", "adapter_keys", "adapter_policy", "peft_models"]

_INSTALL_HINT = 'Adapter-only federation needs peft: `pip install "lightning_fedmut[lora]"` (peft and transformers).'


def _peft() -> Any:
    try:
        import peft
    except ImportError as err:  # pragma: no cover - the extra is installed where the tests run
        raise ImportError(_INSTALL_HINT) from err
    return peft


def peft_models(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, submodule)`` of each outermost submodule of ``module`` (itself included) that holds peft adapters.

    A ``PeftModel`` (``peft.get_peft_model``) and a ``transformers`` model given adapters with ``add_adapter`` both
    carry a ``peft_config``; a tuner inside an already found one (``PeftModel.base_model``) is not listed again.

    Examples:
        >>> import torch
        >>> from peft import LoraConfig, get_peft_model
        >>> lm = torch.nn.Module()
        >>> lm.net = get_peft_model(torch.nn.Sequential(torch.nn.Linear(2, 2)), LoraConfig(target_modules=["0"]))
        >>> [(name, type(m).__name__) for name, m in peft_models(lm)]
        [('net', 'PeftModel')]
    """
    found: list[tuple[str, nn.Module]] = []
    for name, sub in module.named_modules():
        if not isinstance(getattr(sub, "peft_config", None), dict) or not sub.peft_config:
            continue
        if any(name == outer or name.startswith(outer + ".") or not outer for outer, _ in found):
            continue
        found.append((name, sub))
    return found


def adapter_keys(module: nn.Module, adapter_name: str | None = None) -> list[str]:
    """The ``state_dict`` keys of ``module`` that hold adapter weights, in ``state_dict`` order.

    The entries are the ones ``peft.get_peft_model_state_dict`` returns (those ``save_pretrained`` writes: the
    adapters' weights and the ``modules_to_save`` copies, never the base's embeddings), mapped back to
    ``module``'s own keys, which keep the adapter's name (``lora_A.default.weight``).

    Args:
        module: a module that is, or holds, a peft model (a ``LightningModule`` wrapping one).
        adapter_name: the adapter whose entries to list; ``None``: every adapter of each peft model.

    Raises:
        ValueError: ``module`` holds no peft model, or none with the adapter ``adapter_name``.
    """
    peft = _peft()
    models = peft_models(module)
    if not models:
        raise ValueError(
            f"Expected `module` to hold a peft model (peft.get_peft_model(...), or a transformers model given"
            f" adapters with add_adapter), got {type(module).__name__} with no `peft_config` among its"
            f" {sum(1 for _ in module.modules())} submodules. Wrap the base model with peft first.")
    state = module.state_dict(keep_vars=True)
    keys_of: dict[int, list[str]] = {}
    for key, value in state.items():
        keys_of.setdefault(id(value), []).append(key)
    chosen: set[str] = set()
    for prefix, model in models:
        config: dict[str, Any] = model.peft_config  # type: ignore[assignment]  # peft_models() checked it
        names = list(config) if adapter_name is None else [adapter_name]
        missing = [n for n in names if n not in config]
        if missing:
            raise ValueError(f"Expected `adapter_name` to be one of {sorted(config)} (the adapters of"
                             f" {prefix or type(module).__name__!r}), got {adapter_name!r}.")
        own = {k[len(prefix) + 1:] if prefix else k: v for k, v in state.items()
               if not prefix or k.startswith(prefix + ".")}
        for name in names:
            entries = peft.get_peft_model_state_dict(model, state_dict=own, adapter_name=name,
                                                     save_embedding_layers=False)
            for value in entries.values():
                chosen.update(keys_of.get(id(value), ()))
    return [k for k in state if k in chosen]


class NonAdapterEntries:
    """A frozen selector of :class:`~lightning_fedmut.federation.FederationPolicy`: every entry peft does not
    count as an adapter weight (:func:`adapter_keys`).

    The adapter keys are read once per ``split`` (when asked about a module's first ``state_dict`` key, where a
    split starts) and once per new module.
    """

    def __init__(self, adapter_name: str | None = None) -> None:
        if adapter_name is not None and (not isinstance(adapter_name, str) or not adapter_name):
            raise TypeError(f"Expected `adapter_name` to be an adapter's name (a non-empty string) or None, got"
                            f" {adapter_name!r}.")
        self.adapter_name = adapter_name
        self.__name__ = "non_adapter_entries" if adapter_name is None else f"non_adapter_entries[{adapter_name}]"
        self._module: weakref.ReferenceType[nn.Module] | None = None
        self._first: str | None = None
        self._adapters: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(adapter_name={self.adapter_name!r})"

    def __call__(self, key: str, module: nn.Module) -> bool:
        cached = self._module() if self._module is not None else None
        if cached is not module or key == self._first:
            keys = adapter_keys(module, self.adapter_name)
            self._module, self._adapters = weakref.ref(module), frozenset(keys)
            self._first = next(iter(module.state_dict(keep_vars=True)), None)
        return key not in self._adapters


def adapter_policy(module: nn.Module | None = None, *, adapter_name: str | None = None,
                   local: Sequence[Any] = ()) -> FederationPolicy:
    """A :class:`~lightning_fedmut.federation.FederationPolicy` that federates a peft model's adapters only.

    Every entry that is not an adapter weight (:func:`adapter_keys`) is frozen: the base model's weights and
    buffers stay as the user's module holds them, bit for bit, and every method (FedAvg, FedMut's mutation,
    server optimizers, SCAFFOLD's controls ...) works on the adapters alone; the loop's checkpoints hold the
    adapters and a digest of the frozen base.

    Args:
        module: the global module, checked now (it must hold a peft model), so a mistake is reported before any
            training; ``None`` checks it at ``fit``.
        adapter_name: federate this adapter only; ``None``: every adapter.
        local: selectors of adapter entries each client keeps to itself (as ``FederationPolicy(local=...)``).

    Examples:
        >>> import torch
        >>> adapter_policy(torch.nn.Linear(2, 2))
        Traceback (most recent call last):
        ...
        ValueError: Expected `module` to hold a peft model (peft.get_peft_model(...), or a transformers model given adapters with add_adapter), got Linear with no `peft_config` among its 1 submodules. Wrap the base model with peft first.
    """
    selector = NonAdapterEntries(adapter_name)
    policy = FederationPolicy(local=local, frozen=[selector])
    if module is not None:
        policy.split(module)
    return policy
