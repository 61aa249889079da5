"""FedMR's two stages at their boundary rounds, as the authors' ``Algorithm/Training_FedMR.py`` (HMHelloWorld/FedMR).

There, after round ``iter`` (from 0) is aggregated, ``if iter >= args.first_stage_bound`` the trained models
are recombined for round ``iter + 1``, else every slot restarts from the global model. So with bound ``b``
rounds ``0 .. b`` start from the global model and round ``b + 1`` is the first to start from recombined models.
"""

from __future__ import annotations

import pytest
import torch
from test_baselines_quadratic import Recorder, fit

from lightning_fedmut.callbacks import FedMR

ROUNDS, SLOTS = 4, 3


@pytest.mark.parametrize("bound", [1, 2])  # bound 0 recombined after round 0 before too
def test_recombination_starts_after_round_first_stage_bound_as_in_the_reference(bound):
    recorder = Recorder()
    _, result = fit(callbacks=[FedMR(first_stage_bound=bound), recorder], rounds=ROUNDS)
    assert [row["fedmr/recombined"] for row in result.history] == [float(t >= bound) for t in range(ROUNDS)]
    for t in range(1, ROUNDS):
        trained = torch.stack([recorder.trained[(t - 1, s)] for s in range(SLOTS)])
        starts = torch.stack([recorder.starts[(t, s)] for s in range(SLOTS)])
        if t - 1 < bound:  # round t - 1 in the first stage: every slot of round t starts from the global model
            assert all(torch.equal(starts[s], trained.mean(0)) for s in range(SLOTS)), (bound, t)
        else:  # recombined: each key's values are the trained ones, re-dealt, and no start is the mean
            for j in range(2):
                assert sorted(starts[:, j].tolist()) == sorted(trained[:, j].tolist()), (bound, t, j)
            assert not any(torch.equal(starts[s], trained.mean(0)) for s in range(SLOTS)), (bound, t)


def test_bound_two_keeps_round_two_on_the_global_model():
    # the defect this pins: bound 2 used to recombine after round 1 (the reference's bound 1)
    recorder = Recorder()
    _, result = fit(callbacks=[FedMR(first_stage_bound=2), recorder], rounds=3)
    glb_after_1 = torch.stack([recorder.trained[(1, s)] for s in range(SLOTS)]).mean(0)
    assert all(torch.equal(recorder.starts[(2, s)], glb_after_1) for s in range(SLOTS))
    assert [row["fedmr/recombined"] for row in result.history] == [0.0, 0.0, 1.0]
