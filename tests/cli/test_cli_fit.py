"""`lightning-fedmut fit`: flags, --print_config round trip, external modules, loggers and argument errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_fedmut.cli import main
from lightning_fedmut.cli.fit import data_choice, fit_parser
from lightning_fedmut.data import save_partition_json

FIXTURES = Path(__file__).parents[1] / "fixtures_cli"
sys.path.insert(0, str(FIXTURES))
from wandb_offline_run import offline_runs, read_run  # noqa: E402 - from FIXTURES, put on the path above

# a federation that runs in about a second: 4 synthetic clients, 2 per round, 2 rounds of 1 local step
TINY = [
    "--data=synthetic", "--partition.num_clients=4", "--loop.clients_per_round=2", "--loop.rounds=2",
    "--loop.local_steps=1", "--loop.enable_progress_bar=false", "--logger=none",
]


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["fit", *args])
    out, err = capsys.readouterr()
    return code, out, err


def history(path: Path) -> dict:
    return json.loads(path.read_text())


def test_print_config_round_trips_to_the_same_run(tmp_path, capsys):
    flags = [*TINY, "--seed=3", "--mutation.radius=2.5", "--model.lr=0.05", "--partition.alpha=0.5"]
    code, printed, _ = run([*flags, "--print_config"], capsys)
    assert code == 0
    config = yaml.safe_load(printed)
    assert config["model"] == {
        "class_path": "lightning_fedmut.models.DigitsCNN",
        "init_args": {"num_classes": 10, "batch_norm": True, "width": 16, "lr": 0.05, "momentum": 0.5},
    }
    assert config["mutation"]["init_args"]["radius"] == 2.5
    assert config["mutation"]["init_args"]["acceleration"] == 0.3
    assert config["aggregator"] == {"class_path": "lightning_fedmut.FedAvg", "init_args": {"weighted": False}}
    assert (config["seed"], config["data"], config["partition"]["alpha"], config["loop"]["rounds"]) == (3, "synthetic", 0.5, 2)
    assert config["loop"]["local_epochs"] == 5 and config["loop"]["clients_per_round"] == 2

    path = tmp_path / "run.yaml"
    path.write_text(printed)
    code, reprinted, _ = run(["--config", str(path), "--print_config"], capsys)
    assert (code, reprinted) == (0, printed)

    code, _, _ = run([*flags, f"--history_file={tmp_path / 'flags.json'}"], capsys)
    assert code == 0
    code, _, _ = run(["--config", str(path), f"--history_file={tmp_path / 'yaml.json'}"], capsys)
    assert code == 0
    from_flags, from_yaml = history(tmp_path / "flags.json"), history(tmp_path / "yaml.json")
    from_flags["config"].pop("history_file"), from_yaml["config"].pop("history_file")
    assert from_flags["config"] == from_yaml["config"]
    keep = ("round", "val_acc", "val_loss", "clients/train_loss", "fedmut/delta_norm")
    assert [{k: r[k] for k in keep} for r in from_flags["history"]] == [{k: r[k] for k in keep} for r in from_yaml["history"]]
    assert [r["round"] for r in from_flags["history"]] == [0, 1]


def test_flags_after_config_override_it(tmp_path, capsys):
    code, printed, _ = run([*TINY, "--print_config"], capsys)
    path = tmp_path / "run.yaml"
    path.write_text(printed)
    code, printed, _ = run(["--config", str(path), "--mutation=none", "--loop.rounds=7", "--print_config"], capsys)
    config = yaml.safe_load(printed)
    assert (code, config["mutation"], config["loop"]["rounds"]) == (0, None, 7)


def test_data_choice_picks_the_default_model(tmp_path, capsys):
    assert data_choice(["--data", "cifar100"]) == "cifar100"
    assert data_choice(["--data=mnist1d", "--data=digits"]) == "digits"
    assert data_choice(["--data.class_path=my.DataModule"]) is None
    config = tmp_path / "c.yaml"
    config.write_text("data: fashion_mnist\n")
    assert data_choice(["--config", str(config)]) == "fashion_mnist"
    assert data_choice([f"--config={config}", "--data", "mnist1d"]) == "mnist1d"

    code, printed, _ = run(["--data=cifar100", "--print_config"], capsys)
    model = yaml.safe_load(printed)["model"]
    assert (code, model["class_path"], model["init_args"]["num_classes"]) == (0, "lightning_fedmut.models.LeNetCNN", 100)
    code, printed, _ = run(["--data=mnist1d", "--model.lr=0.2", "--print_config"], capsys)
    model = yaml.safe_load(printed)["model"]
    assert (model["class_path"], model["init_args"]["lr"]) == ("lightning_fedmut.models.MNIST1DCNN", 0.2)


def test_wandb_agent_style_flags_are_parsed():
    args = ["--mutation.radius=2", "--mutation.acceleration=0.5", "--aggregator.weighted=True",
            "--loop.local_steps=None", "--partition.scheme=iid", "--seed=4"]
    parser = fit_parser(args)
    from lightning_fedmut.cli._parser import parse

    cfg = parse(parser, args)
    assert cfg.mutation.init_args.radius == 2.0 and isinstance(cfg.mutation.init_args.radius, float)
    assert (cfg.mutation.init_args.acceleration, cfg.aggregator.init_args.weighted) == (0.5, True)
    assert (cfg.loop.local_steps, cfg.partition.scheme, cfg.seed) == (None, "iid", 4)
    assert parse(fit_parser([]), ["--mutation=None"]).mutation is None


def test_fit_federates_a_module_outside_the_package(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    out_file = tmp_path / "h.json"
    code, out, _ = run([*TINY, "--model=external_models.ExternalMLP", "--model.hidden=8",
                        f"--history_file={out_file}", "--loop.rounds=3"], capsys)
    assert code == 0
    assert "FedMut: ExternalMLP on synthetic, 4 clients, 2 per round, 3 rounds" in out
    result = history(out_file)
    assert result["config"]["model"] == {"class_path": "external_models.ExternalMLP",
                                         "init_args": {"hidden": 8, "num_classes": 10, "lr": 0.1}}
    assert [r["val_external"] for r in result["history"]] == [42.0, 42.0, 42.0]
    assert [r["clients/trained"] for r in result["history"]] == [2, 2, 2]
    assert all(r["fedmut/radius"] == 4.0 for r in result["history"])
    assert "Finished 3 rounds" in out


def test_fit_without_validation_step_trains_without_evaluating(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    out_file = tmp_path / "h.json"
    code, out, _ = run([*TINY, "--model=external_models.NoValidation", f"--history_file={out_file}"], capsys)
    assert code == 0
    assert "NoValidation has no validation_step: the global model is not evaluated" in out
    rows = history(out_file)["history"]
    assert [r["clients/trained"] for r in rows] == [2, 2] and not any("val_acc" in r for r in rows)


def test_fit_takes_a_lightning_datamodule(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    out_file = tmp_path / "h.json"
    code, out, _ = run([*TINY, "--data=external_models.SyntheticDataModule", "--data.num_train=80",
                        "--model=external_models.ExternalMLP", "--model.num_classes=4", "--partition.scheme=iid",
                        "--mutation=null", f"--history_file={out_file}"], capsys)
    assert code == 0
    assert "FedAvg: ExternalMLP on SyntheticDataModule, 4 clients, 2 per round, 2 rounds" in out
    rows = history(out_file)["history"]
    assert all("val_acc" in r and "fedmut/radius" not in r for r in rows)


@pytest.mark.parametrize("scheme, extra, clients", [
    ("iid", ["--partition.num_clients=5"], 5),
    ("shards", ["--partition.num_clients=6", "--partition.shards_per_client=2"], 6),
    ("json", [], 3),
])
def test_partition_schemes(tmp_path, capsys, scheme, extra, clients):
    path = tmp_path / "parts.json"
    save_partition_json({"a": list(range(50)), "b": list(range(50, 90)), "c": list(range(90, 200))}, path)
    code, out, _ = run([*TINY, f"--partition.scheme={scheme}", f"--partition.path={path}", *extra], capsys)
    assert code == 0
    assert f"on synthetic, {clients} clients, 2 per round" in out


def test_csv_logger_gets_the_flat_config(tmp_path, capsys):
    code, _, _ = run([*TINY, "--logger=csv", f"--save_dir={tmp_path}", "--project=p", "--run_name=r1",
                      "--mutation.radius=3"], capsys)
    assert code == 0
    hparams = yaml.safe_load((tmp_path / "p" / "r1" / "hparams.yaml").read_text())
    assert hparams["mutation.radius"] == 3.0 and hparams["loop.rounds"] == 2 and hparams["data"] == "synthetic"
    metrics = (tmp_path / "p" / "r1" / "metrics.csv").read_text().splitlines()
    assert "val_acc" in metrics[0].split(",")


def test_wandb_run_config_holds_the_flags_without_an_agent(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    code, out, _ = run([*TINY[:-1], "--logger=wandb", "--mutation.radius=2.5", "--group=g1", "--run_name=n1"], capsys)
    assert code == 0
    (folder,) = offline_runs(str(tmp_path))
    assert f"wandb sync {folder}" in out
    r = read_run(folder)
    assert (r["group"], r["name"], r["project"]) == ("g1", "n1", "lightning-fedmut")
    assert r["config"]["mutation.radius"] == 2.5 and r["config"]["partition.num_clients"] == 4
    assert r["config"]["callbacks"][0]["init_args"]["radius"] == 2.5  # logged by the loop from the callback
    assert [h["round"] for h in r["history"] if "val_acc" in h] == [0, 1]


@pytest.mark.parametrize("args, message", [
    (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["--partition.num_clientz=3"], "unrecognized arguments: --partition.num_clientz=3 (did you mean --partition.num_clients?)"),
    (["--loop.rounds=abc"], "--loop.rounds: expected an integer, got 'abc'"),
    (["--mutation.radius=far"], "--mutation.radius: expected a number, got 'far'"),
    (["--aggregator.weighted=maybe"], "--aggregator.weighted: expected true or false, got 'maybe'"),
    (["--seed=-1"], "--seed: expected a value >= 0, got '-1'"),
    (["--model=torch.nn.Linear"],
     "--model: expected the class path of a LightningModule subclass, got 'torch.nn.Linear', which is not one"),
    (["--model=external_models.NotAModule"],
     "--model: expected the class path of a LightningModule subclass, got 'external_models.NotAModule', which is not one"),
    (["--model=lightning_fedmut.models.Nope"],
     "--model: cannot use class 'lightning_fedmut.models.Nope': module 'lightning_fedmut.models' has no attribute 'Nope'"),
    (["--data=imagenet"], ("--data: expected one of digits, mnist1d, synthetic, mnist, fashion_mnist, cifar10, cifar100,"
                          " or the class path of a LightningDataModule, got 'imagenet'")),
    (["--partition.scheme=random"], "--partition.scheme: expected one of iid, dirichlet, shards, json, got 'random'"),
    (["--config", "missing.yaml"], "--config: file not found: "),
    (["--mutation.radius=-1"], "--mutation: MutationCallback(...) rejected its arguments: Expected `radius` in [0.0, 1000000.0], got -1.0."),
    ([*TINY, "--loop.clients_per_round=9"], "--loop.clients_per_round: expected at most the number of clients (4), got 9"),
    ([*TINY, "--partition.scheme=json"], "--partition.path: expected a JSON file with --partition.scheme=json, got none"),
    ([*TINY, "--partition.num_clients=5000"], "--partition: Expected `num_clients` to be an integer <= 600, got 5000."),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    code, out, err = run(args, capsys)
    assert code == 2
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"lightning-fedmut fit: error: {message}"), err
    assert "Traceback" not in err + out


@pytest.mark.slow
def test_console_entry_point_exits_2_without_traceback(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "lightning_fedmut.cli", "fit", "--loop.rounds=abc"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr == "lightning-fedmut fit: error: --loop.rounds: expected an integer, got 'abc'\n"
    assert proc.stdout == ""


def test_top_level_usage_and_unknown_command(capsys):
    assert main([]) == 2
    assert "usage: lightning-fedmut {fit,validate,test,demo,sweep,benchmark}" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "sweep" in capsys.readouterr().out
    assert main(["train"]) == 2
    assert capsys.readouterr().err == ("lightning-fedmut: error: unknown command 'train': expected one of fit, validate, test, demo,"
                                       " sweep, benchmark\n")
    assert main(["fit", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--mutation.radius" in help_text and "--partition.alpha" in help_text and "--print_config" in help_text


def test_class_typed_loop_options_are_built(tmp_path, capsys):
    """--loop.sampler and --loop.divergence take classes, as --aggregator does."""
    code, _, _ = run([*TINY, "--partition.num_clients=6", "--loop.clients_per_round=3",
                      "--loop.sampler=lightning_fedmut.sampling.ClusteredSampler",
                      '--loop.divergence={"class_path": "lightning_fedmut.divergence.DivergenceMonitor",'
                      ' "init_args": {"action": "warn", "patience": 2}}',
                      f"--history_file={tmp_path / 'h.json'}"], capsys)
    assert code == 0
    saved = history(tmp_path / "h.json")
    config = saved["config"]
    assert config["loop"]["sampler"]["class_path"] == "lightning_fedmut.sampling.ClusteredSampler"
    assert all("clustered_sampling/clusters" in row for row in saved["history"])  # the sampler that ran
    assert config["loop"]["divergence"]["init_args"]["patience"] == 2
