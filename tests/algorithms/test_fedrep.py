"""FedRep and FedPer keep the head on each client: one round checked by hand in float64; FedRep's alternation."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyModule, make_synthetic
from lightning.pytorch import Callback, LightningModule
from torch import nn
from torch.utils.data import TensorDataset

from lightning_fedmut import FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut import algorithms as algos
from lightning_fedmut.data import partition_iid
from lightning_fedmut.federation import local_key

LR = 0.1
BODY, HEAD = ["body.weight", "body.bias"], ["head.weight", "head.bias"]


class TwoLayer(LightningModule):
    """A float64 body ``Linear(2, 2)`` and head ``Linear(2, 1)``, squared error, plain SGD."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(2, 2).double()
        self.head = nn.Linear(2, 1).double()

    def loss(self, params, x, y):
        hidden = torch.tanh(F.linear(x, params["body.weight"], params["body.bias"]))
        return F.mse_loss(F.linear(hidden, params["head.weight"], params["head.bias"]), y)

    def training_step(self, batch, batch_idx):
        return self.loss(dict(self.named_parameters()), *batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 2, generator=g, dtype=torch.float64)
    y = torch.randn(10, 1, generator=g, dtype=torch.float64)
    return TensorDataset(x, y), [list(range(4)), list(range(4, 10))]  # clients of 4 and 6 examples


def one_round(algorithm, local_epochs):
    dataset, parts = data()
    model = TwoLayer()
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    clients = make_clients(dataset, parts, batch_size=10, shuffle=False)  # one full batch per epoch
    loop = FederatedLoop(rounds=1, clients_per_round=2, local_epochs=local_epochs, algorithm=algorithm,
                         enable_progress_bar=False, seed=0)
    loop.fit(model, clients)
    return model, initial, dataset, parts, loop


def step(model, params, names, dataset, part):
    """One full-batch SGD step of the parameters ``names``, the others held."""
    x, y = dataset.tensors[0][part], dataset.tensors[1][part]
    live = {k: v.clone().requires_grad_(k in names) for k, v in params.items()}
    grads = torch.autograd.grad(model.loss(live, x, y), [live[k] for k in names])
    return {**params, **{k: params[k] - LR * g for k, g in zip(names, grads)}}


def check(model, initial, loop, trained, parts):
    sizes = [len(p) for p in parts]
    for key in BODY:  # the example-weighted mean of the clients' bodies
        expected = sum(n * t[key] for n, t in zip(sizes, trained)) / sum(sizes)
        torch.testing.assert_close(model.state_dict()[key], expected, rtol=1e-13, atol=0)
    for key in HEAD:  # the global head is never written; each client keeps the head it trained
        assert torch.equal(model.state_dict()[key], initial[key])
        for cid, t in enumerate(trained):
            torch.testing.assert_close(loop.client_states.get(cid)[local_key(key)], t[key], rtol=1e-13, atol=0)


def test_fedper_one_round_by_hand():
    model, initial, dataset, parts, loop = one_round(algos.FedPer(head="head"), local_epochs=1)
    params = dict(initial)
    trained = [step(model, params, BODY + HEAD, dataset, part) for part in parts]
    check(model, initial, loop, trained, parts)


def test_fedrep_one_round_by_hand_head_epoch_then_body_epoch():
    model, initial, dataset, parts, loop = one_round(algos.FedRep(head="head", head_epochs=1), local_epochs=2)
    params = dict(initial)
    trained = [step(model, step(model, params, HEAD, dataset, part), BODY, dataset, part) for part in parts]
    check(model, initial, loop, trained, parts)
    assert all(p.requires_grad for p in model.parameters())


class EpochEnds(Callback):
    """Records the parameters at the start of training and at every epoch's end, for every client in turn."""

    def __init__(self):
        self.runs = []

    def on_train_start(self, trainer, pl_module):
        self.runs.append([{k: v.detach().clone() for k, v in pl_module.named_parameters()}])

    def on_train_epoch_end(self, trainer, pl_module):
        self.runs[-1].append({k: v.detach().clone() for k, v in pl_module.named_parameters()})


