"""The pages and the examples describe the package as it is: no removed verb or field in use, every
registered method in the tables that list them, and the extending example's step count checked against
``ClientResult.num_steps``.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_fedmut.algorithms import build_algorithm, names

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if "generated" not in p.parts)
EXAMPLES = sorted(ROOT.glob("examples/**/*.py"))


def normalise(name: str) -> str:
    """A method's name as the registry compares it: case, spaces, ``-`` and ``_`` aside."""
    return re.sub(r"[\s_-]", "", name).lower()


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_no_example_defines_or_calls_merge(path):
    """``Aggregator.merge`` was removed: nothing calls it, so an example must not teach it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defined = [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
               for item in node.body if isinstance(item, ast.FunctionDef) and item.name == "merge"]
    called = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Attribute) and node.func.attr == "merge"]
    assert (defined, called) == ([], [])


@pytest.mark.parametrize("path", PAGES + EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in PAGES + EXAMPLES])
def test_no_page_or_example_uses_a_removed_name(path):
    """No ``merge(other)`` verb, no task payload, and ``ServerReport`` only where it is called deprecated."""
    text = path.read_text(encoding="utf-8")
    found = [pattern for pattern in ("merge(other)", "task.payload", "task's payload") if pattern in text]
    paragraphs = re.split(r"\n\s*\n", text)
    found += [paragraph.strip()[:80] for paragraph in paragraphs
              if "ServerReport" in paragraph and "deprecated" not in paragraph]
    assert found == []


def table_rows(page: str, header: str) -> list[str]:
    """The first cells of the Markdown table whose header row starts with ``header``."""
    lines = (ROOT / "docs" / page).read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line.split("|")[1].strip())
    return rows


def test_the_presets_table_has_one_row_per_registered_method():
    rows = [cell.strip("`") for cell in table_rows("concepts/algorithms.md", "| Preset |")]
    assert rows == names()


def test_the_baselines_table_names_every_registered_baseline():
    cells = table_rows("concepts/baselines.md", "| Method |")
    listed = {normalise(name) for cell in cells for name in cell.split(",")}
    missing = [name for name in names() if name not in ("FedAvg", "FedMut") and normalise(name) not in listed]
    assert missing == []


def test_the_registry_error_on_the_algorithms_page_is_the_real_one():
    text = (ROOT / "docs" / "concepts" / "algorithms.md").read_text(encoding="utf-8")
    block = text[text.index("# ValueError: "):]
    comment = []
    for line in block.splitlines():
        if not line.startswith("# "):
            break
        comment.append(line[2:])
    shown = " ".join(comment).removeprefix("ValueError: ")
    with pytest.raises(ValueError) as raised:
        build_algorithm("FedMutt", {})
    assert shown == str(raised.value)


@pytest.mark.slow
def test_the_extending_example_counts_what_num_steps_holds(tmp_path):
    """The example's payload count (a Lightning callback's batches) is each client's ``num_steps``."""
    env = {**os.environ, "FEDMUT_EXAMPLE_SMALL": "1", "FEDMUT_OUTPUT_DIR": str(tmp_path), "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, "examples/tutorials/extending.py"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = (tmp_path / "extending.txt").read_text(encoding="utf-8").splitlines()
    assert lines[-1] == "payload steps == result.num_steps for all 12 clients trained: True"
    # 3 rounds of 4 clients: each row lists the clients and one step count per client
    rows = [re.findall(r"\[[^\]]*\]", line) for line in lines[1:-1]]
    assert [len(ast.literal_eval(ids)) for ids, _ in rows] == [4, 4, 4]
    assert [len(ast.literal_eval(steps)) for _, steps in rows] == [4, 4, 4]
