"""The benchmark's method names resolve through the registry; a user's registered method runs in a cell."""

from __future__ import annotations

import pytest

from lightning_fedmut import FederatedLoop
from lightning_fedmut.aggregators import FedAvg as Mean
from lightning_fedmut.algorithms import FederatedAlgorithm, build_algorithm, register, unregister
from lightning_fedmut.callbacks import FedProx
from lightning_fedmut.experiments import load_benchmark, run_benchmark
from lightning_fedmut.experiments.config import METHOD_SETTINGS, METHODS

TINY = {"name": "tiny", "data": "digits", "partitions": ["iid"], "seeds": [1], "logger": "none",
        "fit": {"loop": {"rounds": 2, "clients_per_round": 3, "local_epochs": 1}, "partition": {"num_clients": 6}}}


class ProxHalf(FederatedAlgorithm):
    """A user's method: FedProx with a fixed mu and the uniform mean."""

    def __init__(self, mu: float = 0.5) -> None:
        super().__init__(aggregator=Mean(weighted=False), local=[FedProx(mu=mu)])
        self._save_init_args(mu=mu)


@pytest.fixture
def prox_half():
    register("ProxHalf", ProxHalf)
    yield
    unregister("ProxHalf")


def _components(config):
    from lightning_fedmut.aggregators import Aggregator
    from lightning_fedmut.callbacks import FederatedCallback, MutationCallback
    from lightning_fedmut.cli.fit import _build
    from lightning_fedmut.sampling import ClientSampler

    mutation = _build("mutation", MutationCallback | None, config["mutation"])
    callbacks = [_build("callbacks", FederatedCallback, cb) for cb in config["callbacks"] or []]
    return {"aggregator": _build("aggregator", Aggregator, config["aggregator"]),
            "sampler": _build("sampler", ClientSampler | None, config["loop"]["sampler"]),
            "callbacks": ([mutation] if mutation else []) + callbacks}


def test_each_built_in_row_is_its_registered_preset():
    assert list(METHOD_SETTINGS) == list(METHODS)
    bench = load_benchmark({**TINY, "methods": list(METHODS)})
    for cell in bench.cells:
        name, settings = METHOD_SETTINGS[cell.method]
        preset = FederatedLoop(rounds=1, clients_per_round=2, algorithm=build_algorithm(name, settings)).hparams
        rows = FederatedLoop(rounds=1, clients_per_round=2, **_components(cell.config)).hparams
        for key in ("aggregator", "sampler", "callbacks"):
            assert preset[key] == rows[key], (cell.method, key)


def test_a_method_name_resolves_through_the_registry():
    bench = load_benchmark({**TINY, "methods": ["fed-mut", "clustered_sampling"]})
    fedmut, clustered = (c.config for c in bench.cells)
    assert fedmut == load_benchmark({**TINY, "methods": ["FedMut"]}).cells[0].config
    assert clustered["loop"]["sampler"]["class_path"] == "lightning_fedmut.sampling.ClusteredSampler"
    with pytest.raises(ValueError, match=r"^benchmark: methods: unknown method 'FedMutt' \(did you mean FedMut\?\):"
                                         r" expected one of FedAvg, .*, Clustered sampling, FedNova, FedSAM, FedASAM, FedDyn, DPFedAvg, DPFedMut, FedBN, FedPer, FedGen, MoFedSAM, FedLESAM, FedGloSS, FedSMOO, FedASAMSWA, FedSAMSWA, FedAvgSWA, FedRep, or a mapping"):
        load_benchmark({**TINY, "methods": ["FedMutt"]})


def test_a_registered_method_is_known_to_the_benchmark(prox_half):
    with pytest.raises(ValueError, match=r"^benchmark: methods: unknown method 'ProxHalff' \(did you mean"
                                         r" ProxHalf\?\): expected one of .*, Clustered sampling, FedNova, FedSAM, FedASAM, FedDyn, DPFedAvg, DPFedMut, FedBN, FedPer, FedGen, MoFedSAM, FedLESAM, FedGloSS, FedSMOO, FedASAMSWA, FedSAMSWA, FedAvgSWA, FedRep, ProxHalf, or a"):
        load_benchmark({**TINY, "methods": ["ProxHalff"]})
    with pytest.raises(ValueError, match=r"^benchmark: methods.Mine: `algorithm` brings its own aggregator, start model"
                                         r" and sampler; remove `aggregator` \(from the method or from `fit`\)$"):
        load_benchmark({**TINY, "methods": {"Mine": {"base": "ProxHalf", "aggregator": {
            "class_path": "lightning_fedmut.aggregators.FedAdam"}}}})
    bench = load_benchmark({**TINY, "methods": {"ProxHalf": None, "ProxHalf 0.1": {
        "base": "proxhalf", "algorithm": {"init_args": {"mu": 0.1}}}}})
    assert bench.cells[0].config["algorithm"] == {"class_path": f"{__name__}.ProxHalf", "init_args": {"mu": 0.5}}
    assert bench.cells[1].config["algorithm"]["init_args"] == {"mu": 0.1}


@pytest.mark.slow
def test_a_registered_method_runs_in_a_benchmark_cell(prox_half, tmp_path):
    import torch
    from torch.utils.data import DataLoader

    from lightning_fedmut import make_clients
    from lightning_fedmut.data import partition_iid
    from lightning_fedmut.datasets import load_dataset
    from lightning_fedmut.models import DigitsCNN

    result = run_benchmark({**TINY, "methods": ["ProxHalf"]}, tmp_path / "out", echo=None)
    assert result.complete, result.failed
    split = load_dataset("digits")
    clients = make_clients(split.train, partition_iid(len(split.train), 6, seed=1), batch_size=50)
    torch.manual_seed(1)
    model = DigitsCNN()
    loop = FederatedLoop(rounds=2, clients_per_round=3, local_epochs=1, algorithm=ProxHalf(), seed=1,
                         enable_progress_bar=False)
    reference = loop.fit(model, clients, val_dataloaders=DataLoader(split.test, batch_size=500)).history
    history = result.records[0]["history"]
    assert [r["round"] for r in history] == [0, 1]
    for metric in ("val_acc", "val_loss", "fedprox/client_drift"):
        assert [row[metric] for row in history] == [row[metric] for row in reference]
