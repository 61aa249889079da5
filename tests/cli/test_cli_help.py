"""Help texts are plain text, show defaults as optional, suggest the option meant, and count in English."""

from __future__ import annotations

import re

import pytest

from lightning_fedmut.cli import main

MARKUP = re.compile(r"``|:(?:class|func|meth|attr|mod|data|obj|exc):`|<class '|(?<![\w`])`\w[^`\n]*`")


def help_text(command: str, capsys) -> str:
    assert main([command, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["fit", "demo", "sweep"])
def test_help_has_no_restructuredtext_and_no_class_reprs(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    text = help_text(command, capsys)
    found = [ln for ln in text.splitlines() if MARKUP.search(ln)]
    assert found == [], found
    titles = [ln for ln in text.splitlines() if ln and not ln.startswith(" ") and ln.endswith(":")]
    assert all(t in ("options:", "positional arguments:") or t.startswith("--") for t in titles), titles


def test_fit_help_names_each_group_and_shows_defaults_as_optional(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    text = help_text("fit", capsys)
    titles = [ln for ln in text.splitlines() if ln.startswith("--") and ln.endswith(":")]
    assert titles[:3] == ["--partition: How the training set is divided among the clients:",
                          "--model: a LightningModule subclass by class path:",
                          ("--loop: Federate a LightningModule: rounds of local training on sampled clients,"
                          " then aggregation:")]
    usage = " ".join(text.split("\n\n")[0].split())
    assert "[--loop.rounds ROUNDS]" in usage and "[--loop.clients_per_round CLIENTS_PER_ROUND]" in usage
    rounds = text[text.index("  --loop.rounds ROUNDS"):].split("\n  --")[0]
    assert "required" not in rounds and "default: 30" in rounds
    assert "UniformSampler" in text and "(type: Aggregator | null," in " ".join(text.split())


@pytest.mark.parametrize(("flag", "message"), [
    ("--mutation.radus=2", ("--mutation.radus: MutationCallback has no argument 'radus' (did you mean"
                           " --mutation.radius?); it takes radius, acceleration, acceleration_rounds, mutate_buffers,"
                           " seed")),
    ("--model.lrr=0.1", ("--model.lrr: DigitsCNN has no argument 'lrr' (did you mean --model.lr?); it takes"
                        " num_classes, batch_norm, width, lr, momentum")),
    ("--aggregator.weigted=true", ("--aggregator.weigted: FedAvg has no argument 'weigted' (did you mean"
                                  " --aggregator.weighted?)")),
    ("--mutatoin.radius=2", "unrecognized arguments: --mutatoin.radius=2 (did you mean --mutation.radius?)"),
    ("--loop.roundz=3", "unrecognized arguments: --loop.roundz=3 (did you mean --loop.rounds?)"),
])
def test_misspelled_nested_options_are_suggested(flag, message, capsys):
    assert main(["fit", "--data=synthetic", "--logger=none", flag, "--print_config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lightning-fedmut fit: error: {message}"), err
    assert err.count("\n") == 1


def test_one_round_is_singular(capsys):
    args = ["fit", "--data=synthetic", "--partition.num_clients=4", "--loop.clients_per_round=2", "--loop.rounds=1",
            "--loop.local_steps=1", "--loop.enable_progress_bar=false", "--logger=none"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 clients, 2 per round, 1 round\n" in out and "Finished 1 round in " in out
    assert "1 rounds" not in out
