"""What travels between workers: a client's trained state without the entries the federation policy keeps
frozen or local, filled in from the start state on arrival."""

from __future__ import annotations

import torch

from lightning_fedmut.distributed.executor import _pack, _unpack
from lightning_fedmut.tasks import ClientResult, ClientTask


def test_frozen_and_local_entries_do_not_travel_and_arrive_from_the_start_state():
    start = {"base.weight": torch.zeros(1000), "lora_A": torch.zeros(4), "bn.running_mean": torch.zeros(3)}
    task = ClientTask(round=0, slot=2, client=None, seed=0, start_state=start)
    trained = {"base.weight": torch.ones(1000), "lora_A": torch.arange(4.0), "bn.running_mean": torch.full((3,), 7.0)}
    record = _pack(ClientResult(task=task, num_examples=5, state=trained), frozenset({"base.weight", "bn.running_mean"}))
    assert list(record["state"]) == ["lora_A"]  # 4 numbers travel, not 1007
    arrived = _unpack(task, record).state
    assert list(arrived) == list(start)  # state_dict order
    assert torch.equal(arrived["lora_A"], torch.arange(4.0))
    assert arrived["base.weight"] is start["base.weight"] and arrived["bn.running_mean"] is start["bn.running_mean"]


def test_without_a_policy_the_whole_state_travels():
    start = {"w": torch.zeros(2), "b": torch.zeros(1)}
    task = ClientTask(round=0, slot=0, client=None, seed=0, start_state=start)
    record = _pack(ClientResult(task=task, num_examples=1, state={"w": torch.ones(2), "b": torch.ones(1)}))
    arrived = _unpack(task, record).state
    assert list(record["state"]) == ["w", "b"] and all(torch.equal(arrived[k], torch.ones_like(start[k])) for k in start)
