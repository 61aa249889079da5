"""Clients trained without a Trainer: Lightning Fabric places the model, a short loop drives the module's hooks."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric import Fabric
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch import Callback, LightningDataModule, LightningModule
from lightning.pytorch.utilities.data import extract_batch_size

from lightning_fedmut.execution._calls import scalars, trained_state
from lightning_fedmut.execution._logged import LoggedMetrics
from lightning_fedmut.execution.base import ClientTraining
from lightning_fedmut.execution.sequential import SequentialExecutor
from lightning_fedmut.tasks import ClientResult, ClientTask
from lightning_fedmut.utilities.seed import seed_process

__all__ = ["FabricExecutor"]

#: ``trainer_kwargs`` the runner honours or that change nothing without a Trainer: key -> accepted values
#: (``None`` as the value: any). Every other key, or another value, is refused before training starts.
ACCEPTED_TRAINER_KWARGS: dict[str, tuple[Any, ...] | None] = {
    "accelerator": None,
    "devices": None,  # checked by _check_devices: one device
    "precision": (None, 32, "32", "32-true"),
    "logger": (None, False),
    "callbacks": (None, []),
    "plugins": None,  # checked by _check_plugins: cluster environments only
    "enable_checkpointing": (None, False),
    "enable_progress_bar": None,
    "enable_model_summary": None,
    "num_sanity_val_steps": None,
    "limit_val_batches": None,
    "val_check_interval": None,
    "check_val_every_n_epoch": None,
    "log_every_n_steps": None,
    "default_root_dir": None,
    "use_distributed_sampler": None,
    "inference_mode": None,
    "barebones": None,
    "accumulate_grad_batches": (None, 1),
    "gradient_clip_val": (None, 0, 0.0),
    "limit_train_batches": (None, 1.0),
    "deterministic": (None, False),
    "benchmark": (None,),
    "detect_anomaly": (None, False),
    "max_epochs": None,
    "max_steps": None,
}

#: Hooks called once per optimizer step: ``self.log`` there defaults to ``on_step=True, on_epoch=False``.
STEP_HOOKS = frozenset({"training_step", "on_train_batch_start", "on_train_batch_end", "on_before_backward",
                        "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad", "optimizer_step",
                        "optimizer_zero_grad", "backward", "lr_scheduler_step"})


def supported_task_callbacks() -> tuple[type[Callback], ...]:
    """The Lightning callbacks the loop and its local components add to a task that the runner calls (all their
    hooks run): FedProx's :class:`~lightning_fedmut.callbacks.fedprox.ProximalTerm`, SCAFFOLD's
    :class:`~lightning_fedmut.callbacks.scaffold.ControlVariateCorrection` and the loop's guard against a client
    whose data yields no batch under ``local_steps``."""
    from lightning_fedmut.callbacks.fedprox import ProximalTerm
    from lightning_fedmut.callbacks.scaffold import ControlVariateCorrection
    from lightning_fedmut.loop.task_hooks import _EpochGuard

    return ProximalTerm, ControlVariateCorrection, _EpochGuard


class FabricExecutor(SequentialExecutor):
    """Train a round's clients one after another in this process, without a Lightning ``Trainer``.

    Lightning Fabric places the working copy on the accelerator of ``trainer_kwargs`` (one device, 32-bit); a
    short loop then drives the module's own hooks in the order ``Trainer.fit`` calls them: ``setup("fit")``,
    ``configure_model``, ``configure_optimizers`` (one optimizer, with lr schedulers stepped per ``"step"`` or
    ``"epoch"`` and ``frequency``), ``on_fit_start``, ``on_train_start``, per epoch ``on_train_epoch_start``,
    per batch the batch-transfer hooks, ``on_train_batch_start``, ``optimizer_step`` with a closure running
    ``training_step``, ``on_before_zero_grad``, ``optimizer_zero_grad``, ``on_before_backward``, ``backward``,
    ``on_after_backward`` and ``on_before_optimizer_step``, then ``on_train_batch_end``, ``on_train_epoch_end``,
    ``on_train_end``, ``on_fit_end``, ``teardown("fit")``. ``self.log`` is captured and reduced as Lightning's
    ``callback_metrics`` are (the result's ``metrics``), ``self.current_epoch`` and ``self.global_step`` count as
    in a Trainer, and ``self.trainer`` answers ``current_epoch``, ``global_step``, ``max_epochs``, ``max_steps``,
    ``should_stop``, ``callback_metrics``, ``optimizers`` and ``lightning_module``. The same seeds, data order and
    arithmetic as :class:`SequentialExecutor` give the same weights bit for bit, at a lower cost per client
    (no Trainer to build, no result collection, no data fetcher): the gain is largest for clients with few steps.

    What it cannot honour is refused before a client trains, with the reason: Lightning callbacks in
    ``trainer_kwargs`` (a task's callbacks too, except FedProx's and SCAFFOLD's, whose hooks it runs), manual
    optimization, several optimizers, ``ReduceLROnPlateau``, ``accumulate_grad_batches``, gradient clipping,
    precisions other than 32-bit, loggers, checkpointing, more than one device, client validation data and
    ``LightningDataModule`` clients. Use :class:`SequentialExecutor` (the default) for those.

    Examples:
        >>> from lightning_fedmut import FederatedLoop
        >>> FederatedLoop(rounds=1, clients_per_round=1, executor=FabricExecutor()).executor
        FabricExecutor()
        >>> check_fabric_training(ClientTraining(trainer_kwargs={"gradient_clip_val": 1.0}))
        Traceback (most recent call last):
        ...
        ValueError: FabricExecutor cannot honour `trainer_kwargs['gradient_clip_val']`: it accepts one of (None, 0, 0.0), received 1.0. Use SequentialExecutor (the default) for it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._device = torch.device("cpu")

    def setup(self, module: LightningModule, training: ClientTraining) -> None:
        check_fabric_training(training)
        check_fabric_module(module)
        kwargs = training.trainer_kwargs
        plugins = kwargs.get("plugins") or []
        fabric = Fabric(accelerator=kwargs.get("accelerator") or "auto", devices=kwargs.get("devices") or 1,
                        precision="32-true", plugins=plugins if isinstance(plugins, list) else [plugins])
        self._device = fabric.device
        super().setup(module, training)

    def _train(self, task: ClientTask) -> ClientResult:
        check_fabric_task(task)  # a refusal ends the fit, as a wrong argument does; it is no client's failure
        return super()._train(task)

    def _train_within(self, task: ClientTask) -> ClientResult:
        client, module = task.client, self._working
        assert client.num_examples is not None and module is not None
        try:
            seed_process(task.seed)
            run = ClientRun(module, self._device, self._training, task.callbacks)
            run.fit(client.data)
            metrics = scalars(run.callback_metrics)
            state = trained_state(module)
        except Exception as exc:  # noqa: BLE001 - one client's failure never ends the round
            return ClientResult(task=task, num_examples=client.num_examples, error=exc)
        return ClientResult(task=task, num_examples=client.num_examples, state=state, metrics=metrics,
                            num_steps=run.global_step)


def check_fabric_training(training: ClientTraining) -> None:
    """Refuse, before any training, the ``trainer_kwargs`` that :class:`FabricExecutor` cannot honour."""
    for key, value in training.trainer_kwargs.items():
        if key not in ACCEPTED_TRAINER_KWARGS:
            raise ValueError(f"FabricExecutor cannot honour `trainer_kwargs[{key!r}]` (received {value!r}): it runs"
                             " no Trainer. Use SequentialExecutor (the default) for it.")
        accepted = ACCEPTED_TRAINER_KWARGS[key]
        if key == "callbacks" and value:
            names = [type(cb).__name__ for cb in training.callbacks]
            raise ValueError(f"FabricExecutor runs no Lightning callbacks of `trainer_kwargs['callbacks']`;"
                             f" received {names}. Use SequentialExecutor (the default) for them.")
        if accepted is not None and not any(value is a or (type(value) is type(a) and value == a)
                                            for a in accepted):
            raise ValueError(f"FabricExecutor cannot honour `trainer_kwargs[{key!r}]`: it accepts one of"
                             f" {accepted}, received {value!r}. Use SequentialExecutor (the default) for it.")
    _check_devices(training.trainer_kwargs.get("devices"))
    _check_plugins(training.trainer_kwargs.get("plugins"))


def _check_devices(devices: Any) -> None:
    if devices is None or devices in (1, "1", "auto") or (isinstance(devices, list) and len(devices) == 1):
        return
    raise ValueError(f"FabricExecutor trains each client on one device: `trainer_kwargs['devices']` must be 1,"
                     f" 'auto' or a list of one index; received {devices!r}.")


def _check_plugins(plugins: Any) -> None:
    from lightning.fabric.plugins.environments import ClusterEnvironment

    for plugin in plugins if isinstance(plugins, (list, tuple)) else [plugins] if plugins else []:
        if not isinstance(plugin, ClusterEnvironment):
            raise ValueError(f"FabricExecutor takes no Trainer plugins but cluster environments; received"
                             f" {type(plugin).__name__} in `trainer_kwargs['plugins']`. Use SequentialExecutor.")


def check_fabric_module(module: LightningModule) -> None:
    """Refuse, before any training, a module that :class:`FabricExecutor` cannot train: manual optimization."""
    if not module.automatic_optimization:
        raise ValueError(f"FabricExecutor trains with automatic optimization; {type(module).__name__} sets"
                         " `automatic_optimization=False`. Use SequentialExecutor (the default) for it.")


def check_fabric_task(task: ClientTask) -> None:
    """Refuse, before the client trains, a task that :class:`FabricExecutor` cannot run as a Trainer would."""
    client = task.client
    if isinstance(client.data, LightningDataModule):
        raise ValueError(f"FabricExecutor trains clients on a DataLoader; client {client.id!r} has a"
                         f" {type(client.data).__name__}. Use SequentialExecutor (the default) for DataModules.")
    if client.val_data is not None:
        raise ValueError(f"FabricExecutor does not validate clients; client {client.id!r} has `val_data`. Use"
                         " SequentialExecutor (the default) for client validation.")
    supported = supported_task_callbacks()
    refused = [type(cb).__name__ for cb in task.callbacks if type(cb) not in supported]
    if refused:
        raise ValueError(f"FabricExecutor cannot run the Lightning callbacks {refused} that the loop's components"
                         f" add to client {client.id!r}; it runs {[c.__name__ for c in supported[:2]]}. Use"
                         " SequentialExecutor (the default) with them.")


class ClientRun:
    """One client's ``fit`` without a Trainer; while it runs it is the module's ``trainer``.

    Attributes:
        current_epoch: the epoch (0-based) being trained; after ``fit``, the epochs trained.
        global_step: the optimizer steps taken.
        should_stop: set it (``self.trainer.should_stop = True``) to stop after the current batch.
    """

    def __init__(self, module: LightningModule, device: torch.device, training: ClientTraining,
                 callbacks: list[Callback]) -> None:
        self.lightning_module = module
        self.device = device
        self.max_steps = training.local_steps if training.local_steps is not None else -1
        self.max_epochs = training.local_epochs if training.local_steps is None else -1
        self.callbacks = list(callbacks)
        self.current_epoch = 0
        self.global_step = 0
        self.should_stop = False
        self.limit_train_batches = 1.0
        self.optimizers: list[torch.optim.Optimizer] = []
        self.logged = LoggedMetrics()
        self._hook = ""
        self._batch: Any = None

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"`self.trainer.{name}` is not available under FabricExecutor (no Trainer runs); it"
                             " offers current_epoch, global_step, max_epochs, max_steps, should_stop,"
                             " limit_train_batches, callback_metrics, optimizers and lightning_module. Use SequentialExecutor.")

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        """What ``self.log`` recorded, reduced as in Lightning's ``Trainer.callback_metrics``."""
        return self.logged.metrics

    def fit(self, dataloader: Any) -> None:
        """Train the module on ``dataloader`` for the run's epochs or steps, calling the hooks ``Trainer.fit`` calls."""
        module = self.lightning_module
        vars(module)["log"] = self._log
        vars(module)["log_dict"] = self._log_dict
        module._trainer = self  # type: ignore[assignment]
        handle = None
        try:
            if module.device != self.device:
                module.to(self.device)
            self._call("setup", "fit")
            self._module_hook("configure_model")
            optimizer, schedulers = _optimizers(module)
            self.optimizers = [optimizer]
            handle = optimizer.register_step_post_hook(self._count_step)
            module.zero_grad()  # as Trainer._run_stage; Lightning leaves the module's train/eval mode as it is
            with torch.enable_grad():
                self._train(optimizer, schedulers, dataloader)
            self._call("on_train_end")
            self._call("on_fit_end")
            self._call("teardown", "fit")
        finally:
            if handle is not None:
                handle.remove()
            vars(module).pop("log", None)
            vars(module).pop("log_dict", None)
            module._trainer = None
            if self.device.type != "cpu":
                module.cpu()  # as a Trainer's teardown: the result's state is on the CPU

    def _train(self, optimizer: torch.optim.Optimizer, schedulers: list[Any], dataloader: Any) -> None:
        self._call("on_fit_start")
        self._call("on_train_start")
        while not self._done():
            _set_sampler_epoch(dataloader, self.current_epoch)
            self._call("on_train_epoch_start")
            ran_all, batches = True, 0
            for batch_idx, batch in enumerate(dataloader):
                batch = self._transfer(batch)
                self._batch = batch
                if self._call("on_train_batch_start", batch, batch_idx) == -1:
                    ran_all = False
                    break
                outputs = self._step(optimizer, batch, batch_idx)
                self._call("on_train_batch_end", outputs, batch, batch_idx)
                batches += 1
                _step_schedulers(self, schedulers, "step", batch_idx + 1)
                if self._steps_done() or self.should_stop:
                    ran_all = False
                    break
            self._batch = None
            self._call("on_train_epoch_end")
            self.logged.end_epoch()
            if ran_all and batches:
                _step_schedulers(self, schedulers, "epoch", self.current_epoch + 1)
            self.current_epoch += 1
            if not batches or self.should_stop:
                break

    def _step(self, optimizer: torch.optim.Optimizer, batch: Any, batch_idx: int) -> dict[str, Any]:
        outputs: dict[str, Any] = {}

        def closure() -> torch.Tensor | None:
            nonlocal outputs
            out = self._module_hook("training_step", batch, batch_idx)
            if isinstance(out, torch.Tensor):
                loss, outputs = out, {"loss": out.detach()}
            elif isinstance(out, dict):
                if "loss" not in out:
                    raise ValueError("`training_step` returned a dict without a 'loss' key.")
                loss, outputs = out["loss"], {k: v.detach() if k == "loss" else v for k, v in out.items()}
            elif out is None:
                loss, outputs = None, {}
            else:
                raise ValueError(f"`training_step` must return a loss tensor, a dict with 'loss' or None;"
                                 f" received {type(out).__name__}.")
            if loss is not None:
                loss = loss / 1  # Lightning's normalisation by accumulate_grad_batches (1): the same graph
            self._call("on_before_zero_grad", optimizer)
            self._module_hook("optimizer_zero_grad", self.current_epoch, batch_idx, optimizer)
            if loss is not None:
                self._call("on_before_backward", loss)
                self._module_hook("backward", loss)
                self._call("on_after_backward")
            self._call("on_before_optimizer_step", optimizer)
            return loss

        self._module_hook("optimizer_step", self.current_epoch, batch_idx, optimizer, closure)
        return outputs

    def _transfer(self, batch: Any) -> Any:
        batch = self._module_hook("on_before_batch_transfer", batch, 0)
        batch = self._module_hook("transfer_batch_to_device", batch, self.device, 0)
        return self._module_hook("on_after_batch_transfer", batch, 0)

    def _done(self) -> bool:
        return self._steps_done() or (self.max_epochs != -1 and self.current_epoch >= self.max_epochs)

    def _steps_done(self) -> bool:
        return self.max_steps != -1 and self.global_step >= self.max_steps

    def _count_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.global_step += 1

    def _call(self, hook: str, *args: Any) -> Any:
        """The callbacks' hook, then the module's (Lightning's order); the module's return value."""
        for callback in self.callbacks:
            fn = getattr(callback, hook)
            fn(self, self.lightning_module, *args)
        return self._module_hook(hook, *args)

    def _module_hook(self, hook: str, *args: Any) -> Any:
        previous, self._hook = self._hook, hook
        try:
            return getattr(self.lightning_module, hook)(*args)
        finally:
            self._hook = previous

    def _log(self, name: str, value: Any, prog_bar: bool = False, logger: bool | None = None,
             on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: Any = "mean",
             enable_graph: bool = False, sync_dist: bool = False, sync_dist_group: Any = None,
             add_dataloader_idx: bool = True, batch_size: int | None = None, metric_attribute: str | None = None,
             rank_zero_only: bool = False) -> None:
        per_step = self._hook in STEP_HOOKS
        on_step = per_step if on_step is None else on_step
        on_epoch = (not per_step) if on_epoch is None else on_epoch
        if on_epoch and batch_size is None and per_step and self._batch is not None and reduce_fx in ("mean", "avg",
                                                                                                    torch.mean):
            batch_size = extract_batch_size(self._batch)
        self.logged.log(name, value, on_step=on_step, on_epoch=on_epoch, reduce_fx=reduce_fx, batch_size=batch_size)

    def _log_dict(self, dictionary: Any, prog_bar: bool = False, logger: bool | None = None,
                  on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: Any = "mean",
                  enable_graph: bool = False, sync_dist: bool = False, sync_dist_group: Any = None,
                  add_dataloader_idx: bool = True, batch_size: int | None = None,
                  rank_zero_only: bool = False) -> None:
        for name, value in dict(dictionary).items():
            self._log(name, value, on_step=on_step, on_epoch=on_epoch, reduce_fx=reduce_fx, batch_size=batch_size)


def _optimizers(module: LightningModule) -> tuple[torch.optim.Optimizer, list[Any]]:
    """The module's one optimizer and its lr scheduler configurations, parsed as Lightning parses them."""
    from lightning.pytorch.core.optimizer import _configure_optimizers, _configure_schedulers_automatic_opt

    config: Any = module.configure_optimizers()
    optimizers, schedulers, monitor = _configure_optimizers(config)
    if len(optimizers) != 1:
        raise ValueError(f"FabricExecutor trains with one optimizer; `configure_optimizers` of"
                         f" {type(module).__name__} returned {len(optimizers)}. Use SequentialExecutor.")
    configs = _configure_schedulers_automatic_opt(schedulers, monitor)
    if any(c.reduce_on_plateau for c in configs):
        raise ValueError("FabricExecutor does not step ReduceLROnPlateau (it monitors metrics a Trainer collects);"
                         " use SequentialExecutor for it.")
    return optimizers[0], configs


def _step_schedulers(run: ClientRun, configs: list[Any], interval: str, index: int) -> None:
    """Step the schedulers of ``interval`` whose ``frequency`` divides ``index`` (Lightning's rule)."""
    for config in configs:
        if config.interval == interval and index % config.frequency == 0:
            run._module_hook("lr_scheduler_step", config.scheduler, None)
