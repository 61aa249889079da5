"""Loggers for the command line: W&B (offline when no API key is configured), MLflow (a local ``file:`` store),
TensorBoard, CSV, or none."""

from __future__ import annotations

import importlib
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

LOGGERS = ("wandb", "mlflow", "tensorboard", "csv", "none")
#: the packages each logger needs beyond lightning (any one of them), and what to pip install
_PACKAGES = {"wandb": (("wandb",), "wandb"), "mlflow": (("mlflow",), "mlflow"),
             "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard")}
DEFAULT_PROJECT = "lightning-fedmut"
_AUTO_OFFLINE = False  # True once choose_wandb_mode switched W&B offline for want of an API key


def has_wandb_credentials() -> bool:
    """Whether a W&B API key is configured: ``WANDB_API_KEY``, an identity token file, or a netrc entry
    for the W&B host. The key itself is never read into the program's output."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return host is not None and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def choose_wandb_mode() -> str:
    """``WANDB_MODE`` if set; otherwise ``online`` with an API key and ``offline`` (set in the environment)
    without one, so that no run ever stops to ask for a key.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if has_wandb_credentials():
        return "online"
    global _AUTO_OFFLINE
    _AUTO_OFFLINE = True
    os.environ["WANDB_MODE"] = "offline"
    return "offline"


def wandb_dir(save_dir: str | os.PathLike) -> str:
    """Where W&B writes its ``wandb/`` folder: ``WANDB_DIR`` if set, else ``save_dir``."""
    return os.environ.get("WANDB_DIR") or str(save_dir)


def check_logger(kind: str) -> None:
    """Raise ``ImportError`` naming the ``pip install`` when the package that the logger ``kind`` needs is missing.

    Examples:
        >>> check_logger("csv")
        >>> check_logger("nope")
        Traceback (most recent call last):
        ...
        ValueError: Expected a logger among wandb, mlflow, tensorboard, csv, none, got 'nope'.
    """
    if kind not in LOGGERS:
        raise ValueError(f"Expected a logger among {', '.join(LOGGERS)}, got {kind!r}.")
    if kind not in _PACKAGES:
        return
    modules, pip = _PACKAGES[kind]
    for module in modules:
        try:
            importlib.import_module(module)
            return
        except ImportError:
            continue
    raise ImportError(f"the {kind} logger needs the {pip} package, which is not installed: pip install {pip}"
                      " (or pip install 'lightning_fedmut[loggers]')")


def mlflow_tracking_uri(save_dir: str | os.PathLike) -> str:
    """Where MLflow writes: ``MLFLOW_TRACKING_URI`` if set, else a local ``file:`` store ``save_dir/mlruns``.

    Examples:
        >>> import os
        >>> os.environ.pop("MLFLOW_TRACKING_URI", None) and None
        >>> mlflow_tracking_uri("/runs")
        'file:/runs/mlruns'
    """
    return os.environ.get("MLFLOW_TRACKING_URI") or f"file:{os.path.join(os.path.abspath(save_dir), 'mlruns')}"


def make_logger(
    kind: str,
    *,
    save_dir: str | os.PathLike = ".",
    project: str | None = None,
    group: str | None = None,
    name: str | None = None,
    job_type: str | None = None,
    tags: list[str] | None = None,
    silent: bool = False,
) -> Logger | None:
    """A Lightning logger: ``wandb`` (``WandbLogger``), ``mlflow`` (``MLFlowLogger``), ``tensorboard``
    (``TensorBoardLogger``), ``csv`` (``CSVLogger``) or ``none``.

    MLflow writes to :func:`mlflow_tracking_uri` (a local ``file:`` store under ``save_dir`` unless
    ``MLFLOW_TRACKING_URI`` says otherwise), with ``project`` as the experiment and ``name`` as the run name;
    TensorBoard writes ``save_dir/project/name`` (or ``version_N``), like CSV.

    The W&B project is ``project``, else ``WANDB_PROJECT``, else ``lightning-fedmut``; the group is
    ``group``, else ``WANDB_RUN_GROUP`` (how ``lightning-fedmut sweep`` groups its runs). W&B never prints
    its per-run summary blocks: it runs ``quiet`` (its start lines only), or ``silent`` with ``silent=True``
    (the demo, which prints one ``wandb sync`` hint for all its runs).
    """
    if kind == "none":
        return None
    project = project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
    check_logger(kind)
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(save_dir), name=project, version=name)
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(save_dir), name=project, version=name, default_hp_metric=False)
    if kind == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        uri = mlflow_tracking_uri(save_dir)
        if uri.startswith("file:"):  # MLflow 3 asks for this opt-in to write its local file store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return MLFlowLogger(experiment_name=project, run_name=name, tracking_uri=uri)
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    choose_wandb_mode()
    directory = wandb_dir(save_dir)
    Path(directory).mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"project": project, "save_dir": directory,
                              "settings": wandb.Settings(silent=True) if silent else wandb.Settings(quiet=True)}
    group = group or os.environ.get("WANDB_RUN_GROUP")
    for key, value in (("group", group), ("name", name), ("job_type", job_type), ("tags", tags)):
        if value:
            kwargs[key] = value
    logger = WandbLogger(**kwargs)
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)  # Lightning passes anonymous=None, which recent wandb warns about
    return logger


def finish_logger(logger: Logger | None) -> str | None:
    """Close the logger's run; return the run folder of an offline W&B run (to ``wandb sync``), else None."""
    if logger is None:
        return None
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger) or getattr(logger, "_experiment", None) is None:
        return None
    run = logger.experiment
    folder = os.path.dirname(run.dir) if getattr(run, "dir", None) else None
    offline = bool(getattr(run.settings, "_offline", False)) or os.environ.get("WANDB_MODE") in ("offline", "dryrun")
    run.finish()
    return folder if offline else None


def offline_notice(*folders: str | os.PathLike) -> str:
    """The lines telling where offline W&B runs are, why they are offline, and how to upload them."""
    why = "no W&B API key is configured" if _AUTO_OFFLINE else f"WANDB_MODE={os.environ.get('WANDB_MODE')}"
    runs = "the run was" if len(folders) == 1 else f"{len(folders)} runs were"
    where = folders[0] if len(folders) == 1 else os.path.commonpath([str(f) for f in folders])
    paths = " ".join(str(f) for f in folders)
    return f"W&B: {why}, so {runs} logged offline in {where}\nUpload later with: wandb sync {paths}"


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a parsed config to dotted keys spelled like the command-line flags.

    ``{"class_path": ..., "init_args": {...}}`` entries become ``key.class_path`` and ``key.<arg>`` (the
    form ``--mutation.radius=2`` takes), so a W&B sweep parameter named ``mutation.radius`` is the same
    key in the run config.

    Examples:
        >>> flatten_config({"seed": 0, "mutation": {"class_path": "m.M", "init_args": {"radius": 2.0}},
        ...                 "loop": {"rounds": 3}})
        {'seed': 0, 'mutation.class_path': 'm.M', 'mutation.radius': 2.0, 'loop.rounds': 3}
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and "class_path" in value:
            out[f"{name}.class_path"] = value["class_path"]
            out.update(flatten_config(value.get("init_args") or {}, prefix=f"{name}."))
        elif isinstance(value, Mapping) and value:
            out.update(flatten_config(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out
