"""Running a benchmark: every cell a federated ``fit``, resumable, one after another or several at once.

Each cell has a folder under the output folder, ``cells/<method>/<partition>/seed-<s>/``:

- ``cell.json``: the cell's resolved ``fit`` config, written before it runs;
- ``checkpoints/``: its federated checkpoints (``loop.checkpoint_dir``), one per round, so that a killed cell
  resumes from its last completed round (``ckpt_path="last"``) and ends as an uninterrupted one would;
- ``history.json``: written when the cell finishes, atomically: the per-round history, the W&B run, and with a
  ``flatness:`` section the figures of the final global model and the settings they were measured with (the
  checkpoints are then deleted);
- ``failed.json``: the error of a cell that failed (it runs again, from its checkpoints, on the next run).

A finished cell (``history.json`` of the same config) is skipped; a cell folder that holds a run of other
arguments is refused before anything runs, so that a table never mixes two settings.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_fedmut.experiments.config import (
    Benchmark,
    Cell,
    cell_config,
    cell_parser,
    load_benchmark,
    merge,
    resolve,
    slug,
)
from lightning_fedmut.experiments.flatness import (
    FinalFlatness,
    FlatnessSettings,
    flatness_batches,
    measure_flatness,
)
from lightning_fedmut.experiments.report import run_value, summarize, write_report
from lightning_fedmut.loop.connectors import tracking

__all__ = ["BenchmarkResult", "run_benchmark", "run_cell"]

HISTORY, FAILED, CELL = "history.json", "failed.json", "cell.json"


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` returns.

    Attributes:
        benchmark: the checked benchmark.
        output_dir: where its files are.
        records: one per cell, in the benchmark's order: ``status`` (``ok``, ``failed`` or ``missing``),
            ``method``, ``partition``, ``seed``, ``run_name``, ``run_id``, ``history`` (ok) or ``error`` (failed).
        summary: every number of the table (see :func:`~lightning_fedmut.experiments.summarize`).
        ran: how many cells ran this time (the others were finished before).
        files: the files written: ``results.md``, ``results.csv``, ``summary.json``, ``curves.png``.
    """

    benchmark: Benchmark
    output_dir: Path
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    ran: int = 0
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The records of the cells that failed."""
        return [r for r in self.records if r["status"] == "failed"]

    @property
    def complete(self) -> bool:
        """Whether every cell finished."""
        return all(r["status"] == "ok" for r in self.records)


def run_benchmark(
    config: str | os.PathLike | Mapping[str, Any] | Benchmark,
    output_dir: str | os.PathLike | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    parallel: int | None = None,
    group: str | None = None,
    dry_run: bool = False,
    report_only: bool = False,
    echo: Callable[[str], None] | None = print,
) -> BenchmarkResult:
    """Run every cell of a benchmark that has not finished yet, then write its table, CSV, curves and summary.

    Args:
        config: a benchmark file (YAML), its content as a mapping, or a :class:`~lightning_fedmut.experiments.Benchmark`.
        output_dir: the benchmark's folder; default ``outputs/benchmarks/<name>``.
        overrides: merged over the config (see :func:`~lightning_fedmut.experiments.load_benchmark`).
        parallel: cells run at once, each in its own process; default the config's ``parallel`` (1: one after
            another in this process).
        group: the W&B group of the cells' runs; default the benchmark's name.
        dry_run: list the cells and whether each is finished; run and write nothing.
        report_only: run nothing; write the outputs from the cells finished so far.
        echo: where progress lines go (None: nowhere).

    Returns:
        A :class:`BenchmarkResult`. A cell that fails is recorded as failed and the others go on.

    Raises:
        ValueError: the config is invalid (``TypeError`` for a value of the wrong kind), or a cell folder holds a
            run of other arguments; raised before any cell runs.
        RuntimeError: the data set cannot be loaded (before any cell runs).
        KeyboardInterrupt: Ctrl+C; the finished cells and the running cells' completed rounds are kept.

    Examples:
        >>> import tempfile
        >>> config = {"name": "tiny", "data": "digits", "methods": ["FedAvg", "FedMut"], "partitions": ["iid"],
        ...           "seeds": 1, "logger": "none", "fit": {"loop": {"rounds": 1, "clients_per_round": 2},
        ...                                                 "partition": {"num_clients": 4}}}
        >>> with tempfile.TemporaryDirectory() as out:
        ...     result = run_benchmark(config, out, dry_run=True)
        Benchmark tiny: 2 methods x 1 partition x 1 seed = 2 cells; 0 finished, 2 to run
          to run    FedAvg | IID | seed 0
          to run    FedMut | IID | seed 0
        >>> result.ran, [r["status"] for r in result.records]
        (0, ['missing', 'missing'])
    """
    bench = config if isinstance(config, Benchmark) else load_benchmark(config, overrides)
    out = Path(output_dir if output_dir is not None else Path("outputs") / "benchmarks" / slug(bench.name))
    say = echo or (lambda _line: None)
    workers = bench.parallel if parallel is None else int(parallel)
    if workers < 1:
        raise ValueError(f"parallel: expected an integer >= 1, got {parallel}")
    _check_folders(bench, out)
    problems = {c.folder: history_problem(out / c.folder / HISTORY, c, bench) for c in bench.cells
                if (out / c.folder / HISTORY).is_file()}  # a finished cell's history.json cut short or misshapen
    todo = [c for c in bench.cells if problems.get(c.folder, "missing") is not None]
    say(f"Benchmark {bench.name}: {_count(len(bench.methods), 'method')} x {_count(len(bench.partitions), 'partition')}"
        f" x {_count(len(bench.seeds), 'seed')} = {_count(len(bench.cells), 'cell')};"
        f" {len(bench.cells) - len(todo)} finished, {len(todo)} to run"
        + (f", {workers} at a time" if workers > 1 and todo and not (dry_run or report_only) else ""))
    if dry_run:
        for cell in bench.cells:
            why = f" ({HISTORY} {problems[cell.folder]})" if problems.get(cell.folder) else ""
            say(f"  {'finished' if cell not in todo else 'to run':<9} {cell.name}{why}")
        return BenchmarkResult(bench, out, [_missing(c) for c in bench.cells], {}, 0)
    ran = 0
    if todo and not report_only:
        _check_data(bench.cells[0].config)
        check_metric(bench)
        check_flatness(bench)
        for cell in todo:
            if problem := problems.get(cell.folder):
                _set_aside(out / cell.folder / HISTORY, cell, problem, say)
        out.mkdir(parents=True, exist_ok=True)
        (out / "benchmark.yaml").write_text(yaml.safe_dump(_resolved(bench), sort_keys=False), encoding="utf-8")
        logging = {"kind": bench.logger, "project": bench.project, "group": group or bench.name, "save_dir": str(out)}
        ran = _run_all(bench, todo, out, logging, workers, say)
    records = [read_record(out / c.folder, c, bench) for c in bench.cells]
    summary = summarize(records, methods=bench.methods, partitions=tuple(bench.partitions), seeds=bench.seeds,
                        metric=bench.metric, last=bench.last, goal=bench.goal, gain=bench.gain,
                        flatness=bench.flatness)
    files = write_report(summary, records, out, bench) if any(r["status"] != "missing" for r in records) else {}
    failed = sum(r["status"] == "failed" for r in records)
    missing = sum(r["status"] == "missing" for r in records)
    say(f"{len(records) - failed - missing} of {len(records)} cells finished" + (f", {failed} failed" if failed else "")
        + (f", {missing} not run" if missing else "") + (f"; results in {out}" if files else ""))
    return BenchmarkResult(bench, out, records, summary, ran, files)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _missing(cell: Cell) -> dict[str, Any]:
    return {"status": "missing", "method": cell.method, "partition": cell.partition, "seed": cell.seed,
            "run_name": cell.name, "folder": cell.folder}


def _comparable(config: Any) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def _unset_settings_dropped(old: Any, new: Any) -> Any:
    """``new`` without the settings ``old`` lacks and ``new`` leaves unset (``None``): a setting added to the
    library since a cell ran, at its default, leaves the finished cell valid.

    Examples:
        >>> _unset_settings_dropped({"loop": {"rounds": 3}}, {"loop": {"rounds": 3, "personal_evaluation": None}})
        {'loop': {'rounds': 3}}
        >>> _unset_settings_dropped({"loop": {"rounds": 3}}, {"loop": {"rounds": 3, "workers": 2}})
        {'loop': {'rounds': 3, 'workers': 2}}
    """
    if not (isinstance(old, Mapping) and isinstance(new, Mapping)):
        return new
    return {key: _unset_settings_dropped(old.get(key), value) for key, value in new.items()
            if key in old or value is not None}


def _first_difference(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new), key=str):
            if _comparable(old.get(key)) != _comparable(new.get(key)):
                return _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {old!r} there, {new!r} now"


def _check_folders(bench: Benchmark, out: Path) -> None:
    """Refuse, before anything runs, a cell folder that holds a run of other arguments."""
    for cell in bench.cells:
        stored = out / cell.folder / CELL
        if not stored.is_file():
            continue
        try:
            old = json.loads(stored.read_text(encoding="utf-8"))["config"]
        except (OSError, ValueError, KeyError):
            continue  # a cell.json cut short by a kill: the cell starts again (its checkpoints are checked by fit)
        new = _unset_settings_dropped(old, json.loads(_comparable(cell.config)))
        if _comparable(old) != _comparable(new):
            raise ValueError(f"{out / cell.folder} holds a run of other arguments ({_first_difference(old, new)}):"
                             " delete that folder to run the cell again, or choose another output folder")


def _check_data(config: Mapping[str, Any]) -> None:
    """Load a built-in data set once before any cell, so that missing files are one error, not one per cell."""
    data = config.get("data")
    if not isinstance(data, str):
        return
    from lightning_fedmut.datasets import DatasetDownloadError, load_dataset

    try:
        load_dataset(data, root=config.get("data_dir", "data"), download=bool(config.get("download", True)))
    except (DatasetDownloadError, ImportError, OSError) as err:
        raise RuntimeError(f"data: {data} cannot be loaded: {' '.join(str(err).split())}") from None


def _resolved(bench: Benchmark) -> dict[str, Any]:
    """The benchmark as it runs, for ``benchmark.yaml``: every method's fit arguments spelled out."""
    methods: dict[str, Any] = {}
    for cell in bench.cells:
        methods.setdefault(cell.method, {k: v for k, v in cell.args.items() if k not in ("partition", "seed")})
    return json.loads(json.dumps({
        "name": bench.name, "data": bench.data, "metric": bench.metric, "goal": bench.goal, "last": bench.last,
        "gain": list(bench.gain) if bench.gain else None, "seeds": list(bench.seeds),
        "partitions": bench.partitions, "methods": methods,
        "flatness": bench.flatness.as_dict() if bench.flatness is not None else None,
    }, default=str))


