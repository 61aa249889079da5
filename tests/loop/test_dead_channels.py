"""No dead channels: no ``merge`` on aggregators, no SCAFFOLD payloads nobody reads, FedExP's report is FedExP's."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from helpers import TinyModule, state_of
from torch.utils.data import DataLoader

from lightning_fedmut import FederatedLoop, make_clients
from lightning_fedmut.aggregators import Aggregator, FedAvg, FedExP, FedExPReport, FedNova
from lightning_fedmut.algorithms import ClusteredSampling
from lightning_fedmut.algorithms.fedexp import FedExP as FedExPMethod
from lightning_fedmut.callbacks import Scaffold, ServerReport
from lightning_fedmut.data import partition_dirichlet
from lightning_fedmut.sampling import ClusteredSampler
from lightning_fedmut.tasks import ClientResult, ClientTask


def fit(synthetic, rounds=3, **loop_args):
    train, val = synthetic
    parts = partition_dirichlet(train.tensors[1].numpy(), num_clients=8, alpha=0.5, min_size=8, seed=0)
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True)
    loop = FederatedLoop(rounds=rounds, clients_per_round=3, local_steps=2, seed=0, enable_progress_bar=False,
                         **loop_args)
    result = loop.fit(model, make_clients(train, parts, batch_size=8), val_dataloaders=DataLoader(val, batch_size=60))
    return model, result, loop


@pytest.mark.parametrize("cls", [Aggregator, FedAvg, FedExP, FedNova])
def test_aggregators_have_no_merge(cls):
    assert not hasattr(cls, "merge")


def test_a_task_has_no_payload_and_a_result_keeps_its_own():
    assert "payload" not in {f.name for f in dataclasses.fields(ClientTask)}
    assert "payload" in {f.name for f in dataclasses.fields(ClientResult)}


class Payloads(FedAvg):
    def __init__(self):
        super().__init__(weighted=False)
        self.payloads = []

    def update(self, result):
        self.payloads.append(dict(result.payload))
        super().update(result)


def test_scaffold_sends_no_payload_and_its_numbers_stand(synthetic):
    agg = Payloads()
    _, result, loop = fit(synthetic, aggregator=agg, callbacks=[Scaffold()])
    assert agg.payloads == [{}] * 9
    assert loop.callbacks[0].control  # the server control still moved
    assert all(row["scaffold/control_norm"] > 0 for row in result.history)


def test_the_fedexp_method_alone_reports_as_fedexp_with_server_report_did(synthetic):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old_model, old, _ = fit(synthetic, aggregator=FedExP(), callbacks=[ServerReport(average_last_two=True)])
    model, new, loop = fit(synthetic, algorithm=FedExPMethod(average_last_two=True))
    assert [type(cb).__name__ for cb in loop.callbacks] == ["FedExPReport"]
    assert new.history == old.history  # same keys, same numbers
    assert all(torch.equal(v, state_of(old_model)[k]) for k, v in state_of(model).items())
    _, component, _ = fit(synthetic, aggregator=FedExP(), callbacks=[FedExPReport()])
    assert component.history == new.history
    _, iterate, _ = fit(synthetic, aggregator=FedExP())
    assert iterate.history[0]["val_loss"] == new.history[0]["val_loss"]  # the first round has no earlier iterate
    assert iterate.history[-1]["val_loss"] != new.history[-1]["val_loss"]  # later, the average is what is evaluated


def test_fedexp_report_checkpoint_state_is_server_reports(synthetic):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        _, _, old = fit(synthetic, rounds=2, aggregator=FedExP(), callbacks=[ServerReport(average_last_two=True)])
    _, _, new = fit(synthetic, rounds=2, aggregator=FedExP(), callbacks=[FedExPReport()])
    a, b = old.callbacks[0].state_dict(), new.callbacks[0].state_dict()
    assert a.keys() == b.keys() == {"keys", "previous", "previous_iterate", "iterates"}
    assert (a["keys"], a["previous_iterate"], a["iterates"]) == (b["keys"], b["previous_iterate"], b["iterates"]) == (
        b["keys"], 1, 2)
    assert all(torch.equal(x, y) for x, y in zip(a["previous"], b["previous"], strict=True))


@pytest.mark.parametrize("average_last_two", [False, True])
def test_server_report_is_deprecated(average_last_two):
    with pytest.warns(DeprecationWarning, match="ServerReport is deprecated and will be removed in the next release"):
        report = ServerReport(average_last_two=average_last_two)
    assert report.hparams == {"average_last_two": average_last_two}


def test_server_report_adds_nothing_to_clustered_sampling(synthetic):
    """What ``ServerReport()`` reported with clustered sampling (the clusters) the loop reports without it."""
    with pytest.warns(DeprecationWarning, match="use nothing: the loop reports the aggregator's and the sampler's"):
        _, old, _ = fit(synthetic, sampler=ClusteredSampler(), callbacks=[ServerReport()])
    _, new, _ = fit(synthetic, algorithm=ClusteredSampling(weighted=True))
    assert new.history == old.history and all("clustered_sampling/clusters" in row for row in new.history)

