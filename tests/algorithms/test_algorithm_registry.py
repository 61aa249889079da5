"""Methods by name: case-insensitive lookup, a hint on a typo, users' own methods."""

from __future__ import annotations

import pytest

from lightning_fedmut import algorithms as algos
from lightning_fedmut.aggregators import FedAvg as Mean
from lightning_fedmut.algorithms import FederatedAlgorithm, build_algorithm, names, register, unregister

BUILT_IN = ["FedAvg", "FedMut", "FedProx", "SCAFFOLD", "FedAvgM", "FedAdagrad", "FedAdam", "FedYogi", "FedExP",
            "FedMR", "ClusteredSampling", "FedNova", "FedSAM", "FedASAM", "FedDyn", "DPFedAvg", "DPFedMut", "FedBN", "FedPer", "FedGen",
            "MoFedSAM", "FedLESAM", "FedGloSS", "FedSMOO", "FedASAMSWA", "FedSAMSWA", "FedAvgSWA", "FedRep"]


class Halves(FederatedAlgorithm):
    def __init__(self, weighted: bool = False) -> None:
        super().__init__(aggregator=Mean(weighted=weighted))
        self._save_init_args(weighted=weighted)


@pytest.fixture
def halves():
    register("Halves", Halves)
    yield
    unregister("Halves")


def test_the_presets_are_registered_in_order():
    assert names() == BUILT_IN
    assert [algos.algorithm_class(n) for n in BUILT_IN] == [getattr(algos, n) for n in BUILT_IN]


@pytest.mark.parametrize(("spelling", "cls"), [("fedmut", "FedMut"), ("FEDPROX", "FedProx"), ("scaffold", "SCAFFOLD"),
                                               ("Clustered sampling", "ClusteredSampling"), ("fed-adam", "FedAdam")])
def test_lookup_ignores_case_spaces_and_dashes(spelling, cls):
    assert type(build_algorithm(spelling, {})).__name__ == cls


def test_a_typo_names_the_known_methods_and_the_closest():
    with pytest.raises(ValueError) as err:
        build_algorithm("FedMutt", {})
    assert str(err.value) == (
        "Expected `algorithm` to be a registered method name, got 'FedMutt' (did you mean FedMut?); known: "
        + ", ".join(BUILT_IN) + ".")
    with pytest.raises(TypeError, match=r"^Expected `init_args` of FedMut among radius, acceleration,"
                                        r" acceleration_rounds, mutate_buffers, weighted, seed, got 'raduis' \(did"
                                        r" you mean radius\?\)\.$"):
        build_algorithm("FedMut", {"raduis": 2.0})
    with pytest.raises(ValueError, match=r"^Expected `radius` in \[0.0, 1000000.0\], got -1.0.$"):
        build_algorithm("FedMut", {"radius": -1.0})


def test_build_algorithm_passes_the_settings():
    algo = build_algorithm("fedprox", {"mu": 0.5, "weighted": False})
    assert algo.hparams == {"mu": 0.5, "weighted": False}
    assert algo.local[0].mu == 0.5 and algo.aggregator.weighted is False


def test_a_user_method_is_registered_looked_up_and_removed(halves):
    assert names()[-1] == "Halves"
    algo = build_algorithm("halves", {"weighted": True})
    assert isinstance(algo, Halves) and algo.name == "Halves" and algo.aggregator.weighted is True
    with pytest.raises(ValueError, match=r"^Expected a new method name for `name`, got 'HALVES', which names Halves"
                                         " already; pass replace=True to replace it.$"):
        register("HALVES", Halves)
    with pytest.raises(TypeError, match=r"^Expected `cls` to be a FederatedAlgorithm subclass, got <class 'int'>.$"):
        register("Ints", int)
    assert unregister("Halves") is Halves and "Halves" not in names()
    register("Halves", Halves)  # for the fixture's teardown
