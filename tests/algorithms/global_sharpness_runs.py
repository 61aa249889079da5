"""A small federation on the synthetic data for the resume and worker tests of FedGloSS, FedSMOO and SWA."""

from __future__ import annotations

import torch
from helpers import TinyModule, state_of
from torch.utils.data import DataLoader

from lightning_fedmut import FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut.data import partition_dirichlet


class Crash(FederatedCallback):
    def on_round_start(self, loop, module):
        if loop.round == 2:
            raise RuntimeError("crash at round 2")


def run(synthetic, make_algorithm, checkpoint_dir=None, ckpt_path=None, extra=(), executor=None, rounds=4):
    train, val = synthetic
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True, momentum=0.5)
    parts = partition_dirichlet(train.tensors[1].numpy(), num_clients=8, alpha=0.5, min_size=8, seed=0)
    loop = FederatedLoop(rounds=rounds, clients_per_round=3, local_steps=2, seed=0, enable_progress_bar=False,
                         checkpoint_dir=checkpoint_dir, callbacks=list(extra), algorithm=make_algorithm(),
                         executor=executor)
    result = loop.fit(model, make_clients(train, parts, batch_size=8), val_dataloaders=DataLoader(val, batch_size=60),
                      ckpt_path=ckpt_path)
    return state_of(model), result, loop


def check_resume(synthetic, tmp_path, make_algorithm):
    expected, result, _ = run(synthetic, make_algorithm)
    try:
        run(synthetic, make_algorithm, checkpoint_dir=tmp_path, extra=[Crash()])
    except RuntimeError as exc:
        assert str(exc) == "crash at round 2"
    else:
        raise AssertionError("the run did not crash")
    resumed, resumed_result, loop = run(synthetic, make_algorithm, checkpoint_dir=tmp_path, ckpt_path="last")
    assert all(torch.equal(v, expected[k]) for k, v in resumed.items())
    assert resumed_result.history == result.history and [r["round"] for r in result.history] == [0, 1, 2, 3]
    assert resumed_result.client_history == result.client_history
    return loop


def check_workers(synthetic, make_algorithm, distributed):
    one, one_result, _ = run(synthetic, make_algorithm, rounds=3)
    two, two_result, _ = run(synthetic, make_algorithm, rounds=3,
                             executor=distributed.DistributedExecutor(workers=2, timeout=60.0))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert one_result.history == two_result.history
    assert one_result.client_history == two_result.client_history
