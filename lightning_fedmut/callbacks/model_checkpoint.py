"""Ordinary Lightning checkpoints of the global model: ``last.ckpt`` and the best rounds by a metric."""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lightning_fedmut.callbacks.base import FederatedCallback
from lightning_fedmut.utilities.validation import check_int
from lightning_fedmut.utilities.warnings import warn_user

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from lightning_fedmut.loop import FederatedLoop

_MODES = ("min", "max")
#: A ``{name}`` or ``{name:format}`` field of a file name template.
_FIELD = re.compile(r"\{([^{}:]+)(?::([^{}]*))?\}")
LAST_NAME = "last"


class GlobalModelCheckpoint(FederatedCallback):
    r"""Save the global model as ordinary Lightning checkpoints that ``MyModule.load_from_checkpoint`` reads.

    After every round it writes ``last.ckpt`` (with ``save_last``) and keeps the ``save_top_k`` best rounds
    by ``monitor``, a metric of the round (``loop.round_metrics``: the global model's validation metrics,
    ``fedmut/*`` ...). Each file holds what ``LightningModule.load_from_checkpoint`` needs: ``state_dict``,
    ``hyper_parameters`` (from ``save_hyperparameters``), ``pytorch-lightning_version``, and ``epoch`` and
    ``global_step``, both set to the 0-based round of the weights, as in ``result.history``. The files hold
    data only: they load with ``torch.load(..., weights_only=True)``.

    The federated checkpoints that resume a run (``FederatedLoop(checkpoint_dir=...)``) are another thing: they
    hold the whole run. This callback writes beside them by default, and its own state (the best rounds and
    their files) is part of them, so a resumed run goes on with the same top-k.

    With a peft model (LoRA ...) in the global module, each file ``NAME.ckpt`` also gets a folder
    ``NAME-adapters`` that the model's ``save_pretrained`` writes (``adapter_config.json`` and
    ``adapter_model.safetensors``): ``PeftModel.from_pretrained(base, folder)`` loads the federated adapters onto
    the base, as peft's users load adapters. A module with several peft models gets one subfolder per model,
    named by its attribute path.

    Args:
        dirpath: folder of the files; default: the loop's ``checkpoint_dir``.
        monitor: the round metric that ranks rounds, e.g. ``"val_acc"``; ``None`` keeps no best files
            (``save_top_k=-1`` then keeps one file per round).
        mode: ``"min"`` or ``"max"``: whether a lower or a higher ``monitor`` is better.
        save_top_k: how many of the best rounds to keep; ``0`` none, ``-1`` all.
        save_last: also write ``last.ckpt`` after every round.
        filename: file name template (without ``.ckpt``): ``{round}`` and ``{<metric>}`` fields, with an
            optional format such as ``{val_acc:.3f}``; each field is written ``name=value``, as Lightning's
            ``ModelCheckpoint`` does, with ``/`` in a name written ``_``. Default ``"{round}"``, followed by
            ``"-{<monitor>:.4f}"`` when ``monitor`` is set.
        save_adapters: also write the ``NAME-adapters`` folders; ``None``: when the global module holds a peft
            model (``False`` with one writes none; ``True`` without one is refused at setup).

    Examples:
        >>> ckpt = GlobalModelCheckpoint(monitor="val_acc", mode="max", save_top_k=2)
        >>> ckpt.format_name(3, {"val_acc": 0.8125})
        'round=3-val_acc=0.8125.ckpt'
        >>> GlobalModelCheckpoint(mode="best")
        Traceback (most recent call last):
        ...
        ValueError: Expected `mode` to be one of 'min', 'max', got 'best'.
    """

    def __init__(
        self,
        dirpath: str | os.PathLike | None = None,
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        save_last: bool = True,
        filename: str | None = None,
        save_adapters: bool | None = None,
    ) -> None:
        if dirpath is not None and not isinstance(dirpath, (str, os.PathLike)):
            raise TypeError(f"Expected `dirpath` to be a path or None, got {type(dirpath).__name__}.")
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise TypeError(f"Expected `monitor` to be a metric name (a non-empty string) or None, got {monitor!r}.")
        if mode not in _MODES:
            raise ValueError(f"Expected `mode` to be one of 'min', 'max', got {mode!r}.")
        self.save_top_k = check_int("save_top_k", save_top_k, low=-1)
        if monitor is None and self.save_top_k > 1:
            raise ValueError(
                f"Expected `save_top_k` to be -1, 0 or 1 without `monitor`, got {save_top_k}: set `monitor` to rank"
                " the rounds, or save_top_k=-1 to keep every round."
            )
        if not isinstance(save_last, bool):
            raise TypeError(f"Expected `save_last` to be a bool, got {save_last!r}.")
        if filename is not None and not isinstance(filename, str):
            raise TypeError(f"Expected `filename` to be a string template or None, got {type(filename).__name__}.")
        if save_adapters is not None and not isinstance(save_adapters, bool):
            raise TypeError(f"Expected `save_adapters` to be a bool or None, got {save_adapters!r}.")
        self.save_adapters = save_adapters
        self._adapters: list[tuple[str, Any]] = []  # (name, peft model) of the global module, at setup
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.monitor = monitor
        self.mode = mode
        self.save_last = save_last
        if filename is None:
            filename = "{round}" if monitor is None else f"{{round}}-{{{monitor}:.4f}}"
        self.filename = _check_template(filename, self.save_top_k)
        self.best_k_models: dict[str, float] = {}
        self.best_rounds: dict[str, int] = {}
        self.last_model_path: str | None = None
        self._dir: Path | None = None
        self._seen_metrics: set[str] = set()
        self._evaluated = False

    @property
    def hparams(self) -> dict[str, Any]:
        """The constructor arguments, for run configs."""
        hparams = {"dirpath": None if self.dirpath is None else str(self.dirpath), "monitor": self.monitor,
                   "mode": self.mode, "save_top_k": self.save_top_k, "save_last": self.save_last,
                   "filename": self.filename}
        if self.save_adapters is not None:  # only when set: runs written before it resume with the same settings
            hparams["save_adapters"] = self.save_adapters
        return hparams

    @property
    def best_model_path(self) -> str | None:
        """Path of the best checkpoint so far (``None`` before the first ranked round)."""
        if not self.best_k_models:
            return None
        return min(self.best_k_models, key=self._rank_key)

    @property
    def best_model_score(self) -> float | None:
        """The ``monitor`` value of :attr:`best_model_path`."""
        path = self.best_model_path
        return None if path is None else self.best_k_models[path]

    def format_name(self, round_index: int, metrics: dict[str, Any]) -> str:
        """The file name of round ``round_index`` with ``metrics``, from the ``filename`` template."""

        def field(match: re.Match) -> str:
            name, spec = match.group(1), match.group(2) or ""
            if name == "round":
                value: Any = round_index
            elif name in metrics:
                value = float(metrics[name])
            else:
                raise ValueError(self._missing(name, metrics, round_index, what="the `filename` template uses"))
            return f"{name.replace('/', '_')}={format(value, spec)}"

        return _FIELD.sub(field, self.filename) + ".ckpt"

    # ------------------------------------------------------------------ hooks
    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        folder = self.dirpath if self.dirpath is not None else getattr(loop, "checkpoint_dir", None)
        if folder is None:
            raise ValueError(
                "GlobalModelCheckpoint has nowhere to write: pass `dirpath=...`, or set"
                " `FederatedLoop(checkpoint_dir=...)`, beside whose federated checkpoints it then writes."
            )
        self._dir = Path(folder)
        self._seen_metrics = set()
        _check_hparams_load_safely(module)
        self._adapters = []
        if self.save_adapters is not False:
            from lightning_fedmut.adapters import peft_models

            self._adapters = [(name, m) for name, m in peft_models(module) if callable(getattr(m, "save_pretrained",
                                                                                                None))]
            if self.save_adapters and not self._adapters:
                raise ValueError(f"GlobalModelCheckpoint(save_adapters=True) needs a peft model in the global module,"
                                 f" got {type(module).__name__} with none: pass save_adapters=None or False.")

    def on_validation_end(self, loop: FederatedLoop, module: LightningModule) -> None:
        self._evaluated = True

    def on_round_end(self, loop: FederatedLoop, module: LightningModule) -> None:
        evaluated, self._evaluated = self._evaluated, False
        metrics = {k: v for k, v in loop.round_metrics.items() if _is_number(v)}
        self._seen_metrics.update(metrics)
        round_index = int(loop.round)
        assert self._dir is not None  # set in setup()
        if self.monitor is not None and self.save_top_k != 0:
            if self.monitor in metrics:
                self._rank(loop, module, round_index, float(metrics[self.monitor]), metrics)
            elif evaluated:  # the global model was evaluated, and the metric is not among the results
                raise ValueError(self._missing(self.monitor, metrics, round_index, what="`monitor` names"))
        elif self.monitor is None and self.save_top_k == -1:
            self._write(module, self._dir / self.format_name(round_index, metrics), round_index)
        if self.save_last:
            path = self._dir / f"{LAST_NAME}.ckpt"
            self._write(module, path, round_index)
            self.last_model_path = str(path)

    def on_fit_end(self, loop: FederatedLoop, module: LightningModule) -> None:
        if self.monitor is not None and self.save_top_k != 0 and not self.best_k_models:
            seen = ", ".join(repr(k) for k in sorted(self._seen_metrics)) or "none"
            warn_user(
                f"GlobalModelCheckpoint(monitor={self.monitor!r}) wrote no best checkpoint: no round reported"
                f" {self.monitor!r} (the rounds' metrics: {seen}). Pass `val_dataloaders` to `fit` so the global"
                " model is evaluated, or monitor another metric."
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": [[os.path.basename(p), s, self.best_rounds[p]] for p, s in self.best_k_models.items()],
            "last": None if self.last_model_path is None else os.path.basename(self.last_model_path),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        folder = self._dir if self._dir is not None else (self.dirpath or Path("."))
        self.best_k_models = {str(folder / name): float(score) for name, score, _ in state_dict["best"]}
        self.best_rounds = {str(folder / name): int(r) for name, _, r in state_dict["best"]}
        last = state_dict.get("last")
        self.last_model_path = None if last is None else str(folder / last)

    # ---------------------------------------------------------------- helpers
    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def _rank(self, loop: FederatedLoop, module: LightningModule, round_index: int, score: float,
              metrics: dict[str, Any]) -> None:
        if math.isnan(score):
            return  # a NaN round is never among the best
        assert self._dir is not None  # set in setup()
        path = str(self._dir / self.format_name(round_index, metrics))
        keep_all = self.save_top_k == -1
        worst = max(self.best_k_models, key=self._rank_key) if self.best_k_models else None
        full = not keep_all and len(self.best_k_models) >= self.save_top_k
        if full and worst is not None and not self._better(score, self.best_k_models[worst]):
            return
        self._write(module, Path(path), round_index)
        self.best_k_models[path] = score
        self.best_rounds[path] = round_index
        if full and worst is not None and worst != path:
            del self.best_k_models[worst], self.best_rounds[worst]
            Path(worst).unlink(missing_ok=True)
            shutil.rmtree(adapters_path(worst), ignore_errors=True)

    def _rank_key(self, path: str) -> tuple[float, int]:
        """Sorts the kept files best first: by score, ties won by the earlier round."""
        score = self.best_k_models[path]
        return (score if self.mode == "min" else -score, self.best_rounds[path])

    def _write(self, module: LightningModule, path: Path, round_index: int) -> None:
        write_lightning_checkpoint(module, path, round_index)
        if self._adapters:
            write_adapters(self._adapters, adapters_path(path))

    def _missing(self, name: str, metrics: dict[str, Any], round_index: int, what: str) -> str:
        available = ", ".join(repr(k) for k in sorted(metrics)) or "none"
        return (
            f"GlobalModelCheckpoint: {what} the metric {name!r}, which round {round_index} did not report. The"
            f" round's metrics are: {available}. Pass one of them (Lightning's logged names, e.g. 'val_acc')."
        )


def lightning_checkpoint(module: LightningModule, round_index: int, hparams: bool = True) -> dict[str, Any]:
    """The checkpoint dict Lightning's ``Trainer.save_checkpoint(weights_only=True)`` would write for ``module``.

    ``hparams=False`` leaves the module's hyperparameters out.

    Examples:
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> ckpt = lightning_checkpoint(BoringModel(), round_index=4)
        >>> sorted(ckpt), ckpt["epoch"], ckpt["global_step"]
        (['epoch', 'global_step', 'pytorch-lightning_version', 'state_dict'], 4, 4)
    """
    from lightning.pytorch import __version__ as lightning_version
    from lightning.pytorch.utilities.model_helpers import is_overridden

    checkpoint: dict[str, Any] = {
        "epoch": round_index,
        "global_step": round_index,
        "pytorch-lightning_version": lightning_version,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
    }
    if hparams and module.hparams:
        if getattr(module, "_hparams_name", None):
            checkpoint[module.CHECKPOINT_HYPER_PARAMS_NAME] = module._hparams_name
        checkpoint[module.CHECKPOINT_HYPER_PARAMS_KEY] = dict(module.hparams)
    if is_overridden("on_save_checkpoint", module):
        module.on_save_checkpoint(checkpoint)
    return checkpoint


def write_lightning_checkpoint(module: LightningModule, path: str | os.PathLike, round_index: int,
                               hparams: bool = True) -> Path:
    """Write :func:`lightning_checkpoint` of ``module`` to ``path`` atomically (a temporary file, then a rename).

    This is the ``last.ckpt`` that ``FederatedLoop(checkpoint_dir=...)`` writes by default, and each file of
    :class:`GlobalModelCheckpoint`: ``torch.load(path, weights_only=True)["state_dict"]`` and
    ``MyModule.load_from_checkpoint(path)`` read it.

    Examples:
        >>> import tempfile
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = write_lightning_checkpoint(BoringModel(), Path(d, "last.ckpt"), round_index=2)
        ...     sorted(torch.load(path, weights_only=True)["state_dict"])
        ['layer.bias', 'layer.weight']
    """
    path = Path(path)
    checkpoint = lightning_checkpoint(module, round_index, hparams=hparams)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".ckpt.part")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def adapters_path(path: str | os.PathLike) -> Path:
    """The folder of the adapters saved with the checkpoint file ``path``: ``NAME.ckpt`` -> ``NAME-adapters``.

    Examples:
        >>> adapters_path("ckpt/round=3-val_acc=0.8125.ckpt").as_posix()
        'ckpt/round=3-val_acc=0.8125-adapters'
    """
    path = Path(path)
    return path.with_name(path.name.removesuffix(".ckpt") + "-adapters")


