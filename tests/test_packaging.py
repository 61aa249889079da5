"""The wheel: LICENSE as pyproject.toml declares it, py.typed, `python -m lightning_fedmut`; the docs build's
dependency check."""

from __future__ import annotations

import email
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent


def _setuptools_at_least(version: tuple[int, int]) -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return tuple(int(p) for p in setuptools.__version__.split(".")[:2]) >= version


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    if not _setuptools_at_least((77, 0)):
        pytest.skip("building the wheel needs setuptools>=77 (in the dev extra)")
    source = tmp_path_factory.mktemp("source")  # a copy, so that the build leaves nothing in the checkout
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "lightning_fedmut", source / "lightning_fedmut",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(out)], check=True, capture_output=True, text=True, timeout=300)
    (path,) = out.glob("lightning_fedmut-*.whl")
    return zipfile.ZipFile(path)


@pytest.mark.slow
def test_wheel_ships_the_license_pyproject_declares(wheel):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    names = wheel.namelist()
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    fields = email.message_from_bytes(wheel.read(metadata))
    assert fields["License-Expression"] == "Apache-2.0" and fields["License-File"] == "LICENSE"
    (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    text = wheel.read(license_file).decode()
    assert text == (ROOT / "LICENSE").read_text()
    assert "Apache License" in text.splitlines()[1] and "Version 2.0, January 2004" in text.splitlines()[2]
    assert "END OF TERMS AND CONDITIONS" in text


@pytest.mark.slow
def test_wheel_is_typed_and_runs_as_a_module(wheel):
    names = set(wheel.namelist())
    assert {"lightning_fedmut/py.typed", "lightning_fedmut/__main__.py", "lightning_fedmut/cli/__main__.py"} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "lightning-fedmut = lightning_fedmut.cli:console" in wheel.read(entry_points).decode()


def test_readme_names_the_extra_the_docs_build_needs():
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[docs]" && python docs/build.py' in readme
    assert "docs" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _docs_build():
    spec = importlib.util.spec_from_file_location("fedmut_docs_build", ROOT / "docs" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_build_checks_its_dependencies_before_running_examples(monkeypatch, capsys):
    build = _docs_build()
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["docs"]
    declared = {d.split(">")[0].split("[")[0] for d in extra}
    examples = {d.split(">")[0] for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["examples"]}
    assert set(build.DEPENDENCIES.values()) - {"lightning_fedmut"} <= declared | examples

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("latex2mathml", "material") else real(name, *a))
    ran = []
    monkeypatch.setattr(build, "run_examples", lambda *a, **k: ran.append(a) or True)
    monkeypatch.setattr(build, "mkdocs", lambda *a: ran.append(a) or 0)
    assert build.main([]) == 1
    assert ran == []
    assert capsys.readouterr().err == ("docs/build.py needs mkdocs-material, latex2mathml, which are not installed."
                                       ' Install the docs extra: pip install -e ".[docs]"\n')
