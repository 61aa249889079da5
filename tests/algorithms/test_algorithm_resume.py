"""A preset resumes exactly: crash at round 2, resume from the checkpoint, the same weights and history."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyModule, state_of
from torch.utils.data import DataLoader

from lightning_fedmut import FederatedCallback, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut import algorithms as algos
from lightning_fedmut.aggregators import FedAvg
from lightning_fedmut.data import partition_dirichlet

PRESETS = {
    "FedMut": lambda: algos.FedMut(radius=2.0),
    "SCAFFOLD": lambda: algos.SCAFFOLD(),
    "FedMR": lambda: algos.FedMR(first_stage_bound=1),
    "FedAdam": lambda: algos.FedAdam(server_lr=0.05),
}


class Crash(FederatedCallback):
    def on_round_start(self, loop, module):
        if loop.round == 2:
            raise RuntimeError("crash at round 2")


def run(plugins, train, val, checkpoint_dir=None, ckpt_path=None, extra=()):
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True, momentum=0.5)
    parts = partition_dirichlet(train.tensors[1].numpy(), num_clients=8, alpha=0.5, min_size=8, seed=0)
    loop = FederatedLoop(rounds=4, clients_per_round=3, local_steps=2, seed=0, enable_progress_bar=False,
                         checkpoint_dir=checkpoint_dir, callbacks=list(extra), **plugins)
    result = loop.fit(model, make_clients(train, parts, batch_size=8), val_dataloaders=DataLoader(val, batch_size=60),
                      ckpt_path=ckpt_path)
    return model, result


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_preset_resumes_bit_for_bit(name, synthetic, tmp_path):
    train, val = synthetic
    model, result = run({"algorithm": PRESETS[name]()}, train, val)
    with pytest.raises(RuntimeError, match="crash at round 2"):
        run({"algorithm": PRESETS[name]()}, train, val, checkpoint_dir=tmp_path, extra=[Crash()])
    resumed_model, resumed = run({"algorithm": PRESETS[name]()}, train, val, checkpoint_dir=tmp_path, ckpt_path="last")
    expected = state_of(model)
    assert all(torch.equal(v, expected[k]) for k, v in state_of(resumed_model).items())
    assert resumed.history == result.history and [r["round"] for r in resumed.history] == [0, 1, 2, 3]
    assert resumed.client_history == result.client_history


def test_a_component_run_resumes_as_its_preset(synthetic, tmp_path):
    """The checkpoint's fingerprint holds the components: a run started as components resumes as the preset."""
    train, val = synthetic
    model, result = run({"algorithm": algos.FedMut(radius=2.0)}, train, val)
    with pytest.raises(RuntimeError, match="crash at round 2"):
        run({"aggregator": FedAvg(weighted=False)}, train, val, checkpoint_dir=tmp_path,
            extra=[MutationCallback(radius=2.0), Crash()])
    resumed_model, resumed = run({"algorithm": algos.FedMut(radius=2.0)}, train, val, checkpoint_dir=tmp_path,
                                 ckpt_path="last")
    expected = state_of(model)
    assert all(torch.equal(v, expected[k]) for k, v in state_of(resumed_model).items())
    assert resumed.history == result.history
