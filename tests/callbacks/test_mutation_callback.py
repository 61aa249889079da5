"""FedMut's properties (DESIGN §2) checked on the start models the callback writes during real runs."""

import pytest
import torch
from helpers import StartModelRecorder, TinyModule, state_of
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.data import partition_iid


def _run(synthetic, k=4, rounds=3, radius=4.0, acceleration=0.0, acceleration_rounds=50, batch_norm=False,
         mutate_buffers=False, seed=0, dtype=torch.float64, clients=8, extra_callbacks=()):
    train, _ = synthetic
    torch.manual_seed(0)
    model = TinyModule(batch_norm=batch_norm).to(dtype)
    data = [(x.to(dtype), y) for x, y in train]
    ds = torch.utils.data.TensorDataset(torch.stack([d[0] for d in data]), torch.stack([d[1] for d in data]))
    cl = make_clients(ds, partition_iid(len(ds), clients, seed=0), batch_size=16)
    mut = MutationCallback(radius=radius, acceleration=acceleration, acceleration_rounds=acceleration_rounds,
                           mutate_buffers=mutate_buffers)
    rec = StartModelRecorder()
    loop = FederatedLoop(rounds=rounds, clients_per_round=k, aggregator=FedAvg(weighted=False),
                         callbacks=[mut, rec, *extra_callbacks], seed=seed)
    loop.fit(model, cl)
    return model, mut, rec


def _initial(batch_norm=False, dtype=torch.float64):
    torch.manual_seed(0)
    return state_of(TinyModule(batch_norm=batch_norm).to(dtype))


