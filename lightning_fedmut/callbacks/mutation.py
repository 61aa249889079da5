"""FedMut's server-side mutation as a federated callback."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_fedmut.callbacks.base import StartModelCallback
from lightning_fedmut.functional.mutation import acceleration_at, global_delta_, mutate_, mutation_coefficients
from lightning_fedmut.functional.state import copy_, floating_keys, frozen_hint, frozen_keys
from lightning_fedmut.sampling import require_fixed_size
from lightning_fedmut.utilities.seed import MUTATION_STREAM, derive_seed
from lightning_fedmut.utilities.validation import check_int, check_real
from lightning_fedmut.utilities.warnings import warn_user

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from lightning_fedmut.aggregators.base import Aggregator
    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientTask


class MutationCallback(StartModelCallback):
    r"""FedMut (Hu et al., AAAI 2024): mutate the aggregated model into the next round's start models.

    After round ``t`` aggregates ``w_glb(t)``, the callback keeps ``g = w_glb(t) - w_glb(t-1)`` in one
    buffer and draws a coefficient table; just before slot ``i`` of the next round trains, it writes
    ``w_glb(t) + radius * c[j, i] * g[j]`` into the working module for every mutated key ``j``. Each
    row ``c[j]`` is a random permutation of ``K//2`` times ``+1`` and ``K//2`` times ``-1 + beta_t``
    with ``beta_t = acceleration * max(0, 1 - t / acceleration_rounds)``; with an odd ``K`` the last
    slot starts un-mutated. Server memory is one model-sized buffer, whatever ``K``.

    Args:
        radius: the mutation radius ``alpha`` (the reference code's default is 4).
        acceleration: ``beta_0`` in ``[0, 1)``; the paper uses 0.5 for ResNet-18, the code 0.3.
        acceleration_rounds: ``T_b``, the round at which ``beta_t`` reaches 0.
        mutate_buffers: also mutate floating buffers (BatchNorm running statistics), as the reference
            code does. Off by default: a mutated ``running_var`` can turn negative. Integer state and
            frozen parameters (``requires_grad=False`` on the global module at setup) are never mutated:
            every start model holds the global copy of a frozen parameter, bit for bit.
        seed: seed of the coefficient generator; ``None`` derives it from the loop's ``seed``.

    Examples:
        >>> MutationCallback(radius=4.0, acceleration=0.3).hparams
        {'radius': 4.0, 'acceleration': 0.3, 'acceleration_rounds': 50, 'mutate_buffers': False, 'seed': None}
    """

    def __init__(
        self,
        radius: float = 4.0,
        acceleration: float = 0.3,
        acceleration_rounds: int = 50,
        mutate_buffers: bool = False,
        seed: int | None = None,
    ) -> None:
        # bounded: a radius of 1e300 overflows float32 weights mid-run instead of failing here
        self.radius = check_real("radius", radius, low=0.0, high=1e6)
        self.acceleration = check_real("acceleration", acceleration, low=0.0, high=1.0, high_open=True)
        self.acceleration_rounds = check_int("acceleration_rounds", acceleration_rounds, low=1)
        if not isinstance(mutate_buffers, bool):
            raise TypeError(f"Expected `mutate_buffers` to be a bool, got {mutate_buffers!r}.")
        self.mutate_buffers = mutate_buffers
        self.seed = None if seed is None else check_int("seed", seed, low=0)
        self._frozen: frozenset[str] = frozenset()
        self.generator: torch.Generator
        self._keys: list[str]
        self._delta: list[Tensor]
        self._coefficients: Tensor | None
        self._figures: dict[str, float]
        self.add_state("generator", torch.Generator())
        self.add_state("_keys", [])
        self.add_state("_delta", [])
        self.add_state("_coefficients", None)
        self.add_state("_figures", {}, scope="round")

    @property
    def coefficients(self) -> Tensor | None:
        """The current coefficient table ``(num_keys, clients_per_round)``, or ``None`` before round 0 ends."""
        return self._coefficients

    @property
    def keys(self) -> list[str]:
        """The state keys that are mutated."""
        return list(self._keys)

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        require_fixed_size(loop.sampler, "MutationCallback", "its coefficient table pairs the K slots of a round"
                           " (half +1, half -1 + beta), which a round of another size would break")
        seed = self.seed if self.seed is not None else derive_seed(loop.seed, MUTATION_STREAM)
        self.generator.manual_seed(seed)
        state = module.state_dict()
        params = {name for name, _ in module.named_parameters()}
        self._frozen = frozen_keys(module)
        self._keys = floating_keys(state, params, include_buffers=self.mutate_buffers, frozen=self._frozen)
        self._delta = [state[k].detach().clone() for k in self._keys]
        self._coefficients = None
        if loop.aggregator.weighted:  # declared by every Aggregator
            warn_user(
                "MutationCallback runs with an example-weighted aggregator; FedMut's reference code uses the"
                " uniform mean. Pass `aggregator=FedAvg(weighted=False)` to reproduce it.",
                UserWarning,
            )

    def teardown(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        self._delta = []  # release the model-sized buffer; the coefficient table stays for inspection

    def on_client_fit_start(self, loop: FederatedLoop, module: LightningModule, task: ClientTask) -> None:
        if self._coefficients is None:
            return
        state = task.start_state
        mutate_([state[k] for k in self._keys], self._delta, self._coefficients[:, task.slot].tolist(), self.radius)

    def on_before_aggregate(self, loop: FederatedLoop, module: LightningModule, aggregator: Aggregator) -> None:
        # every client has trained: the buffer may now hold w_glb(t-1) instead of the last delta
        state = module.state_dict()
        copy_(self._delta, [state[k] for k in self._keys])

    def on_after_aggregate(self, loop: FederatedLoop, module: LightningModule) -> None:
        state = module.state_dict()
        global_delta_(self._delta, [state[k] for k in self._keys])
        beta = acceleration_at(loop.round, self.acceleration, self.acceleration_rounds)
        self._coefficients = mutation_coefficients(
            len(self._keys), loop.clients_per_round, beta, generator=self.generator
        )
        squared = torch.tensor([float(d.double().pow(2).sum()) for d in self._delta], dtype=torch.float64)
        # distance of each slot's start model from the global one: radius * sqrt(sum_j c_ji^2 |g_j|^2)
        distances = self.radius * (self._coefficients.pow(2) * squared[:, None]).sum(dim=0).sqrt()
        self._figures = {
            "fedmut/beta": beta,
            "fedmut/radius": self.radius,
            "fedmut/delta_norm": math.sqrt(float(squared.sum())),
            "fedmut/start_model_distance": float(distances.mean()),
        }

    def metrics(self) -> dict[str, float]:
        """The round's ``fedmut/beta``, ``fedmut/radius``, ``fedmut/delta_norm`` and ``fedmut/start_model_distance``."""
        return dict(self._figures)

    def divergence_hint(self, loop: FederatedLoop) -> str | None:
        return (
            f"a mutation radius too large for this learning rate (radius={self.radius:g}; try a smaller `radius`)"
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._keys and list(state_dict["keys"]) != self._keys:
            raise ValueError(
                "MutationCallback state does not match the model: checkpoint mutates keys"
                f" {state_dict['keys'][:5]}..., this model {self._keys[:5]}...{frozen_hint(state_dict['keys'], self._frozen)}"
            )
        super().load_state_dict(state_dict)  # the buffer is loaded in place, where it lives
        self._keys = list(self._keys)
