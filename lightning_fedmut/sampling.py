"""Client sampling: which clients train in a round."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from lightning_fedmut.functional.clustering import (
    SIMILARITIES,
    clustered_distributions,
    update_similarity,
    ward_linkage,
    weight_clusters,
)
from lightning_fedmut.functional.state import is_floating
from lightning_fedmut.state import DeclaredState, Figures
from lightning_fedmut.utilities.seed import CLUSTERED_SAMPLING_STREAM, SAMPLING_STREAM, derive_seed
from lightning_fedmut.utilities.validation import check_int, check_real

if TYPE_CHECKING:
    from lightning_fedmut.client_state import ClientStateStore
    from lightning_fedmut.data.client import Client
    from lightning_fedmut.tasks import ClientResult

__all__ = ["ClientSampler", "ClusteredSampler", "PoissonSampler", "UniformSampler", "require_fixed_size"]


class ClientSampler(DeclaredState):
    """Chooses the clients of each round; owns its randomness and checkpoints it.

    Subclasses override :meth:`sample` and declare the state they keep with :meth:`add_state` (a generator
    is saved as its ``get_state()``: a resumed run draws the same clients); a draw's figures are what
    :meth:`metrics` returns. :meth:`setup` is called once per ``fit`` with the
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

    #: Whether :meth:`sample` returns exactly ``k`` clients. A sampler that returns a varying number (Poisson
    #: sampling for differential privacy) sets it to ``False``; ``k`` is then the expected number, and a round
    #: with fewer than ``min_clients_per_round`` clients is handled as one whose clients failed.
    fixed_size: bool = True

    def setup(self, seed: int, client_states: ClientStateStore | None = None) -> None:
        """Called once per ``fit`` with the loop's ``seed`` and client-state store, before any round."""

    def sample(self, round: int, clients: Sequence[Client], k: int) -> list[Client]:
        """The ``k`` distinct clients (from ``clients``) that train in round ``round``."""
        raise NotImplementedError

    def observe(self, result: ClientResult, global_state: Mapping[str, Tensor]) -> None:
        """Called with each successful client result, before the aggregator sees it.

        ``global_state`` is the global model the round started from: its federated entries (those the
        federation policy keeps local or frozen are left out). Write what the sampler learns about
        the client into ``result.client_state``; the loop stores it after the round.
        """

def require_fixed_size(sampler: ClientSampler, component: str, reason: str) -> None:
    """Refuse a sampler whose rounds vary in size (``fixed_size = False``) for a ``component`` that needs ``K``
    clients every round, saying why (``reason``).

    Examples:
        >>> require_fixed_size(UniformSampler(), "MutationCallback", "its table has one column per slot")
        >>> require_fixed_size(PoissonSampler(0.1), "MutationCallback", "its table has one column per slot")
        Traceback (most recent call last):
        ...
        ValueError: Expected a sampler that draws `clients_per_round` clients every round (fixed_size=True) for MutationCallback, got PoissonSampler (fixed_size=False): its table has one column per slot.
    """
    if not getattr(sampler, "fixed_size", True):
        raise ValueError(f"Expected a sampler that draws `clients_per_round` clients every round (fixed_size=True) for"
                         f" {component}, got {type(sampler).__name__} (fixed_size=False): {reason}.")


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
        self.generator: torch.Generator
        self.add_state("generator", torch.Generator())

    def setup(self, seed: int, client_states: ClientStateStore | None = None) -> None:
        self.generator.manual_seed(self.seed if self.seed is not None else derive_seed(seed, SAMPLING_STREAM))

    def sample(self, round: int, clients: Sequence[Client], k: int) -> list[Client]:
        order = torch.randperm(len(clients), generator=self.generator)[:k]
        return [clients[i] for i in order.tolist()]


