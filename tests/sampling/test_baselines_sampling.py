"""Clustered sampling (Fraboni et al. 2021, Algorithm 2): against SciPy and a reference written out here."""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import pytest
import torch
from helpers import TinyModule
from torch.utils.data import DataLoader, TensorDataset

from lightning_fedmut import Client, FedAvg, FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut.data import partition_iid
from lightning_fedmut.functional import clustered_distributions, update_similarity, ward_linkage, weight_clusters
from lightning_fedmut.sampling import UPDATE_KEY, ClusteredSampler

hierarchy = pytest.importorskip("scipy.cluster.hierarchy")


def reference_algorithm_2(linkage, n_sampled, weights, shuffle):
    """Fraboni et al.'s ``get_clusters_with_alg2``, step by step (SciPy's fcluster, float weights times 1e10)."""
    epsilon = 10**10
    link = deepcopy(linkage)
    augmented = list(weights)
    for i in range(len(link)):
        a, b = int(link[i, 0]), int(link[i, 1])
        augmented.append(augmented[a] + augmented[b])
        link[i, 2] = int(augmented[-1] * epsilon)
    clusters = hierarchy.fcluster(link, int(epsilon / n_sampled), criterion="distance")
    n_clients, n_clusters = len(clusters), len(set(clusters))
    pop = np.zeros((n_clusters, 2)).astype(int)
    for i in range(n_clusters):
        pop[i, 0] = i + 1
        for client in np.where(clusters == i + 1)[0]:
            pop[i, 1] += int(weights[client] * epsilon * n_sampled)
    # sort by population; the original's quicksort leaves ties in any order, here by each cluster's first client
    first = {c: int(np.where(clusters == c)[0][0]) for c in pop[:, 0]}
    pop = pop[np.lexsort(([first[c] for c in pop[:, 0]], pop[:, 1]))]
    distri = np.zeros((n_sampled, n_clients)).astype(int)
    for idx, cluster in enumerate(pop[n_clusters - n_sampled:, 0]):
        for client in np.where(clusters == cluster)[0]:
            distri[idx, client] = int(weights[client] * n_sampled * epsilon)
    k = 0
    for j in pop[: n_clusters - n_sampled, 0]:
        members = shuffle(np.where(clusters == j)[0])
        for client in members:
            weight = int(weights[client] * epsilon * n_sampled)
            while weight > 0:
                u = min(epsilon - np.sum(distri[k]), weight)
                distri[k, client] = u
                weight -= u
                if np.sum(distri[k]) == epsilon:
                    k += 1
    distri = distri.astype(float)
    return distri / distri.sum(axis=1, keepdims=True), clusters


def test_ward_linkage_is_scipys():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 30):
        points = rng.normal(size=(n, n))
        np.testing.assert_allclose(ward_linkage(points), hierarchy.linkage(points, "ward"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_algorithm_2_matches_the_reference(seed):
    rng = np.random.default_rng(seed)
    n, m = 20, 5
    link = ward_linkage(rng.normal(size=(n, n)))
    sizes = rng.integers(10, 60, size=n)
    weights = sizes / sizes.sum()
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    got = clustered_distributions(link, sizes.tolist(), m, generator=g1)
    want, clusters = reference_algorithm_2(link, m, weights,
                                            lambda c: c[torch.randperm(len(c), generator=g2).numpy()])
    np.testing.assert_allclose(got.numpy(), want, atol=1e-9)
    labels = weight_clusters(link, sizes.tolist(), m)
    assert len(set(labels.tolist())) == len(set(clusters.tolist()))
    same = [[labels[i] == labels[j] for j in range(n)] for i in range(n)]
    assert same == [[clusters[i] == clusters[j] for j in range(n)] for i in range(n)]  # the same partition
    # each distribution holds 1/m of the data, each client m times its share over all of them
    np.testing.assert_allclose(got.sum(dim=1).numpy(), 1.0)
    np.testing.assert_allclose(got.sum(dim=0).numpy(), m * weights, atol=1e-12)


def test_update_similarity_is_fraboni_et_als():
    a, b, zero = torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0]), torch.zeros(2)
    assert update_similarity(a, [a, b, zero, -a]).tolist() == pytest.approx([0.0, np.pi / 2, 0.0, np.pi], abs=1e-7)
    assert update_similarity(a, [b], "L2").item() == 4.0
    assert update_similarity(a, [b], "L1").item() == 2.0
    with pytest.raises(ValueError, match="Expected `similarity` in"):
        ClusteredSampler(similarity="cosine")


