"""Declared state: a component says once what it keeps and how it combines; reset, checkpointing, the
description a worker reduction reads and the run-config ``hparams`` follow (torchmetrics' ``Metric.add_state``).

Callbacks, aggregators and samplers inherit :class:`DeclaredState`. A state is an attribute of the component,
declared with :meth:`DeclaredState.add_state`:

- ``scope="round"``: set back to a fresh copy of its default at the start of every round (by the loop, with
  :meth:`DeclaredState.reset_state`); ``reduce`` says how the workers' values combine before the aggregation:
  ``"sum"`` or ``"max"`` (a tensor or a number), ``"cat"`` (a list: concatenated in rank order; a dict keyed by
  slot: merged, in slot order).
- ``scope="server"``: kept across rounds and saved in the federated checkpoints by :meth:`DeclaredState.state_dict`
  (tensors, numbers, strings, ``None``, lists and dicts of them, and ``torch.Generator`` s, saved as their
  ``get_state()``).
- ``scope="client"``: per-client state, kept in the loop's client-state store under
  ``"<component>/<name>"`` (:meth:`DeclaredState.client_state_key`). Where a client trains, the loop loads the
  client's value (a fresh copy of the default for a client seen for the first time) before the component's
  ``on_client_fit_start`` and stores the value after its ``on_client_fit_end`` into ``result.client_state``
  (which the loop keeps after the round, checkpointed with the run); in between, the attribute is that client's.
  A failed client's value is dropped (its stored value stands). Tensors and plain data only.

A private attribute is saved under its name without the leading underscores (``_delta`` as ``"delta"``).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["REDUCTIONS", "SCOPES", "DeclaredState", "Figures", "StateDeclaration"]

#: How a round state combines across workers (``None``: it does not).
REDUCTIONS = (None, "sum", "max", "cat")
#: Where a state lives: reset every round, checkpointed by the server, or kept per client.
SCOPES = ("round", "server", "client")


class Figures(dict):  # type: ignore[type-arg]
    """A round's figures: a dict that, called, returns a copy of itself.

    The aggregators and the clustered sampler had a ``metrics`` attribute before ``metrics()`` was a method;
    their ``metrics`` is a :class:`Figures`, so ``agg.metrics()`` and ``agg.metrics["name"]`` both read them.

    Examples:
        >>> figures = Figures({"fedexp/server_lr": 2.5})
        >>> figures(), figures["fedexp/server_lr"]
        ({'fedexp/server_lr': 2.5}, 2.5)
    """

    def __call__(self) -> dict[str, float]:
        return dict(self)


class StateDeclaration(NamedTuple):
    """One declared state: its default (copied on every reset), its reduction and its scope."""

    default: Any
    reduce: str | None
    scope: str


def fresh(value: Any) -> Any:
    """A copy of ``value`` that shares nothing with it: tensors cloned, lists and dicts new.

    Examples:
        >>> a = [torch.zeros(2)]
        >>> b = fresh(a)
        >>> b[0].add_(1.0); a[0].tolist()
        tensor([1., 1.])
        [0.0, 0.0]
    """
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, torch.Generator):
        return value
    if isinstance(value, list):
        return [fresh(v) for v in value]
    if isinstance(value, tuple):
        return tuple(fresh(v) for v in value)
    if isinstance(value, dict):
        return {k: fresh(v) for k, v in value.items()}
    return copy.copy(value)


def _export(value: Any) -> Any:
    """Plain data for a checkpoint (loadable with ``weights_only=True``): tensors on the CPU, generators' states."""
    if isinstance(value, torch.Generator):
        return value.get_state()
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, (list, tuple)):
        return [_export(v) for v in value]
    if isinstance(value, dict):
        return {k: _export(v) for k, v in value.items()}
    return value


