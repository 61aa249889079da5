"""`lightning-fedmut fit --algorithm NAME`: a registered method from the command line, its settings and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_fedmut.algorithms import FedProx, register, unregister
from lightning_fedmut.cli import main
from lightning_fedmut.cli.fit import check_fit_args

TINY = [
    "--data=synthetic", "--partition.num_clients=4", "--loop.clients_per_round=2", "--loop.rounds=3",
    "--loop.local_steps=2", "--loop.enable_progress_bar=false", "--logger=none",
]


def fit(args: list[str], path: Path, capsys) -> dict:
    assert main(["fit", *TINY, *args, f"--history_file={path}"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return json.loads(path.read_text())


def test_the_fedmut_preset_is_the_default_fit_bit_for_bit(tmp_path, capsys):
    default = fit([], tmp_path / "default.json", capsys)  # fit's default: MutationCallback(4, 0.3) + uniform FedAvg
    preset = fit(["--algorithm", "fedmut"], tmp_path / "preset.json", capsys)
    assert preset["history"] == default["history"]
    assert preset["config"]["algorithm"]["class_path"] == "lightning_fedmut.algorithms.fedmut.FedMut"
    assert preset["config"]["mutation"] is None and preset["config"]["aggregator"] is None


def test_a_baseline_runs_by_name_with_its_settings(tmp_path, capsys):
    fedavg = fit(["--mutation=null"], tmp_path / "fedavg.json", capsys)
    scaffold = fit(["--algorithm=SCAFFOLD"], tmp_path / "scaffold.json", capsys)
    assert scaffold["config"]["algorithm"]["class_path"] == "lightning_fedmut.algorithms.scaffold.SCAFFOLD"
    assert [r["val_loss"] for r in scaffold["history"]] != [r["val_loss"] for r in fedavg["history"]]
    prox = fit(["--algorithm", "FedProx", "--algorithm.mu", "0.5"], tmp_path / "prox.json", capsys)
    assert prox["config"]["algorithm"]["init_args"]["mu"] == 0.5


def test_fedprox_with_mu_zero_and_uniform_weights_is_fedavg(tmp_path, capsys):
    fedavg = fit(["--mutation=null"], tmp_path / "fedavg.json", capsys)
    prox = fit(["--algorithm", "FedProx", "--algorithm.mu", "0.0", "--algorithm.weighted", "false"],
               tmp_path / "prox.json", capsys)
    assert [r["val_loss"] for r in prox["history"]] == [r["val_loss"] for r in fedavg["history"]]


class HalfProx(FedProx):
    """A user's method: FedProx with mu = 0.5 and the uniform mean."""

    def __init__(self, weighted: bool = False) -> None:
        super().__init__(mu=0.5, weighted=weighted)


def test_a_method_the_user_registered_runs_by_name(tmp_path, capsys):
    register("HalfProx", HalfProx)
    try:
        half = fit(["--algorithm", "half-prox"], tmp_path / "half.json", capsys)
        prox = fit(["--algorithm", "FedProx", "--algorithm.mu", "0.5", "--algorithm.weighted", "false"],
                   tmp_path / "prox.json", capsys)
    finally:
        unregister("HalfProx")
    assert half["config"]["algorithm"]["class_path"] == f"{__name__}.HalfProx"
    assert half["history"] == prox["history"]


@pytest.mark.parametrize(("args", "message"), [
    (["--algorithm", "FedMutt"], "--algorithm: expected a registered method name, got 'FedMutt' (did you mean"
                                 " FedMut?); known: FedAvg, FedMut, "),
    (["--algorithm", "SCAFFOLD", "--mutation.radius", "2.0"], "--algorithm SCAFFOLD brings its own aggregator and"
                                                               " start model: remove --mutation, or give its settings"
                                                               " as --algorithm.NAME"),
    (["--algorithm", "FedMut", "--aggregator", "lightning_fedmut.aggregators.FedAdam"],
     "--algorithm FedMut brings its own aggregator and start model: remove --aggregator"),
    (["--algorithm", "FedMut", "--loop.sampler", "lightning_fedmut.sampling.ClusteredSampler"],
     "--loop: Expected either `algorithm` or `sampler`, got both (algorithm=FedMut, sampler=ClusteredSampler)"),
])
def test_bad_method_flags_are_one_line_before_training(args, message, capsys):
    assert main(["fit", *TINY, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lightning-fedmut fit: error: {message}"), err
    assert err.count("\n") == 1


def test_the_sweep_check_knows_the_flag():
    check_fit_args(["--algorithm", "clustered sampling", "--loop.rounds=2", "--logger=none"])
    with pytest.raises(Exception, match="did you mean FedProx"):
        check_fit_args(["--algorithm", "fedprox2"])
