"""The gain row of the benchmark report: sample spread, n, and the paired 95 % interval of the mean difference.

The Student's t quantiles are the textbook values (t(0.975, 2) = 4.302653, t(0.975, 9) = 2.262157); every other
number is computed here in float64 from the differences.
"""

from __future__ import annotations

import math

import pytest

from lightning_fedmut.experiments.report import format_table, paired_interval, summarize

pytest.importorskip("scipy")

T975 = {2: 4.302652729749464, 9: 2.2621571628540993}


def sample_std(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


@pytest.mark.parametrize("differences", [
    [0.0525, 0.0455, 0.0490],  # three seeds whose population std is 0.29 points and sample std 0.35
    [0.05, 0.03, 0.06, 0.045, 0.062, 0.031, 0.058, 0.049, 0.027, 0.055],
])
def test_paired_interval_is_mean_plus_minus_t_times_the_standard_error(differences):
    n = len(differences)
    mean = sum(differences) / n
    half = T975[n - 1] * sample_std(differences) / math.sqrt(n)
    low, high = paired_interval(differences)
    assert low == pytest.approx(mean - half, abs=1e-12) and high == pytest.approx(mean + half, abs=1e-12)


def test_gain_row_prints_the_sample_std_n_and_the_interval():
    values = {("FedAvg", 0): 0.70, ("FedAvg", 1): 0.80, ("FedAvg", 2): 0.75,
              ("FedMut", 0): 0.7525, ("FedMut", 1): 0.8455, ("FedMut", 2): 0.7990}
    records = [{"method": m, "partition": "Dir(0.1)", "seed": s, "status": "ok", "history": [{"round": 0, "val_acc": v}]}
               for (m, s), v in values.items()]
    summary = summarize(records, methods=["FedAvg", "FedMut"], partitions=["Dir(0.1)"], seeds=[0, 1, 2], last=1,
                        gain=("FedMut", "FedAvg"))
    differences = [0.7525 - 0.70, 0.8455 - 0.80, 0.7990 - 0.75]
    mean, std = sum(differences) / 3, sample_std(differences)
    half = T975[2] * std / math.sqrt(3)
    assert summary["gain"]["partitions"]["Dir(0.1)"]["ci95"] == pytest.approx((mean - half, mean + half), abs=1e-12)
    assert format_table(summary).splitlines()[-1] == (
        f"| FedMut − FedAvg | {100 * mean:+.2f} ± {100 * std:.2f} (n = 3; 95 % CI [{100 * (mean - half):+.2f},"
        f" {100 * (mean + half):+.2f}]) |")
    assert f"{100 * std:.2f}" == "0.35"  # the sample std, not the population std (0.29)


def test_no_interval_from_one_pair_and_a_named_confidence_error():
    assert paired_interval([0.05]) is None
    with pytest.raises(ValueError, match=r"`confidence` in \(0, 1\), got 95"):
        paired_interval([0.1, 0.2], confidence=95)
