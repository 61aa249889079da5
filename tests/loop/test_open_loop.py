"""The loop's seams: samplers, executors, tasks and results, per-client state, per-task Lightning callbacks."""

from __future__ import annotations

import pytest
import torch
from helpers import Crash, Recorder, TinyModule, state_of
from lightning.pytorch import Callback
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedCallback, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.callbacks.base import FederatedCallback as BaseCallback
from lightning_fedmut.data import partition_iid
from lightning_fedmut.execution import ClientExecutor, ClientTraining, SequentialExecutor, TaskHooks
from lightning_fedmut.sampling import ClientSampler, UniformSampler
from lightning_fedmut.tasks import ClientResult
from lightning_fedmut.utilities.seed import CLIENT_STREAM, derive_seed


def _clients(train, n=8):
    return make_clients(train, partition_iid(len(train), n, seed=0), batch_size=16)


# ---------------------------------------------------------------- samplers
class RoundRobin(ClientSampler):
    """Round r trains clients r*k .. r*k+k-1 (mod n), from a cursor it checkpoints."""

    def __init__(self):
        self.cursor = 0
        self.calls = []

    def setup(self, seed, client_states=None):
        self.cursor = 0

    def sample(self, round, clients, k):
        self.calls.append(round)
        picked = [clients[(self.cursor + i) % len(clients)] for i in range(k)]
        self.cursor = (self.cursor + k) % len(clients)
        return picked

    def state_dict(self):
        return {"cursor": self.cursor}

    def load_state_dict(self, state_dict):
        self.cursor = state_dict["cursor"]


def _round_robin_run(synthetic, tmp_path=None, callbacks=(), ckpt_path=None):
    train, val = synthetic
    torch.manual_seed(0)
    model = TinyModule()
    loop = FederatedLoop(rounds=5, clients_per_round=3, local_steps=1, sampler=RoundRobin(), seed=0,
                         aggregator=FedAvg(weighted=False), callbacks=[MutationCallback(radius=1.0), *callbacks],
                         enable_progress_bar=False, checkpoint_dir=None if tmp_path is None else tmp_path)
    result = loop.fit(model, _clients(train), val_dataloaders=DataLoader(val, batch_size=60), ckpt_path=ckpt_path)
    return model, result


def test_custom_sampler_decides_who_trains_and_resumes_exactly(synthetic, tmp_path):
    model, result = _round_robin_run(synthetic)
    trained = [[row["client_id"] for row in result.client_history if row["round"] == r] for r in range(5)]
    assert trained == [[0, 1, 2], [3, 4, 5], [6, 7, 0], [1, 2, 3], [4, 5, 6]]
    assert result.history[0]["clients/trained"] == 3
    with pytest.raises(RuntimeError, match="crash at round 3"):
        _round_robin_run(synthetic, tmp_path, callbacks=[Crash(3)])
    resumed_model, resumed = _round_robin_run(synthetic, tmp_path, ckpt_path="last")
    assert resumed.client_history == result.client_history and resumed.history == result.history
    expected = state_of(model)
    assert all(torch.equal(v, expected[k]) for k, v in state_of(resumed_model).items())


def test_uniform_sampler_is_todays_randperm_draw(synthetic):
    train, _ = synthetic
    clients = _clients(train)
    sampler = UniformSampler()
    sampler.setup(seed=5)
    reference = torch.Generator().manual_seed(derive_seed(5, 0))  # SAMPLING_STREAM
    for r in range(4):
        expected = torch.randperm(len(clients), generator=reference)[:3].tolist()
        assert [c.id for c in sampler.sample(r, clients, 3)] == expected


@pytest.mark.parametrize("bad", ["short", "duplicate", "stranger"])
def test_a_sampler_returning_wrong_clients_is_refused(synthetic, bad):
    train, _ = synthetic
    clients = _clients(train)
    stranger = _clients(train)[0]

    class Bad(ClientSampler):
        def sample(self, round, clients, k):
            return {"short": clients[:k - 1], "duplicate": [clients[0]] * k,
                    "stranger": [stranger, *clients[1:k]]}[bad]

    loop = FederatedLoop(rounds=1, clients_per_round=3, local_steps=1, sampler=Bad(), enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"Bad.sample\(\) must return `clients_per_round`=3 distinct clients"):
        loop.fit(TinyModule(), clients)


