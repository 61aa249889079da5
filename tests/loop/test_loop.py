import pytest
import torch
from helpers import NoValidationModule, Recorder, TinyDataModule, TinyModule, state_of
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from lightning_fedmut import Client, FedAvg, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.data import partition_dirichlet, partition_iid


def _clients(train, n=6, batch_size=16):
    return make_clients(train, partition_iid(len(train), n, seed=0), batch_size=batch_size)


def test_hook_order(synthetic):
    train, val = synthetic
    rec = Recorder()
    FederatedLoop(rounds=2, clients_per_round=2, local_steps=1, callbacks=[rec], seed=0).fit(
        TinyModule(), _clients(train), val_dataloaders=DataLoader(val, batch_size=30))
    expected = ["setup", "on_fit_start:0"]
    for r in range(2):
        expected += [f"on_round_start:{r}"]
        for s in range(2):
            expected += [f"on_client_fit_start:{r}:{s}", f"on_client_fit_end:{r}:{s}"]
        expected += [f"on_before_aggregate:{r}", f"on_after_aggregate:{r}", f"on_validation_start:{r}",
                     f"on_validation_end:{r}", f"on_round_end:{r}"]
    expected += ["on_fit_end:1", "teardown"]
    assert rec.calls == expected


def test_hook_order_with_exception_and_evaluate_every(synthetic):
    train, val = synthetic

    class Boom(Recorder):
        def on_round_end(self, loop, module):
            super().on_round_end(loop, module)
            if loop.round == 2:
                raise RuntimeError("boom")

    rec = Boom()
    loop = FederatedLoop(rounds=5, clients_per_round=1, local_steps=1, callbacks=[rec], evaluate_every=2, seed=0)
    with pytest.raises(RuntimeError, match="boom"):
        loop.fit(TinyModule(), _clients(train), val_dataloaders=DataLoader(val, batch_size=30))
    validated = [c for c in rec.calls if c.startswith("on_validation_start")]
    assert validated == ["on_validation_start:1"]
    assert rec.calls[-2:] == ["on_exception:2", "teardown"]


def test_history_has_validation_and_weighted_client_metrics(synthetic):
    train, val = synthetic
    parts = partition_dirichlet(train.tensors[1].numpy(), 4, alpha=0.5, min_size=5, seed=0)
    clients = make_clients(train, parts, batch_size=16)
    torch.manual_seed(0)
    model = TinyModule()
    result = FederatedLoop(rounds=3, clients_per_round=3, local_epochs=2, evaluate_every=2, seed=1).fit(
        model, clients, val_dataloaders=DataLoader(val, batch_size=60))
    assert [h["round"] for h in result.history] == [0, 1, 2]
    assert "val_acc" not in result.history[0] and "val_acc" in result.history[1] and "val_acc" in result.history[2]
    # the global model's accuracy, recomputed by hand, equals the logged one
    x, y = val.tensors
    with torch.no_grad():
        acc = (model(x).argmax(-1) == y).float().mean().item()
    assert result.history[-1]["val_acc"] == pytest.approx(acc, abs=1e-6)
    for r in range(3):
        rows = [c for c in result.client_history if c["round"] == r]
        assert len(rows) == 3 and result.history[r]["clients/trained"] == 3
        mean = sum(c["num_examples"] * c["train_loss"] for c in rows) / sum(c["num_examples"] for c in rows)
        assert result.history[r]["clients/train_loss"] == pytest.approx(mean, rel=1e-12)
        assert sorted(c["slot"] for c in rows) == [0, 1, 2]


def test_same_seed_same_weights_different_seed_differs(synthetic):
    train, _ = synthetic

    def run(seed):
        torch.manual_seed(0)
        model = TinyModule(batch_norm=True)
        clients = _clients(train)
        FederatedLoop(rounds=3, clients_per_round=3, local_epochs=1, aggregator=FedAvg(weighted=False),
                      callbacks=[MutationCallback()], seed=seed).fit(model, clients)
        return state_of(model)

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_global_rng_untouched_by_sampling_and_mutation(synthetic):
    """Client sampling and mutation draw from generators the loop and callback own."""
    train, _ = synthetic
    loop = FederatedLoop(rounds=1, clients_per_round=2, local_steps=1, seed=0)
    clients = _clients(train)
    loop.sampler.setup(seed=0)
    a = [c.id for c in loop.sampler.sample(0, clients, 2)]
    torch.manual_seed(999)
    loop.sampler.setup(seed=0)
    assert a == [c.id for c in loop.sampler.sample(0, clients, 2)]


