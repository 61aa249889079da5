"""MkDocs hook: run the examples whose outputs are missing or older than the program, before a build.

``python docs/build.py`` always reruns every example and is what CI runs. This hook makes a plain
``mkdocs build --strict`` or ``mkdocs serve`` work too: an example that has no output yet, or was edited
since its last run, is run at small size first (``mkdocs serve`` watches ``examples/``, so saving a
tutorial reruns it and reloads its page).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

log = logging.getLogger("mkdocs.hooks.examples")
_BUILD = Path(__file__).with_name("build.py")


def _build_module() -> Any:
    spec = importlib.util.spec_from_file_location("lightning_fedmut_docs_build", _BUILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _stale(build: Any, path: Path) -> bool:
    output = build.GENERATED / path.stem / "output.txt"
    return not output.is_file() or output.stat().st_mtime < path.stat().st_mtime


def on_pre_build(config: Any, **kwargs: Any) -> None:
    if os.environ.get("FEDMUT_DOCS_SKIP_EXAMPLES"):
        return
    build = _build_module()
    stale = [path for path in build.examples() if _stale(build, path)]
    cli_missing = not all((build.GENERATED / "cli" / f"{c}.txt").is_file() for c in build.CLI_COMMANDS)
    if not stale and not cli_missing:
        return
    names = ", ".join(p.stem for p in stale) + (" and the CLI help" if cli_missing else "")
    log.info(f"running {names} at small size first (python docs/build.py reruns every example)")
    jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not build.run_examples(stale, jobs, with_cli=cli_missing):
        raise PluginError("an example failed (its error is above); the site needs its output")
