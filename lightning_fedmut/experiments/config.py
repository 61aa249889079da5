"""A benchmark's configuration: methods x partitions x seeds, each cell one ``lightning-fedmut fit`` config.

A benchmark file (YAML) names one data set and model, the ``fit`` arguments every cell shares, the methods
(each a set of ``fit`` arguments: ``mutation``, ``aggregator``, ``callbacks``, ``loop.*`` ...), the partitions
and the seeds. :func:`load_benchmark` checks all of it against the ``fit`` command's schema, so that a
misspelled key, an unknown method or partition name or a bad value is one line, before any cell runs.
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_fedmut.experiments.flatness import FlatnessSettings, flatness_settings

__all__ = ["METHODS", "METHOD_SETTINGS", "Benchmark", "Cell", "load_benchmark", "partition_options"]

_MUTATION = "lightning_fedmut.callbacks.MutationCallback"


def _plugin(class_path: str, **init_args: Any) -> dict[str, Any]:
    return {"class_path": class_path, "init_args": init_args} if init_args else {"class_path": class_path}


#: The built-in methods by name: the ``fit`` arguments each adds to a cell (tutorial 8's settings: the
#: methods' defaults, FedProx's mu = 0.01 as in the FedMut paper, FedAdam's and FedYogi's server_lr 0.03, FedExP
#: evaluated on the average of its last two iterates, FedMut with radius 4, acceleration 0.3 over 50 rounds).
#: Every method aggregates with the uniform mean unless it names its own aggregator. A method name resolves through
#: the registry (:func:`lightning_fedmut.algorithms.resolve_name`); the built-in ones are written here in the
#: component form (``mutation``, ``aggregator``, ``callbacks``, ``loop.sampler``), the same components as
#: ``METHOD_SETTINGS``' presets, so that a cell's config stays what it was and a method can be a ``base``.
METHODS: dict[str, dict[str, Any]] = {
    "FedAvg": {},
    "FedMut": {"mutation": _plugin(_MUTATION, radius=4.0, acceleration=0.3, acceleration_rounds=50)},
    "FedProx": {"callbacks": [_plugin("lightning_fedmut.callbacks.FedProx", mu=0.01)]},
    "SCAFFOLD": {"callbacks": [_plugin("lightning_fedmut.callbacks.Scaffold")]},
    "FedAvgM": {"aggregator": _plugin("lightning_fedmut.aggregators.FedAvgM", server_lr=1.0, momentum=0.9)},
    "FedAdagrad": {"aggregator": _plugin("lightning_fedmut.aggregators.FedAdagrad", server_lr=0.1)},
    "FedAdam": {"aggregator": _plugin("lightning_fedmut.aggregators.FedAdam", server_lr=0.03)},
    "FedYogi": {"aggregator": _plugin("lightning_fedmut.aggregators.FedYogi", server_lr=0.03)},
    "FedExP": {"aggregator": _plugin("lightning_fedmut.aggregators.FedExP", epsilon=1e-3),
               "callbacks": [_plugin("lightning_fedmut.aggregators.FedExPReport")]},
    "FedMR": {"callbacks": [_plugin("lightning_fedmut.callbacks.FedMR")]},
    "Clustered sampling": {"loop": {"sampler": _plugin("lightning_fedmut.sampling.ClusteredSampler")}},
}

#: Each built-in row of :data:`METHODS` as a registered method and its settings: the preset they build has the
#: same components as the row (a test holds them together).
METHOD_SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "FedAvg": ("FedAvg", {"weighted": False}),
    "FedMut": ("FedMut", {"radius": 4.0, "acceleration": 0.3, "acceleration_rounds": 50, "weighted": False}),
    "FedProx": ("FedProx", {"mu": 0.01, "weighted": False}),
    "SCAFFOLD": ("SCAFFOLD", {"weighted": False}),
    "FedAvgM": ("FedAvgM", {"server_lr": 1.0, "momentum": 0.9}),
    "FedAdagrad": ("FedAdagrad", {"server_lr": 0.1}),
    "FedAdam": ("FedAdam", {"server_lr": 0.03}),
    "FedYogi": ("FedYogi", {"server_lr": 0.03}),
    "FedExP": ("FedExP", {"epsilon": 1e-3, "average_last_two": True}),
    "FedMR": ("FedMR", {"weighted": False}),
    "Clustered sampling": ("ClusteredSampling", {"weighted": False}),
}
#: What a cell of a registered method without a row in :data:`METHODS` may not set: the algorithm brings them.
_ALGORITHM_PARTS = ("mutation", "aggregator", "loop.sampler")

_TOP_LEVEL = ("name", "description", "data", "model", "fit", "methods", "partitions", "seeds", "metric", "goal",
              "last", "gain", "parallel", "logger", "project", "published", "source", "flatness")
#: What every cell starts from before the benchmark's ``fit`` arguments: no mutation unless a method asks for it
#: (``fit``'s own default is FedMut), no Lightning checkpoints of the global model, no progress bar.
_BASE: dict[str, Any] = {"mutation": None, "model_checkpoint": None, "loop": {"enable_progress_bar": False}}
#: ``fit`` arguments the benchmark sets itself, per cell.
_MANAGED = ("config", "seed", "ckpt_path", "logger", "project", "group", "run_name", "save_dir", "history_file",
            "loop.checkpoint_dir", "data")
_WHERE_FROM = {"seed": " (from `seeds`)", "partition": " (from `partitions`; shared options go in `fit.partition`)",
               "partition.scheme": " (from `partitions`)", "data": " (from the top-level `data`)"}
_GOALS = ("max", "min")
_LOGGERS = ("wandb", "csv", "none")
_DIRICHLET = re.compile(r"(?:dir|dirichlet)[-_ :(]*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\)?", re.IGNORECASE)
_SHARDS = re.compile(r"shards?[-_ :(]*([0-9]+)\)?", re.IGNORECASE)


@dataclass(frozen=True)
class Cell:
    """One run of a benchmark: a method under a partition with a seed.

    Attributes:
        method: the method's name (a row of the table).
        partition: the partition's name (a column).
        seed: the run's seed (model initialisation, partition, client order, mutation).
        args: the ``fit`` arguments of the cell as given (merged from the benchmark's layers).
        config: the same arguments resolved by the ``fit`` schema (every default filled in): what a finished
            cell is compared with when the benchmark runs again.
        folder: the cell's folder, relative to the benchmark's output folder.
    """

    method: str
    partition: str
    seed: int
    args: dict[str, Any] = field(repr=False)
    config: dict[str, Any] = field(repr=False)
    folder: str = ""

    @property
    def name(self) -> str:
        """The run's name, in W&B and the console: ``method | partition | seed s``."""
        return f"{self.method} | {self.partition} | seed {self.seed}"


@dataclass(frozen=True)
class Benchmark:
    """A checked benchmark: what :func:`load_benchmark` returns and :func:`~lightning_fedmut.experiments.run_benchmark`
    runs.

    Attributes:
        name: the benchmark's name: the W&B group of its runs and the default output folder.
        data: the data set (a built-in name or a LightningDataModule config), as ``fit``'s ``data``.
        methods: the rows of the table, in order.
        partitions: the columns, in order, with the ``fit`` partition options of each.
        seeds: the seeds every cell runs with.
        cells: every run, methods outermost, then partitions, then seeds.
        metric: the history key the table reports (default ``val_acc``).
        goal: ``max`` or ``min``: which value of ``metric`` is best (bold).
        last: each run's value is the mean of its last ``last`` evaluations of ``metric``.
        gain: ``(method, baseline)`` of the table's last row (default FedMut over FedAvg when both run).
        parallel: how many cells run at once, each in its own process.
        logger: ``wandb``, ``csv`` or ``none``.
        project: the W&B project (default: ``WANDB_PROJECT`` or ``lightning-fedmut``).
        description: a line shown above the table.
        published: published numbers to show beside the table: ``{method: {partition: value}}`` (those of the
            partitions the benchmark runs).
        source: where the published numbers come from.
        flatness: how each cell's final global model is measured (``flatness:``; see
            :mod:`lightning_fedmut.experiments.flatness`), or None for no flatness columns.
    """

    name: str
    data: Any
    methods: tuple[str, ...]
    partitions: dict[str, dict[str, Any]]
    seeds: tuple[int, ...]
    cells: tuple[Cell, ...]
    metric: str = "val_acc"
    goal: str = "max"
    last: int = 5
    gain: tuple[str, str] | None = None
    parallel: int = 1
    logger: str = "wandb"
    project: str | None = None
    description: str | None = None
    published: dict[str, dict[str, float]] = field(default_factory=dict)
    source: str | None = None
    flatness: FlatnessSettings | None = None


def partition_options(name: str) -> dict[str, Any]:
    """The ``fit`` partition options that a partition's short name stands for.

    ``iid``; ``dir0.1`` (also ``dirichlet-0.1``, ``Dir(0.1)``): Dirichlet labels with that concentration;
    ``shards2``: label-sorted shards, that many per client; ``json:PATH``: a ``{client: [indices]}`` file such
    as the FedMut reference code's partition files.

    Examples:
        >>> partition_options("Dir(0.5)"), partition_options("iid")
        ({'scheme': 'dirichlet', 'alpha': 0.5}, {'scheme': 'iid'})
        >>> partition_options("json:parts/cifar10_dir0.1.json")
        {'scheme': 'json', 'path': 'parts/cifar10_dir0.1.json'}
        >>> partition_options("dirchlet")
        Traceback (most recent call last):
        ...
        ValueError: Expected a partition name among iid, dir<alpha> (e.g. dir0.1), shards<n> (e.g. shards2) and json:<path>, or a mapping of the name to fit's partition options, got 'dirchlet'.
    """
    text = str(name).strip()
    if text.lower() == "iid":
        return {"scheme": "iid"}
    if text.lower().startswith("json:") and len(text) > 5:
        return {"scheme": "json", "path": text[5:]}
    match = _DIRICHLET.fullmatch(text)
    if match:
        return {"scheme": "dirichlet", "alpha": float(match.group(1))}
    match = _SHARDS.fullmatch(text)
    if match:
        return {"scheme": "shards", "shards_per_client": int(match.group(1))}
    raise ValueError("Expected a partition name among iid, dir<alpha> (e.g. dir0.1), shards<n> (e.g. shards2) and"
                     f" json:<path>, or a mapping of the name to fit's partition options, got {name!r}.")


def partition_label(name: str) -> str:
    """How the table heads a partition given by its short name.

    Examples:
        >>> [partition_label(n) for n in ("iid", "dir0.1", "shards2", "json:a/b.json")]
        ['IID', 'Dir(0.1)', 'Shards(2)', 'b.json']
    """
    options = partition_options(name)
    if options["scheme"] == "iid":
        return "IID"
    if options["scheme"] == "dirichlet":
        return f"Dir({options['alpha']:g})"
    if options["scheme"] == "shards":
        return f"Shards({options['shards_per_client']})"
    return Path(options["path"]).name


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``: mappings merge key by key, a plugin given another ``class_path`` replaces the
    old one, ``callbacks`` lists add up, anything else is replaced.

    Examples:
        >>> merge({"loop": {"rounds": 3, "local_epochs": 5}, "callbacks": [1]}, {"loop": {"rounds": 9}, "callbacks": [2]})
        {'loop': {'rounds': 9, 'local_epochs': 5}, 'callbacks': [1, 2]}
        >>> merge({"aggregator": {"class_path": "a.A", "init_args": {"x": 1}}}, {"aggregator": {"class_path": "b.B"}})
        {'aggregator': {'class_path': 'b.B'}}
    """
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        old = out.get(key)
        if key == "callbacks" and isinstance(old, list) and isinstance(value, list):
            out[key] = old + copy.deepcopy(value)
        elif isinstance(old, Mapping) and isinstance(value, Mapping) and not _replaces(old, value):
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _replaces(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return "class_path" in new and "class_path" in old and _short(new["class_path"]) != _short(old["class_path"])


def _short(class_path: Any) -> str:
    return str(class_path).rsplit(".", 1)[-1]


def slug(text: str) -> str:
    """A folder name for a method or partition name.

    Examples:
        >>> slug("FedMut (radius 0.5) + FedAdam"), slug("Dir(0.1)")
        ('fedmut-radius-0-5-fedadam', 'dir-0-1')
    """
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


# ------------------------------------------------------------------------------------------ the fit schema
@functools.lru_cache(maxsize=4)
def cell_parser(data: str | None, model: str | None) -> Any:
    """``fit``'s parser for a benchmark on ``data`` (a built-in name; None for a DataModule) with ``model`` (a
    class path; None for the data set's default model), plus ``callbacks``: a list of federated callbacks, and
    ``algorithm``: a :class:`~lightning_fedmut.algorithms.FederatedAlgorithm` (a registered method's class)."""
    from lightning_fedmut.callbacks import FederatedCallback
    from lightning_fedmut.cli.fit import fit_parser

    argv = (["--data", data] if data else []) + (["--model", model] if model else [])
    parser = fit_parser(argv)
    parser.add_argument("--callbacks", type=list[FederatedCallback] | None, default=None,
                        help="Federated callbacks of the method (FedProx, Scaffold, FedMR, ServerReport ...).")
    if "algorithm" not in {a.dest for a in parser._actions}:
        from lightning_fedmut.algorithms import FederatedAlgorithm

        parser.add_argument("--algorithm", type=FederatedAlgorithm | None, default=None,
                            help="A registered method (class_path, init_args) that brings its own components.")
    return parser


def cell_config(cfg: Any) -> dict[str, Any]:
    """A parsed cell as plain data (``fit``'s ``config_dict``), without ``algorithm`` (nor ``loop.algorithm``) when
    no registered method sets it: the config of a cell of a built-in method is what it was before methods had a registry, so its
    finished folder is still recognised."""
    from lightning_fedmut.cli.fit import config_dict

    config = config_dict(cfg)
    if config.get("algorithm", ...) is None:
        del config["algorithm"]
    loop = config.get("loop")
    if isinstance(loop, dict) and loop.get("algorithm", ...) is None:  # FederatedLoop's own argument, unset
        del loop["algorithm"]
    return config


def _known_keys(parser: Any) -> list[str]:
    return sorted({a.dest for a in parser._actions if a.dest not in ("help", "config", "print_config") and not a.dest.endswith(".help")})


def check_keys(args: Mapping[str, Any], parser: Any, where: str, forbidden: Sequence[str] = _MANAGED) -> None:
    """Raise a one-line ``ValueError`` for a key of ``args`` that ``fit`` does not take or that the benchmark
    sets itself."""
    known = _known_keys(parser)

    def walk(tree: Mapping[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            name = f"{prefix}{key}"
            if name in forbidden:
                raise ValueError(f"{where}: `{name}` is set by the benchmark for each cell{_WHERE_FROM.get(name, '')};"
                                 " remove it")
            if isinstance(value, Mapping) and any(k.startswith(f"{name}.") for k in known):
                walk(value, f"{name}.")  # a group (loop, partition): check its keys
                continue
            if name in known:
                continue
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            raise ValueError(f"{where}: `{name}` is not an argument of `lightning-fedmut fit`{hint}")

    walk(args, "")


def resolve(args: Mapping[str, Any], parser: Any, where: str) -> Any:
    """Parse a cell's ``fit`` arguments; a bad value is one ``ValueError`` line naming ``where`` and the key."""
    from jsonargparse import ArgumentError

    from lightning_fedmut.cli._parser import one_line_error

    try:
        return parser.parse_object(_mutation_class(args))
    except (ArgumentError, ValueError, TypeError) as err:  # jsonargparse's errors, or a type's own check
        raise ValueError(f"{where}: {_key_message(one_line_error(str(err), parser))}") from None


def _key_message(message: str) -> str:
    """A ``fit`` flag's message about a key of the YAML file: ``loop.rounds: ...`` rather than ``--loop.rounds``."""
    return message.removeprefix("--")


def _mutation_class(args: Mapping[str, Any]) -> dict[str, Any]:
    """``mutation: {init_args: ...}`` without a class path means FedMut's MutationCallback."""
    out = dict(args)
    mutation = out.get("mutation")
    if isinstance(mutation, Mapping) and "class_path" not in mutation:
        out["mutation"] = {"class_path": _MUTATION, **mutation}
    return out


def check_plugins(cfg: Any, where: str) -> None:
    """Build the method's plugins once (cheap), so that their constructors' checks run before any cell."""
    from lightning_fedmut.aggregators import Aggregator
    from lightning_fedmut.algorithms import FederatedAlgorithm
    from lightning_fedmut.callbacks import FederatedCallback, MutationCallback
    from lightning_fedmut.cli._parser import CLIError
    from lightning_fedmut.cli.fit import _build
    from lightning_fedmut.sampling import ClientSampler

    try:
        _build("algorithm", FederatedAlgorithm | None, cfg.algorithm)
        _build("mutation", MutationCallback | None, cfg.mutation)
        _build("aggregator", Aggregator, cfg.aggregator)
        for callback in cfg.callbacks or []:
            _build("callbacks", FederatedCallback, callback)
    except CLIError as err:
        raise ValueError(f"{where}: {_key_message(err.message)}") from None
    try:
        _build("sampler", ClientSampler | None, cfg.loop.sampler)
    except CLIError as err:  # a nested key: the message names it in full
        raise ValueError(f"{where}: loop.{_key_message(err.message)}") from None


# ------------------------------------------------------------------------------------------------ loading
def read_config(source: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The benchmark config as a mapping, and its name for messages (the file name)."""
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source)), "benchmark"
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"CONFIG: expected a benchmark file (YAML), got {str(source)!r}: no such file")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"CONFIG: {str(source)!r} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(content, dict):
        raise TypeError(f"{path.name}: expected a mapping with `data`, `methods`, `partitions` and `seeds`,"
                         f" got {type(content).__name__}")
    content.setdefault("name", path.stem)
    return content, path.name


def load_benchmark(source: str | os.PathLike | Mapping[str, Any], overrides: Mapping[str, Any] | None = None
                   ) -> Benchmark:
    """Read and check a benchmark config (a YAML file or a mapping); every problem is one line, a ``ValueError``
    (a ``TypeError`` for a value of the wrong kind), raised before anything runs.

    Args:
        source: the benchmark file, or its content as a mapping.
        overrides: merged over the config first (mappings key by key), e.g. ``{"seeds": 1, "fit": {"loop":
            {"rounds": 3}}}`` for a quick run of a shipped config.

    Examples:
        >>> bench = load_benchmark({"name": "tiny", "data": "digits", "methods": ["FedAvg", "FedMut"],
        ...                         "partitions": ["iid", "dir0.1"], "seeds": 2, "fit": {"loop": {"rounds": 2}}})
        >>> bench.methods, list(bench.partitions), bench.seeds, len(bench.cells)
        (('FedAvg', 'FedMut'), ['IID', 'Dir(0.1)'], (0, 1), 8)
        >>> bench.cells[-1].name, bench.cells[-1].folder, bench.gain
        ('FedMut | Dir(0.1) | seed 1', 'cells/fedmut/dir-0-1/seed-1', ('FedMut', 'FedAvg'))
        >>> load_benchmark({"data": "digits", "methods": ["FedAvg", "FedNope"], "partitions": ["iid"], "seeds": 1})
        Traceback (most recent call last):
        ...
        ValueError: benchmark: methods: unknown method 'FedNope' (did you mean FedNova?): expected one of FedAvg, FedMut, FedProx, SCAFFOLD, FedAvgM, FedAdagrad, FedAdam, FedYogi, FedExP, FedMR, Clustered sampling, FedNova, FedSAM, FedASAM, FedDyn, DPFedAvg, DPFedMut, FedBN, FedPer, FedGen, MoFedSAM, FedLESAM, FedGloSS, FedSMOO, FedASAMSWA, FedSAMSWA, FedAvgSWA, FedRep, or a mapping of the method's name to its fit arguments
    """
    config, where = read_config(source)
    if overrides:
        config = merge(config, overrides)
    try:
        return _check(config, where)
    except (ValueError, TypeError) as err:
        message = str(err)
        raise type(err)(message if message.startswith(f"{where}: ") else f"{where}: {message}") from None


def _check(config: dict[str, Any], where: str) -> Benchmark:
    unknown = [k for k in config if k not in _TOP_LEVEL]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), _TOP_LEVEL, n=1, cutoff=0.6)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        raise ValueError(f"unknown key `{unknown[0]}`{hint}; a benchmark file takes {', '.join(_TOP_LEVEL)}")
    for key in ("data", "methods", "partitions", "seeds"):
        if config.get(key) is None:
            raise ValueError(f"`{key}` is required")
    flatness = flatness_settings(config.get("flatness"))
    name = str(config.get("name") or "benchmark")
    data = config["data"]
    model = config.get("model")
    model_path = model if isinstance(model, str) else (model or {}).get("class_path") if isinstance(model, Mapping) else None
    parser = cell_parser(data if isinstance(data, str) else None, model_path)
    common = config.get("fit") or {}
    if not isinstance(common, Mapping):
        raise TypeError(f"fit: expected a mapping of lightning-fedmut fit arguments, got {common!r}")
    check_keys(common, parser, "fit", forbidden=(*_MANAGED, "partition.scheme"))
    methods = _methods(config["methods"])
    partitions = _partitions(config["partitions"])
    seeds = _seeds(config["seeds"])
    base = merge(_BASE, {"data": data, **({"model": model} if model is not None else {})})
    base = merge(base, common)
    # each layer on its own first, so that an error names the layer that holds it
    resolve(merge(base, {"seed": seeds[0]}), parser, "fit")
    for label, options in partitions.items():
        check_keys({"partition": options}, parser, f"partitions.{label}", forbidden=())
        if options.get("scheme") == "json":
            check_partition_file(label, options.get("path"))
        resolve(merge(base, {"partition": options, "seed": seeds[0]}), parser, f"partitions.{label}")
    for method, method_args in methods.items():
        check_keys(method_args, parser, f"methods.{method}", forbidden=(*_MANAGED, "partition"))
        _check_algorithm_parts(merge(base, method_args), f"methods.{method}")
        check_plugins(resolve(merge(base, {**method_args, "seed": seeds[0]}), parser, f"methods.{method}"),
                      f"methods.{method}")
    cells = []
    for method, method_args in methods.items():
        for label, options in partitions.items():
            for seed in seeds:
                args = merge(merge(base, method_args), {"partition": options, "seed": seed})
                cfg = resolve(args, parser, f"methods.{method} with partitions.{label}")
                folder = f"cells/{slug(method)}/{slug(label)}/seed-{seed}"
                cells.append(Cell(method, label, seed, args, cell_config(cfg), folder))
    _unique_folders(methods, partitions)
    gain = _gain(config.get("gain", "default"), tuple(methods))
    metric = config.get("metric", "val_acc")
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"metric: expected a history key such as val_acc, got {metric!r}")
    goal = config.get("goal", "max")
    if goal not in _GOALS:
        raise ValueError(f"goal: expected one of max, min, got {goal!r}")
    logger = config.get("logger", "wandb")
    if logger not in _LOGGERS:
        raise ValueError(f"logger: expected one of wandb, csv, none, got {logger!r}")
    workers = (cells[0].config.get("loop") or {}).get("workers") if cells else None
    parallel = _positive("parallel", config.get("parallel", 1))
    if parallel > 1 and workers not in (None, 1):
        raise ValueError(f"parallel: expected 1 when fit.loop.workers is set (each cell already uses {workers}"
                         f" processes), got {parallel}")
    return Benchmark(
        name=name, data=data, methods=tuple(methods), partitions=partitions, seeds=seeds, cells=tuple(cells),
        metric=metric, goal=goal, last=_positive("last", config.get("last", 5)), gain=gain, parallel=parallel,
        logger=logger, project=config.get("project"), description=config.get("description"),
        published=_published(config.get("published") or {}, tuple(partitions)),
        source=config.get("source"), flatness=flatness,
    )


def check_partition_file(label: str, path: Any) -> None:
    """Read a ``json`` partition's file once, before any cell: a ``ValueError`` naming the column, the file and
    what is wrong with it, unless it is a ``{client: [indices]}`` map.

    Examples:
        >>> check_partition_file("Dir(0.1)", "no/such/parts.json")
        Traceback (most recent call last):
        ...
        ValueError: partitions.Dir(0.1): path: expected a JSON file of {client: [indices]} (such as the FedMut reference code's partition files), got 'no/such/parts.json': no such file
    """
    from lightning_fedmut.data.partition import load_partition_json

    where = f"partitions.{label}: path"
    expected = "expected a JSON file of {client: [indices]} (such as the FedMut reference code's partition files)"
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{where}: {expected}, got {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"{where}: {expected}, got {str(path)!r}: no such file")
    try:
        load_partition_json(path)
    except (ValueError, OSError) as err:
        reason = " ".join(str(err).split()).removesuffix(".")
        raise ValueError(f"{where}: {expected}, got {str(path)!r}: {reason}") from None


def _methods(value: Any) -> dict[str, dict[str, Any]]:
    preset = method_args
    if isinstance(value, str) or not isinstance(value, (Sequence, Mapping)) or not value:
        raise ValueError(f"methods: expected a non-empty list of method names or a mapping of names to fit"
                         f" arguments, got {value!r}")
    if not isinstance(value, Mapping):
        out = {}
        for name in value:
            if name in out:
                raise ValueError(f"methods: {name!r} is listed twice")
            out[str(name)] = preset(name)
        return out
    out = {}
    for name, args in value.items():
        if args is None:
            out[str(name)] = preset(name)
        elif isinstance(args, Mapping):
            args = dict(args)
            base = args.pop("base", None)
            out[str(name)] = merge(preset(base), args) if base is not None else args
        else:
            raise ValueError(f"methods.{name}: expected a mapping of fit arguments (or null for the built-in"
                             f" method of that name), got {args!r}")
    return out


def _row(name: str) -> str | None:
    """The row of :data:`METHODS` that ``name`` (a registered name, or a row's own) stands for, if any."""
    from lightning_fedmut.algorithms.registry import name_key

    return next((label for label, (registered, _) in METHOD_SETTINGS.items()
                 if name_key(name) in (name_key(label), name_key(registered))), None)


def method_args(name: Any) -> dict[str, Any]:
    """The ``fit`` arguments a method name adds to a cell, resolved through the registry of methods.

    A built-in method (any spelling the registry accepts: ``fedmut``, ``Clustered sampling``) is its row of
    :data:`METHODS`; a method registered with :func:`lightning_fedmut.algorithms.register` runs as
    ``algorithm: {class_path: ...}`` with its preset's defaults. An unknown name is a ``ValueError`` that lists
    the known ones and the closest.

    Examples:
        >>> method_args("fedprox")
        {'callbacks': [{'class_path': 'lightning_fedmut.callbacks.FedProx', 'init_args': {'mu': 0.01}}]}
        >>> method_args("FedFoo")
        Traceback (most recent call last):
        ...
        ValueError: methods: unknown method 'FedFoo' (did you mean FedYogi?): expected one of FedAvg, FedMut, FedProx, SCAFFOLD, FedAvgM, FedAdagrad, FedAdam, FedYogi, FedExP, FedMR, Clustered sampling, FedNova, FedSAM, FedASAM, FedDyn, DPFedAvg, DPFedMut, FedBN, FedPer, FedGen, MoFedSAM, FedLESAM, FedGloSS, FedSMOO, FedASAMSWA, FedSAMSWA, FedAvgSWA, FedRep, or a mapping of the method's name to its fit arguments
    """
    from lightning_fedmut.algorithms.registry import algorithm_class, names, resolve_name

    if name in METHODS:
        return copy.deepcopy(METHODS[name])
    known = [*METHODS, *(n for n in names() if _row(n) is None)]  # the rows, then the methods users registered
    try:
        registered = resolve_name(str(name)) if isinstance(name, str) else None
    except ValueError:
        registered = None
    if registered is None:
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"methods: unknown method {name!r}{hint}: expected one of {', '.join(known)}, or a mapping"
                         " of the method's name to its fit arguments")
    row = _row(registered)
    if row is not None:
        return copy.deepcopy(METHODS[row])
    cls = algorithm_class(registered)
    return {"algorithm": {"class_path": f"{cls.__module__}.{cls.__qualname__}"}}


def _check_algorithm_parts(args: Mapping[str, Any], where: str) -> None:
    """A cell of a registered method takes its aggregator, start model and sampler from the algorithm."""
    if args.get("algorithm") is None:
        return
    loop = args.get("loop")
    if not isinstance(loop, Mapping):
        loop = {}
    values = {"mutation": args.get("mutation"), "aggregator": args.get("aggregator"), "loop.sampler": loop.get("sampler")}
    given = [key for key in _ALGORITHM_PARTS if values[key] is not None]
    if given:
        raise ValueError(f"{where}: `algorithm` brings its own aggregator, start model and sampler; remove"
                         f" `{given[0]}` (from the method or from `fit`)")


def _partitions(value: Any) -> dict[str, dict[str, Any]]:
    if isinstance(value, str) or not isinstance(value, (Sequence, Mapping)) or not value:
        raise ValueError(f"partitions: expected a non-empty list of partition names (iid, dir0.1 ...) or a mapping"
                         f" of names to fit's partition options, got {value!r}")
    out: dict[str, dict[str, Any]] = {}
    items = value.items() if isinstance(value, Mapping) else ((None, v) for v in value)
    for label, options in items:
        try:
            if label is None:
                label, options = partition_label(options), partition_options(options)
            elif options is None:
                options = partition_options(label)
            elif isinstance(options, str):
                options = partition_options(options)
        except ValueError as err:
            raise ValueError(f"partitions: {err}") from None
        if not isinstance(options, Mapping):
            raise TypeError(f"partitions.{label}: expected a mapping of fit's partition options (scheme, alpha,"
                             f" num_clients ...) or a partition name, got {options!r}")
        if str(label) in out:
            raise ValueError(f"partitions: {label!r} is listed twice")
        out[str(label)] = dict(options)
    return out


def _seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"seeds: expected a number of seeds >= 1 or a list of seeds, got {value}")
        return tuple(range(value))
    if isinstance(value, Sequence) and not isinstance(value, str) and value and all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        if len(set(value)) != len(value):
            raise ValueError(f"seeds: expected distinct seeds, got {list(value)}")
        return tuple(int(s) for s in value)
    raise ValueError(f"seeds: expected a number of seeds >= 1 or a list of integers >= 0, got {value!r}")


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return value


def _gain(value: Any, methods: tuple[str, ...]) -> tuple[str, str] | None:
    if value == "default":
        return ("FedMut", "FedAvg") if {"FedMut", "FedAvg"} <= set(methods) else None
    if value is None:
        return None
    if (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
            and all(v in methods for v in value) and value[0] != value[1]):
        return str(value[0]), str(value[1])
    raise ValueError(f"gain: expected [method, baseline], two of the benchmark's methods ({', '.join(methods)}),"
                     f" or null, got {value!r}")


def _published(value: Any, partitions: tuple[str, ...]) -> dict[str, dict[str, float]]:
    if not isinstance(value, Mapping):
        raise TypeError(f"published: expected a mapping {{method: {{partition: value}}}}, got {value!r}")
    out: dict[str, dict[str, float]] = {}
    for method, row in value.items():
        if not isinstance(row, Mapping):
            raise TypeError(f"published.{method}: expected a mapping {{partition: value}}, got {row!r}")
        for label, number in row.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise TypeError(f"published.{method}.{label}: expected a number, got {number!r}")
            if label in partitions:  # a column the benchmark runs (an override may run fewer)
                out.setdefault(str(method), {})[str(label)] = float(number)
    return out


def _unique_folders(methods: Mapping[str, Any], partitions: Mapping[str, Any]) -> None:
    for kind, names in (("methods", list(methods)), ("partitions", list(partitions))):
        seen: dict[str, str] = {}
        for name in names:
            other = seen.setdefault(slug(name), name)
            if other != name:
                raise ValueError(f"{kind}: {other!r} and {name!r} would share the folder {slug(name)!r}:"
                                 " rename one")
