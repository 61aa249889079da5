"""lightning_fedmut.analysis against references: a quadratic whose Hessian is known, finite differences and
the full Hessian of a small MLP, hand-computed losses; bit-identical modules and random states afterwards;
the callback's rounds, history and logger rows, and a run that ends where the run without it ends."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_fedmut import FedAvg, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.analysis import (
    FlatnessCallback,
    hessian_eigenvalues,
    hessian_trace,
    hessian_vector_product,
    loss_landscape_1d,
    loss_landscape_2d,
    random_direction,
    sharpness,
)
from lightning_fedmut.data import partition_iid

torch.set_num_threads(1)

EIGENVALUES = [10.0, 6.0, 3.0, 1.0, 0.5, 0.2]


# ------------------------------------------------------------------------------------------ modules
def dense_matrix(eigenvalues=EIGENVALUES, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """A = Q diag(eigenvalues) Q^T with a random orthogonal Q (float64); returns (A, Q)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T, q


class Quadratic(LightningModule):
    """loss = 1/2 vec(w)^T A vec(w), whatever the batch; training_step logs as user modules do."""

    def __init__(self, a: torch.Tensor, shape=(2, 3), seed=1):
        super().__init__()
        self.register_buffer("a", a)
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64))

    def value(self, w: torch.Tensor) -> torch.Tensor:
        w = w.reshape(-1)
        return 0.5 * w @ self.a @ w

    def training_step(self, batch, batch_idx):
        loss = self.value(self.w)
        self.log("train_loss", loss)
        return loss


QUAD_DATA = [torch.zeros(4), torch.zeros(2)]  # two batches; the quadratic ignores them