def _load_into(current: Any, saved: Any) -> Any:
    """``saved`` in place of ``current``: a tensor of the same shape is copied into (it keeps its device), a
    generator takes the saved state, lists of the same length and dicts of the same keys are loaded entry by
    entry; else a copy of ``saved``."""
    if isinstance(current, torch.Generator):
        current.set_state(saved)
        return current
    if isinstance(current, Tensor) and isinstance(saved, Tensor) and current.shape == saved.shape \
            and current.dtype == saved.dtype:
        with torch.no_grad():
            current.copy_(saved)
        return current
    if isinstance(current, list) and isinstance(saved, list) and len(current) == len(saved) and current:
        return [_load_into(c, s) for c, s in zip(current, saved)]
    if isinstance(current, dict) and isinstance(saved, dict) and current and set(current) == set(saved):
        return {k: _load_into(current[k], saved[k]) for k in saved}
    return fresh(saved)


def _check_default(name: str, default: Any, reduce: str | None, scope: str) -> None:
    if isinstance(default, torch.Generator):
        if scope != "server" or reduce is not None:
            raise ValueError(f"Expected the generator state `{name}` to have scope='server' and reduce=None, got"
                             f" scope={scope!r} and reduce={reduce!r}.")
    elif reduce in ("sum", "max") and not isinstance(default, (Tensor, int, float)):
        raise ValueError(f"Expected the default of `{name}` (reduce={reduce!r}) to be a tensor or a number, got"
                         f" {type(default).__name__}.")
    elif reduce == "cat" and not isinstance(default, (list, dict)):
        raise ValueError(f"Expected the default of `{name}` (reduce='cat') to be a list or a dict keyed by slot,"
                         f" got {type(default).__name__}.")


