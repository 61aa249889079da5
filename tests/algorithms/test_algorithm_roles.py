"""Incompatible combinations are refused by type, before any training."""

from __future__ import annotations

import warnings

import pytest

from lightning_fedmut import FedAvg, FederatedLoop, MutationCallback
from lightning_fedmut import algorithms as algos
from lightning_fedmut.algorithms import FederatedAlgorithm, LocalCallback, StartModelCallback
from lightning_fedmut.callbacks import FedMR, FedProx, Scaffold, ServerReport
from lightning_fedmut.sampling import UniformSampler


def test_each_component_has_its_role():
    assert isinstance(MutationCallback(), StartModelCallback) and isinstance(FedMR(), StartModelCallback)
    assert isinstance(FedProx(), LocalCallback) and isinstance(Scaffold(), LocalCallback)
    assert not isinstance(ServerReport(), (StartModelCallback, LocalCallback))


def test_two_start_model_components_are_refused_when_the_loop_is_built():
    with pytest.raises(ValueError, match=r"^FedMR and MutationCallback both replace the clients' start models \(each"
                                         r" is a StartModelCallback, and a loop takes one\); pass only one of them"):
        FederatedLoop(rounds=1, clients_per_round=2, callbacks=[FedMR(), MutationCallback()])
    with pytest.raises(ValueError, match=r"^MutationCallback and FedMR both replace"):
        FederatedLoop(rounds=1, clients_per_round=2, algorithm=algos.FedMut(), callbacks=[FedMR()])


def test_a_custom_start_model_component_counts_too():
    class Shrink(StartModelCallback):
        pass

    with pytest.raises(ValueError, match=r"^MutationCallback and Shrink both replace"):
        FederatedLoop(rounds=1, clients_per_round=2, callbacks=[MutationCallback(), Shrink()])


def test_an_algorithm_holds_each_component_in_its_slot():
    with pytest.raises(TypeError, match=r"^Expected `start_model` to be a StartModelCallback \(MutationCallback, FedMR\)"
                                        r" or None, got FedProx, a LocalCallback: pass it in `local`\.$"):
        FederatedAlgorithm(start_model=FedProx())
    with pytest.raises(TypeError, match=r"^Expected every item of `local` to be a LocalCallback \(FedProx, Scaffold\),"
                                        r" got MutationCallback, a StartModelCallback: pass it as `start_model`\.$"):
        FederatedAlgorithm(local=[MutationCallback()])
    with pytest.raises(TypeError, match=r"^Expected every item of `callbacks` to be neither a start-model nor a local"
                                        " component, got Scaffold, a LocalCallback: pass it in `local`.$"):
        FederatedAlgorithm(callbacks=[Scaffold()])
    with pytest.raises(TypeError, match=r"^Expected `aggregator` to be a lightning_fedmut Aggregator or None, got"
                                        " UniformSampler.$"):
        FederatedAlgorithm(aggregator=UniformSampler())


def test_algorithm_with_aggregator_or_sampler_is_refused_naming_both():
    with pytest.raises(ValueError, match=r"^Expected either `algorithm` or `aggregator`, got both \(algorithm=FedMut,"
                                         r" aggregator=FedAvg\)"):
        FederatedLoop(rounds=1, clients_per_round=2, algorithm=algos.FedMut(), aggregator=FedAvg(weighted=False))
    with pytest.raises(ValueError, match=r"^Expected either `algorithm` or `sampler`, got both \(algorithm=FedProx,"
                                         r" sampler=UniformSampler\)"):
        FederatedLoop(rounds=1, clients_per_round=2, algorithm=algos.FedProx(), sampler=UniformSampler())
    with pytest.raises(TypeError, match=r"^Expected `algorithm` to be a FederatedAlgorithm"):
        FederatedLoop(rounds=1, clients_per_round=2, algorithm="FedMut")


def test_a_bundle_of_components_runs_under_its_name():
    algo = FederatedAlgorithm(start_model=MutationCallback(radius=2.0), local=[FedProx(mu=0.1)],
                              aggregator=FedAvg(weighted=False), name="FedMut+FedProx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop = FederatedLoop(rounds=1, clients_per_round=2, algorithm=algo)
    assert [type(cb).__name__ for cb in loop.callbacks] == ["MutationCallback", "FedProx"]
    assert loop.hparams["algorithm"] == {"name": "FedMut+FedProx",
                                         "class_path": "lightning_fedmut.algorithms.base.FederatedAlgorithm",
                                         "init_args": {}}