class MLP(LightningModule):
    """A small classifier; ``act`` is tanh for smooth second derivatives, ``batch_norm`` adds BatchNorm."""

    def __init__(self, features=5, hidden=7, classes=3, batch_norm=False, act=nn.Tanh, dropout=0.0):
        super().__init__()
        layers = [nn.Linear(features, hidden)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers += [act(), nn.Dropout(dropout), nn.Linear(hidden, classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.5)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def classification_data(n=40, features=5, classes=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = (torch.randn(classes, features, generator=g)[y] + torch.randn(n, features, generator=g)).to(dtype)
    return TensorDataset(x, y)


def accuracy(module, batch):
    x, y = batch
    return (module(x).argmax(-1) == y).float().mean()


def snapshot(module):
    return {name: t.detach().clone() for name, t in [*module.named_parameters(), *module.named_buffers()]}


def assert_same_state(module, before):
    after = snapshot(module)
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert after[name].dtype == value.dtype and torch.equal(after[name], value), name


# ------------------------------------------------------------------------------- quadratic: known Hessian
def test_top_eigenvalue_and_top3_match_a_known_hessian():
    a, q = dense_matrix()
    module = Quadratic(a)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # self.log outside a Trainer must not warn nor raise
        top = hessian_eigenvalues(module, QUAD_DATA, k=1, max_iter=500, tol=1e-10)
        values, vectors = hessian_eigenvalues(module, QUAD_DATA, k=3, max_iter=500, tol=1e-10,
                                              return_eigenvectors=True)
    assert top[0] == pytest.approx(10.0, rel=1e-3)
    assert values == pytest.approx([10.0, 6.0, 3.0], rel=1e-3)
    for i, vector in enumerate(vectors):  # each eigenvector is +-Q[:, i], a unit vector
        v = vector["w"].reshape(-1)
        assert abs(float(v @ q[:, i])) == pytest.approx(1.0, abs=1e-4)
        assert float(v.norm()) == pytest.approx(1.0, abs=1e-12)


def test_default_tolerance_is_within_1e3_of_the_top_eigenvalue():
    a, _ = dense_matrix()
    assert hessian_eigenvalues(Quadratic(a), QUAD_DATA)[0] == pytest.approx(10.0, rel=1e-3)


def test_trace_of_a_diagonal_hessian_is_exact():
    # Rademacher probes: z^T A z = trace(A) + sum_{i != j} z_i z_j A_ij, so every probe is exact when A is diagonal
    a = torch.diag(torch.tensor(EIGENVALUES, dtype=torch.float64))
    assert hessian_trace(Quadratic(a), QUAD_DATA) == pytest.approx(sum(EIGENVALUES), rel=1e-3)


def test_trace_of_a_dense_hessian_is_the_mean_of_its_probes_and_unbiased():
    a, _ = dense_matrix()
    m = 400
    estimate = hessian_trace(Quadratic(a), QUAD_DATA, max_iter=m, tol=0.0, seed=3)
    # the estimator's own probes, drawn again from a generator seeded the same way, in float64
    g = torch.Generator().manual_seed(3)
    probes = [(torch.randint(0, 2, (2, 3), generator=g, dtype=torch.int8) * 2 - 1).double().reshape(-1)
              for _ in range(m)]
    reference = float(np.mean([float(z @ a @ z) for z in probes]))
    assert estimate == pytest.approx(reference, rel=1e-12)
    # and it is within four standard errors of the true trace (variance 2 * sum_{i != j} A_ij^2 per probe)
    off_diagonal = float((a**2).sum() - (torch.diagonal(a) ** 2).sum())
    assert abs(estimate - sum(EIGENVALUES)) < 4 * math.sqrt(2 * off_diagonal / m)


def test_eigenvalue_not_converged_warns():
    a, _ = dense_matrix([1.0, 0.999, 0.5])
    with pytest.warns(RuntimeWarning, match="did not converge"):
        hessian_eigenvalues(Quadratic(a, shape=(3,)), QUAD_DATA, max_iter=3, tol=1e-12)


def test_landscapes_of_a_quadratic_match_the_formula():
    a, _ = dense_matrix()
    module = Quadratic(a)
    d1, d2 = random_direction(module, seed=4), random_direction(module, seed=5)
    curve = loss_landscape_1d(module, QUAD_DATA, d1, span=(-2.0, 1.0), steps=7)
    w = module.w.detach()
    assert curve["alpha"].tolist() == pytest.approx([-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0])
    expected = [float(module.value(w + t * d1["w"])) for t in curve["alpha"]]
    np.testing.assert_allclose(curve["loss"], expected, rtol=1e-12)
    surface = loss_landscape_2d(module, QUAD_DATA, (d1, d2), span=(-1.0, 1.0), steps=3)
    for j, y in enumerate(surface["y"]):
        for i, x in enumerate(surface["x"]):
            assert surface["loss"][j, i] == pytest.approx(float(module.value(w + x * d1["w"] + y * d2["w"])), rel=1e-12)


def test_sharpness_sam_and_random_match_the_formula():
    a, _ = dense_matrix()
    module = Quadratic(a)
    w = module.w.detach().reshape(-1)
    g = a @ w
    rho = 0.05
    unit = g / g.norm()
    expected = rho * float(g.norm()) + 0.5 * rho**2 * float(unit @ a @ unit)  # L(w + rho g/|g|) - L(w), exactly
    assert sharpness(module, QUAD_DATA, rho=rho) == pytest.approx(expected, rel=1e-10)
    # random: the first direction of seed s is random_direction(module, s); more directions only raise the max
    d = random_direction(module, seed=7)["w"]
    w = module.w.detach()
    one = float(module.value(w + rho * d) - module.value(w))
    first = sharpness(module, QUAD_DATA, rho=rho, method="random", num_directions=1, seed=7)
    assert first == pytest.approx(one, rel=1e-10)
    many = sharpness(module, QUAD_DATA, rho=rho, method="random", num_directions=8, seed=7)
    assert many >= one


# ----------------------------------------------------------------------------------- small MLP references
def mlp_and_batches():
    torch.manual_seed(0)
    module = MLP().double()
    data = classification_data(n=13, dtype=torch.float64)
    return module, DataLoader(data, batch_size=8)  # batches of 8 and 5: the weighting matters


def full_loss(module, loader, params=None):
    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader])
    if params is None:
        return F.cross_entropy(module(x), y)
    return F.cross_entropy(torch.func.functional_call(module, params, (x,)), y)


def test_hessian_vector_product_matches_finite_differences():
    module, loader = mlp_and_batches()
    names = [n for n, _ in module.named_parameters()]
    g = torch.Generator().manual_seed(1)
    vector = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in module.named_parameters()}
    hv = hessian_vector_product(module, loader, vector)
    eps = 1e-5

    def grad_at(sign):
        params = {n: (p.detach() + sign * eps * vector[n]).requires_grad_() for n, p in module.named_parameters()}
        return torch.autograd.grad(full_loss(module, loader, params), list(params.values()))

    plus, minus = grad_at(+1), grad_at(-1)
    for name, gp, gm in zip(names, plus, minus):
        torch.testing.assert_close(hv[name], (gp - gm) / (2 * eps), rtol=1e-6, atol=1e-9)


