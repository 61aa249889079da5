"""Short-lived, quiet Lightning Trainers for clients and for evaluation."""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from argparse import Namespace
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any

import torch
from lightning.pytorch import Trainer

from lightning_fedmut.utilities.warnings import warn_user

#: Defaults of every client and evaluation Trainer; the user's ``trainer_kwargs`` win over them.
QUIET_TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "limit_val_batches": 0,
    "devices": 1,
}

#: Keys the loop sets itself.
RESERVED_TRAINER_KEYS = {"max_epochs", "max_steps", "min_epochs", "min_steps"}

_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
_QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*smaller than the logging interval.*",
    r".*`max_epochs` was not set.*",
    r".*GPU available but not used.*",
    r".*Total length of `.*` across ranks is zero.*",
    r".*You defined a `validation_step` but have no `val_dataloader`.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)


def trainer_parameters() -> set[str]:
    """The keyword arguments ``lightning.pytorch.Trainer`` accepts."""
    return set(inspect.signature(Trainer.__init__).parameters) - {"self"}


@contextmanager
def quiet_lightning(entry_point_cache: dict[str, list[Any]] | None = None, prepare_data: bool = True
                    ) -> Iterator[None]:
    """Silence the console chatter of per-client Trainers and cache the entry-point scan of their ``__init__``.

    Wrap the construction and ``fit``/``validate`` of one short-lived Trainer in it. It is
    :func:`quiet_console` plus patches of Lightning internals, active only inside: building a Trainer
    scans every installed package's entry points for external callbacks (most of its construction time);
    the scan result cannot change during a run, so it is kept in ``entry_point_cache`` (a dict the caller
    owns and passes again for the next Trainer; without one, each context scans once). Every ``self.log``
    also moves Lightning's result metric to the device it is already on, rebuilding its metadata each time
    (about 10% of a small client's step); here that move is skipped when nothing would move. So are the
    strategy's move of the module to its device at setup and back to the CPU at teardown when every tensor of the
    module is already there (about 0.3 ms each for a small CNN), and the search of ``Trainer.__init__`` for
    ``PL_TRAINER_*`` environment variables when none is set (half of a cached construction). With
    ``prepare_data=False``, ``fit``/``validate`` skip the module's and DataModule's ``prepare_data`` (the
    federated loop calls it once per ``fit`` itself, not once per client and round).
    """
    with quiet_console(), _cached_external_callbacks(entry_point_cache), _skip_redundant_metric_moves(), \
            _skip_redundant_module_moves(), _skip_unset_env_defaults():
        if prepare_data:
            yield
        else:
            with skip_prepare_data():
                yield


_console_depth = 0


@contextmanager
def quiet_console() -> Iterator[None]:
    """Drop Lightning's per-Trainer console chatter: INFO banners and tips, and warnings about worker counts
    and logging intervals; warnings about the user's own code still show.

    With one Trainer per client per round that chatter drowns the console. Re-entering is free (setting a
    logger's level clears every logger's cache, about 0.1 ms), so the loop enters it once per ``fit`` and each
    Trainer's :func:`quiet_lightning` nests inside.
    """
    global _console_depth
    if _console_depth:
        _console_depth += 1
        try:
            yield
        finally:
            _console_depth -= 1
        return
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    _console_depth = 1
    try:
        with warnings.catch_warnings():
            for pattern in _QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        _console_depth = 0
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


#: What the patches replace; ``tests/execution/test_lightning_patches.py`` fails when a Lightning release moves them.
PATCH_TARGETS = (
    ("lightning.pytorch.trainer.connectors.callback_connector", "_load_external_callbacks"),
    ("lightning.pytorch.trainer.connectors.logger_connector.result", "_ResultMetric.to"),
    ("lightning.pytorch.trainer.connectors.data_connector", "_DataConnector.prepare_data"),
    ("lightning.fabric.utilities.device_dtype_mixin", "_DeviceDtypeModuleMixin.to"),
    ("lightning.fabric.utilities.device_dtype_mixin", "_DeviceDtypeModuleMixin.cpu"),
    ("lightning.pytorch.utilities.argparse", "_parse_env_variables"),
)
_warned_missing: set[str] = set()


def _missing_target(what: str) -> None:
    """Warn once that a patch target is gone: the run is correct but slower, never silently so."""
    if what not in _warned_missing:
        _warned_missing.add(what)
        warn_user(
            f"lightning_fedmut could not find Lightning's `{what}` to speed up client Trainers; this Lightning"
            " release moved it. Runs stay correct but each client Trainer is slower."
        )