@pytest.mark.parametrize("mutate_buffers", [False, True])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_models_with_and_without_batchnorm(synthetic, batch_norm, mutate_buffers):
    train, val = synthetic
    torch.manual_seed(0)
    model = TinyModule(batch_norm=batch_norm)
    result = FederatedLoop(rounds=3, clients_per_round=3, aggregator=FedAvg(weighted=False),
                           callbacks=[MutationCallback(mutate_buffers=mutate_buffers)], seed=0).fit(
        model, _clients(train), val_dataloaders=DataLoader(val, batch_size=60))
    state = model.state_dict()
    if batch_norm:
        assert state["net.1.num_batches_tracked"].dtype == torch.int64
        # each client does 3 steps per round (40 examples, batch 16); the maximum over clients accumulates
        assert int(state["net.1.num_batches_tracked"]) == 9
        assert (state["net.1.running_var"] >= 0).all()
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert result.history[-1]["val_acc"] > 0.5


def test_clients_with_datamodules(synthetic):
    train, val = synthetic
    parts = partition_iid(len(train), 4, seed=0)
    clients = [Client(id=f"dm{i}", data=TinyDataModule(torch.utils.data.Subset(train, p.tolist())),
                      num_examples=len(p)) for i, p in enumerate(parts)]
    torch.manual_seed(0)
    model = TinyModule()
    result = FederatedLoop(rounds=2, clients_per_round=2, seed=0).fit(
        model, clients, val_dataloaders=DataLoader(val, batch_size=60))
    assert {c["client_id"] for c in result.client_history} <= {"dm0", "dm1", "dm2", "dm3"}
    assert len(result.client_history) == 4 and "clients/train_loss" in result.history[-1]


def test_trainer_kwargs_pass_through_and_quiet_console(synthetic, capsys):
    train, val = synthetic

    class CountSteps(Callback):
        def __init__(self):
            self.steps = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.steps += 1

    counter = CountSteps()
    FederatedLoop(rounds=2, clients_per_round=3, local_steps=2,
                  trainer_kwargs={"callbacks": [counter], "gradient_clip_val": 1.0}, seed=0).fit(
        TinyModule(), _clients(train), val_dataloaders=DataLoader(val, batch_size=60))
    assert counter.steps == 2 * 3 * 2
    out = capsys.readouterr()
    assert out.out == "" and "GPU available" not in out.err and "litlogger" not in out.err


def test_fresh_optimizer_per_client(synthetic):
    train, _ = synthetic
    made = []

    class CountOptim(TinyModule):
        def configure_optimizers(self):
            opt = super().configure_optimizers()
            made.append(id(opt))
            return opt

    FederatedLoop(rounds=2, clients_per_round=3, local_steps=1, seed=0).fit(CountOptim(), _clients(train))
    # one optimizer per client per round, and the one fit's check makes (does a scheduler monitor val_*?)
    assert len(made) == 6 + 1


def test_working_copy_made_once(synthetic, monkeypatch):
    import copy

    train, _ = synthetic
    calls = []
    real = copy.deepcopy

    def counting(obj, *a, **k):
        if isinstance(obj, torch.nn.Module):
            calls.append(type(obj).__name__)
        return real(obj, *a, **k)

    monkeypatch.setattr("lightning_fedmut.execution.sequential.copy.deepcopy", counting)
    FederatedLoop(rounds=1, clients_per_round=1, local_steps=1, seed=0).fit(TinyModule(), _clients(train))
    per_fit = list(calls)
    calls.clear()
    FederatedLoop(rounds=3, clients_per_round=3, local_steps=1, seed=0).fit(TinyModule(), _clients(train))
    # the working copy, once per fit: never per client or round
    assert calls == per_fit == ["TinyModule"]


