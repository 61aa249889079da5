"""`lightning-fedmut demo` at a reduced size, its defaults, and W&B's offline fallback."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from lightning_fedmut.cli import _logging, main
from lightning_fedmut.cli._parser import parse
from lightning_fedmut.cli.demo import FLAGS, demo_kwargs, demo_parser

sys.path.insert(0, str(Path(__file__).parents[1] / "fixtures_cli"))
from wandb_offline_run import offline_runs, read_run

SMALL = ["--rounds=3", "--clients=6", "--clients_per_round=2", "--seeds=2", "--local_epochs=1"]


def test_demo_prints_both_methods_per_round(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.delenv("WANDB_SILENT", raising=False)  # the demo keeps W&B quiet by itself
    out_dir = tmp_path / "demo"
    figures = []
    try:
        from lightning_fedmut import plotting
    except ImportError:  # pragma: no cover - matplotlib is imported lazily
        plotting = None
    if plotting is not None:
        original = plotting.plot_metric
        monkeypatch.setattr(plotting, "plot_metric", lambda *a, **k: figures.append(original(*a, **k)) or figures[-1])
    assert main(["demo", *SMALL, f"--output_dir={out_dir}", "--logger=wandb"]) == 0
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("FedMut vs FedAvg on digits (1348 train / 449 test images): 6 clients (Dirichlet"
                               " alpha=0.1), 2 per round, 3 rounds, 1 local epoch, batch 50, SGD lr 0.01 momentum 0.5;"
                               " FedMut radius 4.0, acceleration 0.3; uniform averaging; seeds 0-1")
    header = lines.index("round  FedMut  FedAvg  FedMut-FedAvg")
    assert lines[header - 1] == "test accuracy of the global model (mean over 2 seeds)"
    rows = [ln.split() for ln in lines[header + 1 : header + 4]]
    assert [r[0] for r in rows] == ["0", "1", "2"]  # rounds from 0, as in result.history and W&B

    # a quiet console: no W&B block, one `wandb sync` hint
    assert not any(ln.lstrip("\r").startswith("wandb:") for ln in (out + err).splitlines())
    # not a terminal: each of the 4 runs prints one line per round instead of a bar
    progress = [ln for ln in err.split("\n") if ln.strip()]
    assert "\r" not in err
    assert [ln.split(":")[0] for ln in progress] == ["round 0 (1/3)", "round 1 (2/3)", "round 2 (3/3)"] * 4, err
    assert out.count("wandb sync") == 1 and out.rstrip().splitlines()[-1].startswith("Upload later with: wandb sync ")

    # the table is the mean over seeds of the per-seed histories written to history.csv
    with open(out_dir / "history.csv") as f:
        records = list(csv.DictReader(f))
    assert len(records) == 2 * 2 * 3
    for r, row in enumerate(rows):
        for method, shown in (("FedMut", row[1]), ("FedAvg", row[2])):
            accs = [float(x["val_acc"]) for x in records if x["method"] == method and int(x["round"]) == r]
            assert len(accs) == 2 and shown == f"{np.mean(accs):.3f}"
        assert row[3] == f"{float(row[1]) - float(row[2]):+.3f}" or abs(float(row[3]) - (float(row[1]) - float(row[2]))) < 2e-3
    # round 0 starts from the same model with the same clients: mutation only acts from round 1 on
    assert rows[0][1] == rows[0][2] and rows[0][3] in ("+0.000", "-0.000")
    ahead = sum(float(r[3]) > 0 for r in rows)
    assert lines[header + 4] == f"FedMut ahead in {ahead} of 3 rounds; last round (2) {rows[2][1]} vs {rows[2][2]}"

    pytest.importorskip("matplotlib")
    assert (out_dir / "accuracy.png").stat().st_size > 1000
    assert (out_dir / "label_distribution.png").stat().st_size > 1000

    runs = [read_run(f) for f in offline_runs(str(tmp_path / "wb"))]
    assert sorted(r["name"] for r in runs) == ["fedavg-seed0", "fedavg-seed1", "fedmut-seed0", "fedmut-seed1"]
    assert len({r["group"] for r in runs}) == 1 and runs[0]["group"].startswith("demo-")
    assert {r["project"] for r in runs} == {"lightning-fedmut-demo"}
    fedmut = next(r for r in runs if r["name"] == "fedmut-seed1")
    assert fedmut["config"]["demo.method"] == "FedMut" and fedmut["config"]["demo.radius"] == 4.0
    assert fedmut["config"]["demo.clients"] == 6 and fedmut["config"]["demo.alpha"] == 0.1
    assert "W&B: WANDB_MODE=offline, so 4 runs were logged offline in" in out
    assert "Upload later with: wandb sync " in out

    # one round numbering: W&B's `round`, the CSV, the table and the plot's x axis agree, round by round
    for run in runs:
        method, seed = {"fedmut": "FedMut", "fedavg": "FedAvg"}[run["name"].split("-")[0]], run["name"][-1]
        logged = [(h["round"], h["val_acc"]) for h in run["history"] if "val_acc" in h]
        written = [(int(x["round"]), float(x["val_acc"])) for x in records if x["method"] == method and x["seed"] == seed]
        assert logged == written and [r for r, _ in logged] == [0, 1, 2]
    if plotting is not None:
        (accuracy,) = [f for f in figures if f.axes[0].get_ylabel() == "val_acc"]
        for line in accuracy.axes[0].get_lines():
            assert line.get_xdata().tolist() == [0, 1, 2]
            shown = {"FedMut": [float(r[1]) for r in rows], "FedAvg": [float(r[2]) for r in rows]}[line.get_label()]
            assert np.round(line.get_ydata(), 3).tolist() == shown


def test_demo_defaults_are_the_paper_setting_on_digits():
    assert demo_kwargs(parse(demo_parser(), [])) == {
        "rounds": 30, "clients": 50, "clients_per_round": 10, "alpha": 0.1, "seeds": 3, "local_epochs": 5,
        "batch_size": 50, "lr": 0.01, "momentum": 0.5, "radius": 4.0, "acceleration": 0.3, "min_size": 2,
        "output_dir": "fedmut_demo", "logger": "wandb", "project": "lightning-fedmut-demo",
    }


def test_demo_and_fit_share_flag_names():
    from lightning_fedmut.cli.fit import fit_parser

    examples = {"loop.rounds": 7, "partition.num_clients": 12, "loop.clients_per_round": 3, "partition.alpha": 0.5,
                "partition.min_size": 4, "loop.local_epochs": 2, "batch_size": 20, "model.lr": 0.05,
                "model.momentum": 0.9, "mutation.radius": 2.5, "mutation.acceleration": 0.1, "logger": "csv",
                "project": "p"}
    demo_flags = {a.dest for a in demo_parser()._actions if a.dest != "help"}
    assert demo_flags - set(examples) == {"seeds", "output_dir"}  # the demo's own settings
    for flag, value in examples.items():  # each means in `fit` what it means in the demo
        demo = demo_kwargs(parse(demo_parser(), [f"--{flag}={value}"]))
        fit = parse(fit_parser([]), [f"--{flag}={value}"])
        head, _, rest = flag.partition(".")
        in_fit = fit[head].init_args[rest] if head in ("model", "mutation") else fit[flag]
        name = next(n for n, (f, _) in FLAGS.items() if f == flag)
        assert demo[name] == in_fit == value, flag
    short = demo_kwargs(parse(demo_parser(), ["--rounds=4", "--radius=1.5", "--alpha=0.5"]))  # the short names too
    assert (short["rounds"], short["radius"], short["alpha"]) == (4, 1.5, 0.5)


def test_demo_bad_sizes_exit_2(capsys, tmp_path):
    assert main(["demo", "--clients=4", "--clients_per_round=5", "--logger=none", f"--output_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err == ("lightning-fedmut demo: error: --loop.clients_per_round: expected at most"
                                       " --partition.num_clients (4), got 5\n")
    assert main(["demo", "--seeds=0"]) == 2
    assert capsys.readouterr().err == "lightning-fedmut demo: error: --seeds: expected a value > 0, got '0'\n"


def test_wandb_goes_offline_without_an_api_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no file: no credentials
    monkeypatch.setattr(_logging, "_AUTO_OFFLINE", False)
    assert _logging.has_wandb_credentials() is False
    assert _logging.choose_wandb_mode() == "offline"
    assert _logging.os.environ["WANDB_MODE"] == "offline"
    assert _logging.offline_notice("/x/wandb/offline-run-1") == (
        "W&B: no W&B API key is configured, so the run was logged offline in /x/wandb/offline-run-1\n"
        "Upload later with: wandb sync /x/wandb/offline-run-1")
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password not-a-real-key\n")
    assert _logging.has_wandb_credentials() is True
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert _logging.choose_wandb_mode() == "disabled"
