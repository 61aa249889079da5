"""The federated round loop: sample clients, train each in a short-lived Trainer, aggregate, evaluate."""

from __future__ import annotations

import copy
import hashlib
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lightning_fedmut import _tracking as tracking
from lightning_fedmut import checkpoint as ckpt
from lightning_fedmut.aggregators.base import Aggregator
from lightning_fedmut.aggregators.fedavg import FedAvg
from lightning_fedmut.callbacks.base import FederatedCallback
from lightning_fedmut.data.client import Client
from lightning_fedmut.exceptions import DivergenceError, NonFiniteWeightsError, RoundFailedError
from lightning_fedmut.functional.state import copy_, is_floating, same_device_and_dtype
from lightning_fedmut.utilities.seed import CLIENT_STREAM, SAMPLING_STREAM, derive_seed
from lightning_fedmut.utilities.trainer import (
    QUIET_TRAINER_DEFAULTS,
    RESERVED_TRAINER_KEYS,
    quiet_lightning,
    trainer_parameters,
)
from lightning_fedmut.utilities.validation import check_int

_ROUND_FAILURE_POLICIES = ("skip", "raise")
#: Evaluation Trainers are as quiet as client ones but do validate.
_EVAL_TRAINER_DEFAULTS = {k: v for k, v in QUIET_TRAINER_DEFAULTS.items() if k != "limit_val_batches"}


