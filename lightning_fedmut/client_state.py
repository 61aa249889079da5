"""Per-client state kept across rounds (e.g. SCAFFOLD's control variates), owned by the loop and checkpointed."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

__all__ = ["ClientStateStore", "InMemoryClientStateStore"]


class ClientStateStore:
    """Where the loop keeps each client's state between the rounds it is sampled in.

    A client's state is a dict of tensors and numbers. The loop reads it with :meth:`get` when it builds the
    client's task and writes it with :meth:`set` after the round's clients have trained (never in the
    middle of a round, so a checkpoint taken on an interrupt is consistent). A store for very many clients
    (a folder of files, a database) implements these verbs; :meth:`state_dict` is what goes into the
    federated checkpoint (a disk-backed store may return a reference to its own files instead).

    Examples:
        >>> store = InMemoryClientStateStore()
        >>> store.get("a")
        {}
        >>> store.set("a", {"steps": 3}); store.get("a"), len(store), "a" in store
        ({'steps': 3}, 1, True)
    """

    def get(self, client_id: Hashable) -> dict[str, Any]:
        """The state stored for ``client_id`` (a new dict; empty if none was stored)."""
        raise NotImplementedError

    def set(self, client_id: Hashable, state: dict[str, Any]) -> None:
        """Store ``state`` for ``client_id``, replacing what was there."""
        raise NotImplementedError

    def __contains__(self, client_id: object) -> bool:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def clear(self) -> None:
        """Forget every client's state (the loop calls this when a ``fit`` starts without resuming)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What a federated checkpoint saves of the store."""
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        raise NotImplementedError


class InMemoryClientStateStore(ClientStateStore):
    """Every client's state in one dict in memory: the default store."""

    def __init__(self) -> None:
        self._states: dict[Hashable, dict[str, Any]] = {}

    def get(self, client_id: Hashable) -> dict[str, Any]:
        return dict(self._states.get(client_id, {}))

    def set(self, client_id: Hashable, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"Expected the state of client {client_id!r} to be a dict, got {type(state).__name__}.")
        self._states[client_id] = dict(state)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._states

    def __len__(self) -> int:
        return len(self._states)

    def clear(self) -> None:
        self._states.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"states": {k: dict(v) for k, v in self._states.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._states = {k: dict(v) for k, v in state_dict["states"].items()}