def test_csv_logger_gets_round_steps(synthetic, tmp_path):
    train, val = synthetic
    logger = CSVLogger(tmp_path, name="run")
    result = FederatedLoop(rounds=3, clients_per_round=2, local_steps=1, logger=logger, seed=0).fit(
        TinyModule(), _clients(train), val_dataloaders=DataLoader(val, batch_size=60))
    import csv

    with open(logger.experiment.metrics_file_path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert [float(r["val_acc"]) for r in rows] == pytest.approx(result.metric("val_acc"), abs=1e-6)


# --------------------------------------------------------------------------- bad input
def _bad_loop_cases():
    return [
        ({"rounds": 0, "clients_per_round": 1}, ValueError, r"`rounds` to be an integer >= 1, got 0"),
        ({"rounds": 1, "clients_per_round": 0}, ValueError, r"`clients_per_round` to be an integer >= 1, got 0"),
        ({"rounds": 1.5, "clients_per_round": 1}, TypeError, r"`rounds` to be an integer, got 1.5"),
        ({"rounds": 1, "clients_per_round": 1, "local_epochs": 0}, ValueError, r"`local_epochs`.*got 0"),
        ({"rounds": 1, "clients_per_round": 1, "evaluate_every": 0}, ValueError, r"`evaluate_every`.*got 0"),
        ({"rounds": 1, "clients_per_round": 1, "aggregator": "fedavg"}, TypeError, r"`aggregator`.*got str"),
        ({"rounds": 1, "clients_per_round": 1, "callbacks": [EarlyStopping("val_loss")]}, TypeError,
         r"EarlyStopping is a Lightning Callback: pass it .*trainer_kwargs"),
        ({"rounds": 1, "clients_per_round": 1, "callbacks": [object()]}, TypeError, r"FederatedCallback, got object"),
        ({"rounds": 1, "clients_per_round": 1, "logger": "wandb"}, TypeError, r"`logger` to be a Lightning Logger"),
        ({"rounds": 1, "clients_per_round": 1, "trainer_kwargs": {"max_epoch": 3}}, ValueError,
         r"does not take: \['max_epoch'\]"),
        ({"rounds": 1, "clients_per_round": 1, "trainer_kwargs": {"max_epochs": 3}}, ValueError,
         r"use `local_epochs` or `local_steps`"),
        ({"rounds": 1, "clients_per_round": 1, "trainer_kwargs": {"devices": 2}}, ValueError,
         r"one device; got devices=2"),
    ]


@pytest.mark.parametrize(("kwargs", "exc", "match"), _bad_loop_cases())
def test_bad_loop_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        FederatedLoop(**kwargs)


class IntOnly(TinyModule):
    def __init__(self):
        super().__init__()
        for p in self.parameters():
            p.requires_grad_(False)
        self.net = torch.nn.Module()
        self.register_buffer("count", torch.zeros(1, dtype=torch.long))


def test_bad_fit_arguments(synthetic):
    train, val = synthetic
    clients = _clients(train)
    loop = FederatedLoop(rounds=1, clients_per_round=7)
    rec = Recorder()
    with pytest.raises(ValueError, match=r"`clients_per_round` <= the number of clients \(6\), got 7"):
        FederatedLoop(rounds=1, clients_per_round=7, callbacks=[rec]).fit(TinyModule(), clients)
    assert rec.calls == []  # raised before any training or hook
    loop = FederatedLoop(rounds=1, clients_per_round=2)
    dup = [Client(id=1, data=clients[0].data), Client(id=1, data=clients[1].data)]
    with pytest.raises(ValueError, match="unique client ids, got duplicates: 1"):
        loop.fit(TinyModule(), dup)
    with pytest.raises(ValueError, match="has no `validation_step`"):
        loop.fit(NoValidationModule(), clients, val_dataloaders=DataLoader(val))
    with pytest.raises(ValueError, match="floating-point parameters"):
        loop.fit(IntOnly(), clients)
    nan_model = TinyModule()
    with torch.no_grad():
        nan_model.net[2].bias[0] = float("nan")
    with pytest.raises(ValueError, match=r"`model` to hold finite weights, got NaN or Inf in 'net.2.bias'"):
        loop.fit(nan_model, clients)
    with pytest.raises(TypeError, match="`model` to be a LightningModule, got Linear"):
        loop.fit(torch.nn.Linear(2, 2), clients)
    with pytest.raises(TypeError, match="`val_dataloaders` to be a DataLoader or a list of DataLoaders, got TensorDataset"):
        loop.fit(TinyModule(), clients, val_dataloaders=val)
    with pytest.raises(TypeError, match="every item of `clients` to be a Client, got DataLoader"):
        loop.fit(TinyModule(), [c.data for c in clients])


def test_bad_clients(synthetic):
    train, _ = synthetic
    with pytest.raises(ValueError, match="Client 'a' is empty: expected `num_examples` >= 1, got 0"):
        Client(id="a", data=DataLoader(train), num_examples=0)
    with pytest.raises(ValueError, match="yields no batch"):
        Client(id="b", data=DataLoader(torch.utils.data.Subset(train, [0, 1]), batch_size=4, drop_last=True))
    with pytest.raises(ValueError, match="pass `num_examples`"):
        Client(id="c", data=TinyDataModule(train))
    with pytest.raises(TypeError, match="DataLoader or a LightningDataModule, got list"):
        Client(id="d", data=[1, 2])


def test_skipping_redundant_metric_moves_changes_nothing(synthetic, monkeypatch):
    """quiet_lightning() skips Lightning's no-op metric moves; the run must be the same without that."""
    import contextlib

    from lightning_fedmut.data import partition_iid as iid
    from lightning_fedmut.models import DigitsCNN  # logs a torchmetrics Metric and a tensor
    from lightning_fedmut.utilities import trainer as trainer_utils

    del synthetic
    from lightning_fedmut.datasets import load_digits_split

    train, test = load_digits_split()

    def run():
        torch.manual_seed(0)
        model = DigitsCNN()
        clients = make_clients(train, iid(len(train), 20, seed=0), batch_size=50)
        result = FederatedLoop(rounds=2, clients_per_round=3, local_epochs=2, seed=0, enable_progress_bar=False).fit(
            model, clients, val_dataloaders=DataLoader(test, batch_size=500))
        return state_of(model), result.history, result.client_history

    fast = run()
    monkeypatch.setattr(trainer_utils, "_skip_redundant_metric_moves", contextlib.nullcontext)
    plain = run()
    assert fast[1] == plain[1] and fast[2] == plain[2]
    assert all(torch.equal(fast[0][k], plain[0][k]) for k in fast[0])
