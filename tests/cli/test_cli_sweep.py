"""W&B sweeps: the example files, the command `wandb agent` runs, and `lightning-fedmut sweep` offline."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_fedmut.cli import main
from lightning_fedmut.cli._parser import CLIError, parse
from lightning_fedmut.cli.fit import fit_parser
from lightning_fedmut.cli.sweep import (
    _summary,
    build_command,
    check_sweep,
    command_args,
    configuration_means,
    grid,
    load_sweep,
    run_names,
    sample,
)

FIXTURES = Path(__file__).parents[1] / "fixtures_cli"
EXAMPLES = Path(__file__).parents[2] / "examples" / "sweeps"
sys.path.insert(0, str(FIXTURES))
from wandb_offline_run import offline_runs, read_run  # noqa: E402 - from FIXTURES, put on the path above

SMALL = FIXTURES / "sweep_small.yaml"


def agent_command(template: list, values: dict, program: str | None = None) -> list[str]:
    """The command line `wandb agent` builds (wandb/wandb_agent.py, Agent._command_run), with wandb's own helpers."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    sweep_command = sweep_utils.create_sweep_command(list(template))
    sweep_vars = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["program"] = [program]
    sweep_vars["env"] = ["/usr/bin/env"]
    command: list[str] = []
    for chunk in map(str, sweep_command):
        if chunk.startswith("${") and chunk.endswith("}"):
            command += sweep_vars.get(chunk[2:-1]) or []
        else:
            command.append(chunk)
    return command


def point(config: dict) -> dict:
    """One point of a sweep's parameter space: the first grid point, or a random draw."""
    parameters = config["parameters"]
    return grid(parameters)[-1] if config["method"] == "grid" else sample(parameters, 1, seed=0)[0]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_sweep_files_are_valid_and_their_flags_parse(path):
    config = load_sweep(path)
    assert config["metric"] == {"name": "val_acc", "goal": "maximize"}  # what the built-in models log
    assert config["command"][:3] == ["${env}", "lightning-fedmut", "fit"] and config["command"][-1] == "${args}"
    try:
        import sweeps  # W&B's sweep engine (pip install 'wandb[sweeps]'), not a dependency
    except ImportError:
        sweeps = None
    if sweeps is not None:
        assert sweeps.schema_violations_from_proposed_config(config) == []
    values = point(config)
    args = build_command(config["command"], values)[3:]
    cfg = parse(fit_parser(args), args)
    for name, value in values.items():
        node = cfg
        for part in name.split("."):
            node = node[part] if part in node else node["init_args"][part]
        if isinstance(node, dict) or hasattr(node, "class_path"):
            node = node["class_path"] if node is not None else None
        assert node == value or (value is None and node is None), (name, node, value)


def test_build_command_matches_wandb_agent():
    values = {"mutation.radius": 2.0, "mutation": None, "loop.rounds": 3, "aggregator.weighted": False,
              "model.lr": 0.05}
    for template in (
        ["${env}", "lightning-fedmut", "fit", "--loop.enable_progress_bar=false", "${args}"],
        ["${env}", "${interpreter}", "${program}", "${args}"],
        ["${interpreter}", "-m", "lightning_fedmut.cli", "fit", "${args_no_boolean_flags}"],
        ["run", "${args_no_hyphens}", "${args_json}", "${envvar:HOME}/x"],
    ):
        assert build_command(template, values, program="train.py") == agent_command(template, values, "train.py")
    assert command_args({"a": True, "b": False})["args_no_boolean_flags"] == ["--a"]


def _console_path(tmp_path: Path) -> str:
    """PATH with this interpreter's bin first; a `lightning-fedmut` shim if the package is not installed."""
    bin_dir = os.path.dirname(sys.executable)
    if shutil.which("lightning-fedmut", path=bin_dir) is None:
        shim_dir = tmp_path / "bin"
        shim_dir.mkdir()
        shim = shim_dir / "lightning-fedmut"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lightning_fedmut.cli "$@"\n')
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
        bin_dir = f"{shim_dir}{os.pathsep}{bin_dir}"
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.mark.slow
def test_cli_runs_as_wandb_agent_calls_it(tmp_path):
    config = load_sweep(SMALL)
    examples = {tuple(yaml.safe_load(p.read_text())["command"]) for p in EXAMPLES.glob("*.yaml")}
    assert examples == {tuple(config["command"])}  # the examples' command, on a federation of a second
    values = grid(config["parameters"])[1]
    assert values["mutation.radius"] == 2.0 and values["mutation.acceleration"] == 0.5
    command = agent_command(config["command"], values)
    assert command[:3] == ["/usr/bin/env", "lightning-fedmut", "fit"]
    assert "--mutation.radius=2.0" in command and "--loop.rounds=2" in command

    from wandb.sdk.lib import config_util

    params = tmp_path / "wandb" / "sweep-local" / "config-agent001.yaml"
    config_util.save_config_file_from_dict(str(params), {k: {"value": v} for k, v in values.items()})
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "OMP_NUM_THREADS": "1",
           "WANDB_RUN_ID": "agent001", "WANDB_SWEEP_PARAM_PATH": str(params), "PATH": _console_path(tmp_path)}
    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr

    (folder,) = offline_runs(str(tmp_path))
    run = read_run(folder)
    assert run["id"] == "agent001"
    for name, value in values.items():
        assert run["config"][name] == value, name
    # the values reached the objects: the loop logs the MutationCallback it was given
    assert run["config"]["callbacks"][0]["init_args"]["radius"] == 2.0
    assert run["config"]["callbacks"][0]["init_args"]["acceleration"] == 0.5
    rounds = [h for h in run["history"] if "val_acc" in h]
    assert [h["round"] for h in rounds] == [0, 1]
    assert all(h["fedmut/radius"] == 2.0 for h in rounds)


