"""Type checkers see the installed package (it ships ``py.typed``), installed the way the README says.

setuptools' default editable install puts an import hook on the path, which runs at import time: static checkers
(mypy, Pylance) cannot follow it, report ``import-not-found`` and type everything ``Any``. The README and CI install
with ``--config-settings editable_mode=compat`` (a plain path entry) instead.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPAT = "--config-settings editable_mode=compat"
COMPAT_ENV = "PIP_CONFIG_SETTINGS=editable_mode=compat "  # the same setting, from pip's environment


@pytest.mark.slow
def test_a_type_checker_finds_the_installed_package(tmp_path):
    """mypy, run outside the repository (so only the installed package can be found), resolves the package and
    its modules. Skipped only when mypy is not installed (it is in the ``dev`` extra)."""
    pytest.importorskip("mypy")
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n", encoding="utf-8")  # no configuration of the repository's applies here
    program = "import lightning_fedmut\nimport lightning_fedmut.loop\nfrom lightning_fedmut.aggregators import FedAvg\n"
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"),
         "--follow-imports=skip", "--no-error-summary", "-c", program],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert "import-not-found" not in proc.stdout, (
        "mypy cannot find the installed lightning_fedmut: reinstall it with"
        f" `pip install -e . {COMPAT}`\n{proc.stdout}")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def _install_commands(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(r"pip install .*-e ", line)]


def test_the_readme_and_ci_install_so_that_type_checkers_see_the_package():
    readme = _install_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    ci = _install_commands((ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    assert len(readme) >= 2 and len(ci) == 1
    assert [line for line in readme + ci if COMPAT not in line and COMPAT_ENV not in line] == []
    # CI runs exactly the README's test command
    assert ci[0].strip() in [line.strip() for line in readme]


def test_mypy_is_configured_for_the_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert any(dep.startswith("mypy") for dep in project["project"]["optional-dependencies"]["dev"])
    mypy = project["tool"]["mypy"]
    assert mypy["files"] == ["lightning_fedmut"]
    assert mypy["python_version"] == project["project"]["requires-python"].removeprefix(">=")
    ignored = {m for override in mypy["overrides"] if override.get("ignore_missing_imports")
               for m in override["module"]}
    assert {"wandb.*", "sklearn.*", "mnist1d.*"} <= ignored
    assert "lightning_fedmut.*" not in ignored and "lightning_fedmut" not in ignored
    assert (ROOT / "lightning_fedmut" / "py.typed").is_file()
