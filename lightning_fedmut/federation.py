"""What is federated: which ``state_dict`` entries the server shares, which stay on each client, which nobody touches.

A :class:`FederationPolicy` splits a module's ``state_dict`` into three kinds of entries:

- **federated** (the default for trainable parameters and buffers): sent to the clients, aggregated, mutated by
  FedMut, stepped by a server optimizer, checkpointed by the server;
- **local**: each client keeps its own copy in the loop's client-state store (under ``"local/<key>"``, so it is
  checkpointed with the run and travels with the client's result between workers); a client trains from its own
  copy (the global model's initial value the first time it trains) and the global model's copy is never
  written. FedBN keeps BatchNorm local (Li et al., ICLR 2021), FedPer the head (Arivazhagan et al., 2019);
- **frozen**: never touched; parameters with ``requires_grad=False`` always are.

Every method works on the federated entries only: the entries that are local or frozen are what
:func:`~lightning_fedmut.functional.state.frozen_keys` returns for the global module during a ``fit``, the one
rule every aggregator, start-model component and server optimizer reads at setup.

A selector is a ``state_dict`` key pattern (``fnmatch``: ``"head.*"``), a module type (``nn.BatchNorm2d``: every
entry of every submodule of that type), or a callable ``selector(key, module) -> bool``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any, Union

from torch import nn

__all__ = ["LOCAL_PREFIX", "FederationPolicy", "local_key"]

#: Where a client's local entry lives in its client-state dict: ``"local/<key>"``.
LOCAL_PREFIX = "local/"

Selector = Union[str, type, Callable[[str, nn.Module], bool]]  # noqa: UP007 - a runtime alias


def local_key(key: str) -> str:
    """The client-state key of the local entry ``key``.

    Examples:
        >>> local_key("net.1.running_mean")
        'local/net.1.running_mean'
    """
    return LOCAL_PREFIX + key


class FederationPolicy:
    """Which entries of a module's ``state_dict`` are federated, local or frozen.

    Args:
        local: selectors of the entries each client keeps to itself.
        frozen: selectors of entries nobody changes (beyond the parameters with ``requires_grad=False``).

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
        >>> policy = FederationPolicy(local=[nn.BatchNorm1d], frozen=["2.bias"])
        >>> federated, local, frozen = policy.split(net)
        >>> sorted(local)
        ['1.bias', '1.num_batches_tracked', '1.running_mean', '1.running_var', '1.weight']
        >>> sorted(frozen), federated
        (['2.bias'], ['0.weight', '0.bias', '2.weight'])
        >>> FederationPolicy(local=["head.*"]).split(net)
        Traceback (most recent call last):
        ...
        ValueError: Expected the `local` selector 'head.*' to match entries of Sequential's state_dict, got none; its first keys are ['0.weight', '0.bias', '1.weight', '1.bias', '1.running_mean'] (of 9).
    """

    def __init__(self, local: Sequence[Selector] = (), frozen: Sequence[Selector] = ()) -> None:
        self.local = _selectors("local", local)
        self.frozen = _selectors("frozen", frozen)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(local={_describe(self.local)}, frozen={_describe(self.frozen)})"

    @property
    def hparams(self) -> dict[str, Any]:
        """The selectors, as text, for run configs and the resume fingerprint."""
        return {"local": _describe(self.local), "frozen": _describe(self.frozen)}

    @property
    def is_default(self) -> bool:
        """Whether every entry but the frozen parameters is federated."""
        return not self.local and not self.frozen

    def merged(self, other: FederationPolicy) -> FederationPolicy:
        """This policy with ``other``'s selectors added: a method's own policy (FedBN's, FedPer's, FedRep's) with the
        loop's ``federation``. An entry then selected both local and frozen is refused by :meth:`split`.

        Examples:
            >>> FederationPolicy(local=["head.*"]).merged(FederationPolicy(frozen=["embed.*"]))
            FederationPolicy(local=['head.*'], frozen=['embed.*'])
        """
        if not isinstance(other, FederationPolicy):
            raise TypeError(f"Expected `other` to be a FederationPolicy, got {type(other).__name__}.")
        return FederationPolicy(local=[*self.local, *other.local], frozen=[*self.frozen, *other.frozen])

    def split(self, module: nn.Module) -> tuple[list[str], frozenset[str], frozenset[str]]:
        """``(federated keys in state_dict order, local keys, frozen keys)`` of ``module``.

        A selector that matches no entry is an error (a misspelt pattern would otherwise federate everything);
        an entry selected both local and frozen is an error too.
        """
        keys = list(module.state_dict(keep_vars=True))
        grad_frozen = {n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
        local = _select("local", self.local, module, keys)
        frozen = _select("frozen", self.frozen, module, keys) | (grad_frozen - local)
        both = sorted(local & _select("frozen", self.frozen, module, keys))
        if both:
            raise ValueError(f"Expected each entry to be either local or frozen, got {both[:5]} selected as both.")
        return [k for k in keys if k not in local and k not in frozen], frozenset(local), frozenset(frozen)


def _selectors(name: str, selectors: Any) -> list[Selector]:
    if isinstance(selectors, (str, type)) or (callable(selectors) and not isinstance(selectors, Sequence)):
        selectors = [selectors]
    if not isinstance(selectors, Sequence):
        raise TypeError(f"Expected `{name}` to be a list of selectors (key patterns, module types or callables), got"
                        f" {type(selectors).__name__}.")
    for selector in selectors:
        ok = isinstance(selector, str) or (isinstance(selector, type) and issubclass(selector, nn.Module)) or (
            callable(selector) and not isinstance(selector, type))
        if not ok:
            raise TypeError(f"Expected every `{name}` selector to be a key pattern (str), an nn.Module type or a"
                            f" callable(key, module), got {selector!r}.")
    return list(selectors)


def _describe(selectors: list[Selector]) -> list[str]:
    return [s if isinstance(s, str) else s.__qualname__ if isinstance(s, type) else getattr(s, "__name__", repr(s))
            for s in selectors]


def _select(name: str, selectors: list[Selector], module: nn.Module, keys: list[str]) -> set[str]:
    chosen: set[str] = set()
    for selector in selectors:
        if isinstance(selector, str):
            found = {k for k in keys if fnmatch.fnmatchcase(k, selector)}
        elif isinstance(selector, type):
            prefixes = [f"{n}." if n else "" for n, m in module.named_modules() if isinstance(m, selector)]
            found = {k for k in keys if any(k.startswith(p) and "." not in k[len(p):] for p in prefixes)}
        else:
            found = {k for k in keys if selector(k, module)}
        if not found:
            raise ValueError(f"Expected the `{name}` selector {_describe([selector])[0]!r} to match entries of"
                             f" {type(module).__name__}'s state_dict, got none; its first keys are {keys[:5]}"
                             f" (of {len(keys)}).")
        chosen |= found
    return chosen