@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_start_models_follow_the_formula(synthetic, beta):
    k, radius = 4, 4.0
    _, mut, rec = _run(synthetic, k=k, acceleration=beta, acceleration_rounds=2, radius=radius)
    init = _initial()
    params = [n for n in init if "net" in n]
    for t in (1, 2):
        glb, prev = rec.globals[t - 1], (init if t == 1 else rec.globals[t - 2])
        b = beta * max(0.0, 1 - (t - 1) / 2)
        starts = [rec.starts[(t, i)] for i in range(k)]
        for key in params:
            g = glb[key] - prev[key]
            coeffs = []
            for s in starts:
                diff = s[key] - glb[key]
                # each start is w + radius * c * g with c in {1, -1 + beta_t}
                c = float((diff * g).sum() / (radius * (g * g).sum()))
                torch.testing.assert_close(s[key], glb[key] + radius * c * g, rtol=0, atol=1e-12)
                coeffs.append(round(c, 9))
            assert sorted(coeffs) == pytest.approx(sorted([1.0] * (k // 2) + [b - 1.0] * (k // 2)), abs=1e-9)
            mean = sum(s[key] for s in starts) / k
            torch.testing.assert_close(mean, glb[key] + radius * b / 2 * g, rtol=0, atol=1e-12)


def test_round_zero_starts_from_initial_model(synthetic):
    _, _, rec = _run(synthetic, k=4, rounds=1)
    init = _initial()
    for i in range(4):
        for key, v in init.items():
            assert torch.equal(rec.starts[(0, i)][key], v)


def test_odd_k_has_exactly_one_unmutated_start(synthetic):
    k = 5
    _, _, rec = _run(synthetic, k=k, rounds=2, acceleration=0.3)
    glb = rec.globals[0]
    unmutated = [i for i in range(k) if all(torch.equal(rec.starts[(1, i)][n], glb[n]) for n in glb)]
    assert unmutated == [k - 1]


def test_signs_independent_across_keys(synthetic):
    _, mut, _ = _run(synthetic, k=10, rounds=1, clients=10)
    c = mut.coefficients
    assert c.shape == (4, 10)  # four parameter tensors, buffers not mutated by default
    big = MutationCallback()
    # the table is drawn per key: rows differ
    assert any(not torch.equal(c[0], c[j]) for j in range(1, 4))
    assert big.coefficients is None


@pytest.mark.parametrize(("k", "radius"), [(4, 0.0), (1, 4.0)])
def test_radius_zero_and_single_client_equal_uniform_fedavg(synthetic, k, radius):
    train, val = synthetic
    results = []
    for callbacks in ([MutationCallback(radius=radius, acceleration=0.3)], []):
        torch.manual_seed(0)
        model = TinyModule(batch_norm=True)
        clients = make_clients(train, partition_iid(len(train), 8, seed=0), batch_size=16)
        loop = FederatedLoop(rounds=3, clients_per_round=k, aggregator=FedAvg(weighted=False), callbacks=callbacks,
                             seed=7)
        hist = loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=30)).history
        results.append((state_of(model), [h["val_acc"] for h in hist]))
    (a, acc_a), (b, acc_b) = results
    assert acc_a == acc_b
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("mutate_buffers", [False, True])
def test_buffers_mutation_switch(synthetic, mutate_buffers):
    model, mut, rec = _run(synthetic, k=4, rounds=3, batch_norm=True, mutate_buffers=mutate_buffers,
                           radius=50.0, dtype=torch.float32)
    buffers = {"net.1.running_mean", "net.1.running_var"}
    assert bool(buffers & set(mut.keys)) is mutate_buffers
    assert "net.1.num_batches_tracked" not in mut.keys
    glb = rec.globals[1]
    for i in range(4):
        start = rec.starts[(2, i)]
        assert start["net.1.num_batches_tracked"].dtype == torch.int64
        assert torch.equal(start["net.1.num_batches_tracked"], glb["net.1.num_batches_tracked"])
        same = torch.equal(start["net.1.running_var"], glb["net.1.running_var"])
        assert same is (not mutate_buffers)
        if not mutate_buffers:
            assert (start["net.1.running_var"] >= 0).all()
    if mutate_buffers:
        # the reference behaviour: a large radius drives some running variance negative
        assert any((rec.starts[(2, i)]["net.1.running_var"] < 0).any() for i in range(4))


def test_memory_does_not_grow_with_clients_per_round(synthetic):
    def held_bytes(k):
        train, _ = synthetic
        torch.manual_seed(0)
        model = TinyModule(hidden=64)
        clients = make_clients(train, partition_iid(len(train), 32, seed=0), batch_size=16)
        mut, agg = MutationCallback(), FedAvg(weighted=False)

        class Probe(StartModelRecorder):
            def on_round_end(self, loop, module):
                tensors = list(mut._delta) + list(agg._sums) + list(agg._ints)
                if mut.coefficients is not None:
                    tensors.append(mut.coefficients)
                self.bytes = sum(t.numel() * t.element_size() for t in tensors)

        probe = Probe()
        FederatedLoop(rounds=2, clients_per_round=k, local_steps=1, aggregator=agg, callbacks=[mut, probe],
                      seed=0).fit(model, clients)
        model_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
        return probe.bytes, model_bytes

    small, model_bytes = held_bytes(4)
    large, _ = held_bytes(32)
    assert small <= 2.1 * model_bytes
    # only the coefficient table (keys x K numbers) grows: under 1 kB here, against a model of ~5 kB
    assert large - small == 4 * (32 - 4) * 8


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"radius": -1.0}, ValueError, r"`radius` in \[0.0, 1000000.0\], got -1.0"),
        ({"radius": 1e300}, ValueError, r"`radius` in \[0.0, 1000000.0\], got 1e\+300"),
        ({"acceleration": 1.0}, ValueError, r"`acceleration` in \[0.0, 1.0\), got 1.0"),
        ({"acceleration": -0.1}, ValueError, r"`acceleration` in \[0.0, 1.0\), got -0.1"),
        ({"acceleration_rounds": 0}, ValueError, r"`acceleration_rounds` to be an integer >= 1, got 0"),
        ({"radius": "4"}, TypeError, r"`radius` to be a real number, got '4'"),
        ({"mutate_buffers": 1}, TypeError, r"`mutate_buffers` to be a bool"),
        ({"seed": -3}, ValueError, r"`seed` to be an integer >= 0"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MutationCallback(**kwargs)


def test_weighted_aggregator_warns(synthetic):
    train, _ = synthetic
    clients = make_clients(train, partition_iid(len(train), 4, seed=0), batch_size=16)
    with pytest.warns(UserWarning, match="FedAvg\\(weighted=False\\)"):
        FederatedLoop(rounds=1, clients_per_round=2, local_steps=1, callbacks=[MutationCallback()]).fit(
            TinyModule(), clients)
