"""``lightning-fedmut sweep FILE``: run a W&B sweep file's configurations locally, as offline W&B runs.

``wandb sweep`` and ``wandb agent`` need the W&B server. This runs the same file without it: the grid
(or ``--count`` random draws from the parameter space) is expanded here, and each configuration runs the
file's ``command`` exactly as ``wandb agent`` would (``${args}`` becomes ``--name=value`` flags; the
parameters are also written where ``WANDB_SWEEP_PARAM_PATH`` points), with ``WANDB_MODE=offline`` and all
runs in one W&B group, to upload later with ``wandb sync``.

The ``command`` (and ``program``) of a sweep file runs as written, with this user's rights: run only sweep
files you trust. When it runs ``lightning-fedmut fit``, every configuration's flags are checked before the
first one runs, so a misspelled flag or a bad value in the last configuration stops the sweep at once.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from jsonargparse.typing import NonNegativeInt, PositiveInt

from lightning_fedmut.cli._parser import CLIError, make_parser, parse, plain, plural

PROG = "lightning-fedmut sweep"
METHODS = ("grid", "random", "bayes")
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
_TOP_LEVEL = {"method", "metric", "parameters", "command", "program", "name", "description", "project", "entity",
              "early_terminate", "run_cap", "controller", "job", "image_uri", "scheduler", "settings"}
_DISTRIBUTIONS = {"constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform",
                  "log_uniform_values", "q_log_uniform", "q_log_uniform_values", "inv_log_uniform",
                  "inv_log_uniform_values", "normal", "q_normal", "log_normal", "q_log_normal"}
_ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")


def load_sweep(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a W&B sweep file; every problem is a one-line :class:`CLIError` (exit code 2)."""
    if not os.path.isfile(path):
        raise CLIError(f"FILE: expected a W&B sweep file (YAML), got {str(path)!r}: no such file")
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise CLIError(f"FILE: {str(path)!r} is not valid YAML: {' '.join(str(err).split())}") from None
    return check_sweep(config, str(path))


def check_sweep(config: Any, where: str = "sweep") -> dict[str, Any]:
    """Check a sweep config against W&B's sweep schema (the parts that matter to run it).

    Examples:
        >>> check_sweep({"method": "grid", "parameters": {}}, "s.yaml")
        Traceback (most recent call last):
        ...
        lightning_fedmut.cli._parser.CLIError: s.yaml has no parameters: expected a non-empty `parameters` mapping of name: {values: [...]} (or value, or distribution with min/max)
    """
    if not isinstance(config, dict):
        raise CLIError(f"{where}: expected a YAML mapping with `method` and `parameters`, got {type(config).__name__}")
    unknown = sorted(set(config) - _TOP_LEVEL)
    if unknown:
        raise CLIError(f"{where}: unknown top-level keys {unknown}; a W&B sweep file takes {sorted(_TOP_LEVEL)}")
    method = config.get("method")
    if method not in METHODS:
        raise CLIError(f"{where}: expected `method` to be one of {', '.join(METHODS)}, got {method!r}")
    parameters = config.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise CLIError(f"{where} has no parameters: expected a non-empty `parameters` mapping of name:"
                       " {values: [...]} (or value, or distribution with min/max)")
    for name, spec in parameters.items():
        _check_parameter(where, str(name), spec, method)
    metric = config.get("metric")
    if metric is not None and (not isinstance(metric, dict) or "name" not in metric
                               or metric.get("goal", "minimize") not in ("minimize", "maximize")):
        raise CLIError(f"{where}: expected `metric` to be {{name: ..., goal: minimize|maximize}}, got {metric!r}")
    if method == "bayes" and metric is None:
        raise CLIError(f"{where}: a bayes sweep needs a `metric` {{name, goal}}")
    command = config.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not all(isinstance(c, (str, int, float)) for c in command):
        raise CLIError(f"{where}: expected `command` to be a list of strings, got {command!r}")
    if "${program}" in command and not config.get("program"):
        raise CLIError(f"{where}: `command` uses ${{program}} but the file sets no `program`")
    return config