class FlagsAfterClients(FederatedCallback):
    """Records the client model's ``requires_grad`` flags after each client, also one that fails."""

    def __init__(self):
        self.flags = []

    def on_client_fit_end(self, loop, module, result):
        self.flags.append([p.requires_grad for p in loop.executor._working.parameters()])

    on_client_fit_failure = on_client_fit_end


class FailsInBodyEpoch(TinyModule):
    def training_step(self, batch, batch_idx):
        if self.current_epoch == 2 and self.trainer.global_step % 2:
            raise RuntimeError("broken batch")
        return super().training_step(batch, batch_idx)


def test_head_epochs_move_only_the_head_and_body_epochs_only_the_body_with_momentum():
    train, _ = make_synthetic()
    torch.manual_seed(0)
    model = TinyModule(momentum=0.9)
    model.net[0].bias.requires_grad_(False)  # frozen by the user: stays frozen in every phase
    ends, flags = EpochEnds(), FlagsAfterClients()
    loop = FederatedLoop(rounds=2, clients_per_round=2, local_epochs=3, seed=0, enable_progress_bar=False,
                         algorithm=algos.FedRep(head="net.2", head_epochs=2), callbacks=[flags],
                         trainer_kwargs={"callbacks": [ends]}, on_client_failure="isolate")
    loop.fit(model, make_clients(train, partition_iid(len(train), 3, seed=0), batch_size=16))
    head = {"net.2.weight", "net.2.bias"}
    assert len(ends.runs) == 4
    for run in ends.runs:
        for epoch, (before, after) in enumerate(itertools.pairwise(run)):
            moved = {k for k in before if not torch.equal(before[k], after[k])}
            assert moved == (head if epoch < 2 else {"net.0.weight"}), epoch
    assert flags.flags == [[True, False, True, True]] * 4

    broken = FailsInBodyEpoch()
    broken.net[0].bias.requires_grad_(False)
    flags = FlagsAfterClients()
    loop = FederatedLoop(rounds=1, clients_per_round=2, local_epochs=3, seed=0, enable_progress_bar=False,
                         algorithm=algos.FedRep(head="net.2", head_epochs=2), callbacks=[flags],
                         on_client_failure="isolate", min_clients_per_round=1)
    with pytest.warns(RuntimeWarning, match="broken batch"):
        loop.fit(broken, make_clients(train, partition_iid(len(train), 3, seed=0), batch_size=16))
    assert flags.flags == [[True, False, True, True]] * 2  # put back after a client that raised too


class NoTraining(FederatedCallback):
    def on_client_fit_start(self, loop, module, task):
        raise AssertionError("a client trained")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"local_epochs": 2, "local_steps": 5}, r"Expected FedRep to run with `local_epochs` \(it alternates head and"
                                            r" body by epoch\), got `local_steps`=5"),
    ({"local_epochs": 2, "head_epochs": 2}, r"Expected FedRep's `head_epochs` below the loop's `local_epochs`=2 so"
                                            r" that the body trains too, got head_epochs=2: set `local_epochs` to at"
                                            r" least 3"),
    ({"local_epochs": 1}, r"got head_epochs=0 \(all but one local epoch\): set `local_epochs` to at least 2"),
    ({"local_epochs": 2, "head": "head"}, r"Expected the `local` selector 'head\.\*' to match entries of TinyModule"),
])
def test_fedrep_refuses_what_it_cannot_run_before_training(kwargs, message):
    train, _ = make_synthetic()
    algorithm = algos.FedRep(head=kwargs.pop("head", "net.2"), head_epochs=kwargs.pop("head_epochs", None))
    loop = FederatedLoop(rounds=1, clients_per_round=1, seed=0, enable_progress_bar=False, algorithm=algorithm,
                         callbacks=[NoTraining()], **kwargs)
    with pytest.raises(ValueError, match=message):
        loop.fit(TinyModule(), make_clients(train, partition_iid(len(train), 2, seed=0), batch_size=16))
    with pytest.raises(ValueError, match=r"Expected `head_epochs` to be an integer >= 1, got 0"):
        algos.FedRep(head_epochs=0)
