import itertools

import pytest
import torch
from helpers import make_result
from torch import nn

from lightning_fedmut import FedAvg


def _models(n, seed=0):
    torch.manual_seed(seed)
    models = []
    for i in range(n):
        m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        m[1].running_mean.normal_()
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].num_batches_tracked.fill_(10 * (i + 1))
        models.append(m)
    return models


@pytest.mark.parametrize("weighted", [True, False])
def test_fedavg_matches_float64_reference(weighted):
    models = _models(4)
    weights = [5, 1, 12, 3]
    agg = FedAvg(weighted=weighted)
    agg.reset()
    for m, w in zip(models, weights):
        agg.update(make_result(m.state_dict(), w))
    out = agg.compute({})
    ws = [float(w) if weighted else 1.0 for w in weights]
    for key, value in models[0].state_dict().items():
        if value.is_floating_point():
            ref = sum(w * m.state_dict()[key].double() for m, w in zip(models, ws)) / sum(ws)
            assert out[key].dtype == value.dtype
            torch.testing.assert_close(out[key].double(), ref, rtol=0, atol=1e-6)
    # integer state keeps its dtype and takes the maximum
    assert out["1.num_batches_tracked"].dtype == torch.int64
    assert int(out["1.num_batches_tracked"]) == 40


def test_fedavg_permutation_invariant():
    models = _models(4, seed=1)
    weights = [2, 3, 5, 7]
    results = []
    for order in itertools.permutations(range(4)):
        agg = FedAvg(weighted=True)
        agg.reset()
        for i in order:
            agg.update(make_result(models[i].state_dict(), weights[i]))
        results.append({k: v.clone() for k, v in agg.compute({}).items()})
    for r in results[1:]:
        for k in r:
            torch.testing.assert_close(r[k], results[0][k], rtol=0, atol=1e-6)


def test_fedavg_reset_between_rounds_and_single_client_identity():
    a, b = _models(2)
    agg = FedAvg(weighted=False)
    agg.reset()
    agg.update(make_result(a.state_dict()))
    agg.compute({})
    agg.reset()
    agg.update(make_result(b.state_dict()))
    out = agg.compute({})
    for k, v in b.state_dict().items():
        assert torch.equal(out[k], v)


def test_fedavg_errors():
    with pytest.raises(TypeError, match="`weighted`"):
        FedAvg(weighted="yes")
    agg = FedAvg()
    agg.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        agg.compute({})
    with pytest.raises(ValueError, match="weight > 0"):
        agg.update(make_result(nn.Linear(1, 1).state_dict(), 0))
