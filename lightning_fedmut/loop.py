"""The federated round loop: sample clients, train each in a short-lived Trainer, aggregate, evaluate."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader

from lightning_fedmut.aggregators.base import Aggregator
from lightning_fedmut.aggregators.fedavg import FedAvg
from lightning_fedmut.callbacks.base import FederatedCallback
from lightning_fedmut.data.client import Client
from lightning_fedmut.functional.state import copy_
from lightning_fedmut.utilities.seed import CLIENT_STREAM, SAMPLING_STREAM, derive_seed
from lightning_fedmut.utilities.trainer import (
    QUIET_TRAINER_DEFAULTS,
    RESERVED_TRAINER_KEYS,
    quiet_lightning,
    trainer_parameters,
)
from lightning_fedmut.utilities.validation import check_int


@dataclass
class FederatedResult:
    """What :meth:`FederatedLoop.fit` returns.

    Attributes:
        history: one dict per round: ``round``, the global model's validation metrics (rounds that were
            evaluated), the example-weighted mean of the clients' training metrics (``clients/<name>``),
            ``clients/trained``, and metrics added by callbacks (``fedmut/*``).
        client_history: one dict per client that trained: ``round``, ``client_id``, ``slot``,
            ``num_examples`` and its training metrics.
        module: the global module (the object passed to ``fit``, trained in place).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    client_history: list[dict[str, Any]] = field(default_factory=list)
    module: LightningModule | None = None

    def metric(self, name: str) -> list[float]:
        """The values of one metric over the rounds that logged it.

        Example:
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

    Args:
        rounds: number of federated rounds.
        clients_per_round: ``K``, clients sampled (without replacement) per round.
        local_epochs: ``E``, local epochs per client per round.
        local_steps: if set, local optimizer steps per client per round instead of epochs.
        aggregator: how client models are combined; default ``FedAvg()`` (example-weighted).
        callbacks: :class:`~lightning_fedmut.FederatedCallback` instances, e.g. ``MutationCallback()``.
            Lightning callbacks belong in ``trainer_kwargs={"callbacks": [...]}``.
        logger: any Lightning ``Logger``; the loop calls ``log_metrics(metrics, step=round)``.
        trainer_kwargs: passed to every client and evaluation ``Trainer`` (accelerator, precision,
            gradient clipping, Lightning callbacks ...); they win over the quiet defaults.
        evaluate_every: evaluate the global model every this many rounds (and after the last one).
        seed: the run's seed: client sampling, mutation coefficients and each client's training
            randomness (data order, dropout) derive from it.

    Example:
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
        if logger is not None and not isinstance(logger, Logger):
            raise TypeError(
                f"Expected `logger` to be a Lightning Logger (e.g. WandbLogger, CSVLogger), got {type(logger).__name__}."
            )
        self.logger = logger
        self.trainer_kwargs = _check_trainer_kwargs(trainer_kwargs)

        self.round = 0
        self.should_stop = False
        self.round_metrics: dict[str, float] = {}
        self.sampled_clients: list[Client] = []
        self.history: list[dict[str, Any]] = []
        self.client_history: list[dict[str, Any]] = []
        self._sampler = torch.Generator()

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
            "aggregator": {"class_path": _class_path(self.aggregator), "init_args": self.aggregator.hparams},
            "callbacks": [
                {"class_path": _class_path(cb), "init_args": getattr(cb, "hparams", {})} for cb in self.callbacks
            ],
            "trainer_kwargs": {k: repr(v) if not isinstance(v, (int, float, str, bool)) else v
                               for k, v in self.trainer_kwargs.items()},
        }

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        model: LightningModule,
        clients: Sequence[Client],
        val_dataloaders: DataLoader | Sequence[DataLoader] | None = None,
    ) -> FederatedResult:
        """Run the federation; ``model`` is the global model and is updated in place.

        Args:
            model: the global ``LightningModule``.
            clients: the federation's clients (see :func:`~lightning_fedmut.data.make_clients`).
            val_dataloaders: server-side evaluation data for the global model.

        Returns:
            A :class:`FederatedResult` with the per-round history.
        """
        clients = self._check_fit(model, clients, val_dataloaders)
        self._clients = clients
        self._val = val_dataloaders
        self.history, self.client_history = [], []
        self.should_stop = False
        self._sampler.manual_seed(derive_seed(self.seed, SAMPLING_STREAM))
        self._working = copy.deepcopy(model)  # the one working copy, reloaded in place per client
        self._client_index = {id(c): i for i, c in enumerate(clients)}

        with quiet_lightning():
            try:
                self._call("setup", model, "fit")
                self.aggregator.setup(model)
                if self.logger is not None:
                    self.logger.log_hyperparams(self._run_config(model))
                self._call("on_fit_start", model)
                for r in range(self.rounds):
                    self.round = r
                    self._run_round(model)
                    if self.should_stop:
                        break
                self._call("on_fit_end", model)
                if self.logger is not None:
                    self.logger.finalize("success")
            except BaseException as exc:
                self._call("on_exception", model, exc)
                if self.logger is not None:
                    self.logger.finalize("failed")
                raise
            finally:
                self._call("teardown", model, "fit")
                self._working = None
        return FederatedResult(history=self.history, client_history=self.client_history, module=model)

    # ---------------------------------------------------------------- round
    def _run_round(self, model: LightningModule) -> None:
        start = time.perf_counter()
        self.round_metrics = {}
        self._call("on_round_start", model)
        order = torch.randperm(len(self._clients), generator=self._sampler)[: self.clients_per_round]
        self.sampled_clients = [self._clients[i] for i in order.tolist()]
        self.aggregator.reset()
        rows = []
        global_tensors = list(model.state_dict().values())
        for slot, client in enumerate(self.sampled_clients):
            copy_(list(self._working.state_dict().values()), global_tensors)
            self._call("on_client_fit_start", model, self._working, client, slot)
            metrics = self._fit_client(client)
            self._call("on_client_fit_end", model, self._working, client, slot)
            self.aggregator.update(self._working, client.num_examples)
            rows.append({"round": self.round, "client_id": client.id, "slot": slot,
                         "num_examples": client.num_examples, **metrics})
        self.client_history.extend(rows)

        self._call("on_before_aggregate", model, self.aggregator)
        new_state = self.aggregator.compute()
        state = model.state_dict()
        copy_([state[k] for k in new_state], list(new_state.values()))
        self._call("on_after_aggregate", model)

        if self._val is not None and ((self.round + 1) % self.evaluate_every == 0 or self.round + 1 == self.rounds):
            self._call("on_validation_start", model)
            self.round_metrics.update(self._validate(model))
            self._call("on_validation_end", model)

        elapsed = time.perf_counter() - start
        row: dict[str, Any] = {"round": self.round, **_weighted_means(rows), "clients/trained": len(rows),
                               "round_time": elapsed, **self.round_metrics}
        self.history.append(row)
        if self.logger is not None:
            self.logger.log_metrics({k: v for k, v in row.items() if k != "round"}, step=self.round)
        self._call("on_round_end", model)

    def _fit_client(self, client: Client) -> dict[str, float]:
        seed = derive_seed(self.seed, CLIENT_STREAM, self.round, self._client_index[id(client)])
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        trainer = Trainer(**self._client_trainer_kwargs())
        if isinstance(client.data, LightningDataModule):
            trainer.fit(self._working, datamodule=client.data)
        else:
            trainer.fit(self._working, train_dataloaders=client.data)
        return _scalars(trainer.callback_metrics)

    def _validate(self, model: LightningModule) -> dict[str, float]:
        defaults = {k: v for k, v in QUIET_TRAINER_DEFAULTS.items() if k != "limit_val_batches"}
        trainer = Trainer(**{**defaults, **self.trainer_kwargs})
        results = trainer.validate(model, dataloaders=self._val, verbose=False)
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

    # --------------------------------------------------------------- helpers
    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _run_config(self, model: LightningModule) -> dict[str, Any]:
        config = dict(self.hparams)
        config["model"] = {"class_path": _class_path(model), "init_args": dict(getattr(model, "hparams", {}))}
        return config

    def _check_fit(self, model: Any, clients: Any, val_dataloaders: Any) -> list[Client]:
        if not isinstance(model, LightningModule):
            raise TypeError(f"Expected `model` to be a LightningModule, got {type(model).__name__}.")
        if not any(p.is_floating_point() for p in model.parameters()):
            raise ValueError(
                f"Expected `model` to have floating-point parameters to federate; {type(model).__name__} has none."
            )
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
        if val_dataloaders is not None and not is_overridden("validation_step", model, LightningModule):
            raise ValueError(
                f"`val_dataloaders` was given but {type(model).__name__} has no `validation_step`:"
                " define one that logs metrics, or drop `val_dataloaders`."
            )
        return clients


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
    known = trainer_parameters()
    unknown = sorted(set(trainer_kwargs) - known)
    if unknown:
        raise ValueError(f"`trainer_kwargs` has keys that lightning.pytorch.Trainer does not take: {unknown}.")
    reserved = sorted(set(trainer_kwargs) & RESERVED_TRAINER_KEYS)
    if reserved:
        raise ValueError(
            f"`trainer_kwargs` sets {reserved}, which the loop controls: use `local_epochs` or `local_steps`."
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
