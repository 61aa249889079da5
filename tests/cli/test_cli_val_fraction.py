"""`fit --val_fraction`: each client holds out a seeded share of its examples as validation data; a module whose
scheduler monitors val_loss gets the command-line fix in one line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lightning_fedmut.cli import main
from lightning_fedmut.data import partition_dirichlet, train_val_split
from lightning_fedmut.datasets import labels_of, load_dataset
from lightning_fedmut.loop import FederatedLoop
from lightning_fedmut.models import DigitsCNN

TINY = ["--data=synthetic", "--partition.num_clients=4", "--loop.clients_per_round=2", "--loop.rounds=1",
        "--loop.local_steps=1", "--loop.enable_progress_bar=false", "--logger=none"]


class PlateauCNN(DigitsCNN):
    """Lowers its learning rate when the clients' val_loss stops improving."""

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}


def _fit_clients(monkeypatch) -> list:
    seen: list = []
    original = FederatedLoop.fit

    def fit(self, model, clients, *args, **kwargs):
        seen.extend(clients)
        return original(self, model, clients, *args, **kwargs)

    monkeypatch.setattr(FederatedLoop, "fit", fit)
    return seen


@pytest.mark.parametrize("seed", [0, 3])
def test_each_client_holds_out_the_seeded_share(seed, tmp_path, capsys, monkeypatch):
    clients = _fit_clients(monkeypatch)
    assert main(["fit", *TINY, "--val_fraction=0.25", f"--seed={seed}", f"--history_file={tmp_path / 'h.json'}"]) == 0
    train = load_dataset("synthetic").train
    parts = partition_dirichlet(labels_of(train), 4, 0.1, min_size=2, seed=seed)
    expected = train_val_split(parts, 0.25, seed)
    assert [c.id for c in clients] == [0, 1, 2, 3]
    for client in clients:
        train_idx, val_idx = expected[client.id]
        assert client.data.dataset.indices == train_idx.tolist() and client.num_examples == len(train_idx)
        assert client.val_data.dataset.indices == val_idx.tolist()
        n = len(parts[client.id])
        assert len(val_idx) == math.ceil(0.25 * n) and len(train_idx) + len(val_idx) == n
    row = json.loads((tmp_path / "h.json").read_text())["history"][0]
    assert json.loads((tmp_path / "h.json").read_text())["config"]["val_fraction"] == 0.25
    assert {"clients/val_loss", "clients/val_acc", "clients/val_loss_min"} <= set(row)  # the clients' own validation


@pytest.mark.parametrize("value, shown", [("-0.1", " in [0, 1), got -0.1"), ("1", " in [0, 1), got 1.0"),
                                          ("1.5", " in [0, 1), got 1.5"), ("nan", ", got 'nan'")])
def test_a_fraction_outside_0_1_is_one_line_before_training(value, shown, capsys):
    assert main(["fit", *TINY, f"--val_fraction={value}"]) == 2
    out, err = capsys.readouterr()
    assert err == f"lightning-fedmut fit: error: --val_fraction: expected a number{shown}\n"
    assert out == ""  # nothing was built or trained


def test_a_client_too_small_to_split_names_val_fraction(capsys):
    assert main(["fit", *TINY, "--partition.num_clients=40", "--partition.min_size=1", "--loop.clients_per_round=2",
                 "--val_fraction=0.9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lightning-fedmut fit: error: --val_fraction: Client ") and len(err.splitlines()) == 1
    assert "leaves none to" in err


def test_a_scheduler_monitoring_val_loss_gets_the_command_line_fix(capsys, monkeypatch):
    clients = _fit_clients(monkeypatch)
    model = ["--model=test_cli_val_fraction.PlateauCNN", "--loop.local_steps=null", "--loop.local_epochs=1"]
    assert main(["fit", *TINY, *model]) == 2
    out, err = capsys.readouterr()
    assert err == ("lightning-fedmut fit: error: --model: `configure_optimizers` of PlateauCNN returns a scheduler that"
                   " monitors 'val_loss', but the clients have no validation data: pass --val_fraction 0.1 (each"
                   " client holds out 10% of its examples for validation), or monitor a training metric"
                   " (e.g. 'train_loss')\n")
    assert "Finished" not in out and len(clients) == 4 and all(c.val_data is None for c in clients)
    assert main(["fit", *TINY, *model, "--val_fraction", "0.1"]) == 0
    assert "Finished 1 round" in capsys.readouterr().out
