"""The federation policy's guarantees for every registered method: frozen entries bitwise unchanged, local entries
per client, kept across rounds, across workers and across a resume."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import Crash, TinyModule, make_synthetic, state_of
from torch.utils.data import DataLoader

from lightning_fedmut import FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut.algorithms import build_algorithm, names
from lightning_fedmut.data import partition_iid
from lightning_fedmut.federation import FederationPolicy, local_key

FROZEN = ["net.0.weight", "net.0.bias"]
HEAD = ["net.3.weight", "net.3.bias"]
#: the arguments each method needs on TinyModule (its head is ``net.3``); every other method takes its defaults
ARGS = {"FedPer": {"head": "net.3"}, "FedRep": {"head": "net.3", "head_epochs": 1}, "FedGen": {"head": "net.3"},
        "ClusteredSampling": {}}
#: the local epochs each method needs (FedRep alternates head and body epochs)
EPOCHS = {"FedRep": 2}
#: the entries each method keeps local with TinyModule(batch_norm=True)
LOCAL = {"FedBN": ["net.1.weight", "net.1.bias", "net.1.running_mean", "net.1.running_var"], "FedPer": HEAD,
         "FedRep": HEAD}


class Starts(FederatedCallback):
    """Records each client's start and trained values of some entries, per round."""

    def __init__(self, keys):
        self.keys, self.starts, self.ends = keys, {}, {}

    def on_client_fit_start(self, loop, module, task):
        self.starts[(task.round, task.client.id)] = {k: task.start_state[k].detach().clone() for k in self.keys}

    def on_client_fit_end(self, loop, module, result):
        self.ends[(result.task.round, result.client.id)] = {k: result.state[k].detach().clone() for k in self.keys}


def run(method, tmp_path=None, ckpt_path=None, workers=None, extra=(), rounds=3, federation=None):
    train, val = make_synthetic()
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True, momentum=0.5)
    clients = make_clients(train, partition_iid(len(train), 5, seed=0), batch_size=16)
    loop = FederatedLoop(rounds=rounds, clients_per_round=3, local_epochs=EPOCHS.get(method, 1), seed=2,
                         enable_progress_bar=False, callbacks=list(extra), workers=workers,
                         algorithm=build_algorithm(method, ARGS.get(method, {})), federation=federation,
                         checkpoint_dir=tmp_path)
    result = loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=60), ckpt_path=ckpt_path)
    return model, clients, loop, result


def stored(loop, clients, keys):
    return {c.id: {k: loop.client_states.get(c.id).get(local_key(k)) for k in keys} for c in clients}


def frozen_entries_stand(method, workers):
    torch.manual_seed(0)
    initial = state_of(TinyModule(batch_norm=True))
    model, _, loop, _ = run(method, workers=workers, federation=FederationPolicy(frozen=["net.0.*"]))
    final = state_of(model)
    assert sorted(loop._frozen & set(FROZEN)) == sorted(FROZEN)  # the method's own policy, extended
    for key in FROZEN:
        assert torch.equal(final[key], initial[key]), key
    moved = [k for k in final if k not in FROZEN and final[k].is_floating_point()
             and not torch.equal(final[k], initial[k])]
    assert moved, "the federated entries must move for this check to mean anything"
    for key in LOCAL.get(method, []):  # the global copy of a local entry is never written
        assert torch.equal(final[key], initial[key]), key


@pytest.mark.parametrize("method", names())
def test_frozen_entries_are_bitwise_unchanged_by_every_registered_method(method):
    frozen_entries_stand(method, workers=None)


@pytest.mark.slow
@pytest.mark.parametrize("method", names())
def test_frozen_entries_are_bitwise_unchanged_by_every_registered_method_with_two_workers(method):
    frozen_entries_stand(method, workers=2)


