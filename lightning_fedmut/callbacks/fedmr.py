"""FedMR (Hu et al., IEEE TMC 2023): model recombination, layer by layer, of the trained client models."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_fedmut.callbacks.base import StartModelCallback
from lightning_fedmut.functional.recombination import recombination_table, recombine
from lightning_fedmut.functional.server_optim import squared_distance
from lightning_fedmut.functional.state import copy_, frozen_hint, frozen_keys, is_floating
from lightning_fedmut.sampling import require_fixed_size
from lightning_fedmut.utilities.seed import FEDMR_STREAM, derive_seed
from lightning_fedmut.utilities.validation import check_int

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from lightning_fedmut.aggregators.base import Aggregator
    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientResult, ClientTask


class FedMR(StartModelCallback):
    r"""FedMR: the next round's start models are the round's trained models, recombined layer by layer.

    After round ``t`` aggregates, every state key ``j`` (every layer's weight, bias and buffers) of the ``K``
    trained client models is permuted across the ``K`` slots, independently per key: slot ``i`` of round
    ``t + 1`` starts from ``s_i[j] = w_{pi_j(i)}[j]``, each ``pi_j`` a uniformly random permutation drawn
    from the callback's own generator. Every key's multiset of tensors is preserved; no arithmetic is done,
    so integer state is moved like the rest. Frozen parameters (``requires_grad=False`` on the global
    module at setup) are not recombined nor kept ``K`` times: every start model holds their global copy. The
    aggregated global model is what the loop evaluates and checkpoints; the clients do not train from it.

    **Two stages.** Round ``t``'s trained models are recombined once ``t >= first_stage_bound``; until then the
    next round's clients start from the aggregated global model (plain FedAvg start models), as the paper's
    two-stage training does to settle the models early. Rounds ``0 .. first_stage_bound`` thus start from the
    global model and round ``first_stage_bound + 1`` is the first to start from recombined models: the rule
    ``if iter >= args.first_stage_bound: recombination(...)`` of the authors' ``Algorithm/Training_FedMR.py``
    (HMHelloWorld/FedMR), so ``first_stage_bound`` means the same number here and there. A slot whose client
    failed is refilled with the global model before recombining, and after a round skipped for too few clients
    the next round starts from the global model.

    **Memory.** FedMR keeps ``K`` whole models (``clients_per_round`` state dicts) by nature: the trained
    models of a round are its next start models. They are in the federated checkpoints too. With workers, each
    one's trained slots reach the others through the declared round state ``_trained`` (gathered by slot, once
    per round), so a worker holds up to ``2 K`` models during that exchange. It cannot be
    combined with :class:`~lightning_fedmut.MutationCallback`: both are start-model components
    (:class:`~lightning_fedmut.callbacks.base.StartModelCallback`), and a loop takes one.

    Logs ``fedmr/recombined`` (1 when the next round starts from recombined models) and
    ``fedmr/start_model_distance`` (the mean distance of the next start models from the global model).

    Args:
        first_stage_bound: the first round whose trained models are recombined: round ``first_stage_bound + 1``
            is the first to start from recombined models (0: from round 1 on), as in the authors' code.
        seed: seed of the permutation generator; ``None`` derives it from the loop's ``seed``.

    Examples:
        >>> FedMR(first_stage_bound=50).hparams
        {'first_stage_bound': 50, 'seed': None}
    """

    def __init__(self, first_stage_bound: int = 0, seed: int | None = None) -> None:
        self.first_stage_bound = check_int("first_stage_bound", first_stage_bound, low=0)
        self.seed = None if seed is None else check_int("seed", seed, low=0)
        self._frozen: frozenset[str] = frozenset()
        # the round's trained slots: slot -> its trained model (this process's buffer, or received from a worker)
        self._trained: dict[int, list[Tensor]]
        self.generator: torch.Generator
        self._keys: list[str]
        self._start_round: int | None  # the round whose clients start from self._models
        self._table: Tensor | None
        self._models: list[list[Tensor]]
        self._figures: dict[str, float]
        self.add_state("generator", torch.Generator())
        self.add_state("_keys", [])
        self.add_state("_start_round", None)
        self.add_state("_table", None)
        self.add_state("_models", [])  # the K start models: saved only while they are pending (see state_dict)
        self.add_state("_figures", {}, scope="round")
        self.add_state("_trained", {}, reduce="cat", scope="round")

    @property
    def permutations(self) -> Tensor | None:
        """The last recombination table ``(num_keys, K)``: slot ``i`` starts from key ``j`` of slot ``[j, i]``."""
        return self._table

    @property
    def keys(self) -> list[str]:
        """The state keys that are recombined (all but the frozen parameters)."""
        return list(self._keys)

    def start_models(self) -> list[dict[str, Tensor]]:
        """The next round's start models, one state dict per slot (views of the callback's buffers)."""
        return [dict(zip(self._keys, model)) for model in self._models]

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        require_fixed_size(loop.sampler, "FedMR", "it recombines the K models of a round into the K start models of"
                           " the next, slot by slot")
        self.generator.manual_seed(self.seed if self.seed is not None else derive_seed(loop.seed, FEDMR_STREAM))
        state = module.state_dict()
        self._frozen = frozen_keys(module)
        self._keys = [k for k in state if k not in self._frozen]
        self._models = [[state[k].detach().clone() for k in self._keys] for _ in range(loop.clients_per_round)]
        self._table, self._start_round = None, None

    def teardown(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        self._models = []  # release the K models; the last table stays for inspection

    def on_client_fit_start(self, loop: FederatedLoop, module: LightningModule, task: ClientTask) -> None:
        if self._start_round == loop.round:
            state = task.start_state
            copy_([state[k] for k in self._keys], self._models[task.slot])

    def on_client_fit_end(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        # this slot's start model has been used: its buffer now keeps the trained model
        assert result.state is not None  # on_client_fit_end follows a client that trained
        slot = result.task.slot
        copy_(self._models[slot], [result.state[k] for k in self._keys])
        self._trained[slot] = self._models[slot]  # with workers, the others' trained slots arrive by the reduction

    @torch.no_grad()
    def on_before_aggregate(self, loop: FederatedLoop, module: LightningModule, aggregator: Aggregator) -> None:
        for slot, model in self._trained.items():  # another worker's slot: into this process's buffer
            if model is not self._models[slot]:
                copy_(self._models[slot], model)
        self._trained = {slot: self._models[slot] for slot in self._trained}

    @torch.no_grad()
    def on_after_aggregate(self, loop: FederatedLoop, module: LightningModule) -> None:
        state = module.state_dict()
        glb = [state[k] for k in self._keys]
        for slot in range(len(self._models)):
            if slot not in self._trained:  # a failed client: its slot takes the global model
                copy_(self._models[slot], glb)
        next_round = loop.round + 1
        recombined = loop.round >= self.first_stage_bound  # the reference's `iter >= args.first_stage_bound`
        if recombined:
            self._table = recombination_table(len(self._keys), loop.clients_per_round, generator=self.generator)
            self._models = recombine(self._models, self._table)
            self._start_round = next_round
        else:
            self._start_round = None
        floats = [i for i, k in enumerate(self._keys) if is_floating(state[k])]
        distances = [math.sqrt(squared_distance([m[i] for i in floats], [glb[i] for i in floats]))
                     for m in self._models] if recombined else [0.0]
        self._figures = {"fedmr/recombined": float(recombined),
                         "fedmr/start_model_distance": sum(distances) / len(distances)}

    def metrics(self) -> dict[str, float]:
        """The round's ``fedmr/recombined`` and ``fedmr/start_model_distance``."""
        return dict(self._figures)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._start_round is None:  # the K start models, only while they are pending
            state["models"] = None
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._keys and list(state_dict["keys"]) != self._keys:
            raise ValueError(
                "FedMR state does not match the model: the checkpoint recombines keys"
                f" {state_dict['keys'][:5]}..., this model {self._keys[:5]}...{frozen_hint(state_dict['keys'], self._frozen)}"
            )
        models = self._models
        super().load_state_dict(state_dict)  # the start models are loaded in place, where they live
        if state_dict["models"] is None:
            self._models = models