def _check_parameter(where: str, name: str, spec: Any, method: str) -> None:
    prefix = f"{where}: parameter {name!r}"
    if not isinstance(spec, dict):
        raise CLIError(f"{prefix}: expected a mapping such as {{values: [...]}}, got {spec!r}")
    if "parameters" in spec:
        raise CLIError(f"{prefix}: nested parameters are not supported; name it with dots instead"
                       f" (e.g. {name}.radius), which is also the --{name}.radius flag")
    if "value" in spec:
        return
    if "values" in spec:
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise CLIError(f"{prefix}: expected `values` to be a non-empty list, got {spec['values']!r}")
        probabilities = spec.get("probabilities")
        if probabilities is not None and (len(probabilities) != len(spec["values"])
                                          or abs(sum(probabilities) - 1) > 1e-6):
            raise CLIError(f"{prefix}: expected one probability per value, summing to 1, got {probabilities!r}")
        return
    if method == "grid":
        raise CLIError(f"{prefix}: a grid sweep needs `values` (or `value`) for every parameter, got {spec!r}")
    distribution = spec.get("distribution", _infer_distribution(spec))
    if distribution not in _DISTRIBUTIONS:
        raise CLIError(f"{prefix}: expected `distribution` among {sorted(_DISTRIBUTIONS)} (or `values`), got"
                       f" {distribution!r}")
    if distribution in ("constant", "categorical"):
        raise CLIError(f"{prefix}: distribution {distribution} needs `value` or `values`")
    if "normal" in distribution:  # mu and sigma default to 0 and 1, as in W&B
        return
    missing = [k for k in ("min", "max") if k not in spec]
    if missing:
        raise CLIError(f"{prefix}: distribution {distribution} needs {' and '.join(missing)}")
    if not spec["min"] < spec["max"]:
        raise CLIError(f"{prefix}: expected min < max, got min={spec['min']!r}, max={spec['max']!r}")
    if distribution.endswith("_values") and spec["min"] <= 0:
        raise CLIError(f"{prefix}: distribution {distribution} needs min > 0, got {spec['min']!r}")


def _infer_distribution(spec: Mapping[str, Any]) -> str | None:
    if "min" in spec and "max" in spec:
        both_int = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
        return "int_uniform" if both_int else "uniform"
    return None