def write_adapters(models: list[tuple[str, Any]], folder: Path) -> Path:
    """Write each ``(name, peft model)``'s ``save_pretrained`` into ``folder`` (one model: into it; several: into
    ``folder/name``), replacing what was there only once the new files are complete."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-", suffix="-adapters"))
    try:
        for name, model in models:
            model.save_pretrained(str(tmp if len(models) == 1 else tmp / (name or "model")))
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".old-", suffix="-adapters"))
            os.replace(folder, old / "previous")
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _check_template(filename: str, save_top_k: int) -> str:
    literal = _FIELD.sub("", filename)  # metric names may hold a '/': the written name has '_' instead
    if not filename or "/" in literal or os.sep in literal:
        raise ValueError(f"Expected `filename` to be a file name template without folders, got {filename!r}.")
    fields = _FIELD.findall(filename)
    for name, spec in fields:
        try:
            format(0 if name == "round" else 0.0, spec)
        except ValueError:
            raise ValueError(f"Expected `filename` fields like {{val_acc:.4f}}, got {{{name}:{spec}}}.") from None
    if literal == LAST_NAME and not fields:
        raise ValueError(f"Expected `filename` other than {LAST_NAME!r}, which `save_last` writes.")
    if save_top_k not in (0, 1) and not any(name == "round" for name, _ in fields):
        raise ValueError(
            f"Expected `filename` to contain {{round}} with save_top_k={save_top_k}, got {filename!r}: the kept"
            " files would overwrite one another."
        )
    return filename


def hparams_load_safely(module: LightningModule) -> str | None:
    """``None`` when ``torch.load(..., weights_only=True)`` can read back the module's hyperparameters, else
    what is wrong and how to fix it."""
    hparams = dict(module.hparams) if module.hparams else {}
    for key, value in hparams.items():
        buffer = io.BytesIO()
        try:
            torch.save({key: value}, buffer)
            buffer.seek(0)
            torch.load(buffer, weights_only=True)
        except (AttributeError, TypeError, pickle.PicklingError, pickle.UnpicklingError):  # weights_only refuses it
            return (
                f"The hyperparameter {key!r} of {type(module).__name__} is a {type(value).__name__}, which a"
                f" checkpoint loaded with weights_only=True cannot hold. Leave it out with"
                f" `self.save_hyperparameters(ignore=[{key!r}])`, or save plain values (numbers, strings, lists,"
                " dicts) instead."
            )
    return None


def _check_hparams_load_safely(module: LightningModule) -> None:
    """Refuse hyperparameters that ``torch.load(..., weights_only=True)`` could not read back."""
    problem = hparams_load_safely(module)
    if problem is not None:
        raise ValueError("GlobalModelCheckpoint: t" + problem[1:])


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float))
