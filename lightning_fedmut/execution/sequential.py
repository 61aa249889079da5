"""Clients one after another in this process: one working copy of the model, one quiet Trainer per client."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, StochasticWeightAveraging, Timer

from lightning_fedmut.execution._calls import interruptible, merged_scalars, scalars, trained_state
from lightning_fedmut.execution._timeout import check_time_limit, time_limit
from lightning_fedmut.execution.base import ClientExecutor, ClientTraining, TaskHooks
from lightning_fedmut.execution.client_logger import ClientLogger
from lightning_fedmut.functional.state import copy_
from lightning_fedmut.tasks import ClientResult, ClientTask
from lightning_fedmut.utilities.seed import seed_process
from lightning_fedmut.utilities.trainer import quiet_lightning

__all__ = ["SequentialExecutor"]

#: Lightning callbacks that keep the state of one training run (best score and patience, the running average,
#: the clock): each client's training starts them as they were when ``fit`` started.
PER_CLIENT_STATE_CALLBACKS: tuple[type[Callback], ...] = (EarlyStopping, StochasticWeightAveraging, Timer)


class SequentialExecutor(ClientExecutor):
    """Train a round's clients one after another in this process, with memory of one extra model.

    ``setup`` deep-copies the global module once per ``fit``; for every task the copy is reloaded in place
    with the task's start state, the process-wide random generators (torch, numpy, ``random``) are seeded
    with the task's seed, and the client trains in a short-lived, quiet ``Trainer``. The result's ``state``
    is the working copy's live state: valid until the next task starts. Its ``num_steps`` is the client
    ``Trainer``'s ``global_step`` after ``fit``: the optimizer steps the client took (one per
    ``accumulate_grad_batches`` batches, rounded as Lightning rounds an epoch's last partial window; with manual
    optimization, the ``optimizer.step()`` calls). A client whose training raises, or
    whose trained weights hold NaN or Inf (:class:`~lightning_fedmut.NonFiniteWeightsError`), becomes a
    failed result; Ctrl+C inside a client's training is raised as ``KeyboardInterrupt``. With a
    ``client_timeout``, a client that trains longer is ended by SIGALRM and becomes a failed result with a
    :class:`~lightning_fedmut.exceptions.ClientTimeoutError` naming it.

    Each client ``Trainer`` logs into a :class:`~lightning_fedmut.execution.ClientLogger` (unless
    ``trainer_kwargs`` sets ``logger``); the result's ``metrics`` are the Trainer's ``callback_metrics`` and,
    after them, what only the logger saw (``LearningRateMonitor``'s ``lr-SGD`` ...). A client with validation
    data (``Client(val_data=...)``) validates as ``Trainer.fit`` does, at the
    end of every local epoch, so ``EarlyStopping`` and ``ReduceLROnPlateau`` can monitor ``val_loss``; its
    validation metrics are those of its trained model (with ``local_steps``, one more validation after the last
    step makes sure). The user's ``EarlyStopping``, ``StochasticWeightAveraging`` and ``Timer`` are shared by
    every client ``Trainer`` but restored before each client to their state when ``fit`` started, so each
    client stops, averages and times its own training; other Lightning callbacks are passed as they are.

    Examples:
        >>> from lightning_fedmut import FederatedLoop
        >>> FederatedLoop(rounds=1, clients_per_round=1, executor=SequentialExecutor()).executor
        SequentialExecutor()
    """

    def __init__(self) -> None:
        self._working: LightningModule | None = None
        self._training = ClientTraining()
        self._entry_points: dict[str, list[Any]] = {}
        self._fresh_callbacks: dict[int, tuple[Callback, dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def setup(self, module: LightningModule, training: ClientTraining) -> None:
        # the global's Trainer, if it has one, is not copied
        trainer = getattr(module, "_trainer", None)
        self._working = copy.deepcopy(module, memo={id(trainer): None} if trainer is not None else None)
        # The client logger ignores hyperparameters; without this Lightning would compare a client DataModule's
        # hyperparameters with the module's before logging them, and refuse clients that trained without a logger.
        self._working._log_hyperparams = False
        check_time_limit(training.client_timeout)
        self._training = training
        self._entry_points = {}
        # a callback's state when first seen: a second fit of the same loop starts its clients from it too
        self._fresh_callbacks = {
            id(cb): self._fresh_callbacks.get(id(cb)) or (cb, copy.deepcopy(vars(cb)))
            for cb in training.callbacks if isinstance(cb, PER_CLIENT_STATE_CALLBACKS)
        }

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
        assert client.num_examples is not None  # Client.__post_init__ infers it or refuses the client
        try:
            with time_limit(self._training.client_timeout, f"client {client.id!r} in round {task.round}"):
                return self._train_within(task)
        except Exception as exc:  # noqa: BLE001 - the limit expired outside the training's own handling
            return ClientResult(task=task, num_examples=client.num_examples, error=exc)

    def _train_within(self, task: ClientTask) -> ClientResult:
        client = task.client
        assert client.num_examples is not None  # Client.__post_init__ infers it or refuses the client
        assert self._working is not None  # run() refuses to train before setup()
        validate = client.val_data is not None
        try:
            seed_process(task.seed)
            self._restore_callbacks()
            logger = ClientLogger(self._training.trainer_kwargs.get("default_root_dir") or os.getcwd())
            with quiet_lightning(self._entry_points, prepare_data=False):  # the loop prepares once per fit
                trainer = Trainer(**self._training.trainer_kwargs_for(task.callbacks, logger=logger, validate=validate))
                if isinstance(client.data, LightningDataModule):  # its val_dataloader when val_data is itself
                    interruptible(trainer, trainer.fit, self._working, datamodule=client.data)
                else:
                    interruptible(trainer, trainer.fit, self._working, train_dataloaders=client.data,
                                  val_dataloaders=client.val_data)
                metrics = scalars(trainer.callback_metrics)
                num_steps = int(trainer.global_step)  # a fresh Trainer: the optimizer steps of this fit
                if validate and self._training.local_steps is not None:  # the last step may end no epoch
                    metrics.update(self._validate(trainer, client))
            metrics.update({k: v for k, v in logger.metrics.items() if k not in metrics})
            state = trained_state(self._working)
        except Exception as exc:  # noqa: BLE001 - one client's failure never ends the round
            return ClientResult(task=task, num_examples=client.num_examples, error=exc)
        return ClientResult(task=task, num_examples=client.num_examples, state=state, metrics=metrics,
                            num_steps=num_steps)

    def _validate(self, trainer: Trainer, client: Any) -> dict[str, float]:
        """Validate the trained working copy on the client's validation data; its metrics as floats."""
        if isinstance(client.val_data, LightningDataModule):
            results = interruptible(trainer, trainer.validate, self._working, datamodule=client.val_data,
                                    verbose=False)
        else:
            results = interruptible(trainer, trainer.validate, self._working, dataloaders=client.val_data,
                                    verbose=False)
        return merged_scalars(results)

    def _restore_callbacks(self) -> None:
        """Put every per-client-state Lightning callback back as it was when ``fit`` started."""
        for cb, fresh in self._fresh_callbacks.values():
            vars(cb).clear()
            vars(cb).update(copy.deepcopy(fresh))
