"""Declared state (``add_state``): derived reset, checkpoint and hparams; figures returned by ``metrics()``; the one
reduction of round state across workers."""
import io
import threading
import warnings

import pytest
import torch
from helpers import Crash, TinyModule, make_synthetic, state_of
from torch.utils.data import DataLoader, TensorDataset

from lightning_fedmut import FedAvg, FederatedCallback, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.aggregators.fedexp import FedExP, FedExPReport
from lightning_fedmut.aggregators.fednova import FedNova
from lightning_fedmut.aggregators.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from lightning_fedmut.analysis.callback import FlatnessCallback
from lightning_fedmut.callbacks.fedmr import FedMR
from lightning_fedmut.callbacks.fedprox import FedProx
from lightning_fedmut.callbacks.model_checkpoint import GlobalModelCheckpoint
from lightning_fedmut.callbacks.scaffold import Scaffold
from lightning_fedmut.callbacks.server_report import ServerReport
from lightning_fedmut.data import partition_iid
from lightning_fedmut.distributed.reduce import reduce_round_state
from lightning_fedmut.divergence import DivergenceMonitor
from lightning_fedmut.sampling import ClusteredSampler, UniformSampler
from lightning_fedmut.state import DeclaredState


class Counter(FederatedCallback):
    """A user callback with server state, round state and figures."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.add_state("rounds", 0)
        self.add_state("total", torch.zeros(2, dtype=torch.float64))
        self.add_state("generator", torch.Generator().manual_seed(5))
        self.add_state("draws", [])
        self.add_state("clients", 0, scope="round")

    def on_client_fit_end(self, loop, module, result):
        self.clients += 1

    def on_after_aggregate(self, loop, module):
        self.rounds += 1
        draw = torch.rand(2, generator=self.generator, dtype=torch.float64)
        self.total += draw * self.scale
        self.draws.append(float(draw[0]))

    def metrics(self):
        return {"counter/clients": float(self.clients), "counter/total": float(self.total.sum())}


class WritesRoundMetrics(FederatedCallback):
    """A user callback that writes into loop.round_metrics the documented way, and declares state."""

    def __init__(self):
        self.add_state("seen", 0)

    def on_after_aggregate(self, loop, module):
        self.seen += 1
        loop.round_metrics["user/seen"] = float(self.seen)


def test_add_state_reset_state_dict_and_load_round_trip():
    counter = Counter(scale=2.0)
    counter.rounds, counter.clients = 3, 4
    counter.total += torch.tensor([0.25, 0.5], dtype=torch.float64)
    counter.draws.append(0.5)
    expected_draw = torch.rand(1, generator=_copy_generator(counter.generator))
    counter.reset_state("round")
    assert counter.clients == 0 and counter.rounds == 3  # only the round state is reset
    saved = counter.state_dict()
    assert sorted(saved) == ["draws", "generator", "rounds", "total"]
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # plain data only
    fresh = Counter(scale=2.0)
    total = fresh.total
    fresh.load_state_dict(loaded)
    assert fresh.rounds == 3 and fresh.draws == [0.5]
    assert fresh.total is total and fresh.total.tolist() == [0.25, 0.5]  # loaded in place
    assert torch.equal(torch.rand(1, generator=fresh.generator), expected_draw)
    # the defaults are copies: a reset never hands out the same list or tensor twice
    fresh.clients = 9
    fresh.reset_state("round")
    other = Counter()
    other.draws.append(1.0)
    assert Counter().draws == [] and Counter().total.tolist() == [0.0, 0.0]


def _copy_generator(generator):
    copy = torch.Generator()
    copy.set_state(generator.get_state())
    return copy


def test_load_state_dict_names_the_missing_and_the_unexpected_key():
    counter = Counter()
    saved = counter.state_dict()
    with pytest.raises(KeyError, match=r"missing: \['rounds'\], unexpected: \[\]"):
        counter.load_state_dict({k: v for k, v in saved.items() if k != "rounds"})
    with pytest.raises(KeyError, match=r"missing: \[\], unexpected: \['extra'\]"):
        counter.load_state_dict({**saved, "extra": 1})


def test_add_state_refuses_bad_arguments_naming_them():
    counter = Counter()
    with pytest.raises(ValueError, match=r"Expected `reduce` in \[None, 'sum', 'max', 'cat'\], got 'mean'"):
        counter.add_state("x", 0, reduce="mean", scope="round")
    with pytest.raises(ValueError, match=r"Expected `scope` in \['round', 'server', 'client'\], got 'global'"):
        counter.add_state("x", 0, scope="global")
    with pytest.raises(ValueError, match=r"Expected scope='round' for a state with reduce='sum'"):
        counter.add_state("x", 0, reduce="sum")
    with pytest.raises(ValueError, match=r"reduce='cat'\) to be a list or a dict keyed by slot, got int"):
        counter.add_state("x", 0, reduce="cat", scope="round")
    with pytest.raises(ValueError, match="Expected `name` to be free, got 'state_key'"):
        counter.add_state("state_key", 0)


#: hparams of every built-in component, recorded from the code before state was declared (git 7bb2f80) with
#: ``PYTHONPATH=<that checkout> python hparams.py``, a script building the components below and printing
#: ``obj.hparams`` for each.
BEFORE = {
    'FedAvg()': {'weighted': True},
    'FedAvg(weighted=False)': {'weighted': False},
    'FedAvgM()': {'server_lr': 1.0, 'momentum': 0.9, 'weighted': False},
    'FedAvgM(server_lr=0.5, momentum=0.5, weighted=True)': {'server_lr': 0.5, 'momentum': 0.5, 'weighted': True},
    'FedAdagrad()': {'server_lr': 0.1, 'beta1': 0.9, 'tau': 0.001, 'bias_correction': False, 'initial_accumulator': None, 'weighted': False},
    'FedAdam()': {'server_lr': 0.01, 'beta1': 0.9, 'beta2': 0.99, 'tau': 0.001, 'bias_correction': False, 'initial_accumulator': None, 'weighted': False},
    'FedYogi(tau=0.01)': {'server_lr': 0.01, 'beta1': 0.9, 'beta2': 0.99, 'tau': 0.01, 'bias_correction': False, 'initial_accumulator': None, 'weighted': False},
    'FedExP()': {'epsilon': 0.001, 'weighted': False},
    'FedExP(epsilon=0.1, weighted=True)': {'epsilon': 0.1, 'weighted': True},
    'FedNova()': {'momentum': 0.0, 'weighted': True},
    'FedNova(momentum=0.9, weighted=False)': {'momentum': 0.9, 'weighted': False},
    'FedExPReport()': {},
    'MutationCallback()': {'radius': 4.0, 'acceleration': 0.3, 'acceleration_rounds': 50, 'mutate_buffers': False, 'seed': None},
    'MutationCallback(radius=2.0, seed=3)': {'radius': 2.0, 'acceleration': 0.3, 'acceleration_rounds': 50, 'mutate_buffers': False, 'seed': 3},
    'FedMR(first_stage_bound=5, seed=1)': {'first_stage_bound': 5, 'seed': 1},
    'FedProx(mu=0.1)': {'mu': 0.1},
    'Scaffold()': {'num_clients': None, 'control_weights': 'uniform', 'gradient_clip': None},
    'Scaffold(num_clients=7)': {'num_clients': 7, 'control_weights': 'uniform', 'gradient_clip': None},
    'ServerReport()': {'average_last_two': False},
    'ServerReport(average_last_two=True)': {'average_last_two': True},
    'GlobalModelCheckpoint()': {'dirpath': None, 'monitor': None, 'mode': 'min', 'save_top_k': 1, 'save_last': True, 'filename': '{round}'},
    "GlobalModelCheckpoint(dirpath='ck', monitor='val_acc', mode='max', save_top_k=2)": {'dirpath': 'ck', 'monitor': 'val_acc', 'mode': 'max', 'save_top_k': 2, 'save_last': True, 'filename': '{round}-{val_acc:.4f}'},
    'UniformSampler()': {'seed': None},
    'UniformSampler(seed=4)': {'seed': 4},
    "ClusteredSampler(similarity='L2', seed=2)": {'similarity': 'L2', 'seed': 2},
    'FlatnessCallback(1, data)': {'every_n_rounds': 1, 'metrics': ['hessian_top', 'sharpness'], 'seed': 0, 'rho': 0.05, 'sharpness_method': 'sam', 'max_iter': 100, 'tol': 0.001, 'max_batches': None},
    "FlatnessCallback(2, data, metrics=['loss', 'sharpness'], rho=0.1)": {'every_n_rounds': 2, 'metrics': ['loss', 'sharpness'], 'seed': 0, 'rho': 0.1, 'sharpness_method': 'sam', 'max_iter': 100, 'tol': 0.001, 'max_batches': None},
    'DivergenceMonitor()': {'action': 'stop', 'nonfinite_fraction': 0.5, 'patience': 3, 'loss_factor': 10.0, 'monitor': 'val_loss', 'train_monitor': 'train_loss', 'accuracy_monitor': 'val_acc', 'chance': None},
    "DivergenceMonitor(action='warn', chance=0.1)": {'action': 'warn', 'nonfinite_fraction': 0.5, 'patience': 3, 'loss_factor': 10.0, 'monitor': 'val_loss', 'train_monitor': 'train_loss', 'accuracy_monitor': 'val_acc', 'chance': 0.1},
}


def _components():
    data = DataLoader(TensorDataset(torch.zeros(4, 1), torch.zeros(4)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return {
            "FedAvg()": FedAvg(), "FedAvg(weighted=False)": FedAvg(weighted=False),
            "FedAvgM()": FedAvgM(),
            "FedAvgM(server_lr=0.5, momentum=0.5, weighted=True)": FedAvgM(server_lr=0.5, momentum=0.5, weighted=True),
            "FedAdagrad()": FedAdagrad(), "FedAdam()": FedAdam(), "FedYogi(tau=0.01)": FedYogi(tau=0.01),
            "FedExP()": FedExP(), "FedExP(epsilon=0.1, weighted=True)": FedExP(epsilon=0.1, weighted=True),
            "FedNova()": FedNova(), "FedNova(momentum=0.9, weighted=False)": FedNova(momentum=0.9, weighted=False),
            "FedExPReport()": FedExPReport(),
            "MutationCallback()": MutationCallback(),
            "MutationCallback(radius=2.0, seed=3)": MutationCallback(radius=2.0, seed=3),
            "FedMR(first_stage_bound=5, seed=1)": FedMR(first_stage_bound=5, seed=1),
            "FedProx(mu=0.1)": FedProx(mu=0.1), "Scaffold()": Scaffold(), "Scaffold(num_clients=7)": Scaffold(num_clients=7),
            "ServerReport()": ServerReport(), "ServerReport(average_last_two=True)": ServerReport(average_last_two=True),
            "GlobalModelCheckpoint()": GlobalModelCheckpoint(),
            "GlobalModelCheckpoint(dirpath='ck', monitor='val_acc', mode='max', save_top_k=2)": GlobalModelCheckpoint(
                dirpath="ck", monitor="val_acc", mode="max", save_top_k=2),
            "UniformSampler()": UniformSampler(), "UniformSampler(seed=4)": UniformSampler(seed=4),
            "ClusteredSampler(similarity='L2', seed=2)": ClusteredSampler(similarity="L2", seed=2),
            "FlatnessCallback(1, data)": FlatnessCallback(1, data),
            "FlatnessCallback(2, data, metrics=['loss', 'sharpness'], rho=0.1)": FlatnessCallback(
                2, data, metrics=["loss", "sharpness"], rho=0.1),
            "DivergenceMonitor()": DivergenceMonitor(),
            "DivergenceMonitor(action='warn', chance=0.1)": DivergenceMonitor(action="warn", chance=0.1),
        }


def test_hparams_of_every_built_in_component_are_the_recorded_ones():
    components = _components()
    assert sorted(components) == sorted(BEFORE)
    for name, component in components.items():
        assert getattr(component, "hparams", {}) == BEFORE[name], name
    # the built-ins all declare their state now
    plain = [n for n, c in components.items() if not (isinstance(c, DeclaredState) and c._declarations())]
    assert plain == ["ServerReport()", "ServerReport(average_last_two=True)", "GlobalModelCheckpoint()",
                     "GlobalModelCheckpoint(dirpath='ck', monitor='val_acc', mode='max', save_top_k=2)",
                     "DivergenceMonitor()", "DivergenceMonitor(action='warn', chance=0.1)"]


def _loop(tmp_path=None, callbacks=(), rounds=3, workers=None):
    train, val = make_synthetic()
    torch.manual_seed(0)
    model = TinyModule()
    clients = make_clients(train, partition_iid(len(train), 6, seed=0), batch_size=16)
    loop = FederatedLoop(rounds=rounds, clients_per_round=3, local_epochs=1, aggregator=FedAvg(weighted=False),
                         callbacks=list(callbacks), seed=1, enable_progress_bar=False,
                         checkpoint_dir=None if tmp_path is None else tmp_path / "ckpt", workers=workers)
    return model, clients, DataLoader(val, batch_size=60), loop


def test_metrics_are_returned_and_are_the_history_columns():
    mutation, prox, counter, writer = MutationCallback(radius=1.0), FedProx(mu=0.01), Counter(), WritesRoundMetrics()
    model, clients, val, loop = _loop(callbacks=[mutation, prox, counter, writer])
    result = loop.fit(model, clients, val_dataloaders=val)
    last = result.history[-1]
    for component in (mutation, prox, counter):
        figures = component.metrics()
        assert figures and set(figures) <= set(last)
        assert {k: last[k] for k in figures} == figures
    assert set(mutation.metrics()) == {"fedmut/beta", "fedmut/radius", "fedmut/delta_norm",
                                       "fedmut/start_model_distance"}
    assert set(prox.metrics()) == {"fedprox/mu", "fedprox/client_drift"}
    assert [row["counter/clients"] for row in result.history] == [3.0, 3.0, 3.0]  # round state, reset each round
    assert [row["user/seen"] for row in result.history] == [1.0, 2.0, 3.0]  # writing round_metrics still works


def test_a_user_callback_with_declared_state_resumes_exactly(tmp_path):
    model, clients, val, loop = _loop(callbacks=[Counter(scale=0.5)], rounds=4)
    reference = loop.fit(model, clients, val_dataloaders=val)
    reference_state, reference_counter = state_of(model), loop.callbacks[0]

    model, clients, val, loop = _loop(tmp_path, callbacks=[Counter(scale=0.5), Crash(2)], rounds=4)
    with pytest.raises(RuntimeError, match="crash at round 2"):
        loop.fit(model, clients, val_dataloaders=val)
    model, clients, val, loop = _loop(tmp_path, callbacks=[Counter(scale=0.5)], rounds=4)
    result = loop.fit(model, clients, val_dataloaders=val, ckpt_path="last")
    counter = loop.callbacks[0]
    assert counter.rounds == reference_counter.rounds == 4
    assert counter.draws == reference_counter.draws
    assert torch.equal(counter.total, reference_counter.total)
    assert result.history == reference.history
    assert all(torch.equal(state_of(model)[k], v) for k, v in reference_state.items())


class _ThreadedWorkers:
    """Two ranks in two threads: all_reduce_ sums and all_gather_object gathers, in rank order."""

    def __init__(self, world_size):
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size)
        self.slots = [None] * world_size

    def rank(self, rank):
        workers = self

        class Executor:
            world_size = workers.world_size

            def _exchange(self, obj):
                workers.slots[rank] = obj
                workers.barrier.wait()
                parts = list(workers.slots)
                workers.barrier.wait()
                return parts

            def all_reduce_(self, tensors):
                parts = self._exchange([t.clone() for t in tensors])
                for i, t in enumerate(tensors):
                    t.copy_(sum(part[i] for part in parts))

            def all_gather_object(self, obj):
                return self._exchange(obj)

        return Executor()


class Partial(DeclaredState):
    def __init__(self):
        self.add_state("loss_sum", torch.zeros((), dtype=torch.float64), reduce="sum", scope="round")
        self.add_state("worst", torch.zeros(2), reduce="max", scope="round")
        self.add_state("by_slot", {}, reduce="cat", scope="round")
        self.add_state("seen", [], reduce="cat", scope="round")


def test_reduction_with_two_workers_gives_the_one_process_result():
    values = [0.1, 0.2, 0.3, 1e-17, 0.7]
    owners = [0, 1, 1, 0, 1]  # slot -> rank, interleaved as the distributed executor deals them
    one = Partial()
    for slot, v in enumerate(values):
        one.loss_sum += v
        one.worst = torch.maximum(one.worst, torch.tensor([v, -v]))
        one.by_slot[slot] = v
        one.seen.append(slot)
    ranks = [Partial(), Partial()]
    for slot, v in enumerate(values):
        part = ranks[owners[slot]]
        part.loss_sum += v
        part.worst = torch.maximum(part.worst, torch.tensor([v, -v]))
        part.by_slot[slot] = v
        part.seen.append(slot)
    workers = _ThreadedWorkers(2)
    threads = [threading.Thread(target=reduce_round_state, args=([ranks[r]], workers.rank(r))) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    expected_sum = sum(v for v, o in zip(values, owners) if o == 0) + sum(v for v, o in zip(values, owners) if o == 1)
    for part in ranks:
        assert part.loss_sum.item() == expected_sum  # float64: the two partial sums added
        assert part.loss_sum.item() == pytest.approx(one.loss_sum.item(), abs=1e-15)
        assert torch.equal(part.worst, one.worst)
        assert list(part.by_slot.items()) == list(one.by_slot.items())  # slot order
        assert part.seen == [0, 3, 1, 2, 4]  # a list: concatenated in rank order
    solo = Partial()
    solo.by_slot[1] = 2.0
    reduce_round_state([solo], type("One", (), {"world_size": 1})())
    assert solo.by_slot == {1: 2.0}


class Visits(FederatedCallback):
    """Declared client state: how often each client trained, and the rounds it trained in."""

    def __init__(self):
        self.add_state("visits", 0, scope="client")
        self.add_state("rounds_seen", [], scope="client")
        self.add_state("seen_at_start", {}, scope="round")

    def on_client_fit_start(self, loop, module, task):
        self.seen_at_start[task.client.id] = self.visits  # this client's value, loaded by the loop

    def on_client_fit_end(self, loop, module, result):
        self.visits += 1
        self.rounds_seen = [*self.rounds_seen, result.task.round]


def _visits(loop, clients):
    key = loop.callbacks[0].client_state_key("visits")
    return {c.id: loop.client_states.get(c.id).get(key, 0) for c in clients}


def _expected(result):
    expected: dict = {}
    for row in result.client_history:
        expected[row["client_id"]] = expected.get(row["client_id"], 0) + 1
    return expected


def test_client_state_is_each_clients_own_kept_in_the_store_and_resumed(tmp_path):
    model, clients, val, loop = _loop(callbacks=[Visits()], rounds=4)
    result = loop.fit(model, clients, val_dataloaders=val)
    visits = _visits(loop, clients)
    assert {k: v for k, v in visits.items() if v} == _expected(result)  # one count per client, not one shared
    key = loop.callbacks[0].client_state_key("rounds_seen")
    assert key == "Visits/rounds_seen"
    for c in clients:
        assert loop.client_states.get(c.id).get(key, []) == [
            r["round"] for r in result.client_history if r["client_id"] == c.id]
    assert loop.callbacks[0].visits == 0  # between clients the attribute is back at its default

    model, clients, val, crashing = _loop(tmp_path, callbacks=[Visits(), Crash(2)], rounds=4)
    with pytest.raises(RuntimeError, match="crash at round 2"):
        crashing.fit(model, clients, val_dataloaders=val)
    model, clients, val, resumed = _loop(tmp_path, callbacks=[Visits()], rounds=4)
    resumed.fit(model, clients, val_dataloaders=val, ckpt_path="last")
    assert _visits(resumed, clients) == visits


@pytest.mark.slow
def test_client_state_with_two_workers_is_the_one_process_state():
    model, clients, val, loop = _loop(callbacks=[Visits()], rounds=3)
    loop.fit(model, clients, val_dataloaders=val)
    model, clients, val, two = _loop(callbacks=[Visits()], rounds=3, workers=2)
    two.fit(model, clients, val_dataloaders=val)
    assert _visits(two, clients) == _visits(loop, clients)
