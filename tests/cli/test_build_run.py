"""One builder turns a config into a run: `fit` and a benchmark cell build the same model, clients and loop."""

from __future__ import annotations

import pytest
import torch

from lightning_fedmut.cli._parser import parse
from lightning_fedmut.cli.fit import algorithm_argv, build_run, fit_parser
from lightning_fedmut.experiments.runner import _cell_config, _fit_cell

ARGS = {"data": "synthetic", "seed": 3, "val_fraction": 0.25, "logger": "none",
        "partition": {"scheme": "dirichlet", "alpha": 0.5, "num_clients": 6},
        "loop": {"rounds": 1, "clients_per_round": 3, "local_steps": 1, "enable_progress_bar": False},
        "algorithm": "lightning_fedmut.algorithms.FedProx", "mutation": None, "model_checkpoint": None}
ARGV = ["--data=synthetic", "--seed=3", "--val_fraction=0.25", "--logger=none", "--partition.scheme=dirichlet",
        "--partition.alpha=0.5", "--partition.num_clients=6", "--loop.rounds=1", "--loop.clients_per_round=3",
        "--loop.local_steps=1", "--loop.enable_progress_bar=false", "--algorithm=FedProx"]


def fit_config():
    argv = algorithm_argv(ARGV)
    return parse(fit_parser(argv), argv, none_flags={"--mutation", "--model_checkpoint", "--algorithm"})


def cell_config():
    cfg = _cell_config(ARGS, "test")
    cfg.aggregator = None  # as the cell runner does for a registered method
    return cfg


def test_fit_and_a_benchmark_cell_build_the_same_run():
    fit, cell = build_run(fit_config()), build_run(cell_config())
    assert fit.method.name == cell.method.name == "FedProx"
    for a, b in zip(fit.model.state_dict().values(), cell.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [c.num_examples for c in fit.clients] == [c.num_examples for c in cell.clients]
    assert [len(c.val_data.dataset) for c in fit.clients] == [len(c.val_data.dataset) for c in cell.clients]
    assert fit.loop_options == cell.loop_options


@pytest.mark.slow
def test_a_benchmark_cell_gives_its_clients_validation_data_as_fit_does(tmp_path):
    # the cell runner built its clients without `val_fraction` before: the clients validated nothing
    history, failures = _fit_cell(ARGS, tmp_path, {"run_name": "cell", "method": "FedProx", "partition": "dir",
                                                   "seed": 3}, {"kind": "none", "save_dir": str(tmp_path)}, {})
    assert failures == 0
    assert any(key.startswith("clients/val_") for key in history[0]), sorted(history[0])
