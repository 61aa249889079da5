"""Read an offline W&B run back from its .wandb transaction log (no network, no API key)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def _wandb_cli() -> str:
    local = Path(sys.executable).parent / "wandb"
    return str(local) if local.exists() else (shutil.which("wandb") or "wandb")


def read_records(run_dir: Path) -> list[dict]:
    out = subprocess.run([_wandb_cli(), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                         check=True, timeout=120)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def offline_runs(wandb_dir: Path) -> list[Path]:
    return sorted(p for p in (Path(wandb_dir) / "wandb").glob("offline-run-*") if p.is_dir())


def summarize(run_dir: Path) -> dict:
    """{"config": merged config, "history": [items], "metrics": [metric definitions], "run_id": str}."""
    config: dict = {}
    history, metrics, run_id = [], [], None
    for rec in read_records(run_dir):
        kind = rec.get("type")
        if kind == "run":
            run_id = rec["run"]["run_id"]
            config.update(rec["run"].get("config", {}).get("update", {}))
        elif kind == "config":
            config.update(rec["config"].get("update", {}))
        elif kind == "history":
            history.append(rec["history"]["item"])
        elif kind == "metric":
            metrics.append(rec["metric"])
    return {"config": config, "history": history, "metrics": metrics, "run_id": run_id}
