"""What is federated: local entries stay with each client, frozen ones are never touched, every method works on
the federated entries only."""

from __future__ import annotations

import pytest
import torch
from helpers import Crash, TinyModule, make_synthetic, state_of
from torch import nn
from torch.utils.data import DataLoader

from lightning_fedmut import FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut import algorithms as algos
from lightning_fedmut.data import partition_iid
from lightning_fedmut.federation import FederationPolicy, local_key

BN = ["net.1.weight", "net.1.bias", "net.1.running_mean", "net.1.running_var", "net.1.num_batches_tracked"]


class Starts(FederatedCallback):
    """Records each client's start and trained values of some entries, per round."""

    def __init__(self, keys):
        self.keys, self.starts, self.ends = keys, {}, {}

    def on_client_fit_start(self, loop, module, task):
        self.starts[(task.round, task.client.id)] = {k: task.start_state[k].detach().clone() for k in self.keys}

    def on_client_fit_end(self, loop, module, result):
        self.ends[(result.task.round, result.client.id)] = {k: result.state[k].detach().clone() for k in self.keys}


def run(tmp_path=None, ckpt_path=None, workers=None, extra=(), rounds=4, **kwargs):
    train, val = make_synthetic()
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True)
    clients = make_clients(train, partition_iid(len(train), 5, seed=0), batch_size=16)
    loop = FederatedLoop(rounds=rounds, clients_per_round=3, local_epochs=1, seed=2, enable_progress_bar=False,
                         callbacks=list(extra), workers=workers,
                         checkpoint_dir=None if tmp_path is None else tmp_path, **kwargs)
    result = loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=60), ckpt_path=ckpt_path)
    return model, clients, loop, result


def local_values(loop, clients, keys):
    return {c.id: {k: loop.client_states.get(c.id).get(local_key(k)) for k in keys} for c in clients}


def test_fedbn_keeps_batchnorm_on_each_client_and_trains_each_from_its_own():
    torch.manual_seed(0)
    initial = state_of(TinyModule(batch_norm=True))
    starts = Starts(BN)
    model, clients, loop, result = run(algorithm=algos.FedBN(), extra=[starts])
    final = state_of(model)
    assert all(torch.equal(final[k], initial[k]) for k in BN)  # the global copy is never written
    assert not torch.equal(final["net.0.weight"], initial["net.0.weight"])  # the rest is federated
    trained = sorted({c for _, c in starts.ends})
    stored = local_values(loop, clients, BN)
    for client in trained:
        last = max(r for r, c in starts.ends if c == client)
        assert all(torch.equal(stored[client][k], starts.ends[(last, client)][k]) for k in BN)
    rounds_of = {c: sorted(r for r, cc in starts.ends if cc == c) for c in trained}
    again = [c for c, rounds in rounds_of.items() if len(rounds) > 1]
    assert again, "some client must train twice for this check"
    for client in again:  # its next start is its own last trained BatchNorm, not the global one
        first, second = rounds_of[client][:2]
        assert all(torch.equal(starts.starts[(second, client)][k], starts.ends[(first, client)][k]) for k in BN)
    firsts = {c: rounds[0] for c, rounds in rounds_of.items()}
    for client, first in firsts.items():  # a client's first start is the global model's initial BatchNorm
        assert all(torch.equal(starts.starts[(first, client)][k], initial[k]) for k in BN)
    assert len({stored[c]["net.1.running_mean"].sum().item() for c in trained}) == len(trained)


@pytest.mark.parametrize("method", ["FedMut", "FedAdam", "SCAFFOLD", "FedDyn"])
def test_frozen_entries_are_bitwise_unchanged_by_every_method(method):
    torch.manual_seed(0)
    initial = state_of(TinyModule(batch_norm=True))
    algorithm = {"FedMut": lambda: algos.FedMut(radius=4.0), "FedAdam": lambda: algos.FedAdam(server_lr=0.05),
                 "SCAFFOLD": algos.SCAFFOLD, "FedDyn": algos.FedDyn}[method]()
    algorithm.federation = FederationPolicy(frozen=["net.0.*"])
    model, _, _, _ = run(algorithm=algorithm, rounds=3)
    final = state_of(model)
    assert torch.equal(final["net.0.weight"], initial["net.0.weight"])
    assert torch.equal(final["net.0.bias"], initial["net.0.bias"])
    assert not torch.equal(final["net.3.weight"], initial["net.3.weight"])