class PoissonSampler(ClientSampler):
    r"""Poisson sampling: every client trains in a round independently with probability ``rate``.

    The number of clients varies from round to round (``fixed_size = False``; a round may have none), with mean
    ``rate * N``. This is the sampling under which a differentially private run's accountant amplifies privacy
    (:mod:`lightning_fedmut.privacy`). The draws come from a generator the sampler owns and checkpoints: one uniform
    number per client per round, compared with ``rate``; the clients drawn keep the federation's order.

    Args:
        rate: the probability ``q`` in ``(0, 1]``; ``None`` takes ``clients_per_round / N`` (the ``k`` that
            :meth:`sample` receives over the number of clients).
        seed: seed of the generator; ``None`` derives it from the loop's ``seed``.

    Examples:
        >>> sampler = PoissonSampler(rate=0.5, seed=0)
        >>> sampler.setup(seed=123)
        >>> [len(sampler.sample(r, list(range(10)), 5)) for r in range(5)]
        [4, 7, 4, 5, 5]
        >>> PoissonSampler(rate=0.0)
        Traceback (most recent call last):
        ...
        ValueError: Expected `rate` in (0.0, 1.0], got 0.0.
    """

    fixed_size = False

    def __init__(self, rate: float | None = None, seed: int | None = None) -> None:
        self.rate = None if rate is None else check_real("rate", rate, low=0.0, high=1.0, low_open=True)
        self.seed = None if seed is None else check_int("seed", seed, low=0)
        self.generator: torch.Generator
        self.add_state("generator", torch.Generator())

    def setup(self, seed: int, client_states: ClientStateStore | None = None) -> None:
        self.generator.manual_seed(self.seed if self.seed is not None else derive_seed(seed, SAMPLING_STREAM))

    def rate_for(self, num_clients: int, k: int) -> float:
        """The rate of a round among ``num_clients`` clients with ``k`` clients per round asked for."""
        return self.rate if self.rate is not None else min(1.0, k / max(num_clients, 1))

    def sample(self, round: int, clients: Sequence[Client], k: int) -> list[Client]:
        drawn = torch.rand(len(clients), generator=self.generator, dtype=torch.float64) < self.rate_for(len(clients), k)
        return [clients[i] for i in drawn.nonzero().flatten().tolist()]


#: Keys of a client's last update (a flat float32 tensor) and of the round it was made in, in its client state.
UPDATE_KEY = "clustered_sampling/update"
UPDATE_ROUND_KEY = "clustered_sampling/round"