# ---------------------------------------------------------------------------------- configurations
def grid(parameters: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every combination of the ``values`` (and fixed ``value``) of a grid sweep, first parameter slowest.

    Examples:
        >>> grid({"a": {"values": [1, 2]}, "b": {"value": "x"}, "c": {"values": [0.1, 0.2]}})
        [{'a': 1, 'b': 'x', 'c': 0.1}, {'a': 1, 'b': 'x', 'c': 0.2}, {'a': 2, 'b': 'x', 'c': 0.1}, {'a': 2, 'b': 'x', 'c': 0.2}]
    """
    names = list(parameters)
    axes = [[spec["value"]] if "value" in spec else list(spec["values"]) for spec in parameters.values()]
    return [dict(zip(names, combo)) for combo in itertools.product(*axes)]


def sample(parameters: Mapping[str, Mapping[str, Any]], count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` random configurations drawn from the parameters' values and distributions.

    Examples:
        >>> runs = sample({"a": {"values": [1, 2]}, "lr": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-1}}, 3)
        >>> len(runs), all(1e-3 <= r["lr"] <= 1e-1 and r["a"] in (1, 2) for r in runs)
        (3, True)
    """
    rng = np.random.default_rng(seed)
    return [{name: _draw(spec, rng) for name, spec in parameters.items()} for _ in range(count)]


def _draw(spec: Mapping[str, Any], rng: np.random.Generator) -> Any:
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        values = list(spec["values"])
        return values[int(rng.choice(len(values), p=spec.get("probabilities")))]
    dist = spec.get("distribution", _infer_distribution(spec))
    lo: Any = spec.get("min")  # present for the distributions that use it: the spec was checked
    hi: Any = spec.get("max")
    q = spec.get("q", 1)
    if dist == "int_uniform":
        return int(rng.integers(int(lo), int(hi) + 1))
    if dist in ("uniform", "q_uniform"):
        x = float(rng.uniform(lo, hi))
    elif dist in ("log_uniform_values", "q_log_uniform_values"):
        x = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    elif dist in ("log_uniform", "q_log_uniform"):  # min and max are exponents
        x = float(math.exp(rng.uniform(lo, hi)))
    elif dist == "inv_log_uniform_values":
        x = float(1.0 / math.exp(rng.uniform(math.log(1 / hi), math.log(1 / lo))))
    elif dist == "inv_log_uniform":
        x = float(math.exp(-rng.uniform(lo, hi)))
    elif dist in ("normal", "q_normal"):
        x = float(rng.normal(spec.get("mu", 0.0), spec.get("sigma", 1.0)))
    else:  # log_normal, q_log_normal
        x = float(math.exp(rng.normal(spec.get("mu", 0.0), spec.get("sigma", 1.0))))
    if dist.startswith("q_"):
        x = round(x / q) * q
        return int(x) if isinstance(q, int) and float(x).is_integer() else x
    return x


# ---------------------------------------------------------------------------------------- commands
def command_args(values: Mapping[str, Any]) -> dict[str, list[str]]:
    """The macros ``wandb agent`` fills from one configuration: ``args`` (``--name=value``),
    ``args_no_hyphens``, ``args_no_boolean_flags``, ``args_no_equals`` and ``args_json``.

    Examples:
        >>> command_args({"mutation.radius": 2.0, "mutation": None})["args"]
        ['--mutation.radius=2.0', '--mutation=None']
    """
    flags, no_hyphens, no_booleans, no_equals = [], [], [], []
    for name, value in values.items():
        flag = f"{name}={value}"
        flags.append(f"--{flag}")
        no_hyphens.append(flag)
        no_equals += [f"--{name}", str(value)]
        if isinstance(value, bool):
            if value:
                no_booleans.append(f"--{name}")
        else:
            no_booleans.append(f"--{flag}")
    return {"args": flags, "args_no_hyphens": no_hyphens, "args_no_boolean_flags": no_booleans,
            "args_no_equals": no_equals, "args_json": [json.dumps(dict(values))]}


def build_command(template: Sequence[Any], values: Mapping[str, Any], program: str | None = None,
                  interpreter: str | None = None) -> list[str]:
    """Expand a sweep ``command`` for one configuration as ``wandb agent`` does.

    ``${env}`` becomes ``/usr/bin/env`` (off Windows), ``${interpreter}`` the Python interpreter,
    ``${program}`` the file's ``program``, ``${envvar:NAME}`` the variable's value; a macro list such as
    ``${args}`` is spliced in.

    Examples:
        >>> build_command(["${env}", "lightning-fedmut", "fit", "${args}"], {"loop.rounds": 3})
        ['/usr/bin/env', 'lightning-fedmut', 'fit', '--loop.rounds=3']
    """
    macros: dict[str, list[str]] = command_args(values)
    macros["interpreter"] = [interpreter or "python"]
    macros["program"] = [program] if program else []
    macros["env"] = ["/usr/bin/env"] if os.name != "nt" else []
    out: list[str] = []
    for chunk in template:
        chunk = _ENVVAR.sub(lambda m: os.environ.get(m.group(1), m.group(1)), str(chunk))
        if chunk.startswith("${") and chunk.endswith("}"):
            out += macros.get(chunk[2:-1], [])
        else:
            out.append(chunk)
    return out


def _local(command: list[str], history: Path) -> list[str]:
    """Run ``lightning-fedmut`` with this interpreter, and have ``fit`` write its history for the summary.

    Examples:
        >>> _local(["/usr/bin/env", "lightning-fedmut", "fit", "--seed=1"], Path("h.json"))[1:]
        ['-m', 'lightning_fedmut.cli', 'fit', '--seed=1', '--history_file=h.json']
    """
    for i, part in enumerate(command):
        if os.path.basename(part) == "lightning-fedmut":
            command = [sys.executable, "-m", "lightning_fedmut.cli", *command[i + 1 :]]
            break
    for i, part in enumerate(command[:-1]):
        if part == "lightning_fedmut.cli" and command[i + 1] == "fit":
            return [*command, f"--history_file={history}"]
    return command


# --------------------------------------------------------------------------------------------- run
def run_sweep(
    file: str,
    count: PositiveInt | None = None,  # type: ignore[assignment]
    method: Literal["grid", "random"] | None = None,
    group: str | None = None,
    seed: NonNegativeInt = 0,  # type: ignore[assignment]
    dry_run: bool = False,
    keep_going: bool = True,
) -> list[dict[str, Any]]:
    """Run a W&B sweep file's configurations locally, one offline W&B run each, all in one W&B group.

    Args:
        file: the W&B sweep file (YAML).
        count: number of configurations: all of a grid by default, 10 random draws otherwise.
        method: grid or random, instead of the file's method (a bayes file runs random draws).
        group: W&B group of the runs; default: ``<file name>-<time>``.
        seed: seed of the random draws.
        dry_run: print the commands without running them.
        keep_going: run the remaining configurations after one fails.

    Returns:
        One dict per configuration: its ``values``, ``command``, ``returncode`` and final ``metric``.
    """
    config = load_sweep(file)
    chosen = method or config["method"]
    parameters = config["parameters"]
    if chosen == "bayes":
        print("bayes search needs the W&B server's optimizer; running random draws from the same space instead")
        chosen = "random"
    if chosen == "grid":
        for name, spec in parameters.items():
            _check_parameter(file, str(name), spec, "grid")
        configurations = grid(parameters)[: count or None]
    else:
        configurations = sample(parameters, count or 10, seed=seed)
    metric = (config.get("metric") or {}).get("name", "val_acc")
    goal = (config.get("metric") or {}).get("goal", "maximize")
    group = group or f"{Path(file).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    template = config.get("command", DEFAULT_COMMAND)
    check_configurations(configurations, config, file)
    workdir = Path(tempfile.mkdtemp(prefix="lightning-fedmut-sweep-"))
    print(f"Sweep {file}: {len(configurations)} {chosen} configuration(s), W&B group {group!r} (offline)")
    try:
        rows = _run_all(configurations, config, template, workdir, group, metric, dry_run, keep_going)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not dry_run:
        _summary(rows, metric, goal, group)
    return rows


def fit_arguments(command: Sequence[str]) -> list[str] | None:
    """The ``fit`` flags of a command that runs ``lightning-fedmut fit`` (``None`` for any other program).

    Examples:
        >>> fit_arguments(["/usr/bin/env", "lightning-fedmut", "fit", "--seed=1"]), fit_arguments(["train.py"])
        (['--seed=1'], None)
    """
    local = _local(list(command), Path("history.json"))
    for i, part in enumerate(local[:-1]):
        if part == "lightning_fedmut.cli" and local[i + 1] == "fit":
            return local[i + 2 : -1]  # without the --history_file that _local appends
    return None


def check_configurations(configurations: Sequence[Mapping[str, Any]], config: Mapping[str, Any], file: str) -> None:
    """Check every configuration's ``fit`` flags before the first one runs; a bad one is a :class:`CLIError`
    naming the configuration, the flag and the value.

    A ``command`` that runs another program is not checked here: it runs as written.
    """
    template = config.get("command", DEFAULT_COMMAND)
    from lightning_fedmut.cli.fit import check_fit_args

    for i, values in enumerate(configurations):
        args = fit_arguments(build_command(template, values, config.get("program"), sys.executable))
        if args is None:
            continue
        try:
            check_fit_args(args)
        except CLIError as err:
            shown = " ".join(f"{k}={v}" for k, v in values.items())
            raise CLIError(f"{file}: configuration {i + 1} of {len(configurations)} ({shown}):"
                           f" {err.message.rstrip('.')}; nothing was run") from None


def run_names(configurations: Sequence[Mapping[str, Any]], prefix: str) -> list[str]:
    """One W&B run name per configuration: ``prefix``, its number, and the parameters that vary.

    Examples:
        >>> run_names([{"mutation.radius": 1.0, "data": "digits"}, {"mutation.radius": 2.0, "data": "digits"}], "grid")
        ['grid-1 radius=1.0', 'grid-2 radius=2.0']
        >>> run_names([{"mutation": "lightning_fedmut.MutationCallback", "seed": 0}, {"mutation": None, "seed": 1}], "vs")
        ['vs-1 mutation=MutationCallback seed=0', 'vs-2 mutation=None seed=1']
    """
    varying = [k for k in (configurations[0] if configurations else {})
               if len({repr(c.get(k)) for c in configurations}) > 1]
    ends = [k.rsplit(".", 1)[-1] for k in (configurations[0] if configurations else {})]
    # the last part of a dotted name, unless two parameters end alike
    short = {k: k if ends.count(k.rsplit(".", 1)[-1]) > 1 else k.rsplit(".", 1)[-1] for k in varying}
    width = len(str(len(configurations)))
    names = []
    for i, values in enumerate(configurations):
        shown = " ".join(f"{short[k]}={_short_value(values.get(k))}" for k in varying)
        names.append(f"{prefix}-{i + 1:0{width}d}" + (f" {shown}" if shown else ""))
    return names


def _short_value(value: Any) -> str:
    text = str(value)
    return text.rsplit(".", 1)[-1] if isinstance(value, str) and re.fullmatch(r"[\w.]+\.[A-Z]\w*", text) else text


def _run_all(configurations: list[dict[str, Any]], config: dict[str, Any], template: Sequence[Any], workdir: Path,
             group: str, metric: str, dry_run: bool, keep_going: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    names = run_names(configurations, str(config.get("name") or group))
    for i, values in enumerate(configurations):
        history = workdir / f"history-{i}.json"
        command = _local(build_command(template, values, config.get("program"), sys.executable), history)
        shown = " ".join(f"{k}={v}" for k, v in values.items())
        print(f"[{i + 1}/{len(configurations)}] {shown}", flush=True)
        if dry_run:
            print("    " + shlex.join(command))
            rows.append({"values": values, "command": command, "returncode": None, "metric": None, "name": names[i]})
            continue
        returncode = _run_one(command, values, group, workdir, i, names[i])
        value = _final_metric(history, metric)
        rows.append({"values": values, "command": command, "returncode": returncode, "metric": value,
                     "name": names[i]})
        status = "ok" if returncode == 0 else f"failed (exit code {returncode})"
        print(f"    {status}" + (f", {metric} {value:.4f}" if value is not None else ""), flush=True)
        if returncode != 0 and not keep_going:
            break
    return rows


def _run_one(command: list[str], values: Mapping[str, Any], group: str, workdir: Path, index: int, name: str) -> int:
    run_id = f"{uuid.uuid4().hex[:8]}{index:03d}"
    params = workdir / f"config-{run_id}.yaml"
    params.write_text(yaml.safe_dump({k: {"value": v} for k, v in values.items()}))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_RUN_GROUP": group, "WANDB_RUN_ID": run_id,
           "WANDB_NAME": name, "WANDB_SWEEP_PARAM_PATH": str(params)}
    return subprocess.run(command, env=env, check=False).returncode


def _final_metric(history: Path, metric: str) -> float | None:
    try:
        rows = json.loads(history.read_text())["history"]
    except (OSError, ValueError, KeyError):
        return None
    values = [row[metric] for row in rows if isinstance(row.get(metric), (int, float))]
    return float(values[-1]) if values else None


def configuration_means(rows: Sequence[Mapping[str, Any]], goal: str = "maximize") -> list[dict[str, Any]]:
    """The final metric of each configuration over its seeds (every parameter but ``seed`` alike), best first.

    Each entry: ``values`` (without ``seed``), ``seeds``, ``metrics`` (one per seed that finished), ``mean``
    and ``std`` (the sample standard deviation, ``n - 1``; 0 for one seed). Runs without a metric are left out.

    Examples:
        >>> rows = [{"values": {"radius": r, "seed": s}, "metric": m}
        ...         for r, s, m in [(1, 0, 0.5), (1, 1, 0.7), (2, 0, 0.9), (2, 1, 0.1)]]
        >>> [(c["values"], c["seeds"], round(c["mean"], 3)) for c in configuration_means(rows)]
        [({'radius': 1}, [0, 1], 0.6), ({'radius': 2}, [0, 1], 0.5)]
    """
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("metric") is None:
            continue
        values = {k: v for k, v in row["values"].items() if k != "seed"}
        entry = groups.setdefault(json.dumps(values, sort_keys=True, default=str),
                                  {"values": values, "seeds": [], "metrics": []})
        entry["seeds"].append(row["values"].get("seed"))
        entry["metrics"].append(float(row["metric"]))
    out = []
    for entry in groups.values():
        entry["mean"] = float(np.mean(entry["metrics"]))
        metrics = entry["metrics"]
        entry["std"] = float(np.std(metrics, ddof=1)) if len(metrics) > 1 else 0.0
        out.append(entry)
    return sorted(out, key=lambda e: -e["mean"] if goal == "maximize" else e["mean"])


def _summary(rows: list[dict[str, Any]], metric: str, goal: str, group: str) -> None:
    failed = [r for r in rows if r["returncode"] != 0]
    means = configuration_means(rows, goal)
    if means:
        over_seeds = any(len(c["metrics"]) > 1 for c in means)
        print(f"Final {metric} per configuration" + (" (mean and sample std over seeds)" if over_seeds else "")
              + (", best first:" if len(means) > 1 else ":"))
        for c in means:
            shown = " ".join(f"{k}={v}" for k, v in c["values"].items()) or "(no parameters)"
            spread = f" +- {c['std']:.4f} over {plural(len(c['metrics']), 'seed')}" if over_seeds else ""
            print(f"  {c['mean']:.4f}{spread}  {shown}")
        best = means[0]
        shown = " ".join(f"{k}={v}" for k, v in best["values"].items()) or "(no parameters)"
        how = f"mean over {plural(len(best['metrics']), 'seed')}" if over_seeds else "final"
        print(f"Best ({goal} {metric}, {how}): {best['mean']:.4f} with {shown}")
    if failed:
        print(f"{len(failed)} of {len(rows)} configuration(s) failed")
    wandb_dir = os.environ.get("WANDB_DIR") or "."
    print(f"Offline W&B runs of group {group!r} are in {os.path.join(wandb_dir, 'wandb')};"
          f" upload them with: wandb sync {os.path.join(wandb_dir, 'wandb', 'offline-run-*')}")


def sweep_parser() -> Any:
    parser = make_parser(PROG, "Run a W&B sweep file's grid or random configurations locally, one offline W&B"
                               " run per configuration in one W&B group (no W&B server needed).")
    parser.add_argument("file", type=str, help="The W&B sweep file (YAML).")
    parser.add_argument("--count", type=PositiveInt | None, default=None,
                        help="Number of configurations: all of a grid by default, 10 random draws otherwise.")
    parser.add_argument("--method", type=Literal["grid", "random"] | None, default=None,
                        help="grid or random instead of the file's method (a bayes file runs random draws).")
    parser.add_argument("--group", type=str | None, default=None,
                        help="W&B group of the runs; default: <file name>-<time>.")
    parser.add_argument("--seed", type=NonNegativeInt, default=0, help="Seed of the random draws.")
    parser.add_argument("--dry_run", type=bool, nargs="?", const=True, default=False,
                        help="Print the commands, run nothing (--dry_run or --dry_run=true).")
    parser.add_argument("--keep_going", type=bool, nargs="?", const=True, default=True,
                        help="Run the remaining configurations after one fails (--keep_going=false stops).")
    return parser


def sweep_main(argv: Sequence[str]) -> int:
    """Parse ``argv`` and run the sweep; returns 0 if every configuration ran, 1 otherwise."""
    cfg = parse(sweep_parser(), list(argv))
    rows = run_sweep(**plain(cfg.as_dict()))
    return 0 if all(r["returncode"] in (0, None) for r in rows) else 1