def local_entries_are_per_client_and_persist(method, workers):
    keys = LOCAL[method]
    starts = Starts(keys)
    _, clients, loop, _ = run(method, workers=workers, rounds=4, extra=[starts])
    ends, own = starts.ends, stored(loop, clients, keys)
    trained = sorted({c for _, c in ends})
    for client in trained:  # the store holds what the client trained last
        last = max(r for r, c in ends if c == client)
        assert all(torch.equal(own[client][k], ends[(last, client)][k]) for k in keys)
    rounds_of = {c: sorted(r for r, cc in ends if cc == c) for c in trained}
    again = [c for c, rounds in rounds_of.items() if len(rounds) > 1]
    assert again, "some client must train twice for this check"
    for client in again:  # its next round starts from its own entries
        for before, after in itertools.pairwise(rounds_of[client]):
            assert all(torch.equal(starts.starts[(after, client)][k], ends[(before, client)][k]) for k in keys)
    values = {c: torch.cat([own[c][k].flatten() for k in keys]) for c in trained}
    distinct = {tuple(v.tolist()) for v in values.values()}
    assert len(distinct) == len(trained)  # every client's entries are its own


@pytest.mark.parametrize("method", sorted(LOCAL))
def test_local_entries_differ_per_client_and_persist_across_rounds(method):
    local_entries_are_per_client_and_persist(method, workers=None)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(LOCAL))
def test_local_entries_with_two_workers_are_the_one_process_ones(method):
    # a callback sees the clients its own worker trains: the one-process run is checked above, this one against it
    keys = LOCAL[method]
    model1, clients, one, r1 = run(method, rounds=4)
    model2, _, two, r2 = run(method, rounds=4, workers=2)
    assert r1.history == r2.history
    assert all(torch.equal(a, b) for a, b in zip(state_of(model1).values(), state_of(model2).values()))
    expected, found = stored(one, clients, keys), stored(two, clients, keys)
    assert sum(v[keys[0]] is not None for v in expected.values()) > 1
    for c in expected:
        for k in keys:
            assert (expected[c][k] is None and found[c][k] is None) or torch.equal(expected[c][k], found[c][k])


def resume_keeps_local_entries(method, tmp_path, workers):
    keys = LOCAL[method]
    ref_model, clients, reference, ref_result = run(method, rounds=4)
    with pytest.raises(RuntimeError, match="crash at round 2"):
        run(method, tmp_path, workers=workers, rounds=4, extra=[Crash(2)])
    model, _, resumed, result = run(method, tmp_path, ckpt_path="last", workers=workers, rounds=4)
    assert result.history == ref_result.history
    assert all(torch.equal(a, b) for a, b in zip(state_of(ref_model).values(), state_of(model).values()))
    expected, found = stored(reference, clients, keys), stored(resumed, clients, keys)
    assert any(v[keys[0]] is not None for v in expected.values())
    for c in expected:
        for k in keys:
            assert (expected[c][k] is None and found[c][k] is None) or torch.equal(expected[c][k], found[c][k])


@pytest.mark.parametrize("method", ["FedPer", "FedRep"])
def test_local_heads_survive_a_crash_and_resume(method, tmp_path):
    resume_keeps_local_entries(method, tmp_path, workers=None)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(LOCAL))
def test_local_entries_survive_a_crash_and_resume_with_two_workers(method, tmp_path):
    resume_keeps_local_entries(method, tmp_path, workers=2)


def test_a_methods_policy_and_the_loops_add_up_and_a_conflict_is_refused_before_training():
    class NoTraining(FederatedCallback):
        def on_client_fit_start(self, loop, module, task):
            raise AssertionError("a client trained")

    loop = FederatedLoop(rounds=1, clients_per_round=1, algorithm=build_algorithm("FedPer", {"head": "net.3"}),
                         federation=FederationPolicy(frozen=["net.0.*"]))
    assert loop.federation.hparams == {"local": ["net.3.*"], "frozen": ["net.0.*"]}
    with pytest.raises(ValueError, match=r"Expected each entry to be either local or frozen, got \['net.3.bias'\]"):
        run("FedPer", federation=FederationPolicy(frozen=["net.3.bias"]), extra=[NoTraining()])
