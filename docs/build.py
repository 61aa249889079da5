"""Build the documentation site: run every example at small size, then ``mkdocs build --strict``.

The tutorials' figures and printed outputs on the site are produced here, by running the programs in
``examples/`` (``FEDMUT_EXAMPLE_SMALL=1``), never drawn by hand or committed. Each example writes into
``docs/assets/generated/<example name>/`` (git-ignored): its figures, and ``output.txt``, what it printed.
The pages include those files; a strict build fails if one is missing.

Usage (from the repository root, with the ``docs`` extra installed: ``pip install -e ".[docs]"``):

    python docs/build.py                  # run the examples, then build the site into site/
    python docs/build.py --skip-examples  # build with the outputs of the last run
    python docs/build.py --serve          # run the examples, then serve the site with live reload
    python docs/build.py --only hook_order --skip-build
    python docs/build.py --skip-examples --check-maths site/fedmut.png   # build, then check in a browser

The browser check (``--check-maths``, what CI runs) opens pages of the built site from their files in headless
Chromium, as a reader of the README's ``site/index.html`` does: the maths is drawn, the search box answers a query,
and no code block is wider than its box in a 1280 px window.

It also writes the command line's ``--help`` texts into ``docs/assets/generated/cli/`` for the CLI page.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "docs" / "assets" / "generated"
CLI_COMMANDS = ("fit", "validate", "test", "demo", "sweep", "benchmark")
#: What the build imports (module: the package that ships it), all in the ``docs`` extra.
DEPENDENCIES = {
    "mkdocs": "mkdocs",
    "material": "mkdocs-material",
    "mkdocstrings": "mkdocstrings",
    "mkdocstrings_handlers.python": "mkdocstrings-python",
    "griffe_inherited_docstrings": "griffe-inherited-docstrings",
    "pymdownx": "pymdown-extensions",
    "latex2mathml": "latex2mathml",
    "sklearn": "scikit-learn",
    "mnist1d": "mnist1d",
    "matplotlib": "matplotlib",
    "lightning_fedmut": "lightning_fedmut",
}
# writes `lightning-fedmut COMMAND --help` into GENERATED/cli/COMMAND.txt, in one interpreter
_CLI_HELP = """
import contextlib, io, sys
from pathlib import Path
from lightning_fedmut.cli import USAGE, main
out = Path(sys.argv[1])
(out / "usage.txt").write_text(USAGE + "\\n", encoding="utf-8")
for command in sys.argv[2:]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main([command, "--help"])
    if code != 0:
        raise SystemExit(f"lightning-fedmut {command} --help exited with {code}")
    (out / f"{command}.txt").write_text(buffer.getvalue(), encoding="utf-8")