# ------------------------------------------------------------- aggregators
def _states(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(5, 7, generator=g), "b": torch.randn(7, generator=g) * 1e-3,
             "count": torch.tensor(3 * i + 1)} for i in range(n)]


# ---------------------------------------------------------- per-task callbacks
class Probe(Callback):
    """A Lightning callback built for one task: records the task it was made for and what its Trainer saw."""

    def __init__(self, records, round_index, client_id):
        self.records, self.round, self.client_id = records, round_index, client_id
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1

    def on_train_end(self, trainer, pl_module):
        self.records.append((self.round, self.client_id, self.batches, trainer.max_epochs))


class AddProbe(FederatedCallback):
    def __init__(self):
        self.records = []

    def on_client_fit_start(self, loop, module, task):
        assert task.round == loop.round
        task.callbacks.append(Probe(self.records, task.round, task.client.id))


def test_a_callback_adds_a_lightning_callback_to_each_client_trainer(synthetic):
    train, _ = synthetic
    add = AddProbe()
    clients = make_clients(train, partition_iid(len(train), 6, seed=0), batch_size=16)  # 40 examples: 3 batches
    result = FederatedLoop(rounds=3, clients_per_round=2, local_epochs=2, callbacks=[add], seed=1,
                           enable_progress_bar=False).fit(TinyModule(), clients)
    assert len(result.client_history) == 6 and not result.failures
    assert add.records == [(row["round"], row["client_id"], 2 * 3, 2) for row in result.client_history]


# ------------------------------------------------------------ per-client state
class CountVisits(FederatedCallback):
    """Client state: how often the client trained, the last round, and a tensor of its trained bias."""

    def __init__(self):
        self.received = {}
        self.trained = {}

    def on_client_fit_start(self, loop, module, task):
        self.received[(task.round, task.client.id)] = {
            k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in task.client_state.items()}

    def on_client_fit_end(self, loop, module, result):
        previous = result.task.client_state
        bias = result.state["net.2.bias"].detach().clone()
        self.trained[(result.task.round, result.client.id)] = bias
        result.client_state = {"visits": previous.get("visits", 0) + 1, "last_round": result.task.round,
                               "bias": bias}


def _state_run(synthetic, tmp_path, callbacks, ckpt_path=None):
    train, _ = synthetic
    torch.manual_seed(0)
    visits = CountVisits()
    loop = FederatedLoop(rounds=6, clients_per_round=3, local_steps=1, callbacks=[visits, *callbacks], seed=2,
                         enable_progress_bar=False, checkpoint_dir=tmp_path)
    return visits, loop.fit(TinyModule(), _clients(train, n=5), ckpt_path=ckpt_path)


def _same(a, b):
    return a.keys() == b.keys() and all(
        torch.equal(a[k], v) if isinstance(v, torch.Tensor) else a[k] == v for k, v in b.items())


def test_client_state_written_in_a_round_reaches_the_clients_next_task_across_a_resume(synthetic, tmp_path):
    visits, result = _state_run(synthetic, tmp_path / "a", [])
    last: dict = {}  # client -> (visits so far, round of the last visit)
    for r in range(6):
        for cid in [row["client_id"] for row in result.client_history if row["round"] == r]:
            received = visits.received[(r, cid)]
            if cid not in last:
                assert received == {}
            else:
                count, previous = last[cid]
                assert received["visits"] == count and received["last_round"] == previous
                assert torch.equal(received["bias"], visits.trained[(previous, cid)])
            last[cid] = (received.get("visits", 0) + 1, r)
    assert sum(count for count, _ in last.values()) == 6 * 3
    # crash in round 4, resume: the resumed run hands every client the same state, tensors included
    with pytest.raises(RuntimeError, match="crash at round 4"):
        _state_run(synthetic, tmp_path / "b", [Crash(4)])
    resumed, resumed_result = _state_run(synthetic, tmp_path / "b", [], ckpt_path="last")
    assert resumed_result.client_history == result.client_history
    later = {key: value for key, value in visits.received.items() if key[0] >= 4}
    assert set(resumed.received) == set(later)
    assert any(value for value in later.values())  # some client of rounds 4-5 trained before the crash
    assert all(_same(resumed.received[key], value) for key, value in later.items())


