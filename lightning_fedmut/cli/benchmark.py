"""``lightning-fedmut benchmark CONFIG``: the FedMut paper's table (methods x partitions x seeds) from one file.

Every cell (a method under a partition with a seed) is one federated ``fit`` with the ``fit`` command's
arguments, logged as one W&B run of one group; finished cells are skipped and a killed benchmark continues
from each cell's last completed round. The outputs, in ``--output``: ``results.md`` (mean ± sample std over the seeds
with n, best per column in bold, FedMut's gain over FedAvg last with its paired 95 % interval), ``results.csv`` (every run), ``curves.png`` and
``summary.json``. With a ``flatness:`` section, every cell's final global model is also measured (top Hessian
eigenvalue, trace, sharpness) and the figures go next to the accuracy, with their rank correlation
(:mod:`lightning_fedmut.experiments.flatness`). See :mod:`lightning_fedmut.experiments` for the config's keys.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import yaml
from jsonargparse.typing import PositiveInt

from lightning_fedmut.cli._parser import CLIError, make_parser, parse, plain

PROG = "lightning-fedmut benchmark"


def benchmark_parser() -> Any:
    """The parser of ``lightning-fedmut benchmark``."""
    parser = make_parser(
        PROG,
        "Run a benchmark file's methods x partitions x seeds (each cell a lightning-fedmut fit, one W&B run of one"
        " group) and write the paper's table (results.md), every run (results.csv), the curves (curves.png) and"
        " every number behind them (summary.json). Finished cells are skipped; a killed run continues.",
    )
    parser.add_argument("config", type=str, help="The benchmark file (YAML); examples/benchmarks/ has some.")
    parser.add_argument("--output", type=str | None, default=None,
                        help="The benchmark's folder (cells, checkpoints, W&B runs, results); default outputs/benchmarks/<name>.")
    parser.add_argument("--parallel", type=PositiveInt | None, default=None,
                        help="Cells run at once, each in its own process; default the file's parallel (1).")
    parser.add_argument("--group", type=str | None, default=None,
                        help="W&B group of the cells' runs; default the benchmark's name.")
    parser.add_argument("--set", type=str, action="append", default=[],
                        help="An override of the file, KEY=VALUE with a dotted key and a YAML value (repeatable), e.g."
                             " --set seeds=1 --set fit.loop.rounds=3 --set 'methods=[FedAvg, FedMut]'.")
    parser.add_argument("--dry_run", type=bool, nargs="?", const=True, default=False,
                        help="List the cells and which are finished; run nothing.")
    parser.add_argument("--report_only", type=bool, nargs="?", const=True, default=False,
                        help="Run nothing; write the outputs from the cells finished so far.")
    return parser


def overrides(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items (dotted keys, YAML values) as one nested mapping.

    Examples:
        >>> overrides(["seeds=1", "fit.loop.rounds=3", "methods=[FedAvg, FedMut]"])
        {'seeds': 1, 'fit': {'loop': {'rounds': 3}}, 'methods': ['FedAvg', 'FedMut']}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = str(item).partition("=")
        if not eq or not key.strip():
            raise CLIError(f"--set: expected KEY=VALUE (e.g. fit.loop.rounds=3), got {item!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise CLIError(f"--set: the value of {key.strip()} is not valid YAML: {value!r}") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CLIError(f"--set: {key.strip()} sets a key inside a value set before, {part}")
        node[parts[-1]] = parsed
    return out


def benchmark_main(argv: Sequence[str]) -> int:
    """Parse ``argv`` and run the benchmark; 0 when every cell finished, 1 when one failed, 2 for bad input."""
    from lightning_fedmut.exceptions import Preempted
    from lightning_fedmut.experiments import format_table, run_benchmark

    cfg = plain(parse(benchmark_parser(), list(argv)).as_dict())
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        result = run_benchmark(cfg["config"], cfg["output"], overrides=overrides(cfg["set"]),
                               parallel=cfg["parallel"], group=cfg["group"], dry_run=cfg["dry_run"],
                               report_only=cfg["report_only"])
    except (ValueError, TypeError) as err:
        raise CLIError(str(err)) from None
    except RuntimeError as err:
        raise CLIError(str(err), code=1) from None
    except KeyboardInterrupt:
        raise CLIError("interrupted: the finished cells and each running cell's completed rounds are kept;"
                       " run the same command again to continue", code=130) from None
    except Preempted:
        raise CLIError("stopped by SIGTERM: run the same command again to continue", code=143) from None
    if result.files:
        print(format_table(result.summary))
    return 1 if result.failed else 0
