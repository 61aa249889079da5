import pytest
import torch

from lightning_fedmut.functional import (
    acceleration_at,
    accumulate_,
    copy_,
    finalize_mean_,
    global_delta_,
    integer_max_,
    mutate_,
    mutation_coefficients,
)


@pytest.mark.parametrize("k", [2, 4, 10, 32])
@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5])
def test_coefficients_are_balanced_permutations(k, beta):
    g = torch.Generator().manual_seed(0)
    c = mutation_coefficients(50, k, beta, generator=g)
    assert c.shape == (50, k)
    expected = sorted([beta - 1.0] * (k // 2) + [1.0] * (k // 2))
    for row in c:
        assert sorted(row.tolist()) == pytest.approx(expected, abs=0)
    # mean coefficient of every key is beta / 2 exactly as the paper's schedule says
    torch.testing.assert_close(c.mean(dim=1), torch.full((50,), beta / 2, dtype=torch.float64))


def test_coefficients_odd_k_keeps_last_slot_unmutated():
    c = mutation_coefficients(20, 5, 0.3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(c[:, 4], torch.zeros(20, dtype=torch.float64))
    assert (c[:, :4] == 1.0).sum(dim=1).tolist() == [2] * 20
    assert (c[:, :4] == 0.3 - 1.0).sum(dim=1).tolist() == [2] * 20


def test_coefficients_k1_is_fedavg():
    assert torch.equal(mutation_coefficients(7, 1, 0.3), torch.zeros(7, 1, dtype=torch.float64))


def test_coefficients_signs_independent_across_keys():
    c = mutation_coefficients(4000, 10, 0.0, generator=torch.Generator().manual_seed(0))
    # for one client, consecutive keys agree in sign about half the time
    agree = (torch.sign(c[1:, 0]) == torch.sign(c[:-1, 0])).double().mean().item()
    assert 0.45 < agree < 0.55
    # every slot is positive half the time
    pos = (c > 0).double().mean(dim=0)
    assert torch.all((pos > 0.45) & (pos < 0.55))


def test_coefficients_are_uniform_permutations():
    # each of the C(4,2)=6 sign patterns of a 4-slot row appears with frequency 1/6
    c = mutation_coefficients(12000, 4, 0.0, generator=torch.Generator().manual_seed(3))
    patterns = {}
    for row in (c > 0).int().tolist():
        patterns[tuple(row)] = patterns.get(tuple(row), 0) + 1
    assert len(patterns) == 6
    for count in patterns.values():
        assert abs(count / 12000 - 1 / 6) < 0.015


def test_coefficients_reproducible_from_generator():
    a = mutation_coefficients(10, 6, 0.2, generator=torch.Generator().manual_seed(5))
    b = mutation_coefficients(10, 6, 0.2, generator=torch.Generator().manual_seed(5))
    c = mutation_coefficients(10, 6, 0.2, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    ("t", "expected"), [(0, 0.3), (25, 0.15), (49, 0.3 * (1 - 49 / 50)), (50, 0.0), (51, 0.0), (1000, 0.0)]
)
def test_acceleration_schedule(t, expected):
    assert acceleration_at(t, 0.3, 50) == pytest.approx(expected, abs=1e-15)


def test_global_delta_and_mutate_against_reference():
    g = torch.Generator().manual_seed(0)
    prev = [torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]
    cur = [torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]
    buf = [p.clone() for p in prev]
    global_delta_(buf, cur)
    for b, p, c in zip(buf, prev, cur):
        assert torch.equal(b, c - p)
    start = [c.clone() for c in cur]
    mutate_(start, buf, [1.0, -0.7], radius=4.0)
    torch.testing.assert_close(start[0], cur[0] + 4.0 * (cur[0] - prev[0]), rtol=0, atol=1e-14)
    torch.testing.assert_close(start[1], cur[1] - 2.8 * (cur[1] - prev[1]), rtol=0, atol=1e-14)


def test_mutate_zero_scale_is_bitwise_noop():
    w = [torch.tensor([-0.0, 1.5])]
    mutate_(w, [torch.tensor([float("inf"), 2.0])], [1.0], radius=0.0)
    assert torch.equal(w[0], torch.tensor([-0.0, 1.5])) and torch.signbit(w[0][0])


def test_accumulate_and_mean_against_float64_reference():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(6, generator=g) for _ in range(4)]
    ws = [3.0, 1.0, 7.0, 2.0]
    acc = [torch.zeros(6)]
    for x, w in zip(xs, ws):
        accumulate_(acc, [x], w)
    finalize_mean_(acc, sum(ws))
    ref = sum(w * x.double() for x, w in zip(xs, ws)) / sum(ws)
    torch.testing.assert_close(acc[0].double(), ref, rtol=0, atol=1e-6)


def test_mixed_dtypes_and_integer_max():
    acc = [torch.zeros(2, dtype=torch.float32)]
    accumulate_(acc, [torch.tensor([1.0, 2.0], dtype=torch.float16)], 2.0)
    assert acc[0].dtype == torch.float32 and acc[0].tolist() == [2.0, 4.0]
    ints = [torch.tensor([1, 9])]
    integer_max_(ints, [torch.tensor([4, 2])])
    assert ints[0].dtype == torch.int64 and ints[0].tolist() == [4, 9]
    with pytest.raises(ValueError, match="total_weight"):
        finalize_mean_(acc, 0.0)


def test_copy_across_dtypes():
    dst = [torch.zeros(2), torch.zeros(2, dtype=torch.float64)]
    copy_(dst, [torch.ones(2), torch.full((2,), 2.0)])
    assert dst[0].tolist() == [1.0, 1.0] and dst[1].tolist() == [2.0, 2.0]
