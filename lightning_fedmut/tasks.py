"""A client's work as data: the task the server hands a client, and the result the client hands back."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from lightning.pytorch import Callback

    from lightning_fedmut.data.client import Client

__all__ = ["ClientResult", "ClientTask"]


@dataclass(eq=False)
class ClientTask:
    """What one client is asked to do in one round.

    The loop builds one task per sampled client and hands it to the executor. The executor loads
    ``start_state`` into the client's model and then hands the task to ``on_client_fit_start`` with
    ``start_state`` pointing at that model's own tensors, so a callback may change the start model in place
    just before the client trains (FedMut writes its mutated start model there).

    Attributes:
        round: the 0-based round.
        slot: the client's position among the round's sampled clients.
        client: the :class:`~lightning_fedmut.Client`.
        seed: the seed of this client's training randomness (data order, dropout) in this round.
        start_state: the state the client starts from, keyed like the module's ``state_dict``.
        client_state: this client's own state, kept across rounds by the loop's client-state store (empty
            the first time). Replace entries rather than changing stored tensors in place.
        callbacks: extra Lightning callbacks for this client's ``Trainer`` (added by federated callbacks in
            ``on_client_fit_start``; they live for this task only).

    Examples:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_fedmut import Client
        >>> client = Client(id="a", data=DataLoader(TensorDataset(torch.zeros(4, 1))))
        >>> task = ClientTask(round=0, slot=1, client=client, seed=7, start_state={"w": torch.zeros(1)})
        >>> task.round, task.slot, task.client.id, task.client_state
        (0, 1, 'a', {})
    """

    round: int
    slot: int
    client: Client
    seed: int
    start_state: MutableMapping[str, Tensor]
    client_state: dict[str, Any] = field(default_factory=dict)
    callbacks: list[Callback] = field(default_factory=list)


@dataclass(eq=False)
class ClientResult:
    """What a client hands back after its task: its trained state, or the error that stopped it.

    ``state`` may be the client model's live tensors (the sequential executor reuses one model for every
    client): read it in ``on_client_fit_end`` or the aggregator's ``update``, and copy what must outlive the
    next task.

    Attributes:
        task: the :class:`ClientTask` this answers.
        num_examples: the client's number of training examples (the FedAvg weight).
        state: the trained state, keyed like the module's ``state_dict``; ``None`` when the client failed.
        metrics: the client Trainer's scalar metrics (e.g. ``train_loss``).
        payload: what the client sends the aggregator besides its state: filled by a callback's
            ``on_client_fit_end`` where the client trained, read by the aggregator's ``update`` in every process
            (with workers it travels with the state).
        client_state: the client's state to keep for its next task; the loop stores it after the round's
            clients have trained. Starts as the task's ``client_state``.
        error: the exception that made the client fail, or ``None``.
        num_steps: the optimizer steps the client took (its ``Trainer``'s ``global_step``: one per
            ``accumulate_grad_batches`` batches, ``local_steps`` when set, the ``optimizer.step()`` calls under
            manual optimization); ``0`` also when its training changed none of its weights (``None`` when
            unknown, e.g. a failed client). FedNova normalises each client's update by it.

    Examples:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_fedmut import Client
        >>> client = Client(id=0, data=DataLoader(TensorDataset(torch.zeros(4, 1))))
        >>> task = ClientTask(round=0, slot=0, client=client, seed=1, start_state={})
        >>> ClientResult(task=task, num_examples=4, error=ValueError("bad labels")).failed
        True
    """

    task: ClientTask
    num_examples: int
    state: MutableMapping[str, Tensor] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    client_state: dict[str, Any] | None = None
    error: BaseException | None = None
    num_steps: int | None = None

    def __post_init__(self) -> None:
        if self.client_state is None:
            self.client_state = self.task.client_state

    @property
    def failed(self) -> bool:
        """Whether the client failed (raised, or returned non-finite weights)."""
        return self.error is not None

    @property
    def error_type(self) -> str | None:
        """The name of the error's type (the original type's, for an error that came from another process)."""
        if self.error is None:
            return None
        return getattr(self.error, "type_name", None) or type(self.error).__name__

    @property
    def client(self) -> Client:
        """The task's client."""
        return self.task.client
