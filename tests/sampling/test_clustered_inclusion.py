"""What clustered sampling guarantees, measured: expected draws proportional to the data, inclusion not quite.

Six clients that have not trained yet (all updates zero, so the clustering is fixed), ``k = 4`` per round, sizes
``(3, 3, 3, 3, 3, 5)`` of 20: the cut leaves six single-client clusters; clients 2 to 5 fill one distribution
each and clients 0 and 1 (the lightest clusters, first) fill the rest, each split between two distributions:

    row 0: client 2 (12/20) + client 0 (8/20);  row 1: client 3 (12/20) + client 0 (4/20) + client 1 (4/20);
    row 2: client 4 (12/20) + client 1 (8/20);  row 3: client 5 (20/20).

Every column sums to ``k n_i / n`` (0.6 for the size-3 clients). Drawn in row order without repetition, client 0
is included with probability ``0.4 + 0.6 * 0.2 = 0.52`` and client 1 with ``0.4 * (0.25 + 0.75 * 0.4) + 0.6 *
(0.2 + 0.8 * 0.4) = 0.532``, not 0.6; client 3 with ``0.4 * 0.75 + 0.6 * 0.6 = 0.66`` and client 4 with
``0.78 * 0.6 + 0.22 = 0.688``, more than 0.6.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_fedmut import Client
from lightning_fedmut.sampling import ClusteredSampler

ROUNDS = 3000


def clients_of(sizes):
    return [Client(id=i, data=DataLoader(TensorDataset(torch.zeros(n, 1)))) for i, n in enumerate(sizes)]


def inclusion(sizes, k, rounds=ROUNDS):
    sampler = ClusteredSampler(seed=0)
    sampler.setup(seed=0)
    clients = clients_of(sizes)
    counts = torch.zeros(len(sizes), dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for r in range(rounds):
            for c in sampler.sample(r, clients, k):
                counts[c.id] += 1
    assert sampler.distributions is not None
    return counts / rounds, sampler.distributions, [w for w in caught if issubclass(w.category, UserWarning)]


def test_expected_draws_are_proportional_but_a_split_clients_inclusion_is_lower():
    sizes, k = (3, 3, 3, 3, 3, 5), 4
    freq, distributions, caught = inclusion(sizes, k)
    assert caught == []  # no client holds more than 1/k of the data: no warning
    expected_draws = distributions.sum(dim=0)
    torch.testing.assert_close(expected_draws, torch.tensor([k * n / 20 for n in sizes], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert float(freq.sum()) == k  # k distinct clients a round
    exact = {0: 0.4 + 0.6 * 0.2, 1: 0.4 * (0.25 + 0.75 * 0.4) + 0.6 * (0.2 + 0.8 * 0.4),
             2: 0.6, 3: 0.4 * 0.75 + 0.6 * 0.6, 4: (1 - (0.4 * 0.25 + 0.6 * 0.2)) * 0.6 + 0.4 * 0.25 + 0.6 * 0.2}
    assert [round(exact[i], 12) for i in range(5)] == [0.52, 0.532, 0.6, 0.66, 0.688]
    for client, p in exact.items():  # each measured at its exact inclusion probability
        se = math.sqrt(p * (1 - p) / ROUNDS)
        assert abs(float(freq[client]) - p) < 4 * se, (client, float(freq[client]), p)
    for client in (0, 1):  # the split clients: more than 6 standard errors below their share, 0.6
        assert (0.6 - float(freq[client])) / math.sqrt(0.24 / ROUNDS) > 6
    assert float(freq[5]) == 1.0


def test_a_client_above_one_kth_of_the_data_is_drawn_every_round_and_warned_about_once():
    sizes, k = (10, 2, 2, 2, 2, 2), 3  # client 0 holds 50 % > 1/3: k n_0 / n = 1.5 draws a round cannot happen
    freq, distributions, caught = inclusion(sizes, k, rounds=200)
    assert float(freq[0]) == 1.0
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "client(s) 0 (50.0%)" in message and "1/clients_per_round = 1/3 = 33.3%" in message
