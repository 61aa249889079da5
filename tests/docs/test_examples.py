"""Every program in examples/ runs at small size and writes the files it promises.

The documentation includes these programs and shows what they print and draw, so an example that breaks
or stops writing a figure breaks the docs too. Each runs as a user would run it: a fresh interpreter,
``FEDMUT_EXAMPLE_SMALL=1``, its output in a temporary ``FEDMUT_OUTPUT_DIR``, W&B offline. They run once,
side by side on the usable cores; each test then checks one example's run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted([*ROOT.glob("examples/*.py"), *ROOT.glob("examples/tutorials/*.py")])

#: The files each example writes into FEDMUT_OUTPUT_DIR (glob patterns). A new example needs an entry.
PROMISED = {
    "quickstart": ["accuracy.png", "label_distribution.png"],
    "01_federate_your_module": ["accuracy.png"],
    "02_non_iid_partitions": ["label_distributions.png", "iid_vs_dirichlet.png", "dirichlet_0.1.json"],
    "03_fedmut_vs_fedavg": ["fedmut_vs_fedavg.png", "history.csv"],
    "04_wandb_and_sweeps": ["wandb/offline-run-*/run-*.wandb", "sweep/wandb/offline-run-*/run-*.wandb"],
    "05_custom_callback_and_aggregator": ["robust_aggregation.png"],
    "06_checkpoints_and_failures": ["checkpoints/round-*.ckpt"],
    "07_flatness": ["landscape_1d.png", "landscape_2d.png", "flatness_per_round.png", "flatness.csv"],
    "08_baselines": ["baselines.png", "table.md", "history.csv"],
    "fedmut_in_one_picture": ["fedmut_in_one_picture.png"],
    "fedmut_radius": ["radius.png"],
    "hook_order": ["hook_order.txt"],
    "extending": ["extending.txt"],
    "09_scale_out": ["scale_out.txt"],
    "memory_footprint": ["memory.md"],
    "10_reproducing_the_paper": ["digits-small/results.md", "digits-small/results.csv", "digits-small/summary.json",
                                 "digits-small/curves.png", "digits_table.md"],
    "11_privacy": ["table.md", "history.csv"],
    "12_accuracy_and_flatness": ["generalisation-small/results.md", "generalisation-small/results.csv", "flatness.md"],
    "13_federated_lora": ["table.md", "last-adapters/adapter_config.json", "last-adapters/adapter_model.safetensors"],
}
#: How many files some patterns must match (default: at least one).
COUNTS = {
    ("04_wandb_and_sweeps", "wandb/offline-run-*/run-*.wandb"): 2,  # FedMut and FedAvg
    ("04_wandb_and_sweeps", "sweep/wandb/offline-run-*/run-*.wandb"): 2,  # the two sweep configurations
    ("06_checkpoints_and_failures", "checkpoints/round-*.ckpt"): 2,  # keep_last=2
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_every_example_promises_its_outputs():
    stems = {path.stem for path in EXAMPLES}
    assert len(stems) == len(EXAMPLES), "two examples share a file name; their outputs would collide in the docs"
    assert sorted(stems - set(PROMISED)) == [], "add the files these examples write to PROMISED"
    assert sorted(set(PROMISED) - stems) == [], "PROMISED names examples that no longer exist"


def run_small(path: Path, out: Path, wandb_dir: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "FEDMUT_EXAMPLE_SMALL": "1",
        "FEDMUT_OUTPUT_DIR": str(out),
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(wandb_dir),
    }
    env.pop("WANDB_API_KEY", None)
    return subprocess.run([sys.executable, str(path.relative_to(ROOT))], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def small_runs(request, tmp_path_factory):
    """Run the selected examples once, as many at a time as there are usable cores (each uses one thread)."""
    selected = {item.callspec.params["path"] for item in request.session.items
                if getattr(item, "module", None) is request.module and "path" in getattr(getattr(item, "callspec", None), "params", {})}
    base = tmp_path_factory.mktemp("examples")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=max(1, cores)) as pool:
        futures = {path.stem: pool.submit(run_small, path, base / path.stem, base / f"{path.stem}-wandb")
                   for path in EXAMPLES if path in selected}
        return {stem: (future.result(), base / stem) for stem, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_small_and_writes_its_files(path, small_runs):
    proc, out = small_runs[path.stem]
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stderr[-4000:]}"
    assert proc.stdout.strip(), f"{path.name} printed nothing"
    for pattern in PROMISED.get(path.stem, []):
        found = sorted(out.glob(pattern))
        assert len(found) >= COUNTS.get((path.stem, pattern), 1), (
            f"{path.name} should write {pattern} into FEDMUT_OUTPUT_DIR; it wrote"
            f" {sorted(str(p.relative_to(out)) for p in out.rglob('*') if p.is_file())}"
        )
        for file in found:
            assert file.stat().st_size > 0, f"{file} is empty"
            if file.suffix == ".png":
                assert file.read_bytes()[:8] == PNG_SIGNATURE, f"{file} is not a PNG"