"""


#: The page whose maths the browser check looks at (the one with the most formulas).
MATHS_PAGE = "concepts/fedmut.html"
# appended to a copy of the page: once it has loaded, what the browser drew, as JSON in <pre id=...>
_PROBE = """<script>
window.addEventListener("load", () => {
  const maths = [...document.querySelectorAll("math")];
  const drawn = maths.filter((m) => { const r = m.getBoundingClientRect(); return r.width > 0 && r.height > 0; });
  const prose = document.querySelector("article") || document.body;
  const copy = prose.cloneNode(true);
  copy.querySelectorAll("pre, code, script").forEach((e) => e.remove());
  const text = copy.textContent;
  const pre = document.createElement("pre");
  pre.id = "fedmut-maths-probe";
  pre.textContent = JSON.stringify({maths: maths.length, drawn: drawn.length,
    raw: ["\\\\(", "\\\\[", "$$"].filter((d) => text.includes(d))});
  document.body.appendChild(pre);
});
</script>"""


#: What the search check types into the search box of the site's home page; the check fails on no result.
SEARCH_QUERY = "MutationCallback"
# appended to a copy of a page: types the query into the theme's search box until results come (or 10 s of the
# page's time pass), then reports them as JSON in <pre id=...>
_SEARCH_PROBE = """<script>
window.addEventListener("load", () => {
  const query = %(query)s;
  const input = document.querySelector("input[data-md-component=search-query]");
  const items = () => [...document.querySelectorAll(".md-search-result__item")];
  const started = Date.now();
  const report = () => {
    const meta = document.querySelector(".md-search-result__meta");
    const pre = document.createElement("pre");
    pre.id = "fedmut-search-probe";
    pre.textContent = JSON.stringify({box: input !== null, results: items().length,
      meta: meta ? meta.textContent.trim() : null,
      titles: items().slice(0, 5).map((i) => (i.querySelector("h1, h2") || i).textContent.trim())});
    document.body.appendChild(pre);
  };
  const type = () => {
    if (input !== null) {
      input.focus();
      input.value = query;
      ["focus", "input", "keyup"].forEach((t) => input.dispatchEvent(new Event(t, {bubbles: true})));
    }
    if (input === null || items().length > 0 || Date.now() - started > 10000) { report(); return; }
    setTimeout(type, 200);
  };
  type();
});
</script>"""
#: The width of the window in which no code block may be wider than its box.
CODE_WIDTH = 1280
# appended to a copy of a page: the code blocks wider than their box (their content cut or behind a scroll bar)
_CODE_PROBE = """<script>
window.addEventListener("load", () => {
  const blocks = [...document.querySelectorAll("pre")].filter((b) => b.getClientRects().length > 0);
  const wide = blocks.filter((b) => [b, ...b.querySelectorAll(":scope > code")].some(
    (e) => e.scrollWidth > e.clientWidth + 1));
  const pre = document.createElement("pre");
  pre.id = "fedmut-code-probe";
  pre.textContent = JSON.stringify({width: window.innerWidth, blocks: blocks.length, wide: wide.length,
    first: wide.slice(0, 3).map((b) => b.textContent.split("\\n").reduce((a, l) => l.length > a.length ? l : a, ""))});
  document.body.appendChild(pre);
});
</script>"""
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]


def browser() -> str | None:
    """A headless-capable Chromium on the path, if any."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _probe(path: Path, script: str, probe_id: str, executable: str | None, flags: list[str]) -> dict:
    """Open a copy of ``path`` with ``script`` appended in headless Chromium, from its file; the JSON that the
    script writes into ``<pre id=probe_id>``."""
    executable = executable or browser()
    if executable is None:
        raise FileNotFoundError("no Chromium on the path (apt-get install chromium)")
    path = Path(path).resolve()
    probe = path.with_name(f".probe-{path.name}")
    probe.write_text(path.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    try:
        dom = subprocess.run([executable, *_FLAGS, *flags, "--virtual-time-budget=15000", "--dump-dom",
                              probe.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(rf'<pre id="{probe_id}">(.*?)</pre>', dom, re.DOTALL)
    if found is None:
        raise RuntimeError(f"the browser did not run the page's scripts; its output began: {dom[:300]!r}")
    return json.loads(html.unescape(found.group(1)))


def check_maths(site_dir: Path, page: str = MATHS_PAGE, screenshot: Path | None = None,
                executable: str | None = None) -> dict:
    """Open ``page`` of the built site from its file in headless Chromium and report its maths: ``maths`` (MathML
    elements), ``drawn`` (those with a size on screen), ``raw`` (TeX delimiters left in the prose). With
    ``screenshot``, also save a picture of the page there."""
    flags = ["--allow-file-access-from-files"]
    report = _probe(Path(site_dir) / page, _PROBE, "fedmut-maths-probe", executable, flags)
    if screenshot is not None:
        path = (Path(site_dir) / page).resolve()
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([executable or browser(), *_FLAGS, *flags, "--virtual-time-budget=10000", "--hide-scrollbars",
                        "--window-size=1280,2600", f"--screenshot={Path(screenshot).resolve()}", path.as_uri()],
                       capture_output=True, timeout=120, check=True)
    return report


def check_search(site_dir: Path, page: str = "index.html", query: str = SEARCH_QUERY,
                 executable: str | None = None) -> dict:
    """Open ``page`` of the built site from its file (``file://``, no extra browser permission: as a reader
    does) in headless Chromium, type ``query`` into the search box, and report what the search shows: ``box``
    (whether the page has a search box), ``results`` (result items listed), ``meta`` (the line above them, e.g.
    ``"19 matching documents"``, or ``"Initializing search"`` when the search never started) and the first
    ``titles``. The search works when ``results`` is above zero."""
    return _probe(Path(site_dir) / page, _SEARCH_PROBE % {"query": json.dumps(query)}, "fedmut-search-probe",
                  executable, [])


def check_code_width(site_dir: Path, page: str, width: int = CODE_WIDTH, executable: str | None = None) -> dict:
    """Open ``page`` of the built site from its file in a ``width`` px wide headless Chromium and report its code
    blocks: ``blocks`` (shown), ``wide`` (wider than their box: a line cut off, or behind a scroll bar) and the
    longest line of the ``first`` three wide ones."""
    return _probe(Path(site_dir) / page, _CODE_PROBE, "fedmut-code-probe", executable,
                  [f"--window-size={width},900"])


def widest_code_pages(site_dir: Path, count: int = 3) -> list[str]:
    """The ``count`` pages of the built site whose code blocks hold the longest lines (the first to overflow)."""
    longest: dict[str, int] = {}
    for path in Path(site_dir).rglob("*.html"):
        if path.name.startswith(".probe-"):
            continue
        blocks = re.findall(r"<pre[^>]*>(.*?)</pre>", path.read_text(encoding="utf-8"), re.DOTALL)
        lines = [html.unescape(re.sub(r"<[^>]+>", "", b)).splitlines() for b in blocks]
        widths = [len(line) for block in lines for line in block]
        if widths:
            longest[path.relative_to(site_dir).as_posix()] = max(widths)
    return sorted(longest, key=lambda page: (-longest[page], page))[:count]


def missing_dependencies() -> list[str]:
    """The packages of :data:`DEPENDENCIES` that are not installed."""
    missing = []
    for module, package in DEPENDENCIES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # the parent of a dotted module is missing
            found = False
        if not found:
            missing.append(package)
    return missing


def examples() -> list[Path]:
    """Every runnable example: ``examples/*.py`` and ``examples/tutorials/*.py`` (sweep files are not programs)."""
    return sorted([*ROOT.glob("examples/*.py"), *ROOT.glob("examples/tutorials/*.py")])


def small_env(output_dir: Path, wandb_dir: Path) -> dict[str, str]:
    """The environment of a small, offline, single-threaded example run."""
    return {
        **os.environ,
        "FEDMUT_EXAMPLE_SMALL": "1",
        "FEDMUT_OUTPUT_DIR": os.path.relpath(output_dir, ROOT),
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "PYTHONUNBUFFERED": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(wandb_dir),
    }


def run_example(path: Path) -> tuple[Path, int, float, str]:
    """Run one example into a fresh ``GENERATED/<stem>``; return its exit code, time and stderr."""
    output_dir = GENERATED / path.stem
    shutil.rmtree(output_dir, ignore_errors=True)  # nothing stale survives a run
    output_dir.mkdir(parents=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedmut-docs-wandb-") as wandb_dir:
        proc = subprocess.run(
            [sys.executable, str(path.relative_to(ROOT))],
            cwd=ROOT,
            env=small_env(output_dir, Path(wandb_dir)),
            capture_output=True,
            text=True,
            check=False,
        )
    (output_dir / "output.txt").write_text(proc.stdout, encoding="utf-8")
    return path, proc.returncode, time.perf_counter() - start, proc.stderr


def cli_help() -> tuple[str, int, float, str]:
    """Write the command line's usage and each command's ``--help`` into ``GENERATED/cli/``."""
    output_dir = GENERATED / "cli"
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    start = time.perf_counter()
    env = {**os.environ, "COLUMNS": "100", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _CLI_HELP, str(output_dir), *CLI_COMMANDS], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    return "lightning-fedmut COMMAND --help", proc.returncode, time.perf_counter() - start, proc.stderr


def run_examples(selected: list[Path], jobs: int, with_cli: bool) -> bool:
    print(f"running {len(selected)} example(s) at small size, {jobs} at a time, into {GENERATED.relative_to(ROOT)}/")
    ok = True
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_example, path) for path in selected]
        if with_cli:
            futures.append(pool.submit(cli_help))
        for future in futures:
            path, code, seconds, stderr = future.result()
            name = path.relative_to(ROOT) if isinstance(path, Path) else path
            print(f"  {seconds:6.1f} s  {name}{'' if code == 0 else f'  FAILED (exit code {code})'}", flush=True)
            if code != 0:
                ok = False
                print("    " + "\n    ".join(stderr.strip().splitlines()[-30:]), file=sys.stderr)
    return ok


def mkdocs(command: str) -> int:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    args = [sys.executable, "-m", "mkdocs", command, "--strict"] if command == "build" else [
        sys.executable, "-m", "mkdocs", command]
    return subprocess.run(args, cwd=ROOT, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-examples", action="store_true", help="reuse the outputs of the last run")
    parser.add_argument("--skip-build", action="store_true", help="run the examples only")
    parser.add_argument("--serve", action="store_true", help="serve the site (mkdocs serve) instead of building it")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these examples (file stems)")
    parser.add_argument("--check-maths", nargs="?", const="", metavar="PNG",
                        help=f"after the build, open pages from their files in headless Chromium and check that"
                             f" {MATHS_PAGE} draws its maths (and save a screenshot of it to PNG), that the search"
                             f" box answers {SEARCH_QUERY!r}, and that no code block is wider than its box at"
                             f" {CODE_WIDTH} px; skipped without Chromium")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else os.cpu_count() or 1, help="examples run in parallel (default: the usable cores)")
    args = parser.parse_args(argv)

    missing = missing_dependencies()
    if missing:  # before running any example: a build without them fails only minutes later
        print(f"docs/build.py needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed."
              ' Install the docs extra: pip install -e ".[docs]"', file=sys.stderr)
        return 1
    start = time.perf_counter()
    if not args.skip_examples:
        selected = [p for p in examples() if not args.only or p.stem in args.only]
        if args.only and len(selected) != len(args.only):
            known = ", ".join(p.stem for p in examples())
            parser.error(f"--only names unknown examples; the examples are: {known}")
        if not run_examples(selected, max(1, args.jobs), with_cli=not args.only):
            print("an example failed: the site is not built", file=sys.stderr)
            return 1
    if args.skip_build:
        return 0
    code = mkdocs("serve" if args.serve else "build")
    if code == 0 and not args.serve:
        print(f"site built into site/ in {time.perf_counter() - start:.0f} s")
    if code == 0 and args.check_maths is not None and not args.serve:
        code = _report_browser(ROOT / "site", Path(args.check_maths) if args.check_maths else None)
    return code


def _report_browser(site_dir: Path, screenshot: Path | None) -> int:
    """The browser checks of the built site, one line each; 1 if one fails."""
    if browser() is None:
        print("browser check skipped: no Chromium on the path (apt-get install chromium)")
        return 0
    report = check_maths(site_dir, screenshot=screenshot)
    maths_ok = report["maths"] > 0 and report["drawn"] == report["maths"] and not report["raw"]
    print(f"{MATHS_PAGE} in headless Chromium: {report['drawn']} of {report['maths']} formulas drawn as MathML,"
          f" TeX left in the text: {report['raw'] or 'none'}" + (f"; screenshot {screenshot}" if screenshot else ""))
    search = check_search(site_dir)
    search_ok = search["results"] > 0
    print(f"search from file://index.html for {SEARCH_QUERY!r}: {search['results']} results listed"
          f" ({search['meta']}){': ' + ', '.join(search['titles']) if search['titles'] else ''}"
          + ("" if search_ok else " -- the search does not work from the files"))
    code_ok = True
    for page in widest_code_pages(site_dir):
        width = check_code_width(site_dir, page)
        code_ok = code_ok and width["wide"] == 0
        print(f"code blocks of {page} at {CODE_WIDTH} px: {width['wide']} of {width['blocks']} wider than their box"
              + ("" if width["wide"] == 0 else f", e.g. {width['first'][0]!r}"))
    return 0 if maths_ok and search_ok and code_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