def test_eigenvalues_and_trace_match_the_full_hessian_of_an_mlp():
    module, loader = mlp_and_batches()
    params = {n: p.detach() for n, p in module.named_parameters()}
    shapes = {n: p.shape for n, p in params.items()}
    sizes = [p.numel() for p in params.values()]

    def flat_loss(flat):
        pieces = dict(zip(params, (t.reshape(shapes[n]) for n, t in zip(params, flat.split(sizes)))))
        return full_loss(module, loader, pieces)

    hessian = torch.autograd.functional.hessian(flat_loss, torch.cat([p.reshape(-1) for p in params.values()]))
    spectrum = torch.linalg.eigvalsh(hessian)
    by_magnitude = spectrum[spectrum.abs().argsort(descending=True)]
    values = hessian_eigenvalues(module, loader, k=2, max_iter=2000, tol=1e-10)
    np.testing.assert_allclose(values, by_magnitude[:2].numpy(), rtol=1e-3)
    # 2000 Rademacher probes: within four standard errors of the exact trace
    off_diagonal = float((hessian**2).sum() - (torch.diagonal(hessian) ** 2).sum())
    estimate = hessian_trace(module, loader, max_iter=2000, tol=0.0)
    assert abs(estimate - float(torch.trace(hessian))) < 4 * math.sqrt(2 * off_diagonal / 2000)


# -------------------------------------------------------------------------------------- directions
def test_filter_normalisation_gives_each_filter_the_norm_of_its_weights():
    torch.manual_seed(0)
    net = ConvNet()
    d = random_direction(net, seed=0)
    for name in ("conv.weight", "fc.weight"):
        w = dict(net.named_parameters())[name].detach()
        rows_d, rows_w = d[name].reshape(d[name].shape[0], -1), w.reshape(w.shape[0], -1)
        torch.testing.assert_close(rows_d.norm(dim=1), rows_w.norm(dim=1), rtol=1e-5, atol=0)
        cosine = torch.nn.functional.cosine_similarity(rows_d, rows_w, dim=1)
        assert cosine.abs().max() < 0.99  # a random direction, not the weights themselves
    for name in ("conv.bias", "bn.weight", "bn.bias", "fc.bias"):
        assert torch.count_nonzero(d[name]) == 0, name
    kept = random_direction(net, seed=0, ignore_bias_bn=False)
    for name in ("conv.bias", "bn.weight", "bn.bias", "fc.bias"):
        w = dict(net.named_parameters())[name].detach()
        assert float(kept[name].norm()) == pytest.approx(float(w.norm()), rel=1e-5), name
    torch.testing.assert_close(kept["conv.weight"], d["conv.weight"], rtol=0, atol=0)  # the option changes no draw


