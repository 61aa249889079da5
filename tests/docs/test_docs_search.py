"""The site searches when opened from its files, and its code blocks fit a 1280 px window.

The real checks run on the built site in CI (``python docs/build.py --check-maths ...``); building the site is too
slow for the test suite, so these tests run the same check functions on small pages written here, one that
behaves like a working search (or code that wraps) and one that does not. The browser tests are skipped without
Chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _build_module():
    spec = importlib.util.spec_from_file_location("fedmut_docs_build_search", DOCS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def build():
    return _build_module()


@pytest.fixture(scope="module")
def chromium(build):
    executable = build.browser()
    if executable is None:
        pytest.skip("no Chromium on the path: apt-get install chromium")
    return executable


# a page with the theme's search box; with `answers`, typing lists a result per page whose title holds the query
# (after a delay, as the theme's worker does), otherwise the search never starts, as when its worker is refused
_SEARCH_PAGE = """<!doctype html><html><head><title>t</title></head><body>
<input type="text" class="md-search__input" name="query" data-md-component="search-query">
<div class="md-search-result"><div class="md-search-result__meta">Initializing search</div>
<ol class="md-search-result__list"></ol></div>
<script>
const answers = %(answers)s;
const pages = ["MutationCallback", "FederatedLoop", "lightning_fedmut.callbacks.MutationCallback"];
document.querySelector("input").addEventListener("input", (event) => {
  if (!answers) return;
  const query = event.target.value;
  setTimeout(() => {
    const found = pages.filter((p) => p.includes(query));
    document.querySelector(".md-search-result__meta").textContent = `${found.length} matching documents`;
    document.querySelector("ol").innerHTML = found.map(
      (p) => `<li class="md-search-result__item"><article><h1>${p}</h1></article></li>`).join("");
  }, 300);
});
</script></body></html>"""


def test_search_check_reads_the_results_of_a_working_search(build, chromium, tmp_path):
    (tmp_path / "index.html").write_text(_SEARCH_PAGE % {"answers": "true"}, encoding="utf-8")
    report = build.check_search(tmp_path, executable=chromium)
    assert report == {"box": True, "results": 2, "meta": "2 matching documents",
                      "titles": ["MutationCallback", "lightning_fedmut.callbacks.MutationCallback"]}
    assert list(tmp_path.iterdir()) == [tmp_path / "index.html"]  # the probe's copy is removed


def test_search_check_reports_no_result_when_the_search_never_starts(build, chromium, tmp_path):
    (tmp_path / "index.html").write_text(_SEARCH_PAGE % {"answers": "false"}, encoding="utf-8")
    report = build.check_search(tmp_path, query="FederatedLoop", executable=chromium)
    assert report == {"box": True, "results": 0, "meta": "Initializing search", "titles": []}


def test_search_check_reports_a_page_without_a_search_box(build, chromium, tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><html><body><p>no search</p></body></html>",
                                         encoding="utf-8")
    assert build.check_search(tmp_path, executable=chromium) == {"box": False, "results": 0, "meta": None,
                                                                 "titles": []}


_CODE_PAGE = """<!doctype html><html><head><style>
body { margin: 0; font: 16px monospace; } pre { width: 600px; margin: 0; } pre > code { display: block; overflow: auto; }
%(css)s
</style></head><body>
<pre><code>short = 1</code></pre>
<pre><code>print("%(long)s")
x = 2</code></pre>
<pre hidden><code>%(long)s</code></pre>
</body></html>"""


def test_code_width_check_finds_a_block_wider_than_its_box(build, chromium, tmp_path):
    long = "a long line " * 20
    (tmp_path / "page.html").write_text(_CODE_PAGE % {"css": "", "long": long}, encoding="utf-8")
    report = build.check_code_width(tmp_path, "page.html", executable=chromium)
    assert report == {"width": 1280, "blocks": 2, "wide": 1, "first": [f'print("{long}")']}


def test_code_width_check_passes_the_site_stylesheet(build, chromium, tmp_path):
    """With the site's own rule (docs/stylesheets/extra.css), the same long line wraps inside its box."""
    css = (DOCS / "stylesheets" / "extra.css").read_text(encoding="utf-8").replace(".md-typeset ", "")
    (tmp_path / "page.html").write_text(_CODE_PAGE % {"css": css, "long": "a long line " * 20}, encoding="utf-8")
    report = build.check_code_width(tmp_path, "page.html", width=1024, executable=chromium)
    assert report == {"width": 1024, "blocks": 2, "wide": 0, "first": []}


