"""Methods by name: the presets, and the methods users register, for the CLI and the benchmark."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from lightning_fedmut.algorithms.base import FederatedAlgorithm

__all__ = ["algorithm_class", "build_algorithm", "names", "register", "resolve_name", "unregister"]

#: The registered methods, by their name as registered (built-in presets first, in the documentation's order).
_REGISTRY: dict[str, type[FederatedAlgorithm]] = {}


def name_key(name: str) -> str:
    """A name as looked up: case, spaces, ``-`` and ``_`` do not count.

    Examples:
        >>> name_key("Clustered sampling"), name_key("fed_mut")
        ('clusteredsampling', 'fedmut')
    """
    return re.sub(r"[\s_\-]+", "", name).lower()


def register(name: str, cls: type[FederatedAlgorithm], *, replace: bool = False) -> type[FederatedAlgorithm]:
    """Register ``cls`` (a :class:`~lightning_fedmut.algorithms.FederatedAlgorithm` subclass) under ``name``.

    Names are looked up ignoring case, spaces, ``-`` and ``_``; a name already taken (so) is refused unless
    ``replace=True``. Returns ``cls``, so it also works as ``register("MyMethod", MyMethod)`` after the class.

    Examples:
        >>> from lightning_fedmut.algorithms import FederatedAlgorithm
        >>> from lightning_fedmut.aggregators import FedAvg as Mean
        >>> class Uniform(FederatedAlgorithm):
        ...     def __init__(self):
        ...         super().__init__(aggregator=Mean(weighted=False))
        >>> _ = register("UniformFedAvg", Uniform)
        >>> type(build_algorithm("uniform-fedavg", {})).__name__
        'Uniform'
        >>> register("fedavg", Uniform)
        Traceback (most recent call last):
        ...
        ValueError: Expected a new method name for `name`, got 'fedavg', which names FedAvg already; pass replace=True to replace it.
        >>> unregister("UniformFedAvg") is Uniform
        True
    """
    if not isinstance(name, str) or not name_key(name):
        raise ValueError(f"Expected `name` to be a non-empty string, got {name!r}.")
    if not (isinstance(cls, type) and issubclass(cls, FederatedAlgorithm)):
        raise TypeError(f"Expected `cls` to be a FederatedAlgorithm subclass, got {cls!r}.")
    taken = next((n for n in _REGISTRY if name_key(n) == name_key(name)), None)
    if taken is not None:
        if not replace:
            raise ValueError(f"Expected a new method name for `name`, got {name!r}, which names {taken} already;"
                             " pass replace=True to replace it.")
        del _REGISTRY[taken]
    _REGISTRY[name] = cls
    return cls


def unregister(name: str) -> type[FederatedAlgorithm]:
    """Remove the method registered under ``name`` (looked up as :func:`resolve_name` does); returns its class."""
    return _REGISTRY.pop(resolve_name(name))


def names() -> list[str]:
    """The registered names, built-in presets first.

    Examples:
        >>> names()[:4]
        ['FedAvg', 'FedMut', 'FedProx', 'SCAFFOLD']
    """
    return list(_REGISTRY)


def resolve_name(name: str) -> str:
    """The registered spelling of ``name`` (case, spaces, ``-`` and ``_`` aside), else a ``ValueError`` that lists
    the known names and the closest one.

    Examples:
        >>> resolve_name("fedmut"), resolve_name("Clustered sampling")
        ('FedMut', 'ClusteredSampling')
        >>> resolve_name("FedMutt")
        Traceback (most recent call last):
        ...
        ValueError: Expected `algorithm` to be a registered method name, got 'FedMutt' (did you mean FedMut?); known: FedAvg, FedMut, FedProx, SCAFFOLD, FedAvgM, FedAdagrad, FedAdam, FedYogi, FedExP, FedMR, ClusteredSampling, FedNova, FedSAM, FedASAM, FedDyn, DPFedAvg, DPFedMut, FedBN, FedPer, FedGen, MoFedSAM, FedLESAM, FedGloSS, FedSMOO, FedASAMSWA, FedSAMSWA, FedAvgSWA, FedRep.
    """
    if isinstance(name, str):
        for registered in _REGISTRY:
            if name_key(registered) == name_key(name):
                return registered
    keys = {name_key(n): n for n in _REGISTRY}
    close = difflib.get_close_matches(name_key(str(name)), list(keys), n=1, cutoff=0.6)
    hint = f" (did you mean {keys[close[0]]}?)" if close else ""
    raise ValueError(f"Expected `algorithm` to be a registered method name, got {name!r}{hint}; known:"
                     f" {', '.join(_REGISTRY)}.")


def algorithm_class(name: str) -> type[FederatedAlgorithm]:
    """The class registered under ``name`` (looked up as :func:`resolve_name` does)."""
    return _REGISTRY[resolve_name(name)]


def build_algorithm(name: str, init_args: Mapping[str, Any] | None = None) -> FederatedAlgorithm:
    """The method ``name`` built with ``init_args``: the one call the CLI's ``--algorithm NAME`` and
    ``--algorithm.init_args.*`` and the benchmark's methods need.

    Errors are one line: an unknown name lists the known ones with the closest; an unknown argument names the
    method's arguments; a bad value is the preset's own message.

    Examples:
        >>> build_algorithm("FedMut", {"radius": 2.0}).hparams["radius"]
        2.0
        >>> build_algorithm("fedprox", {"muu": 0.1})
        Traceback (most recent call last):
        ...
        TypeError: Expected `init_args` of FedProx among mu, weighted, got 'muu' (did you mean mu?).
    """
    import inspect

    cls = algorithm_class(name)
    init_args = dict(init_args or {})
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for key in init_args:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise TypeError(f"Expected `init_args` of {cls.__name__} among {', '.join(known) or 'none'}, got"
                                f" {key!r}{hint}.")
    return cls(**init_args)


def _register_presets() -> None:
    from lightning_fedmut.algorithms.clustered import ClusteredSampling
    from lightning_fedmut.algorithms.dp import DPFedAvg, DPFedMut
    from lightning_fedmut.algorithms.fedavg import FedAvg
    from lightning_fedmut.algorithms.feddyn import FedDyn
    from lightning_fedmut.algorithms.fedexp import FedExP
    from lightning_fedmut.algorithms.fedgen import FedGen
    from lightning_fedmut.algorithms.fedgloss import FedGloSS
    from lightning_fedmut.algorithms.fedlesam import FedLESAM
    from lightning_fedmut.algorithms.fedmr import FedMR
    from lightning_fedmut.algorithms.fedmut import FedMut
    from lightning_fedmut.algorithms.fednova import FedNova
    from lightning_fedmut.algorithms.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
    from lightning_fedmut.algorithms.fedprox import FedProx
    from lightning_fedmut.algorithms.fedsam import FedASAM, FedSAM
    from lightning_fedmut.algorithms.fedsmoo import FedSMOO
    from lightning_fedmut.algorithms.mofedsam import MoFedSAM
    from lightning_fedmut.algorithms.personalised import FedBN, FedPer, FedRep
    from lightning_fedmut.algorithms.scaffold import SCAFFOLD
    from lightning_fedmut.algorithms.swa import FedASAMSWA, FedAvgSWA, FedSAMSWA

    presets: tuple[type[FederatedAlgorithm], ...] = (
        FedAvg, FedMut, FedProx, SCAFFOLD, FedAvgM, FedAdagrad, FedAdam, FedYogi, FedExP, FedMR, ClusteredSampling,
        FedNova, FedSAM, FedASAM, FedDyn, DPFedAvg, DPFedMut, FedBN, FedPer, FedGen, MoFedSAM, FedLESAM, FedGloSS,
        FedSMOO, FedASAMSWA, FedSAMSWA, FedAvgSWA, FedRep)
    for cls in presets:
        register(cls.__name__, cls)


_register_presets()
