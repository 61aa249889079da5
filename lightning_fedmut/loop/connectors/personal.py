"""Personalised evaluation: each client's own model on its own validation data, as client work over the workers.

A client's model is the global model's federated entries with the client's local ones (FedBN's BatchNorm, FedPer's
and FedRep's head, from the client-state store; a client that never trained has none and uses the global model's
values). Every ``evaluate_every`` rounds, every client with validation data (``Client(val_data=...)``,
``make_clients(..., val_fraction=...)``) is one :class:`EvaluationTask`; each task is evaluated where
:func:`~lightning_fedmut.distributed.balanced_owners` deals it by its validation batches (all of them in one
process; with workers, the largest first to the least loaded worker), its local entries loaded in place into the
process's global module and restored after, with no copy of the model. The :class:`EvaluationResult` objects are gathered in task order through declared round state, so every
worker summarises the same numbers as one process (:func:`personal_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from lightning_fedmut.distributed import balanced_owners, loader_cost, reduce_round_state
from lightning_fedmut.federation import local_key
from lightning_fedmut.functional.state import copy_
from lightning_fedmut.functional.summary import summarize
from lightning_fedmut.loop.checks import is_validation_metric
from lightning_fedmut.state import DeclaredState
from lightning_fedmut.utilities.warnings import warn_user

if TYPE_CHECKING:
    from lightning_fedmut.client_state import ClientStateStore
    from lightning_fedmut.data.client import Client
    from lightning_fedmut.execution import ClientExecutor, Evaluator

__all__ = ["PREFIX", "EvaluationResult", "EvaluationTask", "PersonalEvaluation", "evaluate_task", "personal_metrics",
           "personal_tasks"]

#: Where the summaries go in a round's history: ``personal/val_acc_mean``, ``personal/val_acc_std`` ...
PREFIX = "personal/"


@dataclass(eq=False)
class EvaluationTask:
    """One client's personalised evaluation: its slot among the round's evaluated clients, and its local entries.

    Attributes:
        slot: the client's position among the clients evaluated (the order its result is summarised in).
        client: the :class:`~lightning_fedmut.Client`, whose ``val_data`` is evaluated.
        local_state: the client's own values of the local entries, keyed like the module's ``state_dict``; an entry
            it has none of (it never trained) keeps the global model's value.
    """

    slot: int
    client: Client
    local_state: Mapping[str, Tensor] = field(default_factory=dict)


@dataclass
class EvaluationResult:
    """What one client's personalised evaluation gives back: its metrics as floats."""

    slot: int
    client_id: Any
    metrics: dict[str, float]


def personal_tasks(clients: Sequence[Client], store: ClientStateStore, local: Sequence[str]) -> list[EvaluationTask]:
    """One task per client with validation data, in the federation's order, holding its stored local entries.

    Examples:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_fedmut import Client
        >>> from lightning_fedmut.client_state import InMemoryClientStateStore
        >>> loader = DataLoader(TensorDataset(torch.zeros(2, 1)))
        >>> clients = [Client(id=i, data=loader, val_data=loader if i else None) for i in range(3)]
        >>> store = InMemoryClientStateStore(); store.set(2, {"local/bias": torch.ones(1)})
        >>> [(t.slot, t.client.id, dict(t.local_state)) for t in personal_tasks(clients, store, ["bias"])]
        [(0, 1, {}), (1, 2, {'bias': tensor([1.])})]
    """
    tasks: list[EvaluationTask] = []
    for client in clients:
        if client.val_data is None:
            continue
        own = store.get(client.id) if client.id in store else {}
        values = {key: own[local_key(key)] for key in local if own.get(local_key(key)) is not None}
        tasks.append(EvaluationTask(slot=len(tasks), client=client, local_state=values))
    return tasks


def evaluate_task(evaluator: Evaluator, module: LightningModule, task: EvaluationTask) -> EvaluationResult:
    """Evaluate ``module`` with the task's local entries loaded into it in place; its own values are put back after
    (also when the evaluation raises), so the module is unchanged bit for bit.

    Examples:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_fedmut import Client
        >>> from lightning_fedmut.execution import Evaluator
        >>> class Bias(LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = torch.nn.Linear(1, 1)
        ...     def validation_step(self, batch, batch_idx):
        ...         self.log("val_out", self.layer(batch[0]).mean())
        >>> module = Bias()
        >>> _ = torch.nn.init.zeros_(module.layer.weight), torch.nn.init.zeros_(module.layer.bias)
        >>> loader = DataLoader(TensorDataset(torch.ones(2, 1)))
        >>> task = EvaluationTask(0, Client(id="a", data=loader, val_data=loader), {"layer.bias": torch.full((1,), 3.0)})
        >>> evaluate_task(Evaluator(), module, task).metrics, module.layer.bias.item()
        ({'val_out': 3.0}, 0.0)
    """
    keys = list(task.local_state)
    with torch.no_grad():
        state = module.state_dict()
        kept = [state[k].detach().clone() for k in keys]
        copy_([state[k] for k in keys], [task.local_state[k] for k in keys])
    try:
        metrics = evaluator.evaluate(module, task.client.val_data)  # type: ignore[arg-type]
    finally:
        with torch.no_grad():  # the evaluation Trainer may have moved the module: read its tensors again
            state = module.state_dict()
            copy_([state[k] for k in keys], kept)
    return EvaluationResult(slot=task.slot, client_id=task.client.id, metrics=metrics)


