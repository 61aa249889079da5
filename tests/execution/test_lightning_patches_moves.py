"""The client Trainers' skipped module moves and environment lookup: still reached through what they patch, applied
only around Trainers, and falling back to Lightning's own code whenever it would do something."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyModule
from lightning.fabric.utilities.device_dtype_mixin import _DeviceDtypeModuleMixin
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import argparse as lightning_argparse

from lightning_fedmut import FederatedLoop, make_clients
from lightning_fedmut.data import partition_iid
from lightning_fedmut.utilities import trainer as trainer_utils

CPU = torch.device("cpu")


def test_client_trainers_still_move_the_module_through_the_patched_to_and_cpu(synthetic, monkeypatch):
    """Fails when a Lightning release stops moving the module with ``.to(device)`` at setup and ``.cpu()`` at
    teardown: the patches would no longer apply."""
    calls = []
    real = trainer_utils.module_on

    def counted(module, device):
        calls.append((type(module).__name__, device))
        return real(module, device)

    monkeypatch.setattr(trainer_utils, "module_on", counted)
    train, _ = synthetic
    FederatedLoop(rounds=1, clients_per_round=2, local_steps=1, enable_progress_bar=False).fit(
        TinyModule(), make_clients(train, partition_iid(len(train), 4, seed=0), batch_size=16))
    assert calls == [("TinyModule", CPU)] * 4  # two clients: the move at setup, the move back at teardown
    assert not getattr(_DeviceDtypeModuleMixin.to, "_lightning_fedmut", False)  # restored after the Trainers
    assert not getattr(_DeviceDtypeModuleMixin.cpu, "_lightning_fedmut", False)


def test_a_move_that_moves_something_runs_lightnings_code(monkeypatch):
    module = TinyModule()
    module.register_buffer("elsewhere", torch.zeros(1, device="meta"))
    moved = []
    original = _DeviceDtypeModuleMixin.cpu

    def spy(self):
        moved.append(type(self).__name__)
        return original(self)

    monkeypatch.setattr(_DeviceDtypeModuleMixin, "cpu", spy)
    with trainer_utils.quiet_lightning(), pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):
        assert not trainer_utils.module_on(module, CPU)
        module.cpu()  # the patch hands it to the original, which cannot copy a meta tensor's data
    assert moved == ["TinyModule"]


def test_a_move_that_moves_nothing_walks_no_submodule(monkeypatch):
    module = TinyModule()
    applied = []
    original = torch.nn.Module._apply

    def spy(self, fn, recurse=True):
        applied.append(type(self).__name__)
        return original(self, fn, recurse)

    monkeypatch.setattr(torch.nn.Module, "_apply", spy)
    with trainer_utils.quiet_lightning():
        assert module.to(CPU) is module and module.cpu() is module
    assert applied == []
    module.cpu()
    assert applied  # outside the context, Lightning's own code runs


def test_metrics_elsewhere_count_as_something_to_move():
    from torchmetrics.classification import MulticlassAccuracy

    module = TinyModule()
    module.acc = MulticlassAccuracy(3)
    module.acc._device = torch.device("meta")
    assert not trainer_utils.module_on(module, CPU)


def test_trainer_construction_still_reads_the_environment_through_the_patched_lookup(monkeypatch):
    """Fails when ``Trainer.__init__`` stops calling ``argparse._parse_env_variables``: the patch would not apply."""
    seen = []
    with trainer_utils.quiet_lightning():
        patched = lightning_argparse._parse_env_variables
        assert getattr(patched, "_lightning_fedmut", False)

        def spy(cls, *args):
            seen.append(cls)
            return patched(cls, *args)

        monkeypatch.setattr(lightning_argparse, "_parse_env_variables", spy)
        Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert seen == [Trainer]


def test_an_environment_default_is_still_honoured(monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("PL_TRAINER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PL_TRAINER_MAX_EPOCHS", "3")
    with trainer_utils.quiet_lightning():
        assert getattr(lightning_argparse._parse_env_variables, "_lightning_fedmut", False)  # the patched lookup
        trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert trainer.max_epochs == 3


def test_without_an_environment_default_lightnings_lookup_is_skipped(monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("PL_TRAINER_")]:
        monkeypatch.delenv(key)
    looked_up = []
    original = lightning_argparse._parse_env_variables

    def spy(cls, *args):
        looked_up.append(cls)
        return original(cls, *args)

    monkeypatch.setattr(lightning_argparse, "_parse_env_variables", spy)
    with trainer_utils.quiet_lightning():
        trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=2)
    assert (looked_up, trainer.max_epochs) == ([], 2)
    Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert looked_up == [Trainer]  # restored outside the context


@pytest.mark.parametrize("target", ["_DeviceDtypeModuleMixin.to", "argparse._parse_env_variables"])
def test_a_moved_target_warns_instead_of_silently_doing_nothing(monkeypatch, target):
    if target.startswith("argparse"):
        monkeypatch.delattr(lightning_argparse, "_parse_env_variables")
        context = trainer_utils._skip_unset_env_defaults
    else:
        monkeypatch.delattr(_DeviceDtypeModuleMixin, "to")
        context = trainer_utils._skip_redundant_module_moves
    monkeypatch.setattr(trainer_utils, "_warned_missing", set())
    with pytest.warns(RuntimeWarning, match=f"could not find Lightning's `{target}`"), context():
        pass