def test_fedper_keeps_the_head_local_and_fedmut_mutates_only_the_federated_entries():
    torch.manual_seed(0)
    initial = state_of(TinyModule(batch_norm=True))
    mutation = algos.FedMut(radius=4.0)
    mutation.federation = FederationPolicy(local=["net.3.*"])
    model, clients, loop, _ = run(algorithm=mutation)
    assert "net.3.weight" not in loop.callbacks[0].keys and "net.0.weight" in loop.callbacks[0].keys
    final = state_of(model)
    assert torch.equal(final["net.3.weight"], initial["net.3.weight"])
    assert any(v["net.3.weight"] is not None for v in local_values(loop, clients, ["net.3.weight"]).values())

    model, clients, loop, _ = run(algorithm=algos.FedPer(head="net.3"))
    assert torch.equal(state_of(model)["net.3.bias"], initial["net.3.bias"])


def test_local_entries_survive_a_crash_and_resume(tmp_path):
    _, clients, reference, ref_result = run(algorithm=algos.FedBN())
    with pytest.raises(RuntimeError, match="crash at round 2"):
        run(tmp_path, algorithm=algos.FedBN(), extra=[Crash(2)])
    model, _, resumed, result = run(tmp_path, ckpt_path="last", algorithm=algos.FedBN())
    assert result.history == ref_result.history
    expected, found = local_values(reference, clients, BN), local_values(resumed, clients, BN)
    for c in expected:
        for k in BN:
            assert (expected[c][k] is None and found[c][k] is None) or torch.equal(expected[c][k], found[c][k])


def test_a_resume_with_another_policy_is_refused(tmp_path):
    run(tmp_path, algorithm=algos.FedBN(), rounds=2)
    with pytest.raises(ValueError, match="federation"):
        run(tmp_path, ckpt_path="last", algorithm=algos.FedAvg(), rounds=3)


@pytest.mark.slow
def test_local_entries_with_two_workers_are_the_one_process_ones():
    model1, clients, one, r1 = run(algorithm=algos.FedBN())
    model2, _, two, r2 = run(algorithm=algos.FedBN(), workers=2)
    assert r1.history == r2.history
    assert all(torch.equal(a, b) for a, b in zip(state_of(model1).values(), state_of(model2).values()))
    expected, found = local_values(one, clients, BN), local_values(two, clients, BN)
    for c in expected:
        for k in BN:
            assert (expected[c][k] is None and found[c][k] is None) or torch.equal(expected[c][k], found[c][k])


def test_bad_selectors_are_named_before_training():
    with pytest.raises(TypeError, match=r"Expected every `local` selector to be a key pattern \(str\), an nn.Module"
                                        r" type or a callable\(key, module\), got 3"):
        FederationPolicy(local=[3])
    with pytest.raises(ValueError, match=r"Expected the `local` selector 'head\.\*' to match entries of TinyModule's"
                                         r" state_dict, got none"):
        run(federation=FederationPolicy(local=["head.*"]), extra=[Crash(0)])
    with pytest.raises(ValueError, match=r"either local or frozen, got \['net.3.bias'\]"):
        run(federation=FederationPolicy(local=["net.3.*"], frozen=["net.3.bias"]))
    with pytest.raises(TypeError, match="Expected `federation` to be a FederationPolicy, got str"):
        FederatedLoop(rounds=1, clients_per_round=1, federation="bn")
    assert FederationPolicy(local=[nn.BatchNorm1d]).hparams == {"local": ["BatchNorm1d"], "frozen": []}