@pytest.mark.slow  # the sweep starts `lightning-fedmut fit` in a subprocess per configuration
def test_local_sweep_runs_the_grid_offline_in_one_group(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("WANDB_MODE")  # the sweep runs its configurations offline by itself
    assert main(["sweep", str(SMALL), "--group", "grid-test"]) == 0
    out = capsys.readouterr().out
    assert "2 grid configuration(s), W&B group 'grid-test' (offline)" in out
    assert "[1/2] mutation.radius=0.0 mutation.acceleration=0.5 data=synthetic" in out
    assert "[2/2] mutation.radius=2.0 mutation.acceleration=0.5 data=synthetic" in out
    assert out.count("    ok, val_acc ") == 2 and "Best (maximize val_acc, final): " in out
    runs = [read_run(f) for f in offline_runs(str(tmp_path))]
    assert [r["group"] for r in runs] == ["grid-test", "grid-test"]
    assert sorted(r["name"] for r in runs) == ["small-grid-1 radius=0.0", "small-grid-2 radius=2.0"]
    assert sorted(r["config"]["mutation.radius"] for r in runs) == [0.0, 2.0]
    assert all(r["config"]["loop.rounds"] == 2 and r["config"]["data"] == "synthetic" for r in runs)


def test_random_and_bayes_files_draw_reproducible_configurations(tmp_path, capsys):
    bayes = EXAMPLES / "bayes_radius_acceleration_epochs.yaml"
    assert main(["sweep", str(bayes), "--count", "3", "--dry_run", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert main(["sweep", str(bayes), "--count", "3", "--dry_run", "--seed", "1"]) == 0
    second = capsys.readouterr().out
    strip = [ln for ln in first.splitlines() if "W&B group" not in ln and "history-" not in ln]
    assert strip == [ln for ln in second.splitlines() if "W&B group" not in ln and "history-" not in ln]
    assert first.startswith("bayes search needs the W&B server's optimizer; running random draws")
    draws = sample(load_sweep(bayes)["parameters"], 200, seed=0)
    assert all(0.5 <= d["mutation.radius"] <= 8.0 and 0.0 <= d["mutation.acceleration"] <= 0.7 for d in draws)
    assert {d["loop.local_epochs"] for d in draws} == {1, 2, 3, 4, 5}
    assert all(d["loop.rounds"] == 30 and d["data"] == "digits" for d in draws)
    commands = [ln.strip() for ln in first.splitlines() if "-m lightning_fedmut.cli fit" in ln]
    assert len(commands) == 3 and all("--mutation.radius=" in c and "--loop.local_epochs=" in c for c in commands)


def test_grid_expansion_order_and_count():
    config = load_sweep(EXAMPLES / "grid_radius_acceleration.yaml")
    points = grid(config["parameters"])
    assert len(points) == 12
    assert [(p["mutation.radius"], p["mutation.acceleration"]) for p in points[:4]] == [
        (1.0, 0.0), (1.0, 0.3), (1.0, 0.5), (2.0, 0.0)]
    vs = grid(load_sweep(EXAMPLES / "fedmut_vs_fedavg.yaml")["parameters"])
    assert [(p["mutation"], p["seed"]) for p in vs] == [
        ("lightning_fedmut.MutationCallback", 0), ("lightning_fedmut.MutationCallback", 1),
        ("lightning_fedmut.MutationCallback", 2), (None, 0), (None, 1), (None, 2)]


@pytest.mark.parametrize("content, message", [
    ("method: grid\nparameters: {}\n", "has no parameters: expected a non-empty `parameters` mapping"),
    ("method: grid\n", "has no parameters: expected a non-empty `parameters` mapping"),
    ("method: sometimes\nparameters: {a: {values: [1]}}\n", "expected `method` to be one of grid, random, bayes, got 'sometimes'"),
    ("method: grid\nparameters: {lr: {min: 0.1, max: 1.0}}\n", "parameter 'lr': a grid sweep needs `values` (or `value`)"),
    ("method: random\nparameters: {lr: {distribution: uniform, min: 1.0, max: 0.1}}\n", "expected min < max, got min=1.0, max=0.1"),
    ("method: random\nparameters: {m: {parameters: {radius: {values: [1]}}}}\n", "nested parameters are not supported"),
    ("method: bayes\nparameters: {a: {values: [1]}}\n", "a bayes sweep needs a `metric` {name, goal}"),
    ("- not a mapping\n", "expected a YAML mapping with `method` and `parameters`, got list"),
    ("method: grid\nparameters: {a: {values: [1]}}\nprogram_name: x\n", "unknown top-level keys ['program_name']"),
])
def test_bad_sweep_files_are_one_line_and_exit_code_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lightning-fedmut sweep: error: {path}") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_sweep_file_and_argument_errors(capsys):
    assert main(["sweep", "nowhere.yaml"]) == 2
    assert capsys.readouterr().err == (
        "lightning-fedmut sweep: error: FILE: expected a W&B sweep file (YAML), got 'nowhere.yaml': no such file\n")
    assert main(["sweep"]) == 2
    assert capsys.readouterr().err == "lightning-fedmut sweep: error: the following arguments are required: file\n"
    assert main(["sweep", str(SMALL), "--count", "0"]) == 2
    assert capsys.readouterr().err == "lightning-fedmut sweep: error: --count: expected a value > 0, got '0'\n"
    with pytest.raises(CLIError, match="has no parameters"):
        check_sweep({"method": "random", "parameters": None})


def test_summary_reports_the_mean_per_configuration_over_seeds(capsys):
    finals = {(1.0, 0): 0.50, (1.0, 1): 0.70, (1.0, 2): 0.60, (4.0, 0): 0.95, (4.0, 1): 0.20, (4.0, 2): 0.25}
    rows = [{"values": {"mutation.radius": r, "seed": s, "data": "digits"}, "metric": m, "returncode": 0}
            for (r, s), m in finals.items()]
    rows.append({"values": {"mutation.radius": 8.0, "seed": 0, "data": "digits"}, "metric": None, "returncode": 1})
    means = configuration_means(rows, "maximize")
    assert [(c["values"]["mutation.radius"], c["seeds"]) for c in means] == [(1.0, [0, 1, 2]), (4.0, [0, 1, 2])]
    assert means[0]["mean"] == pytest.approx(0.6) and means[1]["mean"] == pytest.approx(1.4 / 3)
    assert means[0]["std"] == pytest.approx(((0.1 ** 2 + 0.1 ** 2) / 2) ** 0.5)  # the sample std, n - 1 = 2
    assert [c["values"]["mutation.radius"] for c in configuration_means(rows, "minimize")] == [4.0, 1.0]

    _summary(rows, "val_acc", "maximize", "g")
    out = capsys.readouterr().out.splitlines()
    # the single best seed (radius 4, seed 0: 0.95) does not make radius 4 the best configuration
    assert out[:4] == [
        "Final val_acc per configuration (mean and sample std over seeds), best first:",
        "  0.6000 +- 0.1000 over 3 seeds  mutation.radius=1.0 data=digits",
        "  0.4667 +- 0.4193 over 3 seeds  mutation.radius=4.0 data=digits",
        "Best (maximize val_acc, mean over 3 seeds): 0.6000 with mutation.radius=1.0 data=digits",
    ]
    assert out[4] == "1 of 7 configuration(s) failed"


def test_run_names_show_what_varies():
    points = grid(load_sweep(EXAMPLES / "fedmut_vs_fedavg.yaml")["parameters"])
    assert run_names(points, "fedmut-vs-fedavg")[:2] == ["fedmut-vs-fedavg-1 mutation=MutationCallback seed=0",
                                                         "fedmut-vs-fedavg-2 mutation=MutationCallback seed=1"]
    names = run_names(grid(load_sweep(EXAMPLES / "grid_radius_acceleration.yaml")["parameters"]), "g")
    assert names[0] == "g-01 radius=1.0 acceleration=0.0" and len(set(names)) == 12
    assert run_names([{"a.lr": 1, "b.lr": 2}, {"a.lr": 3, "b.lr": 2}], "x") == ["x-1 a.lr=1", "x-2 a.lr=3"]