class DeclaredState:
    r"""The shared base of callbacks, aggregators and samplers: state declared once with :meth:`add_state`.

    Examples:
        >>> class CountClients(DeclaredState):
        ...     def __init__(self, every: int = 1):
        ...         self.every = every
        ...         self.add_state("seen", 0)                                    # kept across rounds
        ...         self.add_state("trained", torch.zeros(()), reduce="sum", scope="round")
        >>> counter = CountClients(every=2)
        >>> counter.seen, counter.trained = 5, counter.trained + 3
        >>> counter.state_dict(), counter.hparams
        ({'seen': 5}, {'every': 2})
        >>> counter.round_state()["trained"]
        (tensor(3.), 'sum')
        >>> counter.reset_state("round"); counter.trained
        tensor(0.)
        >>> counter.load_state_dict({"seen": 7}); counter.seen
        7
    """

    def _declarations(self) -> dict[str, StateDeclaration]:
        # created on first use: subclasses need not call an ``__init__`` of this base
        found = self.__dict__.get("_declared_state")
        if found is None:
            found = self.__dict__["_declared_state"] = {}
        return found

    def add_state(self, name: str, default: Any, reduce: str | None = None, scope: str = "server") -> None:
        """Declare the attribute ``name``, set it to a fresh copy of ``default`` (a generator: itself).

        Args:
            name: the attribute; a private one (``_delta``) is saved under its name without underscores.
            default: the initial value, and the value a round state is reset to.
            reduce: ``None``, ``"sum"``, ``"max"`` or ``"cat"``: how the workers' values of a round state combine.
            scope: ``"round"``, ``"server"`` or ``"client"`` (see the module's description).
        """
        if not isinstance(name, str) or not name.lstrip("_").isidentifier():
            raise ValueError(f"Expected `name` to be an attribute name, got {name!r}.")
        if reduce not in REDUCTIONS:
            raise ValueError(f"Expected `reduce` in {list(REDUCTIONS)}, got {reduce!r}.")
        if scope not in SCOPES:
            raise ValueError(f"Expected `scope` in {list(SCOPES)}, got {scope!r}.")
        if reduce is not None and scope != "round":
            raise ValueError(f"Expected scope='round' for a state with reduce={reduce!r} (only a round's state is"
                             f" reduced across workers), got scope={scope!r} for `{name}`.")
        if isinstance(getattr(type(self), name, None), property):
            raise ValueError(f"Expected `name` to be free, got {name!r}: {type(self).__name__} has a property of"
                             " that name.")
        _check_default(name, default, reduce, scope)
        keys = {_key(n) for n in self._declarations() if n != name}
        if _key(name) in keys:
            raise ValueError(f"Expected each state to have its own key, got {name!r}, saved as {_key(name)!r} like"
                             " another state of this component.")
        self._declarations()[name] = StateDeclaration(fresh(default), reduce, scope)
        setattr(self, name, fresh(default))

    def reset_state(self, scope: str = "round") -> None:
        """Set every state of ``scope`` back to a fresh copy of its default (generators are left as they are)."""
        if scope not in SCOPES:
            raise ValueError(f"Expected `scope` in {list(SCOPES)}, got {scope!r}.")
        for name, declared in self._declarations().items():
            if declared.scope == scope and not isinstance(declared.default, torch.Generator):
                setattr(self, name, fresh(declared.default))

    def declares(self, scope: str) -> bool:
        """Whether this component declares any state of ``scope``."""
        return any(d.scope == scope for d in self._declarations().values())

    def client_state_key(self, name: str) -> str:
        """Where the client state ``name`` lives in each client's dict of the client-state store."""
        owner = getattr(self, "state_key", None)
        return f"{owner if isinstance(owner, str) else type(self).__name__}/{_key(name)}"

    def load_client_state(self, client_state: dict[str, Any] | None) -> None:
        """Set each client state to the client's value in ``client_state`` (a fresh default when it has none)."""
        for name, declared in self._declarations().items():
            if declared.scope == "client":
                saved = None if client_state is None else client_state.get(self.client_state_key(name))
                setattr(self, name, fresh(declared.default) if saved is None else saved)

    def store_client_state(self, client_state: dict[str, Any] | None) -> None:
        """Write each client state into ``client_state`` (``None``: drop them, a failed client's), then reset it."""
        for name, declared in self._declarations().items():
            if declared.scope == "client":
                if client_state is not None:
                    client_state[self.client_state_key(name)] = _export(getattr(self, name))
                setattr(self, name, fresh(declared.default))

    def round_state(self) -> dict[str, tuple[Any, str]]:
        """The round states that combine across workers: name -> (value, reduce)."""
        return {name: (getattr(self, name), d.reduce) for name, d in self._declarations().items()
                if d.scope == "round" and d.reduce is not None}

    def reductions(self) -> dict[str, str]:
        """How each round state combines across workers: name -> reduce."""
        return {name: reduce for name, (_, reduce) in self.round_state().items()}

    def state_dict(self) -> dict[str, Any]:
        """The server states, as plain data (loadable with ``torch.load(..., weights_only=True)``)."""
        return {_key(name): _export(getattr(self, name)) for name, d in self._declarations().items()
                if d.scope == "server"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the server states saved by :meth:`state_dict`; a missing or unexpected key is refused."""
        names = {_key(name): name for name, d in self._declarations().items() if d.scope == "server"}
        missing = sorted(set(names) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(names))
        if missing or unexpected:
            raise KeyError(f"Expected the {type(self).__name__} state keys {sorted(names)}, got {sorted(state_dict)}"
                           f" (missing: {missing}, unexpected: {unexpected}).")
        for key, name in names.items():
            setattr(self, name, _load_into(getattr(self, name), state_dict[key]))

    def metrics(self) -> dict[str, float]:
        """This round's figures, by name; the loop adds them to ``loop.round_metrics`` and the history."""
        return {}

    @property
    def hparams(self) -> dict[str, Any]:
        """The constructor arguments, for run configs: each ``__init__`` argument read from the attribute of
        the same name (arguments without one are left out), as Lightning's ``save_hyperparameters`` records them.

        Derived for a component that declares state and takes arguments; any other has none (``AttributeError``),
        as before state was declared: a plain observer callback stays out of the run's resume fingerprint.
        """
        init = type(self).__init__
        names = [] if init is object.__init__ else [
            name for name, parameter in inspect.signature(init).parameters.items()
            if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]
        if not names or not self._declarations():
            raise AttributeError(f"{type(self).__name__} has no hparams: it declares no state or takes no arguments.")
        return {name: copy.copy(self.__dict__[name]) for name in names if name in self.__dict__}


def _key(name: str) -> str:
    return name.lstrip("_")
