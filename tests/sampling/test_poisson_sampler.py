"""PoissonSampler: each client independently with probability q, from a generator the sampler owns and checkpoints."""

from __future__ import annotations

import math

import pytest

from lightning_fedmut.sampling import PoissonSampler


def test_each_client_is_drawn_with_probability_q_independently_of_the_others():
    """2000 rounds of 10 clients at q = 0.3: each client's frequency within 4 standard errors of q, and the pair
    (0, 1) drawn together q^2 of the time, as independence says."""
    sampler = PoissonSampler(rate=0.3, seed=0)
    sampler.setup(seed=0)
    clients, rounds = list(range(10)), 2000
    drawn = [set(sampler.sample(r, clients, 3)) for r in range(rounds)]
    se = math.sqrt(0.3 * 0.7 / rounds)
    for c in clients:
        assert abs(sum(c in d for d in drawn) / rounds - 0.3) < 4 * se
    both = sum({0, 1} <= d for d in drawn) / rounds
    assert abs(both - 0.09) < 4 * math.sqrt(0.09 * 0.91 / rounds)
    assert {len(d) for d in drawn} >= {0, 1, 2, 3, 4, 5}  # the size varies, an empty round included
    assert PoissonSampler.fixed_size is False


def test_the_rate_defaults_to_clients_per_round_over_the_federation():
    assert PoissonSampler().rate_for(40, 4) == 0.1
    assert PoissonSampler(rate=0.25).rate_for(40, 4) == 0.25


def test_a_restored_sampler_draws_the_same_clients():
    sampler = PoissonSampler(rate=0.5)
    sampler.setup(seed=3)
    sampler.sample(0, list(range(20)), 10)
    saved = sampler.state_dict()
    expected = [sampler.sample(r, list(range(20)), 10) for r in range(1, 4)]
    restored = PoissonSampler(rate=0.5)
    restored.setup(seed=99)
    restored.load_state_dict(saved)
    assert [restored.sample(r, list(range(20)), 10) for r in range(1, 4)] == expected


@pytest.mark.parametrize("rate", [0.0, 1.5, -0.1])
def test_a_rate_outside_0_1_is_refused_naming_it(rate):
    with pytest.raises(ValueError, match=rf"Expected `rate` in \(0.0, 1.0\], got {rate}"):
        PoissonSampler(rate=rate)