@contextmanager
def _cached_external_callbacks(cache: dict[str, list[Any]] | None = None) -> Iterator[None]:
    try:
        from lightning.pytorch.trainer.connectors import callback_connector
    except ImportError:  # pragma: no cover - layout of another Lightning release
        _missing_target("callback_connector._load_external_callbacks")
        yield
        return
    original = getattr(callback_connector, "_load_external_callbacks", None)
    if original is None:  # pragma: no cover
        _missing_target("callback_connector._load_external_callbacks")
        yield
        return
    factories: dict[str, list[Any]] = {} if cache is None else cache

    def load_external_callbacks(group: str) -> list[Any]:
        if group not in factories:
            factories[group] = list(entry_points(group=group))
        callbacks: list[Any] = []
        for factory in factories[group]:
            made = factory.load()()
            callbacks.extend(made if isinstance(made, list) else [made] if made else [])
        return callbacks

    callback_connector._load_external_callbacks = load_external_callbacks
    try:
        yield
    finally:
        callback_connector._load_external_callbacks = original


@contextmanager
def _skip_redundant_metric_moves() -> Iterator[None]:
    try:
        from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric
    except ImportError:  # pragma: no cover - layout of another Lightning release
        _missing_target("_ResultMetric.to")
        yield
        return
    original = _ResultMetric.__dict__.get("to")
    if original is None:  # pragma: no cover
        _missing_target("_ResultMetric.to")
        yield
        return
    if getattr(original, "_lightning_fedmut", False):  # already patched by an enclosing context
        yield
        return

    def to(self: Any, *args: Any, **kwargs: Any) -> Any:
        target = args[0] if len(args) == 1 and not kwargs else kwargs.get("device") if list(kwargs) == ["device"] else None
        if isinstance(target, (str, torch.device)) and _all_on(self.__dict__.values(), torch.device(target)):
            return self  # the original would move nothing, only rebuild the metadata
        return original(self, *args, **kwargs)

    to._lightning_fedmut = True  # type: ignore[attr-defined]
    _ResultMetric.to = to  # type: ignore[method-assign]
    try:
        yield
    finally:
        _ResultMetric.to = original  # type: ignore[method-assign]


@contextmanager
def _skip_redundant_module_moves() -> Iterator[None]:
    """Inside, ``LightningModule.to(device)`` and ``.cpu()`` return at once when every tensor is already there.

    A client Trainer moves the module to its device in ``strategy.setup`` and back to the CPU in
    ``strategy.teardown``; on a CPU run both walk every submodule to move nothing.
    """
    try:
        from lightning.fabric.utilities.device_dtype_mixin import _DeviceDtypeModuleMixin
    except ImportError:  # pragma: no cover - layout of another Lightning release
        _missing_target("_DeviceDtypeModuleMixin.to")
        yield
        return
    original_to, original_cpu = _DeviceDtypeModuleMixin.__dict__.get("to"), _DeviceDtypeModuleMixin.__dict__.get("cpu")
    if original_to is None or original_cpu is None:  # pragma: no cover
        _missing_target("_DeviceDtypeModuleMixin.to")
        yield
        return
    if getattr(original_to, "_lightning_fedmut", False):  # already patched by an enclosing context
        yield
        return

    def to(self: Any, *args: Any, **kwargs: Any) -> Any:
        target = args[0] if len(args) == 1 and not kwargs else None
        if isinstance(target, torch.device) and module_on(self, target):
            return self  # the original would move nothing
        return original_to(self, *args, **kwargs)

    def cpu(self: Any) -> Any:
        if module_on(self, _CPU):
            return self
        return original_cpu(self)

    to._lightning_fedmut = cpu._lightning_fedmut = True  # type: ignore[attr-defined]
    _DeviceDtypeModuleMixin.to, _DeviceDtypeModuleMixin.cpu = to, cpu  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        _DeviceDtypeModuleMixin.to, _DeviceDtypeModuleMixin.cpu = original_to, original_cpu  # type: ignore[method-assign]


_CPU = torch.device("cpu")