@dataclass
class FederatedResult:
    """What :meth:`FederatedLoop.fit` returns.

    Attributes:
        history: one dict per round: ``round``, the global model's validation metrics (rounds that were
            evaluated), the example-weighted mean of the clients' training metrics (``clients/<name>``),
            ``clients/trained``, ``clients/failed``, ``round_skipped``, and metrics added by callbacks
            (``fedmut/*``). Deterministic: equal for equal seeds, and across a resume.
        client_history: one dict per client that trained: ``round``, ``client_id``, ``slot``,
            ``num_examples`` and its training metrics.
        failures: one dict per client that failed: ``round``, ``client_id``, ``slot``, ``type``, ``message``.
        timings: one dict per round: ``round``, ``round_time`` (s), ``clients_per_second``.
        module: the global module (the object passed to ``fit``, trained in place).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    client_history: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    timings: list[dict[str, Any]] = field(default_factory=list)
    module: LightningModule | None = None

    def metric(self, name: str) -> list[float]:
        """The values of one metric over the rounds that logged it.

        Examples:
            >>> FederatedResult(history=[{"round": 0, "val_acc": 0.5}, {"round": 1}]).metric("val_acc")
            [0.5]
        """
        return [row[name] for row in self.history if name in row]


class FederatedLoop:
    r"""Federate a ``LightningModule``: rounds of local training on sampled clients, then aggregation.

    Each sampled client trains a working copy of the model (made once per ``fit``, reloaded in place) in
    a short-lived, quiet Lightning ``Trainer``: no logger, checkpointing, progress bar, model summary or
    sanity check unless ``trainer_kwargs`` asks for them. The module's ``configure_optimizers`` gives a
    fresh optimizer per client per round. After the round the aggregator's result is written into the
    global module in place, and every ``evaluate_every`` rounds the global module is evaluated with
    ``Trainer.validate``.

    A client whose training raises, or returns NaN/Inf weights, is recorded as failed and left out of the
    aggregate; the round goes on with the others.

    Args:
        rounds: number of federated rounds.
        clients_per_round: ``K``, clients sampled (without replacement) per round.
        local_epochs: ``E``, local epochs per client per round.
        local_steps: if set, local optimizer steps per client per round instead of epochs.
        aggregator: how client models are combined; default ``FedAvg()`` (example-weighted).
        callbacks: :class:`~lightning_fedmut.FederatedCallback` instances, e.g. ``MutationCallback()``.
            Lightning callbacks belong in ``trainer_kwargs={"callbacks": [...]}``.
        logger: any Lightning ``Logger`` (``WandbLogger``, ``CSVLogger`` ...); the loop logs every round
            with ``step=round``. Client Trainers never log on their own.
        trainer_kwargs: passed to every client and evaluation ``Trainer`` (accelerator, precision,
            gradient clipping, Lightning callbacks ...); they win over the quiet defaults.
        evaluate_every: evaluate the global model every this many rounds (and after the last one).
        seed: the run's seed: client sampling, mutation coefficients and each client's training
            randomness (data order, dropout) derive from it.
        checkpoint_dir: folder for federated checkpoints; ``None`` disables them.
        checkpoint_every: write a checkpoint every this many rounds (and after the last round).
        keep_last: how many checkpoints to keep.
        min_clients_per_round: the fewest successful clients a round needs to aggregate.
        on_round_failure: what a round with too few successful clients does: ``"skip"`` keeps the global
            model unchanged and goes on; ``"raise"`` stops the run with :class:`RoundFailedError`.
        enable_progress_bar: show one progress bar over rounds and clients with the latest metric.
        client_table_every: log the per-client table to W&B every this many rounds (and at the end).

    Examples:
        >>> from lightning_fedmut import MutationCallback
        >>> loop = FederatedLoop(rounds=2, clients_per_round=2, aggregator=FedAvg(weighted=False),
        ...                      callbacks=[MutationCallback(radius=4.0)], seed=0)
        >>> loop.hparams["clients_per_round"]
        2
    """

    def __init__(
        self,
        rounds: int,
        clients_per_round: int,
        local_epochs: int = 1,
        local_steps: int | None = None,
        aggregator: Aggregator | None = None,
        callbacks: Sequence[FederatedCallback] | None = None,
        logger: Logger | None = None,
        trainer_kwargs: dict[str, Any] | None = None,
        evaluate_every: int = 1,
        seed: int = 0,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        keep_last: int = 2,
        min_clients_per_round: int = 1,
        on_round_failure: str = "skip",
        enable_progress_bar: bool = True,
        client_table_every: int = 10,
    ) -> None:
        self.rounds = check_int("rounds", rounds, low=1)
        self.clients_per_round = check_int("clients_per_round", clients_per_round, low=1)
        self.local_epochs = check_int("local_epochs", local_epochs, low=1)
        self.local_steps = None if local_steps is None else check_int("local_steps", local_steps, low=1)
        self.evaluate_every = check_int("evaluate_every", evaluate_every, low=1)
        self.seed = check_int("seed", seed, low=0)
        self.aggregator = FedAvg() if aggregator is None else aggregator
        if not isinstance(self.aggregator, Aggregator):
            raise TypeError(
                f"Expected `aggregator` to be a lightning_fedmut Aggregator, got {type(self.aggregator).__name__}."
            )
        self.callbacks = _check_callbacks(callbacks)
        keys = [cb.state_key for cb in self.callbacks]
        clash = sorted({k for k in keys if keys.count(k) > 1})
        if clash:
            raise ValueError(
                f"Two callbacks share the `state_key` {clash[0]!r}; give each instance its own `state_key`"
                " so their checkpoint states do not collide."
            )
        if logger is not None and not isinstance(logger, Logger):
            raise TypeError(
                f"Expected `logger` to be a Lightning Logger (e.g. WandbLogger, CSVLogger), got {type(logger).__name__}."
            )
        self.logger = logger
        self.trainer_kwargs = _check_trainer_kwargs(trainer_kwargs)
        if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
            raise TypeError(f"Expected `checkpoint_dir` to be a path or None, got {type(checkpoint_dir).__name__}.")
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.checkpoint_every = check_int("checkpoint_every", checkpoint_every, low=1)
        self.keep_last = check_int("keep_last", keep_last, low=1)
        self.min_clients_per_round = check_int(
            "min_clients_per_round", min_clients_per_round, low=1, high=self.clients_per_round
        )
        if on_round_failure not in _ROUND_FAILURE_POLICIES:
            raise ValueError(f"Expected `on_round_failure` in {_ROUND_FAILURE_POLICIES}, got {on_round_failure!r}.")
        self.on_round_failure = on_round_failure
        if not isinstance(enable_progress_bar, bool):
            raise TypeError(f"Expected `enable_progress_bar` to be a bool, got {enable_progress_bar!r}.")
        self.enable_progress_bar = enable_progress_bar
        self.client_table_every = check_int("client_table_every", client_table_every, low=1)

        self.round = 0
        self.should_stop = False
        self.round_metrics: dict[str, float] = {}
        self.sampled_clients: list[Client] = []
        self.history: list[dict[str, Any]] = []
        self.client_history: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.timings: list[dict[str, Any]] = []
        self._sampler = torch.Generator()
        self._working: LightningModule | None = None
        self._in_client_phase = False

    @property
    def hparams(self) -> dict[str, Any]:
        """The loop's arguments, with the aggregator's and callbacks', for run configs."""
        return {
            "rounds": self.rounds,
            "clients_per_round": self.clients_per_round,
            "local_epochs": self.local_epochs,
            "local_steps": self.local_steps,
            "evaluate_every": self.evaluate_every,
            "seed": self.seed,
            "min_clients_per_round": self.min_clients_per_round,
            "on_round_failure": self.on_round_failure,
            "aggregator": {"class_path": _class_path(self.aggregator), "init_args": self.aggregator.hparams},
            "callbacks": [
                {"class_path": _class_path(cb), "init_args": getattr(cb, "hparams", {})} for cb in self.callbacks
            ],
            "trainer_kwargs": {
                k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
                for k, v in self.trainer_kwargs.items()
            },
        }

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        model: LightningModule,
        clients: Sequence[Client],
        val_dataloaders: DataLoader | Sequence[DataLoader] | None = None,
        ckpt_path: str | os.PathLike | None = None,
    ) -> FederatedResult:
        """Run the federation; ``model`` is the global model and is updated in place.

        Args:
            model: the global ``LightningModule``.
            clients: the federation's clients (see :func:`~lightning_fedmut.data.make_clients`).
            val_dataloaders: server-side evaluation data for the global model.
            ckpt_path: resume from this federated checkpoint, or ``"last"`` for the newest one in
                ``checkpoint_dir``. The resumed run ends bit for bit where the uninterrupted one would.

        Returns:
            A :class:`FederatedResult` with the per-round history.
        """
        clients = self._check_fit(model, clients, val_dataloaders)
        resume = None if ckpt_path is None else ckpt.resolve_checkpoint(ckpt_path, self.checkpoint_dir)
        saved = None if resume is None else ckpt.load_checkpoint(resume)
        self._clients = clients
        self._val = val_dataloaders
        self._client_index = {id(c): i for i, c in enumerate(clients)}
        self.history, self.client_history, self.failures, self.timings = [], [], [], []
        self.should_stop = False
        self._sampler.manual_seed(derive_seed(self.seed, SAMPLING_STREAM))
        self._last_saved = 0
        start_round = 0
        self._run_fingerprint = self._fingerprint(model, clients)  # what a checkpoint of this run must match
        if saved is not None:
            ckpt.compare_fingerprints(saved["fingerprint"], self._run_fingerprint)
            tracking.prepare_resume(self.logger, saved.get("run_id"))

        with quiet_lightning():
            try:
                self._call("setup", model, "fit")
                self.aggregator.setup(model)
                if saved is not None:
                    start_round = self._restore(model, saved)
                # the one working copy, reloaded in place for every client; the global's Trainer is not copied
                trainer = getattr(model, "_trainer", None)
                self._working = copy.deepcopy(model, memo={id(trainer): None} if trainer is not None else None)
                tracking.start_run(self.logger, self._run_config(model))
                self._call("on_fit_start", model)
                # a start model can only differ from the (checked) global one if a callback writes it
                self._start_models_change = any(
                    type(cb).on_client_fit_start is not FederatedCallback.on_client_fit_start for cb in self.callbacks
                )
                self._progress = tqdm(
                    total=self.rounds * self.clients_per_round,
                    initial=start_round * self.clients_per_round,
                    disable=not self.enable_progress_bar,
                    desc="federated",
                    unit="client",
                    dynamic_ncols=True,
                )
                for r in range(start_round, self.rounds):
                    self.round = r
                    self._run_round(model)
                    if (r + 1) % self.checkpoint_every == 0 or r + 1 == self.rounds or self.should_stop:
                        self._save(model, r + 1)
                    if self.should_stop:
                        break
                tracking.log_client_table(self.logger, self.client_history, self.round)
                self._call("on_fit_end", model)
                tracking.finish_run(self.logger, "success")
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt) and self._in_client_phase and self.round > self._last_saved:
                    self._save(model, self.round, sampler_state=self._round_start_sampler)
                self._call("on_exception", model, exc)
                tracking.finish_run(self.logger, "failed")
                raise
            finally:
                if getattr(self, "_progress", None) is not None:
                    self._progress.close()
                    self._progress = None
                self._in_client_phase = False
                self._call("teardown", model, "fit")
                self._working = None
        return self._result(model)

    # ---------------------------------------------------------------- round
    def _run_round(self, model: LightningModule) -> None:
        start = time.perf_counter()
        self.round_metrics = {}
        self._round_start_sampler = self._sampler.get_state()
        self._call("on_round_start", model)
        order = torch.randperm(len(self._clients), generator=self._sampler)[: self.clients_per_round]
        self.sampled_clients = [self._clients[i] for i in order.tolist()]
        self.aggregator.reset()
        rows: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        global_tensors = list(model.state_dict().values())
        self._progress.set_description(f"round {self.round + 1}/{self.rounds}")
        self._in_client_phase = True
        for slot, client in enumerate(self.sampled_clients):
            working_tensors = list(self._working.state_dict().values())
            copy_(working_tensors, global_tensors)
            self._call("on_client_fit_start", model, self._working, client, slot)
            if self._start_models_change:
                self._check_start_model(slot)
            try:
                metrics = self._fit_client(client)
                bad = _first_non_finite(self._working)
                if bad is not None:
                    raise NonFiniteWeightsError(f"trained weights hold NaN or Inf in {bad!r}")
            except Exception as exc:  # one client's failure never ends the round
                failures.append({"round": self.round, "client_id": client.id, "slot": slot,
                                 "type": type(exc).__name__, "message": str(exc)})
                self._call("on_client_fit_failure", model, client, slot, exc)
            else:
                self._call("on_client_fit_end", model, self._working, client, slot)
                self.aggregator.update(self._working, client.num_examples)
                rows.append({"round": self.round, "client_id": client.id, "slot": slot,
                             "num_examples": client.num_examples, **metrics})
            self._progress.update(1)
        self._in_client_phase = False
        self.client_history.extend(rows)
        self.failures.extend(failures)

        skipped = len(rows) < self.min_clients_per_round
        if skipped:
            self._round_failed(rows, failures)
        else:
            self._call("on_before_aggregate", model, self.aggregator)
            new_state = self.aggregator.compute()
            state = model.state_dict()
            copy_([state[k] for k in new_state], list(new_state.values()))
            _check_global_finite(model, self.round)
            self._call("on_after_aggregate", model)

        if self._val is not None and ((self.round + 1) % self.evaluate_every == 0 or self.round + 1 == self.rounds):
            self._call("on_validation_start", model)
            self.round_metrics.update(self._validate(model))
            self._call("on_validation_end", model)

        row: dict[str, Any] = {"round": self.round, **_weighted_means(rows), "clients/trained": len(rows),
                               "clients/failed": len(failures), "round_skipped": int(skipped),
                               **self.round_metrics}
        self.history.append(row)
        elapsed = time.perf_counter() - start
        timing = {"round": self.round, "round_time": elapsed, "clients_per_second": len(rows) / elapsed}
        self.timings.append(timing)
        tracking.log_round(self.logger, {**row, **timing})
        if (self.round + 1) % self.client_table_every == 0:
            tracking.log_client_table(self.logger, self.client_history, self.round)
        shown = {k: f"{v:.4g}" for k, v in self.round_metrics.items() if not k.startswith("fedmut/")}
        self._progress.set_postfix(shown, refresh=False)
        self._call("on_round_end", model)

    def _round_failed(self, rows: list[dict[str, Any]], failures: list[dict[str, Any]]) -> None:
        diverged = failures and all(f["type"] == NonFiniteWeightsError.__name__ for f in failures) and not rows
        if diverged:
            raise DivergenceError(
                f"Every client of round {self.round} returned non-finite weights: training diverged. Likely causes:"
                " a mutation radius too large for this learning rate (try a smaller `radius`), or a learning rate"
                " too high. The global model is left at round "
                f"{self.round - 1}; resume from the last checkpoint with other settings."
            )
        summary = "; ".join(f"client {f['client_id']!r}: {f['type']}: {f['message']}" for f in failures[:5])
        message = (
            f"Round {self.round}: {len(rows)} of {len(self.sampled_clients)} clients succeeded, fewer than"
            f" `min_clients_per_round`={self.min_clients_per_round}. Failures: {summary}."
        )
        if self.on_round_failure == "raise":
            raise RoundFailedError(message)
        # stacklevel 4: the user's call of fit (fit -> _run_round -> _round_failed -> warn)
        warnings.warn(message + " The round is skipped; the global model is unchanged.", RuntimeWarning, stacklevel=4)

    def _check_start_model(self, slot: int) -> None:
        name = _first_non_finite(self._working)
        if name is not None:
            raise DivergenceError(
                f"The start model of slot {slot} in round {self.round} has non-finite values in {name!r}:"
                " the global model diverged. Likely causes: a mutation radius too large (try a smaller"
                " `radius`) or a learning rate too high."
            )

    def _fit_client(self, client: Client) -> dict[str, float]:
        seed = derive_seed(self.seed, CLIENT_STREAM, self.round, self._client_index[id(client)])
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        trainer = Trainer(**self._client_trainer_kwargs())
        if isinstance(client.data, LightningDataModule):
            _interruptible(trainer, trainer.fit, self._working, datamodule=client.data)
        else:
            _interruptible(trainer, trainer.fit, self._working, train_dataloaders=client.data)
        return _scalars(trainer.callback_metrics)

    def _validate(self, model: LightningModule) -> dict[str, float]:
        trainer = Trainer(**{**_EVAL_TRAINER_DEFAULTS, **self.trainer_kwargs})
        results = _interruptible(trainer, trainer.validate, model, dataloaders=self._val, verbose=False)
        merged: dict[str, float] = {}
        for d in results:
            merged.update(_scalars(d))
        return merged

    def _client_trainer_kwargs(self) -> dict[str, Any]:
        kwargs = {**QUIET_TRAINER_DEFAULTS, **self.trainer_kwargs}
        if self.local_steps is not None:
            kwargs.update(max_steps=self.local_steps, max_epochs=-1)
        else:
            kwargs.update(max_epochs=self.local_epochs)
        return kwargs

    # ---------------------------------------------------------- checkpoints
    def _save(self, model: LightningModule, rounds_done: int, sampler_state: torch.Tensor | None = None) -> None:
        if self.checkpoint_dir is None:
            return
        state = {
            "format": "lightning_fedmut",
            "version": ckpt.CHECKPOINT_VERSION,
            "rounds_done": rounds_done,
            "fingerprint": self._run_fingerprint,
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "sampler": self._sampler.get_state() if sampler_state is None else sampler_state,
            "aggregator": self.aggregator.state_dict(),
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
            "history": self.history[:rounds_done],
            "client_history": [r for r in self.client_history if r["round"] < rounds_done],
            "failures": [f for f in self.failures if f["round"] < rounds_done],
            "timings": self.timings[:rounds_done],
            "run_id": tracking.run_id(self.logger),
        }
        ckpt.save_checkpoint(state, self.checkpoint_dir, self.keep_last)
        self._last_saved = rounds_done

    def _restore(self, model: LightningModule, saved: dict[str, Any]) -> int:
        state = model.state_dict()
        copy_([state[k] for k in saved["model"]], list(saved["model"].values()))
        self._sampler.set_state(saved["sampler"])
        self.aggregator.load_state_dict(saved["aggregator"])
        for cb in self.callbacks:
            if cb.state_key in saved["callbacks"]:
                cb.load_state_dict(saved["callbacks"][cb.state_key])
            elif cb.state_dict():
                raise ValueError(
                    f"Cannot resume: the checkpoint holds no state for callback {cb.state_key!r}; it was made"
                    f" with callbacks {sorted(saved['callbacks'])}."
                )
        self.history = list(saved["history"])
        self.client_history = list(saved["client_history"])
        self.failures = list(saved["failures"])
        self.timings = list(saved["timings"])
        self._last_saved = saved["rounds_done"]
        self.round = saved["rounds_done"]
        return int(saved["rounds_done"])

    def _fingerprint(self, model: LightningModule, clients: list[Client]) -> dict[str, Any]:
        ids = [repr(c.id) for c in clients]
        shapes = [f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in model.state_dict().items()]
        return {
            "model": _class_path(model),
            "model_state": _digest(shapes) if len(shapes) > 8 else shapes,
            "clients": len(clients),
            "client_ids": _digest(ids) if len(ids) > 8 else ids,
            "clients_per_round": self.clients_per_round,
            "local_epochs": self.local_epochs,
            "local_steps": self.local_steps,
            "seed": self.seed,
            "aggregator": self.hparams["aggregator"],
        }

    # --------------------------------------------------------------- helpers
    def _result(self, model: LightningModule) -> FederatedResult:
        return FederatedResult(history=self.history, client_history=self.client_history, failures=self.failures,
                               timings=self.timings, module=model)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _run_config(self, model: LightningModule) -> dict[str, Any]:
        config = dict(self.hparams)
        config["model"] = {"class_path": _class_path(model), "init_args": dict(getattr(model, "hparams", {}))}
        config["num_clients"] = len(self._clients)
        return config

    def _check_fit(self, model: Any, clients: Any, val_dataloaders: Any) -> list[Client]:
        if not isinstance(model, LightningModule):
            raise TypeError(f"Expected `model` to be a LightningModule, got {type(model).__name__}.")
        if not any(p.is_floating_point() for p in model.parameters()):
            raise ValueError(
                f"Expected `model` to have floating-point parameters to federate; {type(model).__name__} has none."
            )
        bad_key = _first_non_finite(model)
        if bad_key is not None:
            raise ValueError(f"Expected `model` to hold finite weights, got NaN or Inf in {bad_key!r}.")
        if isinstance(clients, Client) or not isinstance(clients, Sequence):
            raise TypeError(f"Expected `clients` to be a list of Client, got {type(clients).__name__}.")
        clients = list(clients)
        bad = [type(c).__name__ for c in clients if not isinstance(c, Client)]
        if bad:
            raise TypeError(f"Expected every item of `clients` to be a Client, got {bad[0]}. Use make_clients(...).")
        ids = [c.id for c in clients]
        dup = sorted({repr(i) for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"Expected unique client ids, got duplicates: {', '.join(dup)}.")
        if self.clients_per_round > len(clients):
            raise ValueError(
                f"Expected `clients_per_round` <= the number of clients ({len(clients)}), got {self.clients_per_round}."
            )
        loaders = val_dataloaders if isinstance(val_dataloaders, (list, tuple)) else [val_dataloaders]
        if val_dataloaders is not None and not all(isinstance(d, DataLoader) for d in loaders):
            raise TypeError(
                "Expected `val_dataloaders` to be a DataLoader or a list of DataLoaders, got"
                f" {type(val_dataloaders).__name__}."
            )
        if val_dataloaders is not None and not is_overridden("validation_step", model, LightningModule):
            raise ValueError(
                f"`val_dataloaders` was given but {type(model).__name__} has no `validation_step`:"
                " define one that logs metrics, or drop `val_dataloaders`."
            )
        return clients


def _interruptible(trainer: Trainer, method: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``trainer.fit``/``validate`` and turn Lightning's handling of Ctrl+C back into ``KeyboardInterrupt``.

    Lightning answers Ctrl+C inside ``fit`` with ``sys.exit(1)`` and ignores SIGINT from then on; the loop
    needs the interrupt itself (to checkpoint and stop) and the user's SIGINT handler back.
    """
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        out = method(*args, **kwargs)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if handler is not None and signal.getsignal(signal.SIGINT) is not handler:
            signal.signal(signal.SIGINT, handler)
    if trainer.interrupted:
        raise KeyboardInterrupt
    return out


def _check_callbacks(callbacks: Any) -> list[FederatedCallback]:
    if callbacks is None:
        return []
    if isinstance(callbacks, (FederatedCallback, Callback)):
        callbacks = [callbacks]
    out = []
    for cb in callbacks:
        if isinstance(cb, Callback):
            raise TypeError(
                f"{type(cb).__name__} is a Lightning Callback: pass it to the client Trainers with"
                f" `trainer_kwargs={{'callbacks': [{type(cb).__name__}(...)]}}`; `callbacks=` takes FederatedCallback."
            )
        if not isinstance(cb, FederatedCallback):
            raise TypeError(f"Expected every item of `callbacks` to be a FederatedCallback, got {type(cb).__name__}.")
        out.append(cb)
    return out


def _check_trainer_kwargs(trainer_kwargs: Any) -> dict[str, Any]:
    if trainer_kwargs is None:
        return {}
    if not isinstance(trainer_kwargs, dict):
        raise TypeError(f"Expected `trainer_kwargs` to be a dict, got {type(trainer_kwargs).__name__}.")
    unknown = sorted(set(trainer_kwargs) - trainer_parameters())
    if unknown:
        raise ValueError(f"`trainer_kwargs` has keys that lightning.pytorch.Trainer does not take: {unknown}.")
    reserved = sorted(set(trainer_kwargs) & RESERVED_TRAINER_KEYS)
    if reserved:
        raise ValueError(
            f"`trainer_kwargs` sets {reserved}, which the loop controls: use `local_epochs` or `local_steps`."
        )
    if trainer_kwargs.get("logger") not in (None, False):
        raise ValueError(
            f"`trainer_kwargs` sets logger={trainer_kwargs['logger']!r}: client Trainers never log on their own."
            " Pass the logger to `FederatedLoop(logger=...)`, which logs every round with step=round."
        )
    devices = trainer_kwargs.get("devices", 1)
    multi = (
        (isinstance(devices, int) and (devices > 1 or devices == -1))
        or (isinstance(devices, (list, tuple)) and len(devices) > 1)
        or (isinstance(devices, str) and (devices in ("auto", "-1") or "," in devices.strip(",")
                                          or (devices.isdigit() and int(devices) > 1)))
        or trainer_kwargs.get("num_nodes", 1) != 1
    )
    if multi:
        raise ValueError(
            f"Client Trainers run in-process on one device; got devices={devices!r},"
            f" num_nodes={trainer_kwargs.get('num_nodes', 1)!r}. Use devices=1 (pick the GPU with"
            " `devices=[i]`), and run several federations in parallel processes to use more devices."
        )
    return dict(trainer_kwargs)


@torch.no_grad()
def _first_non_finite(module: torch.nn.Module) -> str | None:
    """The first state key holding NaN or Inf, or ``None``.

    One fused test (the max-norm of every floating tensor, which is NaN or Inf exactly when the tensor holds
    one) answers the common case with a single host sync; the per-tensor scan runs only to name the culprit.
    """
    state = module.state_dict()
    floats = [(k, v) for k, v in state.items() if is_floating(v) and v.numel()]
    if not floats:
        return None
    tensors = [v for _, v in floats]
    if same_device_and_dtype(tensors) and not tensors[0].is_complex():
        norms = torch._foreach_norm(tensors, float("inf"))
        if bool(torch.stack(norms).isfinite().all()):
            return None
    for name, tensor in floats:
        if not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _check_global_finite(model: torch.nn.Module, round_index: int) -> None:
    name = _first_non_finite(model)
    if name is not None:
        raise DivergenceError(
            f"The global model is not finite after aggregating round {round_index} ({name!r} holds NaN or Inf)."
            " Likely causes: a mutation radius too large (try a smaller `radius`) or a learning rate too high."
        )


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            if v.numel() == 1:
                out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def _weighted_means(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Example-weighted mean of each client training metric, as ``clients/<name>``."""
    skip = {"round", "client_id", "slot", "num_examples"}
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for row in rows:
        for k, v in row.items():
            if k in skip:
                continue
            totals[k] = totals.get(k, 0.0) + row["num_examples"] * v
            weights[k] = weights.get(k, 0.0) + row["num_examples"]
    return {f"clients/{k}": totals[k] / weights[k] for k in totals}


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _digest(items: list[str]) -> str:
    return f"{len(items)} items, sha1 " + hashlib.sha1("\n".join(items).encode()).hexdigest()[:12]