def test_direction_skips_frozen_parameters_and_checks_its_input():
    net = ConvNet()
    net.fc.requires_grad_(False)
    assert sorted(random_direction(net, seed=0)) == ["bn.bias", "bn.weight", "conv.bias", "conv.weight"]
    with pytest.raises(ValueError, match=r"Expected `seed` to be an integer >= 0, got -1\."):
        random_direction(net, seed=-1)
    with pytest.raises(TypeError, match="Expected `module`"):
        random_direction("net", seed=0)


# --------------------------------------------------------------------------- the module is left as it was
def bn_mlp_and_loader():
    torch.manual_seed(0)
    module = MLP(batch_norm=True, act=nn.ReLU, dropout=0.2)
    with torch.no_grad():  # running statistics that are not the defaults
        module.net[1].running_mean.uniform_(-1, 1)
        module.net[1].running_var.uniform_(0.5, 2)
        module.net[1].num_batches_tracked.fill_(7)
    module.train()
    module.net[2].eval()  # one submodule in another mode: every mode must come back
    loader = DataLoader(classification_data(n=30), batch_size=8, shuffle=True)  # shuffling draws from the global RNG
    return module, loader


CALLS = {
    "landscape_1d": lambda m, dl: loss_landscape_1d(m, dl, steps=5, metric_fn=accuracy),
    "landscape_1d_recompute_bn": lambda m, dl: loss_landscape_1d(m, dl, steps=5, recompute_bn=True),
    "landscape_2d": lambda m, dl: loss_landscape_2d(m, dl, steps=3, recompute_bn=True),
    "hessian_eigenvalues": lambda m, dl: hessian_eigenvalues(m, dl, k=2, max_iter=5),
    "hessian_trace": lambda m, dl: hessian_trace(m, dl, max_iter=12),
    "sharpness_sam": lambda m, dl: sharpness(m, dl),
    "sharpness_random": lambda m, dl: sharpness(m, dl, method="random", num_directions=3),
    "hessian_vector_product": lambda m, dl: hessian_vector_product(m, dl, random_direction(m, seed=0)),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_analysis_leaves_parameters_buffers_modes_and_random_state_unchanged(name):
    module, loader = bn_mlp_and_loader()
    before = snapshot(module)
    modes = [m.training for m in module.modules()]
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.filterwarnings("ignore", "hessian_eigenvalues: eigenvalue", RuntimeWarning)
        CALLS[name](module, loader)
    assert_same_state(module, before)
    assert [m.training for m in module.modules()] == modes
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]
    assert all(p.grad is None for p in module.parameters())


def test_restored_even_when_the_loss_raises():
    module, loader = bn_mlp_and_loader()
    before = snapshot(module)
    calls = []

    def failing(m, batch):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("boom")
        return F.cross_entropy(m(batch[0]), batch[1])

    with pytest.raises(RuntimeError, match="boom"):
        loss_landscape_1d(module, loader, steps=5, loss_fn=failing, recompute_bn=True)
    assert_same_state(module, before)
    assert module.training


def test_curve_through_the_model_equals_its_loss_at_zero():
    module, loader = bn_mlp_and_loader()
    fixed = DataLoader(loader.dataset, batch_size=8)
    curve = loss_landscape_1d(module, fixed, steps=21, metric_fn=accuracy)
    assert curve["alpha"][10] == 0.0
    module.eval()
    with torch.no_grad():  # the model's own loss and accuracy, weighted by batch size, by hand
        loss = sum(F.cross_entropy(module(x), y, reduction="sum").item() for x, y in fixed) / 30
        acc = sum((module(x).argmax(-1) == y).sum().item() for x, y in fixed) / 30
    assert curve["loss"][10] == pytest.approx(loss, rel=1e-6)
    assert curve["metric"][10] == pytest.approx(acc, rel=1e-12)
    assert curve["loss"].min() <= curve["loss"][10]  # a point of the curve, not a fit through it


