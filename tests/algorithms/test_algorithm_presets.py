"""Each preset is its components: the same run bit for bit, the same config entries, a named algorithm on top."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyModule, state_of
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut import algorithms as algos
from lightning_fedmut.aggregators import FedAdagrad, FedAdam, FedAvgM, FedExP, FedExPReport, FedYogi
from lightning_fedmut.callbacks import FedMR, FedProx, GlobalModelCheckpoint, Scaffold
from lightning_fedmut.data import partition_dirichlet
from lightning_fedmut.sampling import ClusteredSampler

#: preset (as the algorithm) and the same method as components (tests/algorithms/test_baselines_resume.py's settings)
CASES = {
    "FedAvg": (lambda: algos.FedAvg(weighted=False), lambda: {"aggregator": FedAvg(weighted=False)}),
    "FedMut": (lambda: algos.FedMut(radius=2.0),
               lambda: {"aggregator": FedAvg(weighted=False), "callbacks": [MutationCallback(radius=2.0)]}),
    "FedProx": (lambda: algos.FedProx(mu=0.1), lambda: {"aggregator": FedAvg(), "callbacks": [FedProx(mu=0.1)]}),
    "SCAFFOLD": (lambda: algos.SCAFFOLD(), lambda: {"aggregator": FedAvg(), "callbacks": [Scaffold()]}),
    "FedAvgM": (lambda: algos.FedAvgM(server_lr=1.0, momentum=0.9),
                lambda: {"aggregator": FedAvgM(server_lr=1.0, momentum=0.9)}),
    "FedAdagrad": (lambda: algos.FedAdagrad(server_lr=0.05), lambda: {"aggregator": FedAdagrad(server_lr=0.05)}),
    "FedAdam": (lambda: algos.FedAdam(server_lr=0.05), lambda: {"aggregator": FedAdam(server_lr=0.05)}),
    "FedYogi": (lambda: algos.FedYogi(server_lr=0.05), lambda: {"aggregator": FedYogi(server_lr=0.05)}),
    "FedExP": (lambda: algos.FedExP(average_last_two=True),
               lambda: {"aggregator": FedExP(), "callbacks": [FedExPReport()]}),
    "FedMR": (lambda: algos.FedMR(first_stage_bound=1),
              lambda: {"aggregator": FedAvg(), "callbacks": [FedMR(first_stage_bound=1)]}),
    "ClusteredSampling": (lambda: algos.ClusteredSampling(),
                          lambda: {"aggregator": FedAvg(), "sampler": ClusteredSampler()}),
}


def run(plugins, train, val, rounds=3):
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True, momentum=0.5)
    parts = partition_dirichlet(train.tensors[1].numpy(), num_clients=8, alpha=0.5, min_size=8, seed=0)
    loop = FederatedLoop(rounds=rounds, clients_per_round=3, local_steps=2, seed=0, enable_progress_bar=False,
                         **plugins)
    result = loop.fit(model, make_clients(train, parts, batch_size=8), val_dataloaders=DataLoader(val, batch_size=60))
    return model, result, loop


@pytest.mark.parametrize("name", list(CASES))
def test_a_preset_is_its_components_bit_for_bit(name, synthetic):
    train, val = synthetic
    preset, components = CASES[name]
    model, result, loop = run({"algorithm": preset()}, train, val)
    ref_model, ref, ref_loop = run(components(), train, val)
    expected = state_of(ref_model)
    assert all(torch.equal(v, expected[k]) for k, v in state_of(model).items())
    assert result.history == ref.history and len(result.history) == 3
    assert result.client_history == ref.client_history
    for key in ("aggregator", "sampler", "callbacks"):  # what the resume fingerprint and the digests read
        assert loop.hparams[key] == ref_loop.hparams[key]
    assert loop.hparams["algorithm"] == {"name": name, "class_path": f"{type(loop.algorithm).__module__}.{name}",
                                         "init_args": loop.algorithm.hparams}
    assert ref_loop.hparams["algorithm"] is None


def test_the_algorithm_names_its_settings_in_the_run_config():
    loop = FederatedLoop(rounds=2, clients_per_round=2, algorithm=algos.FedMut(radius=2.0, acceleration_rounds=10))
    assert loop.hparams["algorithm"] == {
        "name": "FedMut", "class_path": "lightning_fedmut.algorithms.fedmut.FedMut",
        "init_args": {"radius": 2.0, "acceleration": 0.3, "acceleration_rounds": 10, "mutate_buffers": False,
                      "weighted": False, "seed": None}}
    assert loop.hparams["aggregator"] == {"class_path": "lightning_fedmut.aggregators.fedavg.FedAvg",
                                          "init_args": {"weighted": False}}


def test_extra_callbacks_come_after_the_algorithms(tmp_path):
    checkpoint = GlobalModelCheckpoint(dirpath=str(tmp_path))
    loop = FederatedLoop(rounds=2, clients_per_round=2, algorithm=algos.FedExP(average_last_two=True),
                         callbacks=[checkpoint])
    assert [type(cb).__name__ for cb in loop.callbacks] == ["FedExPReport", "GlobalModelCheckpoint"]
    assert type(loop.aggregator).__name__ == "FedExP" and loop.callbacks[1] is checkpoint


def test_defaults_are_those_of_the_components():
    assert algos.FedAvg().aggregator.weighted is True  # the loop's default aggregator
    assert algos.FedMut().start_model.hparams == MutationCallback().hparams
    assert algos.FedMut().weighted is False
    assert algos.FedProx().local[0].mu == FedProx().mu == 0.01
    assert algos.FedExP().callbacks == [] and algos.FedExP().aggregator.hparams == FedExP().hparams
    assert algos.FedAdam().aggregator.hparams == FedAdam().hparams
    assert algos.FedMR().start_model.hparams == FedMR().hparams
    assert algos.ClusteredSampling().sampler.hparams == ClusteredSampler().hparams


def test_a_weighted_fedmut_warns_as_the_component_form_does(synthetic):
    train, val = synthetic
    with pytest.warns(UserWarning, match="MutationCallback runs with an example-weighted aggregator; FedMut's"
                                         " reference code uses the uniform mean"):
        run({"algorithm": algos.FedMut(radius=2.0, weighted=True)}, train, val, rounds=1)