def _write_json(path: Path, content: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content, default=str, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_record(folder: Path, cell: Cell, bench: Benchmark | None = None) -> dict[str, Any]:
    """The record of one cell from its folder: finished (``history.json``), failed, or missing.

    With ``bench``, a ``history.json`` that is truncated or of the wrong shape (see :func:`history_problem`) is
    recorded as failed, its error naming the file."""
    for name in (HISTORY, FAILED):
        path = folder / name
        if path.is_file():
            if name == HISTORY and bench is not None:
                problem = history_problem(path, cell, bench)
                if problem is not None:
                    return {**_missing(cell), "status": "failed",
                            "error": f"{path} {problem}: run the benchmark again to rerun the cell"}
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                continue
            record["folder"] = cell.folder
            return record
    return _missing(cell)


def _set_aside(path: Path, cell: Cell, problem: str, say: Callable[[str], None]) -> None:
    """Move a finished cell's unusable ``history.json`` to ``history.json.invalid``, saying so: the cell runs
    again (its checkpoints were deleted when it finished, so from its first round)."""
    aside = path.with_name(f"{HISTORY}.invalid")
    os.replace(path, aside)
    say(f"{cell.name}: runs again: {path} {problem} (kept as {aside.name})")


def history_problem(path: Path, cell: Cell, bench: Benchmark) -> str | None:
    """Why a finished cell's ``history.json`` cannot be used in the table, or None when it can.

    It must be JSON (not cut short), a finished record of this cell whose ``history`` has one row per round,
    rounds 0, 1, ... up to the cell's ``loop.rounds`` (fewer only when the run stopped early), and the
    benchmark's ``metric`` in at least one row (when :func:`check_metric` checks that name).

    Examples:
        >>> import tempfile
        >>> from lightning_fedmut.experiments import load_benchmark
        >>> bench = load_benchmark({"data": "digits", "methods": ["FedAvg"], "partitions": ["iid"], "seeds": 1,
        ...                         "fit": {"loop": {"rounds": 2}}})
        >>> rows = [{"round": 0, "val_acc": 0.5}, {"round": 1, "val_acc": 0.6}]
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = Path(d, "history.json")
        ...     _ = path.write_text(json.dumps({"status": "ok", "history": rows}))
        ...     ok = history_problem(path, bench.cells[0], bench)
        ...     _ = path.write_text(json.dumps({"status": "ok", "history": rows[:1]}))
        ...     short = history_problem(path, bench.cells[0], bench)
        ...     _ = path.write_text(json.dumps({"status": "ok", "history": rows})[:30])
        ...     cut = history_problem(path, bench.cells[0], bench)
        >>> ok is None, short, cut
        (True, 'holds 1 round, expected 2 (loop.rounds)', 'is truncated or not JSON (Expecting property name enclosed in double quotes: line 1, column 31)')
    """
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return "is not text"
    except ValueError as err:
        return f"is truncated or not JSON ({getattr(err, 'msg', err)}: line {getattr(err, 'lineno', '?')}," \
               f" column {getattr(err, 'colno', '?')})"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if not isinstance(record, dict):
        return f"holds a {type(record).__name__}, expected a mapping with `status` and `history`"
    if record.get("status") != "ok":
        return f"has status {record.get('status')!r}, expected 'ok'"
    for key, value in (("method", cell.method), ("partition", cell.partition), ("seed", cell.seed)):
        if key in record and record[key] != value:
            return f"is the record of {key} {record[key]!r}, expected {value!r}"
    history = record.get("history")
    if not isinstance(history, list) or not history:
        return f"has `history` {_short(history)}, expected a non-empty list of rounds"
    for i, row in enumerate(history):
        if not isinstance(row, dict) or row.get("round") != i or isinstance(row.get("round"), bool):
            return f"has {_short(row)} as row {i} of `history`, expected a mapping with round {i}"
    rounds = (cell.config.get("loop") or {}).get("rounds")
    stopped = record.get("stopped_early") is True
    if isinstance(rounds, int) and (len(history) > rounds or (len(history) < rounds and not stopped)):
        return f"holds {_count(len(history), 'round')}, expected {rounds} (loop.rounds)"
    if _checked(bench.metric) and not any(_is_number(row.get(bench.metric)) for row in history):
        return f"holds no {bench.metric} (the benchmark's metric) in any round"
    if bench.flatness is not None:
        return flatness_problem(record.get("flatness"), bench.flatness)
    return None


def flatness_problem(stored: Any, settings: FlatnessSettings) -> str | None:
    """Why a finished cell's stored flatness figures (its record's ``flatness``) do not fit the benchmark's
    ``flatness:`` settings, or None when they do: the cell then runs again, since its final model is not kept.

    Examples:
        >>> settings = FlatnessSettings(metrics=("sharpness",))
        >>> flatness_problem({"settings": settings.as_dict(), "values": {"sharpness": 0.01}}, settings) is None
        True
        >>> flatness_problem(None, settings)
        'holds no flatness figures (the benchmark measures sharpness)'
        >>> flatness_problem({"settings": {**settings.as_dict(), "rho": 0.1}, "values": {"sharpness": 0.01}}, settings)
        'holds flatness figures measured with rho 0.1, expected 0.05 (flatness.rho)'
    """
    if not isinstance(stored, Mapping) or not isinstance(stored.get("values"), Mapping):
        return f"holds no flatness figures (the benchmark measures {', '.join(settings.metrics)})"
    old: Mapping[str, Any] = stored["settings"] if isinstance(stored.get("settings"), Mapping) else {}
    for key, value in settings.as_dict().items():
        if key != "metrics" and old.get(key) != value:
            return f"holds flatness figures measured with {key} {old.get(key)!r}, expected {value!r} (flatness.{key})"
    missing = [m for m in settings.metrics if not _is_number(stored["values"].get(m))]
    if missing:
        return f"holds no {missing[0]} (flatness.metrics)"
    return None


def _checked(metric: str) -> bool:
    """Whether :func:`check_metric` knows ``metric`` before any cell runs (else a history may lack it)."""
    return "/" not in metric or metric in LOOP_COLUMNS


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else f"{text[:width - 3]}..."


# --------------------------------------------------------------------------------------------- one cell
def run_cell(args: Mapping[str, Any], folder: str | os.PathLike, meta: Mapping[str, Any],
             logging: Mapping[str, Any]) -> dict[str, Any]:
    """Run one cell (a federated ``fit`` of ``args``) in ``folder``, resuming from its checkpoints; write its
    record there (``history.json``, or ``failed.json`` with the error) and return it.

    Args:
        args: the cell's ``fit`` arguments (``Cell.args``).
        folder: the cell's folder (its checkpoints go to ``checkpoints/`` in it).
        meta: ``benchmark``, ``method``, ``partition``, ``seed``, ``run_name`` and ``config``: written into the
            record and, as ``benchmark.*`` keys, into the W&B run's config; optionally ``flatness``, the
            :class:`~lightning_fedmut.experiments.flatness.FlatnessSettings` as a dict: the final global model's
            figures are then measured, stored in the record (``flatness``) and logged to the W&B run's summary
            (``flatness/<name>``).
        logging: ``kind`` (wandb, csv or none), ``project``, ``group`` and ``save_dir`` of the cell's logger.

    Returns:
        The record: ``status`` ``ok`` with ``history``, ``run_id`` and ``seconds``, or ``failed`` with ``error``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    record: dict[str, Any] = {key: meta[key] for key in ("method", "partition", "seed", "run_name")}
    state: dict[str, Any] = {}
    try:
        history, failures = _fit_cell(args, folder, meta, logging, state)
        record.update(status="ok", history=history, client_failures=failures,
                      stopped_early=len(history) < state.get("rounds", len(history)))
        if state.get("flatness") is not None:
            record["flatness"] = state["flatness"]
    except Exception as err:  # noqa: BLE001 - any error fails the cell; Ctrl+C and SIGTERM stop the benchmark
        record.update(status="failed", error=_one_line(err),
                      traceback="".join(traceback.format_exception(err)[-6:]))
    finally:
        _finish_logger(state.get("logger"), state, failed=record.get("status") != "ok")
    record.update(run_id=state.get("run_id"), wandb_dir=state.get("wandb_dir"),
                  seconds=round(time.perf_counter() - start, 3), config=meta.get("config"))
    if record["status"] == "ok":
        _write_json(folder / HISTORY, record)
        (folder / FAILED).unlink(missing_ok=True)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # finished: its history is all the table needs
    else:
        _write_json(folder / FAILED, record)
    return record


def _one_line(err: BaseException) -> str:
    text = getattr(err, "message", None) or str(err)
    return f"{type(err).__name__}: {' '.join(str(text).split())}"


def _fit_cell(args: Mapping[str, Any], folder: Path, meta: Mapping[str, Any], logging: Mapping[str, Any],
              state: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """What ``lightning-fedmut fit`` does with the cell's arguments, plus the method's ``callbacks`` and, for a
    registered method, its ``algorithm`` (which brings the aggregator, start model and sampler)."""
    from lightning_fedmut.cli._logging import flatten_config, make_logger
    from lightning_fedmut.cli.fit import build_run, resume_checkpoint

    cfg = _cell_config(merge(args, {"loop": {"checkpoint_dir": str(folder / "checkpoints")}, "ckpt_path": "last"}),
                       meta["run_name"])
    if cfg.algorithm is not None:  # a registered method brings its aggregator (the config refused another one)
        cfg.aggregator = None
    ckpt_path = resume_checkpoint(cfg.ckpt_path, cfg.loop.checkpoint_dir)
    run = build_run(cfg)  # what `lightning-fedmut fit` builds from the same arguments
    logger = make_logger(logging["kind"], save_dir=logging["save_dir"], project=logging.get("project"),
                         group=logging.get("group"), name=meta["run_name"], silent=True)
    state["logger"] = logger
    config = cell_config(cfg)
    config.pop("ckpt_path", None)
    if logger is not None:  # logged when fit starts the run: a resumed cell goes on in its checkpoint's W&B run
        tracking.defer_hyperparams(logger, {
            "benchmark.name": meta.get("benchmark"), "benchmark.method": meta["method"],
            "benchmark.partition": meta["partition"], "benchmark.seed": meta["seed"], **flatten_config(config)})
    loop = run.loop(logger=logger, seed=cfg.seed)
    final = None
    if meta.get("flatness") is not None:  # measured when the last round ends, while the run's logger is open
        final = FinalFlatness(_settings(meta["flatness"]), _cell_batches(cfg, run.data, meta["flatness"]))
        loop.callbacks.append(final)
    state["rounds"] = cfg.loop.rounds
    result = loop.fit(run.model, run.clients, val_dataloaders=run.val, ckpt_path=ckpt_path)
    if final is not None:
        if final.figures is None:  # measured in another process (workers): measure the returned global model
            final.measure(result.module if result.module is not None else run.model)
        state["flatness"] = final.figures
    state["run_id"] = None if logger is None or logger.version is None else str(logger.version)
    return result.history, len(result.failures)


def _settings(stored: Mapping[str, Any]) -> FlatnessSettings:
    return FlatnessSettings(**{**stored, "metrics": tuple(stored["metrics"])})


def _cell_batches(cfg: Any, data: Any, stored: Mapping[str, Any]) -> list[Any]:
    """The benchmark's flatness batches, drawn from the cell's training set."""
    from lightning_fedmut.cli.fit import _data

    train, _val, collate_fn = _data(cfg, data)
    return flatness_batches(train, _settings(stored), collate_fn)


def check_flatness(bench: Benchmark) -> None:
    """Check the benchmark's ``flatness:`` settings against the data and model before any cell runs: a
    ``ValueError`` naming ``flatness`` when the training set has fewer examples than ``batches x batch_size`` or
    the model gives no loss on a batch (its ``training_step`` returns none)."""
    if bench.flatness is None:
        return
    from lightning_fedmut.cli._parser import CLIError

    cell = bench.cells[0]
    try:
        cfg = _cell_config(cell.args, "flatness")
        model, train, _val, collate_fn = _model_and_data(cfg)
    except CLIError:  # the cell itself cannot be built: its run reports that (failed.json)
        return
    batches = flatness_batches(train, bench.flatness, collate_fn)
    probe = FlatnessSettings(metrics=("loss",), batches=1, batch_size=bench.flatness.batch_size,
                             seed=bench.flatness.seed)
    try:
        measure_flatness(model, batches[:1], probe)
    except Exception as err:  # noqa: BLE001 - any error of the model's loss, before a cell runs
        raise ValueError(f"flatness: expected the model's training_step to return the loss of a training batch,"
                         f" got {type(err).__name__}: {' '.join(str(err).split())}") from None


def _cell_config(args: Mapping[str, Any], where: str) -> Any:
    """A cell's ``fit`` arguments parsed by ``fit``'s schema."""
    data_arg, model_arg = args.get("data"), args.get("model")
    model_path = model_arg if isinstance(model_arg, str) else (
        model_arg.get("class_path") if isinstance(model_arg, Mapping) else None)
    return resolve(args, cell_parser(data_arg if isinstance(data_arg, str) else None, model_path), where)


def _model_and_data(cfg: Any) -> tuple[Any, Any, Any, Any]:
    """``(model, train dataset, server evaluation loader or None, collate_fn)`` of a cell, the model built with
    the cell's seed; no evaluation loader when the model has no ``validation_step``."""
    import torch
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.utilities.model_helpers import is_overridden

    from lightning_fedmut.cli.fit import _build, _data

    for key in ("batch_size", "eval_batch_size"):  # plain ints in the loaders (a checkpoint holds plain data)
        if isinstance(getattr(cfg, key, None), int):
            setattr(cfg, key, int(getattr(cfg, key)))
    torch.manual_seed(cfg.seed)
    model = _build("model", LightningModule, cfg.model)
    data = _build("data", LightningDataModule, cfg.data)
    train, val, collate_fn = _data(cfg, data)
    if val is not None and not is_overridden("validation_step", model, LightningModule):
        val = None
    return model, train, val, collate_fn


#: History columns every round has, whatever the model and method.
LOOP_COLUMNS = ("clients/trained", "clients/failed", "round_skipped")


def check_metric(bench: Benchmark) -> None:
    """Check the benchmark's ``metric`` before any cell runs: a ``ValueError`` naming it and the names the cells'
    history will hold, unless it is one of them.

    The names are the validation metrics of a dry evaluation (the first cell's model on one batch of the
    evaluation data, as each round evaluates it: ``val_acc`` and ``val_loss`` for the built-in models) and the
    loop's own columns (``clients/trained`` ...). A name with a ``/`` (a client training mean ``clients/<name>``,
    a method's figure such as ``fedmut/delta_norm``) is known only once a round has run, and is not checked.
    """
    metric = bench.metric
    if not _checked(metric):
        return
    from lightning_fedmut.cli._parser import CLIError
    from lightning_fedmut.execution.evaluation import Evaluator

    cell = bench.cells[0]
    try:
        cfg = _cell_config(cell.args, "metric")
        model, _train, val, _collate = _model_and_data(cfg)
    except CLIError:  # the cell itself cannot be built: its run reports that (failed.json)
        return
    names: list[str] = []
    if val is not None:
        trainer_kwargs = {**dict(cfg.loop.trainer_kwargs or {}), "limit_val_batches": 1}
        names = sorted(Evaluator(trainer_kwargs).evaluate(model, val))
    if metric in names or metric in LOOP_COLUMNS:
        return
    close = difflib.get_close_matches(metric, names + list(LOOP_COLUMNS), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    logged = (f"the model's validation logs {', '.join(names)}" if names else
              "the model logs no validation metric" if val is not None else
              "the cells evaluate nothing (the model has no validation_step or the data no evaluation set)")
    raise ValueError(f"metric: expected one of the names the cells' history holds, got {metric!r}{hint}: {logged}"
                     f" (a dry evaluation of the first cell's model), and every round has {', '.join(LOOP_COLUMNS)};"
                     " a client training mean (clients/<name>) or a method's figure (fedmut/...) is taken as given")


def _finish_logger(logger: Any, state: dict[str, Any], failed: bool) -> None:
    if logger is None:
        return
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
        run = logger.experiment
        state.setdefault("run_id", run.id)
        state["wandb_dir"] = os.path.dirname(run.dir) if getattr(run, "dir", None) else None
        run.finish(exit_code=1 if failed else 0)
    elif hasattr(logger, "finalize"):
        logger.finalize("failed" if failed else "success")


# -------------------------------------------------------------------------------------------- all cells
def _task(bench: Benchmark, cell: Cell, out: Path) -> tuple[dict[str, Any], str, dict[str, Any]]:
    meta = {"benchmark": bench.name, "method": cell.method, "partition": cell.partition, "seed": cell.seed,
            "run_name": cell.name, "config": cell.config,
            "flatness": bench.flatness.as_dict() if bench.flatness is not None else None}
    return cell.args, str(out / cell.folder), meta


def _start(bench: Benchmark, cell: Cell, out: Path) -> None:
    folder = out / cell.folder
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / CELL, {"method": cell.method, "partition": cell.partition, "seed": cell.seed,
                                "run_name": cell.name, "config": cell.config})


def _line(bench: Benchmark, record: Mapping[str, Any]) -> str:
    if record["status"] != "ok":
        return f"failed: {record.get('error')}"
    value, rows = run_value(record.get("history") or [], bench.metric, bench.last)
    shown = f"{bench.metric} {value:.4f} (mean of the last {len(rows)})" if value is not None else f"no {bench.metric}"
    figures = (record.get("flatness") or {}).get("values") or {}
    shown += "".join(f", {name} {number:.4g}" for name, number in figures.items())
    return f"ok, {shown}, {record.get('seconds', 0):.1f} s"


def _run_all(bench: Benchmark, todo: list[Cell], out: Path, logging: dict[str, Any], workers: int,
             say: Callable[[str], None]) -> int:
    width = len(str(len(todo)))
    if workers == 1:
        for i, cell in enumerate(todo):
            _start(bench, cell, out)
            args, folder, meta = _task(bench, cell, out)
            record = run_cell(args, folder, meta, logging)
            say(f"[{i + 1:>{width}}/{len(todo)}] {cell.name}: {_line(bench, record)}")
        return len(todo)
    import multiprocessing

    queue, done = list(todo), 0
    while queue:  # one pool, or a new one after a worker died (the cells it held are recorded as failed)
        broken = False
        with ProcessPoolExecutor(max_workers=min(workers, len(queue)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init, initargs=(workers, os.getpid())) as pool:
            pending: dict[Any, Cell] = {}
            try:
                while pending or (queue and not broken):
                    while queue and not broken and len(pending) < workers:  # one cell per worker, none queued
                        cell = queue.pop(0)
                        _start(bench, cell, out)
                        pending[pool.submit(_cell_process, *_task(bench, cell, out), logging)] = cell
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        cell = pending.pop(future)
                        done += 1
                        try:
                            line = _line(bench, future.result())
                        except BrokenProcessPool as err:  # a worker died (killed, out of memory)
                            broken = True
                            record = {**_missing(cell), "status": "failed", "error": f"its process died: {err}"}
                            _write_json(out / cell.folder / FAILED, record)
                            line = f"failed: {record['error']}"
                        say(f"[{done:>{width}}/{len(todo)}] {cell.name}: {line}")
            except KeyboardInterrupt:  # the running cells stop at their next safe point, saved; no other starts
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.terminate()
                raise
    return len(todo)


#: In a cell process: the benchmark's process id, and whether a cell is running (set by ``_cell_process``).
_PARENT: dict[str, int] = {}
_RUNNING = threading.Event()
#: How long an orphaned cell process may take to save its round after the benchmark died, before it exits anyway.
ORPHAN_GRACE_S = 300.0


def _worker_init(workers: int, parent: int) -> None:
    """A cell process: its share of the CPU threads; SIGTERM when the benchmark dies (the cell saves its last
    completed round and stops), and a watchdog that ends the process once the benchmark is gone."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C goes to the benchmark, which stops the workers
    _PARENT["pid"] = parent
    deathsig = False
    try:
        import ctypes

        deathsig = ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM) == 0  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the watchdog sends the SIGTERM
        pass
    if _orphaned():  # the benchmark died while this process started
        os._exit(0)
    threading.Thread(target=_watch_parent, args=(not deathsig,), name="benchmark-watchdog", daemon=True).start()


def _orphaned() -> bool:
    """Whether the benchmark that started this cell process has died (the process was handed to another)."""
    parent = _PARENT.get("pid")
    return parent is not None and os.getppid() != parent


def _watch_parent(send_sigterm: bool, every: float = 0.2) -> None:
    """Poll the parent: once the benchmark is gone, an idle process exits at once; a running cell gets SIGTERM
    (when the kernel did not send it) and ``ORPHAN_GRACE_S`` seconds to save its round, after which the process
    exits anyway (its previous rounds are saved)."""
    while not _orphaned():
        time.sleep(every)
    if not _RUNNING.is_set():
        os._exit(0)
    if send_sigterm:
        os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + ORPHAN_GRACE_S
    while _RUNNING.is_set() and time.monotonic() < deadline:
        time.sleep(every)
    os._exit(0 if not _RUNNING.is_set() else 143)


def _cell_process(args: Mapping[str, Any], folder: str, meta: Mapping[str, Any], logging: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """:func:`run_cell` in a cell process. When the benchmark has died, nobody reads the result: the process
    exits as soon as the cell returns or stops (a pool worker would otherwise wait for its next cell forever)."""
    _RUNNING.set()
    try:
        record = run_cell(args, folder, meta, logging)
    except BaseException:
        if _orphaned():
            os._exit(143)
        raise
    finally:
        _RUNNING.clear()
    if _orphaned():
        os._exit(0)
    return record
