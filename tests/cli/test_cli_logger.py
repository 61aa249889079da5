"""`fit --logger mlflow|tensorboard`: Lightning's own loggers write the per-round metrics under --save_dir; a missing
package is one line naming the pip install."""

from __future__ import annotations

import json
import sys

import pytest

from lightning_fedmut.cli import main
from lightning_fedmut.cli.fit import check_fit_args

TINY = ["--data=synthetic", "--partition.num_clients=4", "--loop.clients_per_round=2", "--loop.rounds=2",
        "--loop.local_steps=1", "--loop.enable_progress_bar=false", "--seed=2"]


def _history(path) -> list[dict]:
    return json.loads(path.read_text())["history"]


def test_mlflow_writes_a_local_file_store_with_every_round(tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = [*TINY, "--logger=mlflow", f"--save_dir={tmp_path}", "--project=p", "--run_name=r1",
            f"--history_file={tmp_path / 'h.json'}"]
    assert main(["fit", *args]) == 0
    capsys.readouterr()
    (run,) = [p for p in (tmp_path / "mlruns").glob("*/*") if (p / "meta.yaml").exists()]
    assert "name: p\n" in (run.parent / "meta.yaml").read_text()  # the experiment
    assert (run / "tags" / "mlflow.runName").read_text() == "r1"
    assert (run / "params" / "loop.rounds").read_text() == "2" and (run / "params" / "seed").read_text() == "2"
    history = _history(tmp_path / "h.json")
    for metric in ("val_acc", "val_loss"):
        lines = [line.split() for line in (run / "metrics" / metric).read_text().splitlines()]
        assert [(float(value), int(step)) for _, value, step in lines] == [(r[metric], r["round"]) for r in history]
    assert (run / "metrics" / "clients" / "train_loss").exists()


def test_tensorboard_writes_an_event_file_with_every_round(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = [*TINY, "--logger=tensorboard", f"--save_dir={tmp_path}", "--project=p",
            f"--history_file={tmp_path / 'h.json'}"]
    assert main(["fit", *args]) == 0
    capsys.readouterr()
    (events,) = (tmp_path / "p" / "version_0").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    history = _history(tmp_path / "h.json")
    assert {"val_acc", "val_loss", "clients/train_loss", "round_time"} <= set(accumulator.Tags()["scalars"])
    for metric in ("val_acc", "val_loss"):
        events_ = accumulator.Scalars(metric)
        assert [e.step for e in events_] == [0, 1]
        assert [e.value for e in events_] == pytest.approx([r[metric] for r in history], rel=1e-6)
    assert "hp_metric" not in accumulator.Tags()["scalars"]


@pytest.mark.parametrize("kind, package", [("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_a_missing_package_is_one_line_naming_the_pip_install(kind, package, tmp_path, capsys, monkeypatch):
    for module in {package, "tensorboardX", *(m for m in sys.modules if m.startswith(f"{package}."))}:
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    assert main(["fit", *TINY, f"--logger={kind}", f"--save_dir={tmp_path}"]) == 1
    out, err = capsys.readouterr()
    assert err == (f"lightning-fedmut fit: error: --logger {kind}: the {kind} logger needs the {package} package, which"
                   f" is not installed: pip install {package} (or pip install 'lightning_fedmut[loggers]')\n")
    assert out == "" and list(tmp_path.iterdir()) == []  # refused before anything was built or written
    with pytest.raises(Exception, match=f"pip install {package} "):  # a sweep checks its configurations so
        check_fit_args([*TINY, f"--logger={kind}"])


def test_logger_choices_name_every_logger(capsys):
    assert main(["fit", *TINY, "--logger=neptune"]) == 2
    assert "--logger: expected one of wandb, mlflow, tensorboard, csv, none, got 'neptune'" in capsys.readouterr().err