def personal_metrics(results: Sequence[EvaluationResult]) -> dict[str, float]:
    """The history's figures of a round's personalised evaluation, for every validation metric ``m`` the clients
    logged: ``personal/<m>_mean``, ``personal/<m>_std`` (the sample standard deviation, ``n - 1``; left out for one
    client), ``personal/<m>_worst10`` (the mean of the worst 10 % of clients, at least one: the lowest values, or
    the highest for a loss) and ``personal/<m>_n`` (how many clients have it). Computed in float64.

    Examples:
        >>> rows = [EvaluationResult(i, i, {"val_acc": a, "val_loss": 1 - a}) for i, a in enumerate([0.5, 1.0, 0.75])]
        >>> personal_metrics(rows)
        {'personal/val_acc_mean': 0.75, 'personal/val_acc_std': 0.25, 'personal/val_acc_worst10': 0.5, 'personal/val_acc_n': 3, 'personal/val_loss_mean': 0.25, 'personal/val_loss_std': 0.25, 'personal/val_loss_worst10': 0.5, 'personal/val_loss_n': 3}
    """
    rows = [r.metrics for r in results]
    names = list(dict.fromkeys(k for row in rows for k in row if is_validation_metric(k)))
    out: dict[str, float] = {}
    for name, s in summarize(rows, names).items():
        out[f"{PREFIX}{name}_mean"] = s["mean"]
        if s["std"] is not None:
            out[f"{PREFIX}{name}_std"] = s["std"]
        out[f"{PREFIX}{name}_worst10"] = s["worst_10pct"]
        out[f"{PREFIX}{name}_n"] = s["n"]
    return out


class PersonalEvaluation(DeclaredState):
    """The loop's personalised evaluation: whether it runs, its tasks, and their results gathered from the workers.

    Args:
        enabled: ``True`` evaluates every client with validation data (the global model itself when the federation
            policy keeps no entry local: its per-client accuracy); ``False`` never; ``None`` (the default) when the
            policy keeps entries local and some client has validation data.

    Examples:
        >>> PersonalEvaluation(None).enabled is None
        True
    """

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError(f"Expected `personal_evaluation` to be True, False or None (on when the federation policy"
                            f" keeps entries local), got {enabled!r}.")
        self.enabled = enabled
        self.active = False
        self._local: list[str] = []
        self.results: dict[int, dict[str, Any]]  # workers exchange plain data: each result as a dict
        self.add_state("results", {}, reduce="cat", scope="round")  # by slot: this process's, then the round's

    def setup(self, local: Sequence[str], clients: Sequence[Client], warn: bool = True) -> None:
        """Decide, before the first round, whether this fit evaluates the clients; refuse ``True`` with no client
        that has validation data."""
        self._local = list(local)
        with_val = sum(c.val_data is not None for c in clients)
        if self.enabled and not with_val:
            raise ValueError("Expected some client with validation data for `personal_evaluation=True`, got none of"
                             f" the {len(clients)} clients: give them `val_data` (make_clients(...,"
                             " val_fraction=0.2)), or leave `personal_evaluation` out.")
        self.active = bool(with_val) and (self.enabled or (self.enabled is None and bool(local)))
        if self.enabled is None and local and not with_val and warn:
            warn_user(f"The federation keeps {len(local)} entries on each client ({local[:3]}...), but no client has"
                      " validation data, so no client's own model is evaluated: give the clients `val_data`"
                      " (make_clients(..., val_fraction=0.2)) to read their personalised accuracy"
                      " (`personal/val_acc_mean`); the global model lacks their local entries.")

    def evaluate(self, evaluator: Evaluator, module: LightningModule, clients: Sequence[Client],
                 store: ClientStateStore, executor: ClientExecutor) -> dict[str, float]:
        """Evaluate this process's share of the clients, gather every share in slot order, return the summary."""
        self.reset_state("round")
        tasks = personal_tasks(clients, store, self._local)
        costs = [loader_cost(task.client.val_data, task.client.num_examples) for task in tasks]  # validation batches
        owners = balanced_owners(costs, executor.world_size, max(1, len(tasks)))
        for task, owner in zip(tasks, owners):
            if owner == executor.rank:
                result = evaluate_task(evaluator, module, task)
                self.results[task.slot] = {"client_id": result.client_id, "metrics": result.metrics}
        reduce_round_state([self], executor)  # every worker's results, in slot order
        return personal_metrics([EvaluationResult(slot=s, **self.results[s]) for s in sorted(self.results)])