class ClusteredSampler(ClientSampler):
    r"""Clustered sampling (Fraboni et al., ICML 2021, Algorithm 2): one client from each cluster of similar clients.

    Each client is represented by its last update ``w_i - w_glb`` (every floating state entry, flattened,
    BatchNorm's running statistics included; zero until it first trains), kept in the loop's client-state store
    so it is checkpointed and follows the client. Before each round the sampler updates the rows and columns of
    the similarity matrix of the clients whose update changed, clusters the clients by Ward's linkage on the
    matrix's rows, cuts the tree into clusters holding at most ``1/k`` of the data each, and fills ``k``
    sampling distributions with them (:func:`~lightning_fedmut.functional.clustering.clustered_distributions`);
    one client is drawn from each, and similar clients rarely train together, so the aggregate varies less.

    **What holds.** Each distribution holds ``1/k`` of the data and a client ``k`` times its share ``n_i / n``
    over all of them, so the *expected number of draws* of every client is ``k n_i / n``, as with ``k``
    independent draws proportional to the data, when the ``k`` draws are independent (Fraboni et al.). The
    loop trains ``k`` *distinct* clients, so here each distribution draws among the clients not drawn yet (its
    remaining weight renormalised; in the rare case that none remain, among all clients not drawn yet, by their
    numbers of examples). A client is then drawn at most once: one whose weight is split between two
    distributions is included less often than ``k n_i / n`` (``tests/sampling/test_clustered_inclusion.py``
    measures 0.52 and 0.53 against 0.6 in a small case), and the others of those distributions more often.
    The probability of being included is therefore *not* proportional to the data, only close to it.

    **A client with more than ``1/k`` of the data** would have to be drawn more than once a round on average
    (``k n_i / n > 1``): neither this sampler nor Fraboni et al.'s can do it. It fills one distribution and is
    drawn every round; the sampler warns once per ``fit`` when it sees such a client.

    **Against the FedMut reference code.** Its update of the similarity matrix after a round has an
    indentation slip that fills only one column of the matrix; here the row and the column of every client
    with a new update are recomputed, so the matrix stays the full, symmetric matrix of Algorithm 2. It also
    represents a client by its parameters only; this sampler uses every floating state entry, so BatchNorm's
    running statistics count in the similarities (they do not change a model without BatchNorm).

    Memory: one model-sized update per client that has trained (in the client-state store) and the
    ``N x N`` similarity matrix (float64, in the sampler's state).

    Args:
        similarity: ``"arccos"`` (the angle between updates; the paper's choice), ``"L2"`` (squared distance)
            or ``"L1"``.
        seed: seed of the generator; ``None`` derives it from the loop's ``seed``.

    Examples:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_fedmut import Client
        >>> clients = [Client(id=i, data=DataLoader(TensorDataset(torch.zeros(10, 1)))) for i in range(6)]
        >>> sampler = ClusteredSampler(seed=0)
        >>> sampler.setup(seed=0)
        >>> picked = sampler.sample(0, clients, 3)
        >>> len({c.id for c in picked}), tuple(sampler.distributions.shape)
        (3, (3, 6))
    """

    def __init__(self, similarity: str = "arccos", seed: int | None = None) -> None:
        if similarity not in SIMILARITIES:
            raise ValueError(f"Expected `similarity` in {SIMILARITIES}, got {similarity!r}.")
        self.similarity = similarity
        self.seed = None if seed is None else check_int("seed", seed, low=0)
        self._store: ClientStateStore | None = None
        self._distributions: Tensor | None = None
        self._warned = False
        self.generator: torch.Generator
        self.add_state("generator", torch.Generator())
        self._matrix: Tensor | None
        self._stamps: Tensor | None
        self._figures: dict[str, float]
        self.add_state("_matrix", None)
        self.add_state("_stamps", None)
        self.add_state("_figures", {}, scope="round")

    @property
    def similarity_matrix(self) -> Tensor | None:
        """The clients' pairwise similarities ``(N, N)`` used by the last draw (``None`` before the first)."""
        return self._matrix

    @property
    def distributions(self) -> Tensor | None:
        """The last round's ``k`` sampling distributions ``(k, N)``: one client was drawn from each row."""
        return self._distributions

    @property
    def metrics(self) -> Figures:  # type: ignore[override]  # also subscriptable, as the attribute it was
        """This round's draw's ``clustered_sampling/clusters`` (clusters of the cut tree)."""
        return Figures(self._figures)

    def setup(self, seed: int, client_states: ClientStateStore | None = None) -> None:
        self.generator.manual_seed(self.seed if self.seed is not None else derive_seed(seed, CLUSTERED_SAMPLING_STREAM))
        self._store = client_states
        self._matrix, self._stamps, self._distributions, self._figures = None, None, None, {}
        self._warned = False

    def sample(self, round: int, clients: Sequence[Client], k: int) -> list[Client]:
        n = len(clients)
        if self._matrix is None or self._matrix.shape[0] != n:
            self._matrix = torch.zeros(n, n, dtype=torch.float64)
            self._stamps = torch.full((n,), -1, dtype=torch.int64)
        states = [self._store.get(c.id) if self._store is not None else {} for c in clients]
        updates = [s.get(UPDATE_KEY) for s in states]
        known = next((u for u in updates if u is not None), None)
        zero = torch.zeros(1) if known is None else torch.zeros_like(known)
        filled: list[Tensor] = [zero if u is None else u for u in updates]
        assert self._matrix is not None and self._stamps is not None  # allocated above for this federation
        for i, state in enumerate(states):
            stamp = int(state.get(UPDATE_ROUND_KEY, -1))
            if stamp != int(self._stamps[i]):
                row = update_similarity(filled[i], filled, self.similarity)
                self._matrix[i, :] = row
                self._matrix[:, i] = row
                self._stamps[i] = stamp
        sizes = [c.num_examples for c in clients]
        if any(w is None for w in sizes):
            raise ValueError("ClusteredSampler weighs clients by their number of examples: give every client a sized"
                             " dataset (`Client(num_examples=...)`).")
        weights = cast(list[int], sizes)
        self._warn_if_too_large(clients, weights, k)
        linkage = ward_linkage(self._matrix.numpy())
        self._distributions = clustered_distributions(linkage, weights, k, generator=self.generator)
        self._figures = {"clustered_sampling/clusters": float(weight_clusters(linkage, weights, k).max() + 1)}
        drawn: list[int] = []
        for row in self._distributions:
            p = row.clone()
            p[drawn] = 0.0
            if not p.sum() > 0:  # every client of this distribution was drawn already
                p = torch.tensor(weights, dtype=torch.float64)
                p[drawn] = 0.0
            drawn.append(int(torch.multinomial(p, 1, generator=self.generator)))
        return [clients[i] for i in drawn]

    def _warn_if_too_large(self, clients: Sequence[Client], weights: list[int], k: int) -> None:
        """Warn (once per ``fit``) about the clients holding more than ``1/k`` of the data."""
        total = sum(weights)
        large = [i for i, w in enumerate(weights) if k * w > total]
        if self._warned or not large:
            return
        self._warned = True
        names = ", ".join(f"{clients[i].id!r} ({weights[i] / total:.1%})" for i in large[:5])
        warnings.warn(
            f"ClusteredSampler: client(s) {names} hold more than 1/clients_per_round = 1/{k} = {1 / k:.1%} of the"
            f" data. Sampling proportional to the data would draw such a client {k} x its share > 1 times a round;"
            " it is drawn every round instead, and the others less than their share. Use more, smaller clients or"
            " fewer clients per round for clustered sampling to stay unbiased.",
            UserWarning, stacklevel=2)

    @torch.no_grad()
    def observe(self, result: ClientResult, global_state: Mapping[str, Tensor]) -> None:
        assert result.state is not None and result.client_state is not None  # a client that trained
        parts = [(result.state[k].detach().float() - g.detach().to(result.state[k].device).float()).flatten().cpu()
                 for k, g in global_state.items() if is_floating(g)]
        result.client_state[UPDATE_KEY] = torch.cat(parts) if parts else torch.zeros(0)
        result.client_state[UPDATE_ROUND_KEY] = int(result.task.round)