def module_on(module: torch.nn.Module, device: torch.device) -> bool:
    """Whether moving ``module`` to ``device`` would move nothing: its parameters (and so their gradients), its
    buffers, its torchmetrics metrics and the ``device`` its Lightning modules record are all on ``device``.

    Examples:
        >>> module_on(torch.nn.Linear(2, 1), torch.device("cpu")), module_on(torch.nn.Linear(2, 1), torch.device("meta"))
        (True, False)
    """
    from lightning.fabric.utilities.device_dtype_mixin import _DeviceDtypeModuleMixin
    from torchmetrics import Metric

    if any(t.device != device for t in module.parameters()) or any(b.device != device for b in module.buffers()):
        return False
    return all(m.device == device for m in module.modules() if isinstance(m, (_DeviceDtypeModuleMixin, Metric)))


@contextmanager
def _skip_unset_env_defaults() -> Iterator[None]:
    """Inside, ``Trainer.__init__`` skips its search for ``PL_TRAINER_<ARGUMENT>`` variables when none is set.

    Lightning's ``_defaults_from_env_vars`` looks every ``Trainer`` argument up in the environment at each
    construction (about half of a quiet Trainer's construction once the entry-point scan is cached); with no
    variable of that prefix in the environment the answer is empty, and when one is set the original runs.
    """
    try:
        from lightning.pytorch.utilities import argparse as lightning_argparse
    except ImportError:  # pragma: no cover - layout of another Lightning release
        _missing_target("argparse._parse_env_variables")
        yield
        return
    original = getattr(lightning_argparse, "_parse_env_variables", None)
    if original is None:  # pragma: no cover
        _missing_target("argparse._parse_env_variables")
        yield
        return
    if getattr(original, "_lightning_fedmut", False):
        yield
        return

    def parse_env_variables(cls: type, template: str = "PL_%(cls_name)s_%(cls_argument)s") -> Any:
        prefix = template.split("%(cls_argument)s")[0] % {"cls_name": cls.__name__.upper()}
        if not any(key.startswith(prefix) for key in os.environ):
            return Namespace()
        return original(cls, template)

    parse_env_variables._lightning_fedmut = True  # type: ignore[attr-defined]
    lightning_argparse._parse_env_variables = parse_env_variables
    try:
        yield
    finally:
        lightning_argparse._parse_env_variables = original


@contextmanager
def skip_prepare_data() -> Iterator[None]:
    """Inside, a Trainer's ``fit``/``validate`` call neither the module's nor the DataModule's ``prepare_data``.

    Lightning calls both from ``Trainer._run`` through ``trainer._data_connector.prepare_data()``; that one
    method is replaced by a no-op while the context is active. A Lightning release without it gets a
    warning and a ``prepare_data`` per Trainer, as before.
    """
    try:
        from lightning.pytorch.trainer.connectors.data_connector import _DataConnector
    except ImportError:  # pragma: no cover - layout of another Lightning release
        _missing_prepare_data()
        yield
        return
    original = _DataConnector.__dict__.get("prepare_data")
    if original is None:
        _missing_prepare_data()
        yield
        return
    if getattr(original, "_lightning_fedmut", False):  # already patched by an enclosing context
        yield
        return

    def prepare_data(self: Any) -> None:
        """Skipped: the federated loop prepares the data once per ``fit``."""

    prepare_data._lightning_fedmut = True  # type: ignore[attr-defined]
    _DataConnector.prepare_data = prepare_data  # type: ignore[method-assign]
    try:
        yield
    finally:
        _DataConnector.prepare_data = original  # type: ignore[method-assign]


def _missing_prepare_data() -> None:
    what = "_DataConnector.prepare_data"
    if what not in _warned_missing:
        _warned_missing.add(what)
        warn_user(
            f"lightning_fedmut could not find Lightning's `{what}`; this Lightning release moved it. Every client"
            " and evaluation Trainer now calls your module's `prepare_data` again (the loop calls it once per fit)."
        )


def _all_on(values: Any, device: torch.device) -> bool:
    """Whether every tensor (and metric) among ``values``, one container level deep, is on ``device``."""
    from torchmetrics import Metric

    for value in values:
        if isinstance(value, torch.Tensor):
            on = value.device == device
        elif isinstance(value, Metric):
            on = value.device == device and _all_on(value.__dict__.values(), device)
        elif isinstance(value, dict):
            on = _all_on(value.values(), device)
        else:
            on = not isinstance(value, (list, tuple)) or _all_on(value, device)
        if not on:
            return False
    return True
