"""Collectives are not part of the executor interface: the base class's old ones are deprecated no-ops."""

from __future__ import annotations

import pytest
import torch

from lightning_fedmut.execution import SequentialExecutor


def test_the_base_collectives_are_deprecated_and_do_nothing_in_one_process():
    executor = SequentialExecutor()
    tensor = torch.ones(2)
    with pytest.deprecated_call(match=r"add_state\(name, default, reduce=\.\.\., scope=\"round\"\)"):
        executor.all_reduce_([tensor])
    assert torch.equal(tensor, torch.ones(2))
    with pytest.deprecated_call(match="ClientExecutor.all_gather_object"):
        assert executor.all_gather_object({"a": 1}) == [{"a": 1}]
