"""FedAdam against numbers Flower's own ``FedAdam`` strategy produced (``tests/fixtures/flower_fedadam.json``).

The fixture was made once, in a separate environment, with::

    python3 -m venv /tmp/flwr_venv && /tmp/flwr_venv/bin/pip install flwr==1.42.0 numpy
    /tmp/flwr_venv/bin/python scripts/flower_fixtures.py

Flower computes in float64 from float64 inputs; the library gets the same float64 tensors, so the two agree
to float64 rounding (a few units in the last place of O(1) numbers: ``atol=1e-12``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lightning_fedmut.aggregators import FedAdam

FIXTURE = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "flower_fedadam.json").read_text())
KEYS = ("a", "b")


def as_state(arrays) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(a, dtype=torch.float64) for k, a in zip(KEYS, arrays)}


def run_library(aggregator: FedAdam) -> list[dict[str, torch.Tensor]]:
    current = as_state(FIXTURE["initial"])
    out = []
    for rnd in FIXTURE["rounds"]:
        aggregator.reset()
        for arrays, n in zip(rnd["clients"], rnd["num_examples"]):
            aggregator.update(SimpleNamespace(state=as_state(arrays), num_examples=n))  # type: ignore[arg-type]
        current = {k: v.clone() for k, v in aggregator.compute(current).items()}  # the loop copies it too
        out.append(current)
    return out


def flower_options(**overrides) -> FedAdam:
    h = FIXTURE["hparams"]
    kwargs = dict(server_lr=h["eta"], beta1=h["beta_1"], beta2=h["beta_2"], tau=h["tau"],
                  bias_correction="flower", initial_accumulator=0.0, weighted=True)
    kwargs.update(overrides)
    return FedAdam(**kwargs)


def test_fedadam_with_flowers_rule_matches_flower_every_round():
    assert FIXTURE["flwr_version"] == "1.42.0" and FIXTURE["strategy"] == "flwr.server.strategy.FedAdam"
    assert [r["server_round"] for r in FIXTURE["rounds"]] == list(range(1, 9))
    got = run_library(flower_options())
    for rnd, state in zip(FIXTURE["rounds"], got):
        for key, want in zip(KEYS, rnd["flower_global"]):
            torch.testing.assert_close(state[key], torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)


def test_adams_bias_correction_at_t_is_not_flowers():
    # Flower's first factor (at t + 1 = 2) is sqrt(1 - 0.99^2) / (1 - 0.9^2) = 0.7426 of Adam's (at t = 1):
    # Adam's, the meaning of `bias_correction=True`, ends 3.5e-2 away from Flower after these eight rounds
    adam = run_library(flower_options(bias_correction=True))
    flower = run_library(flower_options())
    start = as_state(FIXTURE["initial"])
    ratio = float((flower[0]["a"] - start["a"])[0] / (adam[0]["a"] - start["a"])[0])
    assert ratio == pytest.approx(math.sqrt(1 - 0.99**2) / (1 - 0.9**2) / (math.sqrt(1 - 0.99) / (1 - 0.9)), rel=1e-12)
    assert max(float((adam[-1][k] - flower[-1][k]).abs().max()) for k in KEYS) > 1e-3


@pytest.mark.parametrize("bad", ["Flower", "adam", 1, None])
def test_bias_correction_names_the_accepted_values(bad):
    with pytest.raises(ValueError, match=r"`bias_correction`.*\"flower\".*got"):
        FedAdam(bias_correction=bad)
