"""Tutorial 10: the FedMut paper's table from one command, on a CPU.

Runs the benchmark files of examples/benchmarks/ (the paper's columns FedAvg, FedProx, FedGen, clustered sampling
and FedMut, then SCAFFOLD, FedAdam, FedExP and FedMR, under IID and Dirichlet 0.1, 0.5 and 1.0 partitions, 3 seeds) with `run_benchmark`, the Python side of
`lightning-fedmut benchmark FILE`, and prints each table in the paper's form.

Run:  python examples/tutorials/10_reproducing_the_paper.py                  (digits and MNIST-1D at full size)
      FEDMUT_EXAMPLE_SMALL=1 python examples/tutorials/10_reproducing_the_paper.py   (digits, 1 seed, 3 rounds, as CI)
Writes:  <name>/results.md, results.csv, summary.json and curves.png (<name>-small/ for the small run), and
<name>_table.md, for each benchmark to $FEDMUT_OUTPUT_DIR (default outputs/10_reproducing_the_paper). A full-size
run that is stopped resumes where it was when it is started again.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lightning_fedmut.experiments import format_table, run_benchmark

SMALL = os.environ.get("FEDMUT_EXAMPLE_SMALL", "") not in ("", "0")
OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/10_reproducing_the_paper"))
CONFIGS = Path(__file__).resolve().parent.parent / "benchmarks"


def main() -> None:
    torch.set_num_threads(1)
    # --8<-- [start:run]
    names = ["digits"] if SMALL else ["digits", "mnist1d"]
    # the small run: one seed, three rounds, no W&B runs (its own folder: a benchmark folder holds one setting)
    small = {"seeds": 1, "fit": {"loop": {"rounds": 3}}, "logger": "none"}
    for name in names:
        result = run_benchmark(CONFIGS / f"{name}.yaml", OUTPUT / (f"{name}-small" if SMALL else name),
                               overrides=small if SMALL else None)
        table = format_table(result.summary)
        (OUTPUT / f"{name}_table.md").write_text(table + "\n", encoding="utf-8")
        bench, seconds = result.benchmark, sum(r.get("seconds", 0.0) for r in result.records)
        print(f"\n{name}: {len(bench.cells)} runs of {bench.cells[0].config['loop']['rounds']} rounds,"
              f" {seconds:.0f} s of training in all\n\n{table}\n\n{', '.join(result.files)} in {result.output_dir}\n")
    # --8<-- [end:run]


if __name__ == "__main__":
    main()
