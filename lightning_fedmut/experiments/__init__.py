"""Benchmarks: the FedMut paper's table (methods x partitions x seeds) from one config, resumable.

A benchmark file names one data set and model, the ``lightning-fedmut fit`` arguments its cells share, the
methods (built-in names such as ``FedAvg``, ``FedProx``, ``SCAFFOLD``, ``FedAdam``, ``FedExP``, ``FedMR``,
``FedMut``, or mappings of ``fit`` arguments), the partitions (``iid``, ``dir0.1`` ..., or ``fit``'s partition
options) and the seeds. :func:`run_benchmark` runs every cell that has not finished (``lightning-fedmut
benchmark CONFIG`` on the command line) and writes ``results.md`` (the table in the paper's form),
``results.csv`` (every run), ``curves.png`` and ``summary.json`` (every number behind them).

Examples:
    >>> bench = load_benchmark({"data": "digits", "methods": ["FedAvg", "FedMut"], "partitions": ["iid", "dir0.5"],
    ...                         "seeds": [0, 1, 2]})
    >>> [cell.name for cell in bench.cells[:2]]
    ['FedAvg | IID | seed 0', 'FedAvg | IID | seed 1']
    >>> bench.cells[0].config["mutation"], bench.cells[-1].config["mutation"]["init_args"]["radius"]
    (None, 4.0)
"""

from lightning_fedmut.experiments.config import (
    METHOD_SETTINGS,
    METHODS,
    Benchmark,
    Cell,
    load_benchmark,
    partition_options,
)
from lightning_fedmut.experiments.report import (
    format_table,
    paired_interval,
    run_settings,
    run_value,
    summarize,
    write_report,
)
from lightning_fedmut.experiments.runner import BenchmarkResult, run_benchmark, run_cell

__all__ = [
    "METHODS",
    "METHOD_SETTINGS",
    "Benchmark",
    "BenchmarkResult",
    "Cell",
    "format_table",
    "load_benchmark",
    "paired_interval",
    "partition_options",
    "run_benchmark",
    "run_cell",
    "run_settings",
    "run_value",
    "summarize",
    "write_report",
]