def test_widest_code_pages_ranks_pages_by_their_longest_code_line(build, tmp_path):
    (tmp_path / "api").mkdir()
    (tmp_path / "a.html").write_text("<pre><code>" + "x" * 50 + "</code></pre>", encoding="utf-8")
    (tmp_path / "api" / "b.html").write_text("<pre><code><span>&lt;</span>" + "y" * 80 + "\nz</code></pre>",
                                             encoding="utf-8")
    (tmp_path / "c.html").write_text("<p>" + "w" * 200 + "</p><pre>short</pre>", encoding="utf-8")
    (tmp_path / "d.html").write_text("<p>no code</p>", encoding="utf-8")
    assert build.widest_code_pages(tmp_path, count=2) == ["api/b.html", "a.html"]
    assert build.widest_code_pages(tmp_path) == ["api/b.html", "a.html", "c.html"]


# ----------------------------------------------------------------------------- the site's configuration
def _settings() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def test_the_site_is_built_with_offline_search_and_a_local_worker_shim():
    settings = _settings()
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in settings["plugins"]]
    assert plugins.index("search") < plugins.index("offline")
    # the offline plugin adds a shim from unpkg.com unless one whose name holds "iframe-worker" is listed
    assert settings["extra"]["polyfills"] == ["javascripts/iframe-worker.js"]
    assert (DOCS / "javascripts" / "iframe-worker.js").is_file()
    assert settings["extra_css"] == ["stylesheets/extra.css"]
    assert "white-space: pre-wrap" in (DOCS / "stylesheets" / "extra.css").read_text(encoding="utf-8")


_WORKER_PAGE = """<!doctype html><html><head><script src="iframe-worker.js"></script></head><body><script>
window.addEventListener("load", () => {
  const out = {};
  const done = () => {
    const pre = document.createElement("pre");
    pre.id = "worker-probe";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  };
  try {
    const worker = new Worker("worker.js");
    worker.addEventListener("message", (event) => {
      out.replies = (out.replies || []).concat([event.data]);
      if (out.replies.length === 2) { worker.terminate(); out.frames = document.querySelectorAll("iframe").length;
                                      done(); }
    });
    worker.postMessage({n: 20});  // sent before the worker's script has loaded: queued
    setTimeout(() => worker.postMessage({n: 1}), 100);
  } catch (error) {
    out.error = error.name;
    done();
  }
});
</script></body></html>"""
_WORKER = """addEventListener("message", (event) => {
  importScripts("helper.js").then(() => postMessage({doubled: double(event.data.n), self: self === globalThis}));
});"""


def test_the_worker_shim_runs_a_worker_from_the_files(build, chromium, tmp_path):
    """The theme's search worker, as the shim runs it on a page opened from its file: messages both ways (one
    sent before the script loaded), importScripts as a promise, terminate removes its frame."""
    (tmp_path / "iframe-worker.js").write_bytes((DOCS / "javascripts" / "iframe-worker.js").read_bytes())
    (tmp_path / "index.html").write_text(_WORKER_PAGE, encoding="utf-8")
    (tmp_path / "worker.js").write_text(_WORKER, encoding="utf-8")
    (tmp_path / "helper.js").write_text("function double(n) { return 2 * n; }", encoding="utf-8")
    report = build._probe(tmp_path / "index.html", "", "worker-probe", chromium, [])
    assert report == {"replies": [{"doubled": 40, "self": True}, {"doubled": 2, "self": True}], "frames": 0}
    # without the shim the browser refuses the worker of a page opened from its file
    (tmp_path / "iframe-worker.js").write_text("", encoding="utf-8")
    assert build._probe(tmp_path / "index.html", "", "worker-probe", chromium, []) == {"error": "SecurityError"}
