"""The report in a real browser: headless Chromium opens the file, Plotly draws, nothing breaks.

A generated shop plus sessions whose URLs, user agent and a quarantined line carry XSS
payloads that would set a marker (`document.title = 'pwned'`, `<body id=pwned>`) if they
ever ran goes through the pipeline and the report. Chromium (Debian's `chromium`; installed
with apt-get when missing, and the test is skipped, loudly, only when that is impossible)
then:

- dumps the DOM after Plotly has drawn (`--dump-dom` with a virtual time budget): no
  JavaScript error, no console error, no blocked request (a collector script is put in
  front of the page's own), every Sankey node drawn, the payloads shown as text and their
  markers absent;
- takes a screenshot, which must be a real, non-blank PNG.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from support import write_hostile_sessions

from pipeline import cli, funnels, report, store
from pipeline.config import load_config
from pipeline.sample import write_sample

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MARKER_SCRIPT = "<script>document.title='pwned'</script>"
MARKER_IMG = "\"><img src=x onerror=document.body.id='pwned'>"
SANKEYS = ("step_sankey", "anchored_sankey", "conversion_sankey", "transitions_sankey")
# Runs before the page's own scripts (and before its CSP applies): records every error,
# rejected promise, console error and CSP violation into <pre id="test-problems">.
COLLECTOR = """<script>
window.__problems = [];
function __report(kind, text) {
  window.__problems.push(kind + ': ' + text);
  var el = document.getElementById('test-problems');
  if (el) { el.textContent = JSON.stringify(window.__problems); }
}
window.addEventListener('error', function (e) {
  __report('error', e.message || (e.target && e.target.outerHTML) || 'unknown');
}, true);
window.addEventListener('unhandledrejection', function (e) {
  __report('rejection', String(e.reason));
});
document.addEventListener('securitypolicyviolation', function (e) {
  __report('csp', e.violatedDirective + ' ' + e.blockedURI);
});
var __consoleError = console.error;
console.error = function () {
  __report('console', Array.prototype.join.call(arguments, ' '));
  return __consoleError.apply(console, arguments);
};
document.addEventListener('DOMContentLoaded', function () {
  var el = document.createElement('pre');
  el.id = 'test-problems';
  el.textContent = JSON.stringify(window.__problems);
  document.body.appendChild(el);
});
</script>"""


def _which_chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def _apt_install_chromium() -> str:
    """Try `apt-get install -y chromium`, then again after `apt-get update`; what went wrong."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "not root, so apt-get cannot install"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    last = ""
    for before in ([], [["apt-get", "update", "-q"]]):
        try:
            for command in [*before, install]:
                done = subprocess.run(
                    command, env=env, capture_output=True, text=True, timeout=900, check=False
                )
                last = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
                last = last[0]
            if _which_chromium():
                return ""
        except (OSError, subprocess.TimeoutExpired) as err:
            last = str(err)
    return f"apt-get install chromium failed: {last}"


@pytest.fixture(scope="module")
def chromium() -> str:
    found = _which_chromium()
    if found is None:
        problem = _apt_install_chromium()
        found = _which_chromium()
        if found is None:
            message = (
                "BROWSER TEST NOT RUN: no Chromium on this machine and it could not be "
                f"installed ({problem}). Install Debian's `chromium` to run it."
            )
            warnings.warn(message, stacklevel=1)
            print(f"\n*** {message} ***", file=sys.stderr)
            pytest.skip(message)
    return found