# ---------------------------------------------------------------- executors
class RecordingExecutor(ClientExecutor):
    """Trains nothing: each client's "trained" state is its start state plus (slot + 1), in new tensors."""

    def __init__(self):
        self.tasks = []
        self.training = None

    def setup(self, module, training):
        self.training = training

    def run(self, tasks, hooks):
        for task in tasks:
            start = {k: v.detach().clone() for k, v in task.start_state.items()}
            task.start_state = start
            hooks.on_task_start(task)
            self.tasks.append(task)
            state = {k: v + (task.slot + 1) if v.is_floating_point() else v for k, v in start.items()}
            result = ClientResult(task=task, num_examples=task.client.num_examples, state=state,
                                  metrics={"train_loss": float(task.slot)})
            hooks.on_task_end(result)
            yield result


def test_the_loop_talks_to_executors_only_through_tasks_and_results(synthetic):
    train, _ = synthetic
    clients = _clients(train)
    torch.manual_seed(0)
    model = TinyModule()
    before = {k: v.double() for k, v in state_of(model).items()}
    executor, rec = RecordingExecutor(), Recorder()
    result = FederatedLoop(rounds=2, clients_per_round=4, local_epochs=3, aggregator=FedAvg(weighted=False),
                           executor=executor, callbacks=[rec], seed=4, enable_progress_bar=False).fit(model, clients)
    assert executor.training == ClientTraining(local_epochs=3, local_steps=None, trainer_kwargs={})
    index = {c.id: i for i, c in enumerate(clients)}
    assert [(t.round, t.slot) for t in executor.tasks] == [(r, s) for r in range(2) for s in range(4)]
    for task in executor.tasks:
        assert task.seed == derive_seed(4, CLIENT_STREAM, task.round, index[task.client.id])
    # each round adds the mean of (slot + 1) over 4 slots = 2.5 to every floating entry
    for k, v in state_of(model).items():
        torch.testing.assert_close(v.double(), before[k] + 5.0, rtol=0, atol=1e-5)
    assert [row["clients/train_loss"] for row in result.history] == [1.5, 1.5]
    assert [c for c in rec.calls if c.startswith("on_client_fit_end")] == [
        f"on_client_fit_end:{r}:{s}" for r in range(2) for s in range(4)]


def test_sequential_executor_needs_setup():
    with pytest.raises(RuntimeError, match=r"run\(\) called before setup\(\)"):
        next(SequentialExecutor().run([object()], TaskHooks()))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sampler": "uniform"}, r"`sampler` to be a ClientSampler, got str"),
    ({"executor": object()}, r"`executor` to be a ClientExecutor, got object"),
    ({"client_state_store": {}}, r"`client_state_store` to be a ClientStateStore, got dict"),
    ({"checkpoint_dir": ""}, r"`checkpoint_dir` to be a folder path or None, got ''"),
])
def test_bad_plugins_are_refused(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        FederatedLoop(rounds=1, clients_per_round=1, **kwargs)


# ------------------------------------------------------------ the hook tree
def test_the_documented_hook_order_is_the_order_of_a_real_run(synthetic):
    """FederatedCallback's docstring tree lists the hooks in the order a run calls them."""
    import re

    train, val = synthetic
    rec = Recorder()
    FederatedLoop(rounds=1, clients_per_round=1, local_steps=1, callbacks=[rec], seed=0,
                  enable_progress_bar=False).fit(TinyModule(), _clients(train), val_dataloaders=DataLoader(val))
    called = []
    for call in rec.calls:
        name = call.split(":")[0]
        if name not in called:
            called.append(name)
    documented = [m for m in re.findall(r"\b(setup|teardown|on_[a-z_]+)\b", BaseCallback.__doc__)
                  if hasattr(BaseCallback, m)]
    order = []
    for name in documented:
        if name not in order and name in called:
            order.append(name)
    assert order == called
    hooks = {n for n in dir(BaseCallback) if n.startswith("on_") or n in ("setup", "teardown")}
    assert hooks <= set(documented)  # every hook appears in the tree, on_exception included
