"""The patches of Lightning internals: present, applied only around client and evaluation Trainers, and
loud when a Lightning release moves what they patch."""

from __future__ import annotations

import importlib

import pytest
from helpers import TinyModule
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from lightning_fedmut import FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut.data import partition_iid
from lightning_fedmut.utilities import trainer as trainer_utils


def _target(module_name, attr_path):
    obj = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize(("module_name", "attr_path"), trainer_utils.PATCH_TARGETS)
def test_what_the_patches_replace_still_exists(module_name, attr_path):
    """Fails when a Lightning release moves a patched function: the patch would silently stop applying."""
    assert callable(_target(module_name, attr_path))


def test_trainer_construction_still_calls_the_patched_scan():
    from lightning.pytorch.trainer.connectors import callback_connector

    groups = []
    with trainer_utils.quiet_lightning():
        patched = callback_connector._load_external_callbacks
        assert getattr(patched, "__name__", "") == "load_external_callbacks"

        def spy(group):
            groups.append(group)
            return patched(group)

        callback_connector._load_external_callbacks = spy
        try:
            Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
        finally:
            callback_connector._load_external_callbacks = patched
    assert groups, "Trainer.__init__ no longer calls callback_connector._load_external_callbacks"


def test_entry_point_scan_runs_once_per_cache(monkeypatch):
    calls = []
    real = trainer_utils.entry_points

    def counting(**kwargs):
        calls.append(kwargs["group"])
        return real(**kwargs)

    monkeypatch.setattr(trainer_utils, "entry_points", counting)
    cache: dict = {}
    for _ in range(3):
        with trainer_utils.quiet_lightning(cache):
            Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert len(calls) == len(set(calls)) >= 1


def test_metric_move_patch_runs_inside_client_fits(synthetic, monkeypatch):
    from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric

    calls = []
    original_to = _ResultMetric.to
    real = trainer_utils._all_on

    def counted(values, device):
        calls.append(device)
        return real(values, device)

    monkeypatch.setattr(trainer_utils, "_all_on", counted)
    train, _ = synthetic
    FederatedLoop(rounds=1, clients_per_round=2, local_steps=2, enable_progress_bar=False).fit(
        TinyModule(), make_clients(train, partition_iid(len(train), 4, seed=0), batch_size=16))
    assert calls, "the patched _ResultMetric.to was never called during client training"
    assert _ResultMetric.to is original_to  # restored after the client Trainers


def test_patches_apply_around_trainers_only(synthetic):
    """Inside a client Trainer both patches are active; in the loop's own phases neither is."""
    from lightning.pytorch.trainer.connectors import callback_connector
    from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric

    original_scan, original_to = callback_connector._load_external_callbacks, _ResultMetric.to
    seen = []

    class InTrainer(Callback):
        def on_train_start(self, trainer, pl_module):
            seen.append(("client", callback_connector._load_external_callbacks is not original_scan,
                         _ResultMetric.to is not original_to))

        def on_validation_start(self, trainer, pl_module):
            seen.append(("evaluation", callback_connector._load_external_callbacks is not original_scan,
                         _ResultMetric.to is not original_to))

    class InLoop(FederatedCallback):
        def _check(self, phase):
            seen.append((phase, callback_connector._load_external_callbacks is not original_scan,
                         _ResultMetric.to is not original_to))

        def on_round_start(self, loop, module):
            self._check("round_start")

        def on_client_fit_start(self, loop, module, task):
            self._check("client_fit_start")

        def on_after_aggregate(self, loop, module):
            self._check("after_aggregate")

    train, val = synthetic
    FederatedLoop(rounds=1, clients_per_round=1, local_steps=1, callbacks=[InLoop()],
                  trainer_kwargs={"callbacks": [InTrainer()]}, enable_progress_bar=False).fit(
        TinyModule(), make_clients(train, partition_iid(len(train), 2, seed=0), batch_size=16),
        val_dataloaders=DataLoader(val, batch_size=60))
    assert seen == [("round_start", False, False), ("client_fit_start", False, False), ("client", True, True),
                    ("after_aggregate", False, False), ("evaluation", True, True)]


def test_a_moved_target_warns_instead_of_silently_doing_nothing(monkeypatch):
    from lightning.pytorch.trainer.connectors import callback_connector

    monkeypatch.delattr(callback_connector, "_load_external_callbacks")
    monkeypatch.setattr(trainer_utils, "_warned_missing", set())
    message = "could not find Lightning's `callback_connector._load_external_callbacks`"
    with pytest.warns(RuntimeWarning, match=message), trainer_utils.quiet_lightning():
        pass


class _Preparing(TinyModule):
    def __init__(self):
        super().__init__()
        self.prepared = 0

    def prepare_data(self):
        self.prepared += 1


def _fit_and_validate(model, synthetic):
    train, val = synthetic
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=1)
    trainer.fit(model, DataLoader(train, batch_size=16), DataLoader(val, batch_size=60))
    trainer.validate(model, DataLoader(val, batch_size=60), verbose=False)


def test_lightning_still_prepares_data_only_through_the_patched_data_connector(synthetic):
    """Fails when a Lightning release calls ``prepare_data`` elsewhere: client Trainers would call it again."""
    model = _Preparing()
    with trainer_utils.quiet_console():
        _fit_and_validate(model, synthetic)
    assert model.prepared == 2  # Lightning's own behaviour: fit and validate each prepare
    with trainer_utils.quiet_lightning(prepare_data=False):
        _fit_and_validate(model, synthetic)
    assert model.prepared == 2
    from lightning.pytorch.trainer.connectors.data_connector import _DataConnector

    assert not getattr(_DataConnector.prepare_data, "_lightning_fedmut", False)  # restored on exit


def test_a_moved_data_connector_warns_instead_of_silently_doing_nothing(monkeypatch):
    from lightning.pytorch.trainer.connectors.data_connector import _DataConnector

    monkeypatch.delattr(_DataConnector, "prepare_data")
    monkeypatch.setattr(trainer_utils, "_warned_missing", set())
    message = r"could not find Lightning's `_DataConnector.prepare_data`"
    with pytest.warns(RuntimeWarning, match=message), trainer_utils.skip_prepare_data():
        pass
    assert "prepare_data" not in _DataConnector.__dict__  # nothing patched in
