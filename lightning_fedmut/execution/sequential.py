"""Clients one after another in this process: one working copy of the model, one quiet Trainer per client."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from lightning_fedmut.exceptions import NonFiniteWeightsError
from lightning_fedmut.execution._calls import interruptible, scalars
from lightning_fedmut.execution.base import ClientExecutor, ClientTraining, TaskHooks
from lightning_fedmut.functional.state import copy_, first_non_finite
from lightning_fedmut.tasks import ClientResult, ClientTask
from lightning_fedmut.utilities.trainer import quiet_lightning

__all__ = ["SequentialExecutor"]


class SequentialExecutor(ClientExecutor):
    """Train a round's clients one after another in this process, with memory of one extra model.

    ``setup`` deep-copies the global module once per ``fit``; for every task the copy is reloaded in place
    with the task's start state, the process-wide random generators (torch, numpy, ``random``) are seeded
    with the task's seed, and the client trains in a short-lived, quiet ``Trainer``. The result's ``state``
    is the working copy's live state: valid until the next task starts. A client whose training raises, or
    whose trained weights hold NaN or Inf (:class:`~lightning_fedmut.NonFiniteWeightsError`), becomes a
    failed result; Ctrl+C inside a client's training is raised as ``KeyboardInterrupt``.

    Examples:
        >>> from lightning_fedmut import FederatedLoop
        >>> FederatedLoop(rounds=1, clients_per_round=1, executor=SequentialExecutor()).executor
        SequentialExecutor()
    """

    def __init__(self) -> None:
        self._working: LightningModule | None = None
        self._training = ClientTraining()
        self._entry_points: dict[str, list[Any]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def setup(self, module: LightningModule, training: ClientTraining) -> None:
        # the global's Trainer, if it has one, is not copied
        trainer = getattr(module, "_trainer", None)
        self._working = copy.deepcopy(module, memo={id(trainer): None} if trainer is not None else None)
        self._training = training
        self._entry_points = {}

    def run(self, tasks: Iterable[ClientTask], hooks: TaskHooks) -> Iterator[ClientResult]:
        for task in tasks:
            result = self.train(task, hooks)
            hooks.on_task_end(result)
            yield result

    def train(self, task: ClientTask, hooks: TaskHooks) -> ClientResult:
        """Load the task's start state into the working copy, call ``hooks.on_task_start``, train the client."""
        if self._working is None:
            raise RuntimeError("SequentialExecutor.run() called before setup(): the loop calls setup once per fit.")
        state = self._working.state_dict()
        copy_(list(state.values()), [task.start_state[k] for k in state])
        task = replace(task, start_state=state)
        hooks.on_task_start(task)
        return self._train(task)

    def teardown(self) -> None:
        self._working = None

    def _train(self, task: ClientTask) -> ClientResult:
        client = task.client
        try:
            torch.manual_seed(task.seed)
            random.seed(task.seed)
            np.random.seed(task.seed)
            with quiet_lightning(self._entry_points):
                trainer = Trainer(**self._training.trainer_kwargs_for(task.callbacks))
                if isinstance(client.data, LightningDataModule):
                    interruptible(trainer, trainer.fit, self._working, datamodule=client.data)
                else:
                    interruptible(trainer, trainer.fit, self._working, train_dataloaders=client.data)
            metrics = scalars(trainer.callback_metrics)
            state = self._working.state_dict()
            bad = first_non_finite(state)
            if bad is not None:
                raise NonFiniteWeightsError(f"trained weights hold NaN or Inf in {bad!r}")
        except Exception as exc:  # noqa: BLE001 - one client's failure never ends the round
            return ClientResult(task=task, num_examples=client.num_examples, error=exc)
        return ClientResult(task=task, num_examples=client.num_examples, state=state, metrics=metrics)
