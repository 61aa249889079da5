"""Tutorial 12: every method's accuracy and the flatness of its final global model, in one table.

Runs examples/benchmarks/generalisation.yaml (digits, Dirichlet 0.1 and 0.5, 3 seeds; FedAvg, SCAFFOLD, FedDyn,
FedSAM, FedASAM, FedLESAM, FedGloSS, FedSMOO, FedMut and FedMut + FedSAM) with `run_benchmark`, the Python side of
`lightning-fedmut benchmark FILE`, and prints the accuracy-and-flatness section of its results.md: the top Hessian
eigenvalue, trace and sharpness of each final model next to its accuracy, and their rank correlation.

Run:  python examples/tutorials/12_accuracy_and_flatness.py                         (60 runs at full size)
      FEDMUT_EXAMPLE_SMALL=1 python examples/tutorials/12_accuracy_and_flatness.py  (Dir(0.1), 1 seed, 3 rounds, as CI)
Writes:  generalisation/results.md, results.csv, summary.json (generalisation-small/ for the small run) and
flatness.md to $FEDMUT_OUTPUT_DIR (default outputs/12_accuracy_and_flatness).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lightning_fedmut.experiments import run_benchmark

SMALL = os.environ.get("FEDMUT_EXAMPLE_SMALL", "") not in ("", "0")
OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/12_accuracy_and_flatness"))
CONFIG = Path(__file__).resolve().parent.parent / "benchmarks" / "generalisation.yaml"


def main() -> None:
    torch.set_num_threads(1)
    # --8<-- [start:run]
    # the small run: one partition, one seed, three rounds, fewer probes, no W&B runs
    small = {"seeds": 1, "partitions": ["dir0.1"], "fit": {"loop": {"rounds": 3}}, "logger": "none",
             "flatness": {"batches": 1, "trace_samples": 2}}
    result = run_benchmark(CONFIG, OUTPUT / ("generalisation-small" if SMALL else "generalisation"),
                           overrides=small if SMALL else {"logger": "none"})
    report = (result.output_dir / "results.md").read_text(encoding="utf-8")
    section = report[report.index("## Accuracy and flatness"):report.index("Where each number comes from")].strip()
    (OUTPUT / "flatness.md").write_text(section + "\n", encoding="utf-8")
    print(f"{len(result.benchmark.cells)} runs\n\n{section}\n")
    # --8<-- [end:run]


if __name__ == "__main__":
    main()