def test_recompute_bn_measures_with_the_statistics_of_the_data():
    module, loader = bn_mlp_and_loader()
    fixed = DataLoader(loader.dataset, batch_size=30)
    curve = loss_landscape_1d(module, fixed, span=(-1.0, 1.0), steps=3, recompute_bn=True)
    # by hand: one batch of all 30 examples, so the cumulative running statistics are that batch's statistics
    reference = MLP(batch_norm=True, act=nn.ReLU, dropout=0.2)
    reference.load_state_dict(module.state_dict())
    x, y = next(iter(fixed))
    hidden = reference.net[0](x)
    reference.net[1].running_mean.copy_(hidden.mean(0).detach())
    reference.net[1].running_var.copy_(hidden.var(0, unbiased=True).detach())
    reference.eval()
    with torch.no_grad():
        expected = F.cross_entropy(reference(x), y).item()
    assert curve["loss"][1] == pytest.approx(expected, rel=1e-5)


def test_same_seed_same_numbers_and_seeds_matter():
    module, loader = bn_mlp_and_loader()
    for call in (
        lambda s: loss_landscape_1d(module, loader, steps=5, seed=s)["loss"].tolist(),
        lambda s: loss_landscape_2d(module, loader, steps=3, seed=s)["loss"].tolist(),
        lambda s: hessian_eigenvalues(module, loader, k=2, max_iter=4, tol=0.0, seed=s),
        lambda s: hessian_trace(module, loader, max_iter=12, seed=s),
        lambda s: sharpness(module, loader, method="random", num_directions=3, seed=s),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            first, again, other = call(0), call(0), call(1)
        assert first == again
        assert first != other
    d = random_direction(module, seed=2)
    assert all(torch.equal(d[n], t) for n, t in random_direction(module, seed=2).items())


def test_runs_on_the_module_device():
    module, loader = bn_mlp_and_loader()
    module = module.double()  # the batches are float32: loss_fn casts, and the analysis runs in float64
    def cast(m, batch):
        return F.cross_entropy(m(batch[0].to(m.net[0].weight.dtype)), batch[1])

    hv = hessian_vector_product(module, loader, random_direction(module, seed=0), loss_fn=cast)
    assert all(t.dtype == torch.float64 for t in hv.values())


def test_bad_arguments_fail_before_any_work():
    module, loader = bn_mlp_and_loader()
    with pytest.raises(ValueError, match=r"Expected `rho` to be a float > 0, got -1\."):
        sharpness(module, loader, rho=-1)
    with pytest.raises(ValueError, match=r"Expected `method` to be one of \['sam', 'random'\], got 'adam'\."):
        sharpness(module, loader, method="adam")
    with pytest.raises(ValueError, match=r"Expected `k` to be an integer >= 1, got 0\."):
        hessian_eigenvalues(module, loader, k=0)
    with pytest.raises(ValueError, match=r"Expected `k` to be at most the number of trainable weights"):
        hessian_eigenvalues(module, loader, k=10**6)
    with pytest.raises(ValueError, match=r"Expected `tol` to be a finite float >= 0, got -0.1\."):
        hessian_trace(module, loader, tol=-0.1)
    with pytest.raises(ValueError, match=r"Expected `steps` to be an integer >= 2, got 1\."):
        loss_landscape_1d(module, loader, steps=1)
    with pytest.raises(ValueError, match=r"Expected `span` to be a pair \(low, high\)"):
        loss_landscape_1d(module, loader, span=(1.0, -1.0))
    with pytest.raises(ValueError, match=r"Expected `direction` to hold one tensor per trainable parameter"):
        loss_landscape_1d(module, loader, direction={"net.0.weight": torch.zeros(7, 5)})
    with pytest.raises(ValueError, match=r"Expected `direction\['net.0.bias'\]` to be a tensor of shape \(7,\)"):
        loss_landscape_1d(module, loader, direction={**random_direction(module), "net.0.bias": torch.zeros(3)})
    with pytest.raises(TypeError, match="Expected `dataloader` to be a DataLoader"):
        hessian_trace(module, "data")
    with pytest.raises(ValueError, match="Expected `dataloader` to yield at least one batch, got none"):
        hessian_trace(module, [])
    with pytest.raises(TypeError, match="has no `training_step`"):
        sharpness(nn.Linear(2, 2), [torch.zeros(1, 2)])
    with pytest.raises(TypeError, match="to return a scalar floating-point loss tensor"):
        sharpness(module, loader, loss_fn=lambda m, b: m(b[0]))
    assert module.training


# ----------------------------------------------------------------------------------------- the callback
class RecordingLogger(Logger):
    def __init__(self):
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))


