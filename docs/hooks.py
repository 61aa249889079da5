"""MkDocs hooks: run the examples whose outputs are missing or stale before a build, and write the maths
as MathML.

``python docs/build.py`` always reruns every example and is what CI runs. The first hook makes a plain
``mkdocs build --strict`` or ``mkdocs serve`` work too: an example that has no output yet, or was edited
since its last run, is run at small size first (``mkdocs serve`` watches ``examples/``, so saving a
tutorial reruns it and reloads its page).

The second turns the formulas that ``pymdownx.arithmatex`` marks (``\\( ... \\)`` inline, ``\\[ ... \\]``
displayed) into MathML with ``latex2mathml`` while the site is built. Browsers draw MathML themselves, so
the pages need no MathJax script and no web font: the site renders offline, even opened from its files.
"""

from __future__ import annotations

import html
import importlib.util
import logging
import os
import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

#: A formula as ``pymdownx.arithmatex`` (``generic: true``) writes it into the page.
ARITHMATEX = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.DOTALL)
_DELIMITERS = {"span": ("\\(", "\\)"), "div": ("\\[", "\\]")}

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


def to_mathml(page_html: str, where: str = "the page") -> str:
    r"""``page_html`` with every arithmatex formula written as MathML (inline or displayed).

    Examples:
        >>> out = to_mathml(r'<p>Let <span class="arithmatex">\(\alpha &lt; 1\)</span>.</p>')
        >>> out.startswith('<p>Let <span class="arithmatex"><math xmlns="http://www.w3.org/1998/Math/MathML"')
        True
        >>> "<mi>&#x003B1;</mi><mo>&#x0003C;</mo>" in out and "\\(" not in out
        True
    """
    from latex2mathml.converter import convert

    def replace(match: re.Match) -> str:
        tag, body = match.group(1), match.group(2).strip()
        opening, closing = _DELIMITERS[tag]
        if not (body.startswith(opening) and body.endswith(closing)):
            raise PluginError(f"{where}: a formula without its {opening} {closing} delimiters: {body[:80]!r}")
        tex = html.unescape(body[len(opening) : -len(closing)]).strip()
        try:
            mathml = convert(tex, display="block" if tag == "div" else "inline")
        except Exception as err:  # latex2mathml raises its own exception types, and plain ones
            raise PluginError(f"{where}: latex2mathml cannot convert {tex!r}: {err}") from err
        return f'<{tag} class="arithmatex">{mathml}</{tag}>'

    return ARITHMATEX.sub(replace, page_html)


def on_page_content(html_text: str, page: Any, **kwargs: Any) -> str:
    return to_mathml(html_text, where=page.file.src_uri)
