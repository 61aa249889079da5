"""The federated round loop: sample clients, hand their tasks to an executor, aggregate, evaluate, log."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lightning_fedmut import checkpoint as ckpt
from lightning_fedmut.aggregators.base import Aggregator
from lightning_fedmut.aggregators.fedavg import FedAvg
from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.callbacks.base import FederatedCallback
from lightning_fedmut.client_state import ClientStateStore, InMemoryClientStateStore
from lightning_fedmut.data.client import Client
from lightning_fedmut.distributed import barrier, executor_for, reduce_round_state
from lightning_fedmut.divergence import DivergenceMonitor
from lightning_fedmut.execution import ClientExecutor, ClientTraining, Evaluator, SequentialExecutor
from lightning_fedmut.federation import FederationPolicy
from lightning_fedmut.functional.state import copy_, frozen_keys, set_unshared
from lightning_fedmut.loop import checks
from lightning_fedmut.loop.call import call_hook
from lightning_fedmut.loop.config import loop_hparams, run_config
from lightning_fedmut.loop.connectors import failures as fault
from lightning_fedmut.loop.connectors import tracking
from lightning_fedmut.loop.connectors.checkpoint import CheckpointConnector, fingerprint
from lightning_fedmut.loop.connectors.logger import RoundLog
from lightning_fedmut.loop.connectors.personal import PersonalEvaluation
from lightning_fedmut.loop.connectors.signals import SignalGuard
from lightning_fedmut.loop.run_state import RunState
from lightning_fedmut.loop.task_hooks import LoopTaskHooks
from lightning_fedmut.progress import FitProgress, progress_mode
from lightning_fedmut.result import FederatedResult
from lightning_fedmut.sampling import ClientSampler, UniformSampler
from lightning_fedmut.tasks import ClientTask
from lightning_fedmut.utilities.seed import CLIENT_STREAM, derive_seed
from lightning_fedmut.utilities.trainer import quiet_console
from lightning_fedmut.utilities.validation import check_int, check_real
from lightning_fedmut.utilities.warnings import warn_user

__all__ = ["FederatedLoop", "FederatedResult"]

_ROUND_FAILURE_POLICIES = ("skip", "raise")
_CLIENT_ROW_KEYS = frozenset({"round", "client_id", "slot", "num_examples"})  # a client_history row's own keys


class FederatedLoop:
    r"""Federate a ``LightningModule``: rounds of local training on sampled clients, then aggregation.

    Each round the ``sampler`` picks ``clients_per_round`` clients, each gets a
    :class:`~lightning_fedmut.tasks.ClientTask`, and the ``executor`` trains them (by default one after
    another on one working copy of the model, each in a short-lived, quiet ``Trainer`` with a fresh
    optimizer from ``configure_optimizers``). Each :class:`~lightning_fedmut.tasks.ClientResult` streams
    into the ``aggregator``, whose result is written into the global module in place; every
    ``evaluate_every`` rounds the global module is evaluated with ``Trainer.validate``.

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
        checkpoint_dir: folder for federated checkpoints (``round-NNNNN.ckpt``, with ``history.jsonl``) and, by
            default, ``last.ckpt``, a Lightning checkpoint of the global model; ``None`` disables them.
        checkpoint_every: write a checkpoint every this many rounds (and after the last round, and on an
            interrupt). ``None`` (default): every round while a checkpoint is at most 20 MB, else every
            ``ceil(size / 20 MB)`` rounds (about 2 GB written per 100 rounds), and at least every 25 rounds.
        keep_last: how many checkpoints to keep.
        enable_model_checkpoint: with ``checkpoint_dir``, write ``last.ckpt`` of the global model with each
            checkpoint, as Lightning's ``enable_checkpointing``; skipped when a
            :class:`~lightning_fedmut.callbacks.GlobalModelCheckpoint` writes into ``checkpoint_dir``.
        min_clients_per_round: the fewest successful clients a round needs to aggregate.
        on_round_failure: what a round with too few successful clients does: ``"skip"`` keeps the global
            model unchanged and goes on; ``"raise"`` stops the run with :class:`RoundFailedError`.
        enable_progress_bar: show one progress bar over rounds and clients with the latest metric.
        client_table_every: log the per-client table to W&B every this many rounds (and at the end).
        sampler: a :class:`~lightning_fedmut.sampling.ClientSampler`; default
            :class:`~lightning_fedmut.sampling.UniformSampler`.
        executor: a :class:`~lightning_fedmut.execution.ClientExecutor`; default
            :class:`~lightning_fedmut.execution.SequentialExecutor`.
        client_state_store: where per-client state lives between rounds; default
            :class:`~lightning_fedmut.client_state.InMemoryClientStateStore`.
        workers: train each round's clients in this many processes
            (:class:`~lightning_fedmut.distributed.DistributedExecutor`; started at ``fit``, or those of
            ``torchrun`` / ``srun``, which are detected). Results equal a one-process run bit for bit.
        workers_per_device: with GPUs, how many workers share one.
        on_client_failure: ``"raise_systematic"`` stops the run when every client of a round (or the run's first
            clients) fails with one error type, or when the first round's clients take no optimizer step: a bug
            in the setup. ``"isolate"`` leaves every failing client out and goes on. Each failure is warned.
        divergence: a :class:`~lightning_fedmut.divergence.DivergenceMonitor` (``True``: the default one, which
            stops a diverging run naming the round; ``False``: none).
        client_timeout: seconds a client may train (each client, each round); one that trains longer is
            recorded as a failed client (:class:`~lightning_fedmut.exceptions.ClientTimeoutError`, with its id)
            and left out of the aggregate. ``None`` (default): no limit. SIGALRM interrupts the client's Python
            code, so ``fit`` must run in the main thread; a client stuck inside one C call is not interrupted.
        federation: a :class:`~lightning_fedmut.federation.FederationPolicy`: which entries of the model are
            federated, kept local on each client (FedBN's BatchNorm, FedPer's head) or frozen; default: every entry
            but the frozen parameters is federated (an algorithm's own policy, such as ``FedBN()``'s, is used when
            this is ``None``, and extended by this one otherwise).
        algorithm: a :class:`~lightning_fedmut.algorithms.FederatedAlgorithm` (``FedMut()``, ``FedProx(mu=0.01)``
            ...): its aggregator, sampler and federated callbacks, instead of passing them one by one (not
            together with ``aggregator`` or ``sampler``); ``callbacks`` are added after the algorithm's.
        personal_evaluation: every ``evaluate_every`` rounds, evaluate each client's own model (the global
            federated entries with its local ones) on its own validation data (``Client(val_data=...)``), as client
            work shared by the workers, and add ``personal/<metric>_mean``, ``_std`` (sample), ``_worst10`` and
            ``_n`` to the history for every ``val_*`` metric. ``None`` (default): when the federation policy keeps
            entries local (FedBN, FedPer, FedRep) and some client has validation data; ``True`` also without local
            entries (the global model's per-client accuracy).

    Examples:
        >>> from lightning_fedmut import MutationCallback
        >>> loop = FederatedLoop(rounds=2, clients_per_round=2, aggregator=FedAvg(weighted=False),
        ...                      callbacks=[MutationCallback(radius=4.0)], seed=0)
        >>> loop.hparams["clients_per_round"], loop.hparams["sampler"]["class_path"]
        (2, 'lightning_fedmut.sampling.UniformSampler')
        >>> from lightning_fedmut.algorithms import FedMut
        >>> loop = FederatedLoop(rounds=2, clients_per_round=2, algorithm=FedMut(radius=4.0), seed=0)
        >>> loop.hparams["algorithm"]["name"], [type(cb).__name__ for cb in loop.callbacks]
        ('FedMut', ['MutationCallback'])
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
        checkpoint_every: int | None = None,
        keep_last: int = 2,
        enable_model_checkpoint: bool = True,
        min_clients_per_round: int = 1,
        on_round_failure: str = "skip",
        enable_progress_bar: bool = True,
        client_table_every: int = 10,
        sampler: ClientSampler | None = None,
        executor: ClientExecutor | None = None,
        client_state_store: ClientStateStore | None = None,
        workers: int | None = None,
        workers_per_device: int = 1,
        on_client_failure: str = "raise_systematic",
        divergence: DivergenceMonitor | bool = True,
        client_timeout: float | None = None,
        algorithm: FederatedAlgorithm | None = None,
        federation: FederationPolicy | None = None,
        personal_evaluation: bool | None = None,
    ) -> None:
        self.rounds = check_int("rounds", rounds, low=1)
        self.clients_per_round = check_int("clients_per_round", clients_per_round, low=1)
        self.local_epochs = check_int("local_epochs", local_epochs, low=1)
        self.local_steps = None if local_steps is None else check_int("local_steps", local_steps, low=1)
        self.evaluate_every = check_int("evaluate_every", evaluate_every, low=1)
        self.seed = check_int("seed", seed, low=0)
        self.algorithm, aggregator, sampler, callbacks = checks.check_algorithm(algorithm, aggregator, sampler, callbacks)
        self.federation = checks.check_instance("federation", federation, FederationPolicy, "a FederationPolicy",
                                                lambda: getattr(self.algorithm, "federation", None) or FederationPolicy())
        if federation is not None and getattr(self.algorithm, "federation", None) is not None:  # both: the union
            self.federation = self.algorithm.federation.merged(self.federation)  # type: ignore[union-attr]
        self.aggregator = checks.check_instance("aggregator", aggregator, Aggregator, "a lightning_fedmut Aggregator", FedAvg)
        self.callbacks = checks.check_callbacks(callbacks)
        self.logger = None if logger is None else checks.check_instance(
            "logger", logger, Logger, "a Lightning Logger (e.g. WandbLogger, CSVLogger)")
        self.trainer_kwargs = checks.check_trainer_kwargs(trainer_kwargs)
        self.checkpoint_dir = checks.check_checkpoint_dir(checkpoint_dir)
        self.min_clients_per_round = check_int(
            "min_clients_per_round", min_clients_per_round, low=1, high=self.clients_per_round)
        self.on_round_failure = checks.check_choice("on_round_failure", on_round_failure, _ROUND_FAILURE_POLICIES)
        self.enable_progress_bar = checks.check_bool("enable_progress_bar", enable_progress_bar)
        self.client_table_every = check_int("client_table_every", client_table_every, low=1)
        self.sampler = checks.check_instance("sampler", sampler, ClientSampler, "a ClientSampler", UniformSampler)
        executor = checks.check_instance("executor", executor, ClientExecutor, "a ClientExecutor", SequentialExecutor)
        self.executor = executor_for(executor, checks.check_workers(workers, self.clients_per_round),
                                     check_int("workers_per_device", workers_per_device, low=1))
        self.client_states = checks.check_instance("client_state_store", client_state_store, ClientStateStore,
                                                   "a ClientStateStore", InMemoryClientStateStore)
        self.on_client_failure = checks.check_choice("on_client_failure", on_client_failure, fault.CLIENT_FAILURE_POLICIES)
        self.divergence = checks.check_divergence(divergence)
        self.client_timeout = None if client_timeout is None else check_real("client_timeout", client_timeout,
                                                                             low=0.0, low_open=True)
        self.evaluator = Evaluator(self.trainer_kwargs, prepare_data=False)  # the loop prepares once per fit
        self.personal = PersonalEvaluation(personal_evaluation)  # each client's own model on its own data
        self.run_state = RunState()  # history, client history, failures, timings, progress: what a fit has done
        self.checkpoint_connector = CheckpointConnector(
            self.checkpoint_dir, None if checkpoint_every is None else check_int("checkpoint_every", checkpoint_every, low=1),
            check_int("keep_last", keep_last, low=1), checks.check_bool("enable_model_checkpoint", enable_model_checkpoint))

        self.should_stop = False
        self.sampled_clients: list[Client] = []
        self._clients: list[Client] = []
        self._val: DataLoader | Sequence[DataLoader] | None = None
        self._client_index: dict[int, int] = {}
        self._bar: tqdm | None = None
        self._in_client_phase = False
        self._start_models_change = False
        self._round_log = RoundLog(self)
        self._signals = SignalGuard(self)
        self._first_round = 0
        self._frozen: frozenset[str] = frozenset()  # frozen and local entries: no aggregate is written into them
        self._local: list[str] = []  # each client's own entries (the federation policy's local ones)
        self._checked_train_metrics = self._checked_val_metrics = False  # warned once per fit of unlogged metrics

    # what a fit has done, owned by ``run_state`` (these names stay for callbacks that read them)
    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per round (see :class:`~lightning_fedmut.FederatedResult`)."""
        return self.run_state.history

    @property
    def client_history(self) -> list[dict[str, Any]]:
        """One dict per client that trained, per round."""
        return self.run_state.client_history

    @property
    def failures(self) -> list[dict[str, Any]]:
        """One dict per client that failed, per round."""
        return self.run_state.failures

    @property
    def timings(self) -> list[dict[str, Any]]:
        """One dict per round: seconds per phase."""
        return self.run_state.timings

    @property
    def progress(self) -> FitProgress:
        """The fit's counters (round in progress, rounds done, last saved)."""
        return self.run_state.progress

    @property
    def round_metrics(self) -> dict[str, Any]:
        """The figures of the round in progress; a callback may add its own."""
        return self.run_state.round_metrics

    @round_metrics.setter
    def round_metrics(self, value: dict[str, Any]) -> None:
        self.run_state.round_metrics = value

    @property
    def round(self) -> int:
        """The round in progress (0-based)."""
        return self.progress.round

    @property
    def clients(self) -> list[Client]:
        """The federation's clients (of the ``fit`` in progress, or the last one); read-only."""
        return list(self._clients)

    @property
    def num_clients(self) -> int:
        """The number of clients of the federation (of the ``fit`` in progress, or the last one)."""
        return len(self._clients)

    @property
    def is_global_zero(self) -> bool:
        """Whether this process logs, shows progress and writes checkpoints (with workers: rank 0 only)."""
        return self.executor.is_global_zero

    @property
    def _logger(self) -> Logger | None:
        return self.logger if self.executor.is_global_zero else None

    @property
    def hparams(self) -> dict[str, Any]:
        """The loop's arguments, with the algorithm's, aggregator's, sampler's and callbacks', for run configs."""
        return loop_hparams(self)

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
        clients = checks.check_fit(model, clients, val_dataloaders, self.clients_per_round,
                                   trainer_kwargs=self.trainer_kwargs)
        resumed = None if ckpt_path is None else ckpt.load_resume_checkpoint(ckpt_path, self.checkpoint_dir)
        saved = None if resumed is None else resumed[1]
        return self.executor.launch(partial(self._fit, model, clients, val_dataloaders, saved))

    def _fit(self, model: LightningModule, clients: list[Client], val: Any, saved: dict[str, Any] | None
             ) -> FederatedResult:
        """The body of ``fit``, in every worker process."""
        self._begin(model, clients, val, saved)
        with quiet_console(), self._signals, fault.fit_guard(self, model):
            self._setup(model, saved)
            for r in range(self.progress.rounds_done, self.rounds):
                self._run_round(model, r)
                done, stopping = self.progress.rounds_done, self.should_stop or self._signals.pending is not None
                if self.checkpoint_connector.should_save(done, self.rounds, stopping):
                    self.checkpoint_connector.save(self, model, done)
                self._signals.raise_pending()
                if self.should_stop:
                    break
            self._finish(model)
        return FederatedResult(history=self.history, client_history=self.client_history, failures=self.failures,
                               timings=self.timings, module=model)

    def _begin(self, model: LightningModule, clients: list[Client], val: Any, saved: dict[str, Any] | None) -> None:
        """Fresh run state; a checkpoint, if any, must match this run."""
        self._clients, self._val = clients, val
        self._client_index = {id(c): i for i, c in enumerate(clients)}
        self.run_state.reset()
        self.should_stop = False
        self._checked_train_metrics = self._checked_val_metrics = False
        self.sampler.setup(self.seed, self.client_states)
        self.client_states.clear()
        if self.divergence is not None:
            self.divergence.reset()
        self.checkpoint_connector.fingerprint = fingerprint(self, model, clients)
        if saved is not None:
            ckpt.compare_fingerprints(saved["fingerprint"], self.checkpoint_connector.fingerprint)
            ckpt.check_resume_rounds(saved["rounds_done"], self.rounds)
            tracking.prepare_resume(self._logger, saved.get("run_id"))
        if self.is_global_zero:  # last: released by teardown
            self.checkpoint_connector.lock()

    def _setup(self, model: LightningModule, saved: dict[str, Any] | None) -> None:
        self._prepare_data(model)
        _, local, frozen = self.federation.split(model)  # every component reads frozen_keys(model) from here on
        set_unshared(model, local | frozen)
        self._local = sorted(local)
        self.personal.setup(self._local, self._clients, warn=self.is_global_zero)
        self._call("setup", model, "fit")
        self._frozen = frozen_keys(model)
        self.aggregator.setup(model)
        if saved is not None:
            self.checkpoint_connector.restore(self, model, saved)
        self._first_round = self.progress.rounds_done
        self._round_log.resume()
        self.checkpoint_connector.setup(self, model)  # last.ckpt's writer, checkpoint_every=None, size warning
        self.executor.setup(model, ClientTraining(self.local_epochs, self.local_steps, self.trainer_kwargs,
                                                  self.client_timeout))
        tracking.start_run(self._logger, run_config(self, model, len(self._clients)))
        self._call("on_fit_start", model)
        # a start model can only differ from the (checked) global one if a callback writes it
        base = FederatedCallback.on_client_fit_start
        self._start_models_change = any(type(cb).on_client_fit_start is not base for cb in self.callbacks)
        self._bar = tqdm(total=self.rounds * self.clients_per_round,
                         initial=self.progress.rounds_done * self.clients_per_round,
                         disable=progress_mode(self.enable_progress_bar, self.is_global_zero) != "bar",  # else a line per round
                         desc="federated", unit="client", dynamic_ncols=True)

    def _prepare_data(self, model: LightningModule) -> None:
        """``prepare_data`` of the module and of each client DataModule, once per ``fit``, before the first round.

        Rank 0 prepares while the other workers wait; client and evaluation Trainers skip Lightning's own call.
        """
        if self.is_global_zero:
            model.prepare_data()
            seen: set[int] = set()
            for client in self._clients:
                for data in (client.data, client.val_data):
                    if isinstance(data, LightningDataModule) and id(data) not in seen:
                        seen.add(id(data))
                        data.prepare_data()
        barrier(self.executor)  # nobody reads data rank 0 is still preparing

    def _finish(self, model: LightningModule) -> None:
        self._round_log.log_client_table()
        self._call("on_fit_end", model)
        tracking.finish_run(self._logger, "success")

    def _teardown(self, model: LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._in_client_phase = False
        self._call("teardown", model, "fit")
        set_unshared(model, None)
        self.executor.teardown()
        self.checkpoint_connector.unlock()

    # ---------------------------------------------------------------- round
    def _run_round(self, model: LightningModule, round_index: int) -> None:
        start = time.perf_counter()
        self.progress.start_round(round_index)
        self.run_state.round_metrics = {}
        for component in self._components():  # declared round state back to its defaults
            component.reset_state("round")
        self.checkpoint_connector.on_round_start(self)
        self._call("on_round_start", model)
        picked = list(self.sampler.sample(round_index, self._clients, self.clients_per_round))
        self.sampled_clients = checks.check_sampled(self.sampler, picked, self.clients_per_round, self._client_index,
                                             round_index)
        self.aggregator.reset()
        trained, failed = self._train_clients(model)
        reduce_round_state(self._components(), self.executor)  # the workers' declared round state, once
        skipped = len(trained) < self.min_clients_per_round
        if skipped:
            fault.round_failed(self, trained, failed)
        else:
            self._aggregate(model)
        due = (round_index + 1) % self.evaluate_every == 0 or round_index + 1 == self.rounds
        evaluated = self._val is not None and due
        keep = partial(self._round_log.log, trained, failed, skipped, start)
        keep = partial(self._collect_metrics, keep)  # the components' figures, once, before the round is logged
        val_metrics = self._evaluate(model, keep) if evaluated else {}
        if due and self.personal.active:
            self.round_metrics.update(self.personal.evaluate(self.evaluator, model, self._clients, self.client_states,
                                                             self.executor))
        keep(val_metrics)
        self._check_logged_metrics(trained, val_metrics if evaluated else None)
        self._call("on_round_end", model)
        self.progress.complete_round()

    def _task(self, slot: int, client: Client, start_state: dict[str, Any]) -> ClientTask:
        seed = derive_seed(self.seed, CLIENT_STREAM, self.round, self._client_index[id(client)])
        return ClientTask(round=self.round, slot=slot, client=client, seed=seed, start_state=start_state,
                          client_state=self.client_states.get(client.id))

    def _train_clients(self, model: LightningModule) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Hand the round's tasks to the executor; stream each result into the aggregator."""
        global_state = model.state_dict()
        tasks = (self._task(slot, client, global_state) for slot, client in enumerate(self.sampled_clients))
        trained: list[dict[str, Any]] = []  # client_history rows
        failed: list[dict[str, Any]] = []  # failures rows
        new_states, results = [], []
        first_round = self.round == self._first_round  # a failure that repeats among its first clients stops the fit
        assert self._bar is not None  # fit opens the bar before its rounds
        self._bar.set_description(f"round {self.round}")  # 0-based, as in the history
        self._in_client_phase = True
        for result in self.executor.run(tasks, LoopTaskHooks(self, model, global_state)):
            task, row = result.task, {"round": self.round, "client_id": result.client.id, "slot": result.task.slot}
            results.append(result)
            if result.failed:
                failed.append({**row, "type": result.error_type, "message": str(result.error)})
                fault.client_failed(self, result, results if first_round else None)
            else:
                self.aggregator.update(result)
                result.state = None  # aggregated: a worker never holds the round's trained models at once
                trained.append({**row, "num_examples": result.num_examples, **result.metrics})
                new_states.append((task.client.id, result.client_state))
            self._bar.update(1)
        self._in_client_phase = False
        fault.round_clients_done(self, results, first_round=first_round)
        if self.divergence is not None:
            self.divergence.on_clients(self, sum(f["type"] == "NonFiniteWeightsError" for f in failed), len(results))
        for client_id, state in new_states:  # stored after the round's clients, so an interrupt saves a whole round
            if state or client_id in self.client_states:
                self.client_states.set(client_id, state)
        self.client_history.extend(trained)
        self.failures.extend(failed)
        return trained, failed

    def _aggregate(self, model: LightningModule) -> None:
        self._call("on_before_aggregate", model, self.aggregator)
        state = model.state_dict()
        new_state = self.aggregator.compute(state)
        keys = [k for k in new_state if k not in self._frozen]  # the global copy of a frozen parameter stands
        copy_([state[k] for k in keys], [new_state[k] for k in keys])
        fault.check_global_finite(self, state)
        self._call("on_after_aggregate", model)

    def _evaluate(self, model: LightningModule, keep: Any) -> dict[str, float]:
        self._call("on_validation_start", model)
        try:
            try:
                metrics = self.executor.evaluate(self.evaluator, model, self._val)
            except SystemExit:  # Lightning's SIGTERM exit: the signal is pending, the round is finished first
                if self._signals.pending is None:
                    raise
                metrics = self.executor.evaluate(self.evaluator, model, self._val)
        except Exception:  # the data broke: keep the aggregated round, recorded unevaluated and saved, then stop
            self.round_metrics["evaluation_failed"] = 1
            keep({})
            self.progress.complete_round()
            self.checkpoint_connector.save(self, model, self.progress.rounds_done)
            raise
        if self.divergence is not None:
            self.divergence.on_evaluation(self, metrics, model.state_dict())
        self.round_metrics.update(metrics)
        self._call("on_validation_end", model)
        return metrics

    def _check_logged_metrics(self, trained: list[dict[str, Any]], val_metrics: dict[str, float] | None) -> None:
        """Warn once per ``fit`` when the clients logged no training metric, or the evaluation no val_* one."""
        missing = []
        if trained and not self._checked_train_metrics:
            self._checked_train_metrics = True
            if not any(k not in _CLIENT_ROW_KEYS and not checks.is_validation_metric(k) for r in trained for k in r):
                missing.append("the clients logged no training metric (return the loss from `training_step` and log"
                               " it with `self.log(\"train_loss\", loss)`)")
        if val_metrics is not None and not self._checked_val_metrics:
            self._checked_val_metrics = True
            if not any(checks.is_validation_metric(k) for k in val_metrics):
                missing.append("validation data was given but the evaluation returned no val_* metric (log one with"
                               " `self.log(\"val_loss\", loss)` in `validation_step`)")
        if missing and self.is_global_zero:
            warn_user(f"After round {self.round}: {'; '.join(missing)}. The history's columns come from what the"
                      " module logs with `self.log`: without these it has no loss and no accuracy.")

    # --------------------------------------------------------------- helpers
    def _components(self) -> list[Any]:
        """The sampler, the aggregator and the callbacks: the components that declare state and return figures."""
        return [self.sampler, self.aggregator, *self.callbacks]

    def _collect_metrics(self, keep: Any, val_metrics: dict[str, float]) -> None:
        """Add each component's ``metrics()`` to ``round_metrics`` (a ``metrics`` dict attribute too), then ``keep``."""
        for component in self._components():
            figures = getattr(component, "metrics", None)  # a callback may keep its own `metrics` attribute
            if callable(figures):
                self.round_metrics.update(figures() or {})
            elif isinstance(figures, dict) and component not in self.callbacks:  # a sampler's or aggregator's dict
                self.round_metrics.update(figures)
        keep(val_metrics)

    def _call(self, hook: str, *args: Any) -> None:
        call_hook(self, self.callbacks, hook, *args)