class GroupedUpdates:
    """A client-state store whose clients made updates in three directions, two clients per direction."""

    directions = torch.eye(3)

    def __init__(self, n=6):
        self.n = n

    def get(self, client_id):
        return {UPDATE_KEY: self.directions[client_id % 3] * (1 + client_id), "clustered_sampling/round": 0}


def clients(n=6, size=10):
    return [Client(id=i, data=DataLoader(TensorDataset(torch.zeros(size, 1)))) for i in range(n)]


def test_clustered_sampler_draws_exactly_one_client_per_cluster_and_repeats_under_a_seed():
    group = {i: i % 3 for i in range(6)}
    draws = {}
    for seed in (0, 0, 1):
        sampler = ClusteredSampler(seed=seed)
        sampler.setup(seed=123, client_states=GroupedUpdates())
        rounds = []
        for r in range(20):
            picked = [c.id for c in sampler.sample(r, clients(), 3)]
            rows = sampler.distributions
            for row, client in zip(rows, picked):
                assert row[client] > 0  # each draw comes from its own distribution
            assert sorted(group[c] for c in picked) == [0, 1, 2]  # one client from each cluster
            rounds.append(picked)
        draws.setdefault(seed, []).append(rounds)
        assert sampler.metrics == {"clustered_sampling/clusters": 3.0}
    assert draws[0][0] == draws[0][1]  # the same seed draws the same clients
    assert draws[0][0] != draws[1][0]
    assert len({c for rnd in draws[0][0] for c in rnd}) == 6  # every client is drawn in time


def test_clustered_sampler_keeps_updates_in_the_client_state_store_and_resumes(synthetic, tmp_path):
    train, val = synthetic
    federation = make_clients(train, partition_iid(len(train), 8, seed=0), batch_size=16)
    seen = {}

    class Peek(FederatedCallback):
        def on_round_end(self, loop, module):
            seen[loop.round] = {c.id: loop.client_states.get(c.id).get(UPDATE_KEY) for c in federation}

    def run(ckpt_path=None, crash=None, rounds=3, checkpoint=True):
        torch.manual_seed(0)
        model = TinyModule()
        sampler = ClusteredSampler()
        callbacks = [Peek()] + ([crash] if crash else [])
        loop = FederatedLoop(rounds=rounds, clients_per_round=3, local_steps=1, sampler=sampler, seed=0,
                             aggregator=FedAvg(weighted=False), callbacks=callbacks, enable_progress_bar=False,
                             checkpoint_dir=tmp_path if checkpoint else None)
        return loop.fit(model, federation, val_dataloaders=DataLoader(val, batch_size=60), ckpt_path=ckpt_path), sampler

    full, sampler = run(checkpoint=False)
    trained = {row["client_id"] for row in full.client_history}
    assert {c for c, u in seen[2].items() if u is not None} == trained  # every client that trained has an update
    # the round-2 draw used every update stored after round 1, zero for clients that had not trained
    size = next(u for u in seen[1].values() if u is not None).numel()
    updates = [torch.zeros(size) if u is None else u for u in seen[1].values()]
    expected = torch.stack([update_similarity(u, updates) for u in updates])
    torch.testing.assert_close(sampler.similarity_matrix, expected)

    class Crash(FederatedCallback):
        def on_round_start(self, loop, module):
            if loop.round == 2:
                raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        run(crash=Crash())
    resumed, _ = run(ckpt_path="last")
    assert resumed.client_history == full.client_history
    assert resumed.history == full.history


def test_the_stored_update_holds_the_federated_entries_only(synthetic):
    """With the first layer frozen and the BatchNorm local, a client's stored update is the update of the other
    entries, in state_dict order: as many numbers as they hold, not the whole model's."""
    from lightning_fedmut.federation import FederationPolicy

    train, val = synthetic
    federation = make_clients(train, partition_iid(len(train), 6, seed=0), batch_size=16)
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    seen = {}

    class Peek(FederatedCallback):
        def on_client_fit_end(self, loop, module, result):
            seen[result.task.client.id] = {k: v.detach().clone() for k, v in result.state.items()}

    loop = FederatedLoop(rounds=1, clients_per_round=3, local_steps=2, sampler=ClusteredSampler(), seed=0,
                         aggregator=FedAvg(weighted=False), callbacks=[Peek()], enable_progress_bar=False,
                         federation=FederationPolicy(local=["net.1.*"], frozen=["net.0.*"]))
    loop.fit(model, federation, val_dataloaders=DataLoader(val, batch_size=60))
    federated = ["net.3.weight", "net.3.bias"]
    for client_id, trained in seen.items():
        stored = loop.client_states.get(client_id)[UPDATE_KEY]
        expected = torch.cat([(trained[k].float() - start[k].float()).flatten() for k in federated])
        assert torch.equal(stored, expected)
