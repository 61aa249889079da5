"""FederatedAlgorithm: a federated method as one named, typed bundle of the loop's components."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning_fedmut.aggregators.base import Aggregator
from lightning_fedmut.aggregators.fedavg import FedAvg as _FedAvgAggregator
from lightning_fedmut.callbacks.base import FederatedCallback, LocalCallback, StartModelCallback
from lightning_fedmut.federation import FederationPolicy
from lightning_fedmut.sampling import ClientSampler

__all__ = ["FederatedAlgorithm"]


class FederatedAlgorithm:
    r"""A federated method: at most one start-model component, local components, one aggregator, a sampler.

    The loop's plug-in units stay the components (federated callbacks, an
    :class:`~lightning_fedmut.aggregators.Aggregator`, a :class:`~lightning_fedmut.sampling.ClientSampler`);
    an algorithm bundles them under a name, with their roles checked by type when it is built:

    - ``start_model``: one :class:`~lightning_fedmut.callbacks.base.StartModelCallback` (FedMut's
      :class:`~lightning_fedmut.MutationCallback`, :class:`~lightning_fedmut.callbacks.FedMR`), or none;
    - ``local``: any number of :class:`~lightning_fedmut.callbacks.base.LocalCallback` (FedProx's proximal term,
      SCAFFOLD's correction);
    - ``aggregator``: the one aggregator (default ``FedAvg()``, example-weighted, the loop's default);
    - ``sampler``: who trains each round (``None``: the loop's uniform sampler);
    - ``callbacks``: other federated callbacks of the method, after the local ones (a server-side report
      such as :class:`~lightning_fedmut.callbacks.ServerReport`).

    ``FederatedLoop(algorithm=algo)`` runs the method: its callbacks are ``[start_model, *local,
    *callbacks]`` followed by the loop's own ``callbacks`` (observers), exactly the run of the same
    components passed one by one. The presets (:class:`~lightning_fedmut.algorithms.FedMut`,
    :class:`~lightning_fedmut.algorithms.FedProx` ...) are subclasses whose constructors take the method's
    settings; subclass it the same way for your own method and :func:`~lightning_fedmut.algorithms.register` it.

    Args:
        aggregator: how client models are combined; ``None``: ``FedAvg()``.
        start_model: the start-model component, or ``None``.
        local: the local components, in the order their hooks run.
        sampler: the client sampler, or ``None`` for the loop's default.
        callbacks: other federated callbacks of the method (neither start-model nor local).
        name: the method's name in run configs; default the class name.
        federation: which entries are federated, local or frozen (FedBN, FedPer); ``None``: the loop's policy.

    Examples:
        >>> from lightning_fedmut import MutationCallback
        >>> from lightning_fedmut.aggregators import FedAdam
        >>> from lightning_fedmut.callbacks import FedProx
        >>> algo = FederatedAlgorithm(aggregator=FedAdam(), start_model=MutationCallback(radius=2.0),
        ...                           local=[FedProx(mu=0.1)], name="FedMut+FedProx+FedAdam")
        >>> algo.name, [type(cb).__name__ for cb in algo.federated_callbacks]
        ('FedMut+FedProx+FedAdam', ['MutationCallback', 'FedProx'])
        >>> FederatedAlgorithm(start_model=FedProx())
        Traceback (most recent call last):
        ...
        TypeError: Expected `start_model` to be a StartModelCallback (MutationCallback, FedMR) or None, got FedProx, a LocalCallback: pass it in `local`.
    """

    def __init__(
        self,
        aggregator: Aggregator | None = None,
        start_model: StartModelCallback | None = None,
        local: Sequence[LocalCallback] = (),
        sampler: ClientSampler | None = None,
        callbacks: Sequence[FederatedCallback] = (),
        name: str | None = None,
        federation: FederationPolicy | None = None,
    ) -> None:
        if aggregator is None:
            aggregator = _FedAvgAggregator()
        if not isinstance(aggregator, Aggregator):
            raise TypeError(f"Expected `aggregator` to be a lightning_fedmut Aggregator or None, got"
                            f" {type(aggregator).__name__}.")
        if start_model is not None and not isinstance(start_model, StartModelCallback):
            raise TypeError(f"Expected `start_model` to be a StartModelCallback (MutationCallback, FedMR) or None,"
                            f" got {_described(start_model)}.")
        if sampler is not None and not isinstance(sampler, ClientSampler):
            raise TypeError(f"Expected `sampler` to be a ClientSampler or None, got {type(sampler).__name__}.")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"Expected `name` to be a non-empty string or None, got {name!r}.")
        self.aggregator = aggregator
        self.start_model = start_model
        self.local = _items("local", local, LocalCallback, "a LocalCallback (FedProx, Scaffold)")
        self.sampler = sampler
        self.callbacks = _items("callbacks", callbacks, FederatedCallback, "a FederatedCallback")
        for cb in self.callbacks:
            if isinstance(cb, (StartModelCallback, LocalCallback)):
                raise TypeError(f"Expected every item of `callbacks` to be neither a start-model nor a local"
                                f" component, got {_described(cb)}.")
        if federation is not None and not isinstance(federation, FederationPolicy):
            raise TypeError(f"Expected `federation` to be a FederationPolicy or None, got {type(federation).__name__}.")
        self.federation = federation
        self._name = name
        self._init_args: dict[str, Any] = {}

    @property
    def name(self) -> str:
        """The method's name: the ``name`` given, else the class name (``FedMut``, ``FedProx`` ...)."""
        return self._name if self._name is not None else type(self).__name__

    @property
    def hparams(self) -> dict[str, Any]:
        """A preset's constructor arguments, for run configs (empty for a bundle built from components)."""
        return dict(self._init_args)

    @property
    def weighted(self) -> bool:
        """Whether the aggregator weights clients by their number of examples."""
        return bool(self.aggregator.weighted)

    @property
    def federated_callbacks(self) -> list[FederatedCallback]:
        """The method's federated callbacks in the order the loop calls them: start model, local, the others."""
        head = [self.start_model] if self.start_model is not None else []
        return [*head, *self.local, *self.callbacks]

    def _save_init_args(self, **init_args: Any) -> None:
        """Record a preset's constructor arguments (what :attr:`hparams` returns)."""
        self._init_args = dict(init_args)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._init_args.items())
        return f"{type(self).__name__}({args})"


def _described(obj: Any) -> str:
    """``obj``'s class, with its role and where it belongs when it has one."""
    if isinstance(obj, StartModelCallback):
        return f"{type(obj).__name__}, a StartModelCallback: pass it as `start_model`"
    if isinstance(obj, LocalCallback):
        return f"{type(obj).__name__}, a LocalCallback: pass it in `local`"
    return type(obj).__name__


def _items(name: str, values: Any, cls: type, what: str) -> list[Any]:
    if isinstance(values, FederatedCallback) or not isinstance(values, Sequence) or isinstance(values, str):
        raise TypeError(f"Expected `{name}` to be a list of {what}, got {type(values).__name__}.")
    out = list(values)
    for value in out:
        if not isinstance(value, cls):
            raise TypeError(f"Expected every item of `{name}` to be {what}, got {_described(value)}.")
    return out