def federated_run(callbacks, logger=None, rounds=4):
    train, val = classification_data(n=96, seed=0), classification_data(n=30, seed=1)
    clients = make_clients(train, partition_iid(len(train), num_clients=4, seed=0), batch_size=8)
    torch.manual_seed(0)
    model = MLP(batch_norm=True, act=nn.ReLU, dropout=0.1)
    loop = FederatedLoop(rounds=rounds, clients_per_round=2, local_epochs=1, aggregator=FedAvg(weighted=False),
                         callbacks=[MutationCallback(radius=1.0), *callbacks], logger=logger,
                         enable_progress_bar=False, seed=0)
    result = loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=30))
    return model, result


FLAT_DATA = DataLoader(classification_data(n=24, seed=2), batch_size=12, shuffle=True)


def test_callback_logs_at_its_rounds_into_history_and_logger_and_changes_nothing():
    logger = RecordingLogger()
    metrics = ("hessian_top", "hessian_trace", "sharpness", "loss")
    callback = FlatnessCallback(every_n_rounds=2, data=FLAT_DATA, metrics=metrics, max_iter=8, tol=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # max_iter=8 need not converge
        model, result = federated_run([callback], logger)
        plain_model, plain = federated_run([])
    keys = [f"flatness/{m}" for m in metrics]
    measured = [row["round"] for row in result.history if any(k in row for k in keys)]
    assert measured == [1, 3]
    for row in result.history:
        if row["round"] in (1, 3):
            assert all(isinstance(row[k], float) and math.isfinite(row[k]) for k in keys)
    logged = {step: m for step, m in logger.rows if any(k in m for k in keys)}
    assert sorted(logged) == [1, 3]
    rows = {row["round"]: row for row in result.history}
    assert all(logged[r][k] == rows[r][k] for r in (1, 3) for k in keys)
    # the figures of the last round are those of the final global model, measured directly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        direct = callback.measure(model)
    assert {f"flatness/{k}": v for k, v in direct.items()} == {k: result.history[-1][k] for k in keys}
    # and the run is bit for bit the run without the callback
    assert_same_state(model, snapshot(plain_model))
    for with_cb, without in zip(result.history, plain.history):
        assert {k: v for k, v in with_cb.items() if not k.startswith("flatness/")} == without


def test_callback_checks_its_arguments():
    with pytest.raises(ValueError, match=r"Expected `every_n_rounds` to be an integer >= 1, got 0\."):
        FlatnessCallback(every_n_rounds=0, data=FLAT_DATA)
    with pytest.raises(ValueError, match=r"Expected `rho` to be a float > 0, got 0\."):
        FlatnessCallback(every_n_rounds=1, data=FLAT_DATA, rho=0)
    with pytest.raises(ValueError, match=r"Expected `metrics` to name each figure once"):
        FlatnessCallback(every_n_rounds=1, data=FLAT_DATA, metrics=("loss", "loss"))
    with pytest.raises(ValueError, match=r"Expected `metrics` to be a non-empty list"):
        FlatnessCallback(every_n_rounds=1, data=FLAT_DATA, metrics="loss")
    with pytest.raises(TypeError, match=r"Expected `dataloader` to be a DataLoader"):
        FlatnessCallback(every_n_rounds=1, data=None)
    with pytest.raises(ValueError, match=r"Expected `sharpness_method` to be one of"):
        FlatnessCallback(every_n_rounds=1, data=FLAT_DATA, sharpness_method="max")
