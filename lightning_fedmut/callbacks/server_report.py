"""What the server reports each round: its plugins' figures, and optionally the average of the last two iterates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_fedmut.callbacks.base import FederatedCallback
from lightning_fedmut.functional.state import copy_, is_floating

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from lightning_fedmut.aggregators.base import Aggregator
    from lightning_fedmut.loop import FederatedLoop


class ServerReport(FederatedCallback):
    r"""Evaluate the average of the last two global models (FedExP's authors' report).

    (Server-side plugins' own figures, a ``metrics`` dict on the aggregator or the sampler:
    :class:`~lightning_fedmut.aggregators.FedExP`'s ``fedexp/server_lr``, the FedOpt aggregators'
    ``<name>/pseudo_gradient_norm`` and ``<name>/step_norm``,
    :class:`~lightning_fedmut.sampling.ClusteredSampler`'s ``clustered_sampling/clusters``, are copied into
    ``loop.round_metrics`` by the loop itself, after sampling and after aggregation.)

    **The last two iterates** (``average_last_two=True``). FedExP's authors report the average
    ``(w_glb(t) + w_glb(t+1)) / 2`` of the last two global models, because FedExP's iterates oscillate,
    while training goes on from ``w_glb(t+1)``. With this option the global module holds that average while
    it is evaluated (between ``on_validation_start`` and ``on_validation_end``) and the last iterate again
    right after, so the clients, the aggregator and the federated checkpoints see the iterate and the
    validation metrics are the average's. The first aggregated round is evaluated as it is (there is no
    earlier iterate), as in the authors' code. It works with any aggregator; it holds one copy of the
    parameters, and a second one while the evaluation runs.

    Place it after callbacks that evaluate or save the global model themselves in ``on_validation_end`` if
    they must see the average, before them if they must see the iterate.

    Args:
        average_last_two: evaluate the average of the last two global models.

    Examples:
        >>> from lightning_fedmut import FederatedLoop
        >>> from lightning_fedmut.aggregators import FedExP
        >>> loop = FederatedLoop(rounds=10, clients_per_round=5, aggregator=FedExP(),
        ...                      callbacks=[ServerReport(average_last_two=True)])
        >>> loop.hparams["callbacks"][0]["init_args"]
        {'average_last_two': True}
    """

    def __init__(self, average_last_two: bool = False) -> None:
        if not isinstance(average_last_two, bool):
            raise TypeError(f"Expected `average_last_two` to be a bool, got {average_last_two!r}.")
        self.average_last_two = average_last_two
        self._keys: list[str] = []
        self._previous: list[Tensor] = []
        self._previous_iterate = -1  # which iterate `_previous` holds (0: the initial model)
        self._iterates = 0  # aggregations done: the global module holds iterate number `_iterates`
        self._stash: list[Tensor] | None = None

    @property
    def hparams(self) -> dict[str, Any]:
        return {"average_last_two": self.average_last_two}

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        self._iterates, self._previous_iterate, self._stash = 0, -1, None
        if self.average_last_two:
            state = module.state_dict()
            names = {name for name, _ in module.named_parameters()}
            self._keys = [k for k, v in state.items() if k in names and is_floating(v)]
            self._previous = [state[k].detach().clone() for k in self._keys]

    def teardown(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        self._restore(module)
        self._previous = []

    def on_before_aggregate(self, loop: FederatedLoop, module: LightningModule, aggregator: Aggregator) -> None:
        if self.average_last_two:
            state = module.state_dict()
            copy_(self._previous, [state[k] for k in self._keys])
            self._previous_iterate = self._iterates

    def on_after_aggregate(self, loop: FederatedLoop, module: LightningModule) -> None:
        self._iterates += 1

    @torch.no_grad()
    def on_validation_start(self, loop: FederatedLoop, module: LightningModule) -> None:
        if not self.average_last_two or self._previous_iterate < 1 or self._previous_iterate >= self._iterates:
            return
        state = module.state_dict()
        current = [state[k] for k in self._keys]
        self._stash = [t.detach().clone() for t in current]
        for t, previous in zip(current, self._previous):
            t.add_(previous.to(device=t.device, dtype=t.dtype)).mul_(0.5)

    def on_validation_end(self, loop: FederatedLoop, module: LightningModule) -> None:
        self._restore(module)

    def on_exception(self, loop: FederatedLoop, module: LightningModule, exception: BaseException) -> None:
        self._restore(module)

    def _restore(self, module: LightningModule) -> None:
        if self._stash is not None:
            state = module.state_dict()
            copy_([state[k] for k in self._keys], self._stash)
            self._stash = None

    def state_dict(self) -> dict[str, Any]:
        if not self.average_last_two:
            return {}
        return {"keys": list(self._keys), "previous": [t.detach().cpu().clone() for t in self._previous],
                "previous_iterate": self._previous_iterate, "iterates": self._iterates}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self._keys and list(state_dict["keys"]) != self._keys:
            raise ValueError("ServerReport state does not match the model's parameters.")
        self._keys = list(state_dict["keys"])
        if self._previous:
            copy_(self._previous, state_dict["previous"])
        else:
            self._previous = [t.clone() for t in state_dict["previous"]]
        self._previous_iterate = int(state_dict["previous_iterate"])
        self._iterates = int(state_dict["iterates"])
