"""Client sampling: which clients train in a round."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_fedmut.utilities.seed import SAMPLING_STREAM, derive_seed
from lightning_fedmut.utilities.validation import check_int

if TYPE_CHECKING:
    from lightning_fedmut.client_state import ClientStateStore
    from lightning_fedmut.data.client import Client
    from lightning_fedmut.tasks import ClientResult

__all__ = ["ClientSampler", "UniformSampler"]


class ClientSampler:
    """Chooses the clients of each round; owns its randomness and checkpoints it.

    Subclasses override :meth:`sample`, and :meth:`state_dict` / :meth:`load_state_dict` when they keep
    state (a resumed run must draw the same clients). :meth:`setup` is called once per ``fit`` with the
    run's seed and the loop's client-state store, before any round and before a checkpoint is restored. A
    sampler that learns from the clients' updates (clustered sampling) reads each successful result in
    :meth:`observe` and keeps what it learns per client in the client-state store (``result.client_state``),
    so it is checkpointed with the run and follows the client wherever it trains.

    Examples:
        A round-robin sampler: round ``r`` takes the next ``k`` clients in order.

        >>> class RoundRobin(ClientSampler):
        ...     def sample(self, round, clients, k):
        ...         start = (round * k) % len(clients)
        ...         return [clients[(start + i) % len(clients)] for i in range(k)]
        >>> RoundRobin().sample(1, ["a", "b", "c", "d", "e"], 2)
        ['c', 'd']
    """

    def setup(self, seed: int, client_states: ClientStateStore | None = None) -> None:
        """Called once per ``fit`` with the loop's ``seed`` and client-state store, before any round."""

    def sample(self, round: int, clients: Sequence[Client], k: int) -> list[Client]:
        """The ``k`` distinct clients (from ``clients``) that train in round ``round``."""
        raise NotImplementedError

    def observe(self, result: ClientResult, global_state: Mapping[str, Tensor]) -> None:
        """Called with each successful client result, before the aggregator sees it.

        ``global_state`` is the global model the round started from. Write what the sampler learns about
        the client into ``result.client_state``; the loop stores it after the round.
        """

    @property
    def hparams(self) -> dict[str, Any]:
        """The constructor arguments, for run configs."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State to save in a federated checkpoint."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""


class UniformSampler(ClientSampler):
    """``k`` clients uniformly at random without replacement, from a generator the sampler owns.

    Args:
        seed: seed of the generator; ``None`` derives it from the loop's ``seed``.

    Examples:
        >>> sampler = UniformSampler(seed=0)
        >>> sampler.setup(seed=123)  # the sampler's own seed wins
        >>> picked = sampler.sample(0, list("abcdef"), 3)
        >>> len(set(picked)), sampler.sample(0, list("abcdef"), 3) == picked
        (3, False)
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = None if seed is None else check_int("seed", seed, low=0)
        self.generator = torch.Generator()

    @property
    def hparams(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def setup(self, seed: int, client_states: ClientStateStore | None = None) -> None:
        self.generator.manual_seed(self.seed if self.seed is not None else derive_seed(seed, SAMPLING_STREAM))

    def sample(self, round: int, clients: Sequence[Client], k: int) -> list[Client]:
        order = torch.randperm(len(clients), generator=self.generator)[:k]
        return [clients[i] for i in order.tolist()]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.generator.set_state(state_dict["generator"])