def _plant(path: Path, start: datetime) -> None:
    write_hostile_sessions(
        path,
        start,
        urls=[f"/x/{MARKER_SCRIPT}", f"/y/{MARKER_IMG}", "/cart"],
        user_agent=f"Mozilla/5.0 {MARKER_IMG}",
        rejected=json.dumps([MARKER_SCRIPT, {"user_agent": MARKER_IMG}]),  # quarantined
        prefix="marker",
        n_sessions=80,
        minutes_apart=9,
        seconds_per_step=15,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The report of a small generated shop with the marker payloads planted, and the number
    of nodes each Sankey must draw."""
    root = tmp_path_factory.mktemp("browser")
    sample = root / "sample"
    write_sample(sample, 6_000, seed=21)
    _plant(sample / "planted.ndjson", datetime(2026, 10, 7, 9, tzinfo=UTC))
    db = root / "db.duckdb"
    cfg = load_config(sample / "journeymap.toml")
    cli.run_pipeline([sample], db, cfg)
    con = store.connect(db, read_only=True)
    try:
        frames = {name: store.query(con, sql) for name, sql in funnels.REPORT_INPUTS.items()}
    finally:
        con.close()
    page = report.render_report(frames, cfg, root / "report.html")
    flows = report.report_flows(frames, cfg)
    expected_nodes = {name: flows[name].nodes.height for name in SANKEYS if name in flows}
    return root, page, expected_nodes


def _run(chromium: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        # Belt and braces: even if the page tried, no host name would resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={tmp / 'profile'}",
        "--virtual-time-budget=10000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def dom(chromium, built) -> str:
    """The DOM after the report has loaded and Plotly has drawn, with the collector in."""
    root, page, _ = built
    probed = root / "probed.html"
    probed.write_text(
        page.read_text(encoding="utf-8").replace("<head>", "<head>\n" + COLLECTOR, 1),
        encoding="utf-8",
    )
    done = _run(chromium, root, "--dump-dom", probed.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "</html>" in done.stdout, done.stderr[-2000:]
    return done.stdout


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.text: dict[str, str] = {}
        self._open: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs))
        self._open = attrs.get("id") if tag in ("pre", "title") or attrs.get("id") else None
        if tag == "title":
            self._open = "title"

    def handle_data(self, data):
        if self._open in ("title", "test-problems"):
            self.text[self._open] = self.text.get(self._open, "") + data

    def handle_endtag(self, tag):
        self._open = None


def test_the_report_runs_without_a_single_error(dom):
    """No JavaScript error, no console error, no blocked (network) request."""
    parsed = Elements()
    parsed.feed(dom)
    assert "test-problems" in parsed.text, "the error collector did not run"
    assert json.loads(parsed.text["test-problems"]) == []


def test_every_sankey_node_is_drawn(dom, built):
    """Each Sankey draws as many nodes (g.sankey-node) as its flow has."""
    _, _, expected = built
    assert expected["step_sankey"] > 20 and len(expected) == len(SANKEYS)
    for name, n_nodes in expected.items():
        start = dom.index(f'id="fig-{name}"')
        end = dom.find('id="fig-', start + 1)
        drawn = dom[start : end if end > 0 else len(dom)].count('class="sankey-node"')
        assert drawn == n_nodes, name
    assert dom.count('class="sankey-node"') == sum(expected.values())
    funnel_start = dom.index('id="fig-funnel"')
    assert 'class="main-svg"' in dom[funnel_start : funnel_start + 5000]


def test_xss_payloads_are_shown_as_text_and_never_run(dom):
    """The markers the payloads would set are absent; the payloads are on the page as text."""
    parsed = Elements()
    parsed.feed(dom)
    assert parsed.text["title"] == "journeymap report"
    assert not any(attrs.get("id") == "pwned" for _, attrs in parsed.elements)
    assert not any(tag == "img" for tag, _ in parsed.elements)
    assert not any(name.startswith("on") for _, attrs in parsed.elements for name in attrs), (
        "an inline event handler made it into the page"
    )
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom
    assert "&lt;img src=x onerror=document.body.id='pwned'&gt;" in dom


def test_a_screenshot_of_the_report_is_a_real_picture(chromium, built):
    """Chromium's screenshot is a PNG of the requested size with real content."""
    root, page, _ = built
    shot = root / "report.png"
    done = _run(chromium, root, "--window-size=1400,3200", f"--screenshot={shot}", page.as_uri())
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1400, 3200)
    assert len(data) > 150_000, "the screenshot is nearly blank"
    print(f"\nscreenshot: {shot}")


def test_png_export_writes_every_chart(chromium, built, tmp_path):
    """With kaleido installed, `export_png` writes one PNG per chart, offline (Debian's
    Chromium, plotly.js from the plotly package, no MathJax)."""
    pytest.importorskip("kaleido", reason="kaleido is optional: pip install kaleido")
    root, page, _ = built
    con = store.connect(root / "db.duckdb", read_only=True)
    try:
        frames = {name: store.query(con, sql) for name, sql in funnels.REPORT_INPUTS.items()}
    finally:
        con.close()
    figures = report.build_figures(frames, load_config(root / "sample" / "journeymap.toml"))
    paths = report.export_png(figures, tmp_path)
    assert [p.name for p in paths] == [f"{name}.png" for name in figures]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
