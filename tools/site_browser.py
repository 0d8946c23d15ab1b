"""Open the built site in headless Chromium: check every page, and take the README's screenshots.

Chromium is driven over its DevTools protocol with `websocket-client` (already a Jupyter dependency), so no
chromedriver or Selenium is needed; only Debian's `chromium` package (`apt-get install -y chromium`).

    python tools/site_browser.py check [--site _site]
    python tools/site_browser.py screenshots [--site _site] [--out figures]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import html.parser
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from base64 import b64decode
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = "install it with `apt-get install -y chromium` (Debian; .ci/run does this in CI)"
# Without the background-networking flags Chromium's own update/sync traffic gets connections refused here.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--remote-debugging-port=0"]
SCREENSHOTS = {"site_front_page.png": "index.html", "site_chapter_iaf.png": "iaf.html"}
WINDOW = (1400, 900)                       # the browser's size: a desktop window, as in the README's screenshots
LAYOUT_WIDTHS = (1400, 1024)               # window widths at which every page's layout is checked (a desktop, a laptop)


def find_chromium() -> str:
    "Path of a Chromium binary, or a clear error saying how to install one."
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name): return path
    raise FileNotFoundError(f"Chromium not found on PATH: {INSTALL_HINT}")


@contextlib.contextmanager
def serve(folder: Path):
    "Serve `folder` over HTTP on a free localhost port for the duration of the block; yields the base URL."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try: yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class Chromium:
    "A headless Chromium with one tab, driven over the DevTools protocol."
    def __init__(self, width: int = WINDOW[0], height: int = WINDOW[1], timeout: float = 30):
        import websocket
        self.timeout, self.events, self._id = timeout, [], 0
        self.profile = tempfile.mkdtemp(prefix="iaf-site-chromium-")
        self.proc = subprocess.Popen([find_chromium(), *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self._devtools_port()
        tabs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout))
        page = next(t for t in tabs if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        for domain in ("Page", "Runtime", "Log"): self.send(f"{domain}.enable")
        self.resize(width, height)

    def resize(self, width: int, height: int):
        "Lay the page out for a window of `width` x `height` CSS pixels."
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _devtools_port(self) -> int:
        active = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None: raise RuntimeError(f"Chromium exited with status {self.proc.returncode} at start-up")
            if active.exists() and (lines := active.read_text().splitlines()): return int(lines[0])
            time.sleep(0.05)
        raise TimeoutError(f"Chromium did not open its DevTools port within {self.timeout} s")

    def _receive(self) -> dict:
        message = json.loads(self.ws.recv())
        if "id" not in message: self.events.append(message)
        return message

    def send(self, method: str, **params) -> dict:
        "Call one DevTools method and return its result (events that arrive meanwhile are kept in `events`)."
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while (message := self._receive()).get("id") != self._id: pass
        if "error" in message: raise RuntimeError(f"{method}: {message['error']}")
        return message["result"]

    def wait_for(self, event: str):
        "Block until the DevTools event `event` arrives."
        deadline = time.monotonic() + self.timeout
        while not any(e["method"] == event for e in self.events):
            if time.monotonic() > deadline: raise TimeoutError(f"no {event} within {self.timeout} s")
            self._receive()

    def evaluate(self, expression: str):
        "Evaluate JavaScript in the page (awaiting a promise) and return its JSON value."
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result: raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str):
        "Load `url`, wait for its load event, for MathJax to finish typesetting (when the page has it) and for fonts."
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        self.evaluate("window.MathJax && MathJax.startup ? MathJax.startup.promise.then(() => true) : false")
        self.evaluate("document.fonts.ready.then(() => true)")      # MathJax's web fonts load after typesetting

    def errors(self) -> list[str]:
        "Console errors, uncaught exceptions and failed loads reported since the last `open`."
        found = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown": found.append(p["exceptionDetails"].get("exception", {}).get("description") or p["exceptionDetails"]["text"])
            elif e["method"] == "Runtime.consoleAPICalled" and p["type"] == "error": found.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error": found.append(f"{p['entry']['text']} {p['entry'].get('url', '')}".strip())
        return found

    def screenshot(self, path: Path) -> Path:
        "Save the visible part of the page as PNG."
        Path(path).write_bytes(b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        return Path(path)

    def close(self):
        with contextlib.suppress(Exception): self.ws.close()
        self.proc.terminate()
        try: self.proc.wait(10)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self): return self
    def __exit__(self, *exc): self.close()


class _Text(html.parser.HTMLParser):
    "The text of an HTML page outside code, scripts and styles (where MathJax does not look)."
    SKIP = {"pre", "code", "script", "style", "textarea"}
    def __init__(self):
        super().__init__()
        self.depth, self.parts = 0, []
    def handle_starttag(self, tag, attrs): self.depth += tag in self.SKIP
    def handle_endtag(self, tag): self.depth -= tag in self.SKIP
    def handle_data(self, data):
        if not self.depth: self.parts.append(data)


_MATH = re.compile(r"\$\$.+?\$\$|(?<![\\$])\$[^$\n]+?\$", re.DOTALL)


def has_math(page_html: str) -> bool:
    "Does the page hold TeX in `$...$` or `$$...$$` outside code (so MathJax must have typeset something)?"
    parser = _Text()
    parser.feed(page_html)
    return bool(_MATH.search("".join(parser.parts)))


PAGE_REPORT = """(() => ({
  math: document.querySelectorAll('mjx-container').length,
  math_errors: Array.from(document.querySelectorAll('mjx-merror')).map(e => e.getAttribute('data-mjx-error') || e.textContent),
  broken_images: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
  images: document.images.length,
  nav: Array.from(document.querySelectorAll('nav.site-nav li a')).map(a => a.getAttribute('href')),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
  inputs: Array.from(document.querySelectorAll('.jp-InputArea-editor')).map(e => e.textContent),
}))()"""


# Scroll boxes the site means to have: the chapter sidebar, code and text outputs (<pre>), table containers, and
# display equations wider than a narrow window (reported apart). Anything else that scrolls is a box nested in the
# page's own scrolling, usually over blank space.
LAYOUT_REPORT = """(() => {
  const scrolls = v => v === 'auto' || v === 'scroll';
  const name = e => e.tagName.toLowerCase() + (typeof e.className === 'string' && e.className.trim()
                    ? '.' + e.className.trim().split(/\\s+/).join('.') : '');
  const boxes = [], equations = [];
  for (const e of document.querySelectorAll('body *')) {
    const s = getComputedStyle(e);
    const across = scrolls(s.overflowX) && e.scrollWidth > e.clientWidth + 1;
    const down = scrolls(s.overflowY) && e.scrollHeight > e.clientHeight + 1;
    if ((across || down) && e.matches('mjx-container[display="true"]')) equations.push(JSON.stringify(e.textContent.slice(0, 60)));
    else if ((across || down) && !e.matches('%(allowed)s'))
      boxes.push(`${name(e)}: ${e.scrollWidth}x${e.scrollHeight} in ${e.clientWidth}x${e.clientHeight}, `
                 + JSON.stringify(e.textContent.trim().slice(0, 60)));
  }
  const tables = Array.from(document.querySelectorAll('main table'));
  const wide = [];
  for (const box of document.querySelectorAll('.table-scroll')) {
    if (box.scrollWidth <= box.clientWidth + 1) continue;
    const first = box.querySelector('tbody .first-col') || box.querySelector('.first-col');
    const row = first ? first.parentElement : box.querySelector('tr');
    window.scrollBy(0, row.getBoundingClientRect().top - innerHeight / 2);      // that row mid-window
    box.scrollLeft = box.scrollWidth;
    const b = box.getBoundingClientRect(), last = row.lastElementChild.getBoundingClientRect();
    let first_on_top = false;
    if (first) {
      const f = first.getBoundingClientRect();
      const hit = document.elementFromPoint(f.left + Math.min(4, f.width / 2), f.top + f.height / 2);
      first_on_top = f.left >= b.left - 1 && f.right <= b.right + 1 && first.contains(hit);
    }
    wide.push({table: JSON.stringify((box.querySelector('tr') || box).textContent.trim().replace(/\\s+/g, ' ').slice(0, 60)),
               first_column_in_view: first_on_top, last_column_reached: last.right <= b.right + 1});
    box.scrollLeft = 0;
  }
  window.scrollTo(0, 0);
  const root = document.documentElement;
  return {scroll_boxes: boxes, page_overflow: root.scrollWidth - root.clientWidth, wide_tables: wide, wide_equations: equations,
          tables_outside_a_scroller: tables.filter(t => !t.parentElement.matches('.table-scroll')).length};
})()""" % {"allowed": "nav.site-nav, pre, .table-scroll"}


def layout_report(browser: Chromium, widths=LAYOUT_WIDTHS) -> dict[int, dict]:
    """The open page's layout at each window width: scroll boxes other than the sidebar, code, tables and display
    equations; the display equations that scroll; how far the page overflows sideways (0 is right); and, for each
    table wider than its container, whether its first column stays in view and its last column can be reached once
    the container is scrolled right."""
    reports = {}
    try:
        for width in widths:
            browser.resize(width, WINDOW[1])
            reports[width] = browser.evaluate(LAYOUT_REPORT)
    finally: browser.resize(*WINDOW)
    return reports


def layout_problems(layout: dict[int, dict]) -> list[str]:
    """What `layout_report` found wrong, one line each (empty when the layout is right at every width). A display
    equation may scroll in its own box on a narrow window, but at the widest width it must fit."""
    problems = []
    for width, r in layout.items():
        problems += [f"{width} px: nested scroll box {b}" for b in r["scroll_boxes"]]
        if width == max(layout): problems += [f"{width} px: display equation wider than the text {e}" for e in r["wide_equations"]]
        if r["page_overflow"] > 1: problems.append(f"{width} px: the page scrolls sideways by {r['page_overflow']} px")
        if r["tables_outside_a_scroller"]: problems.append(f"{width} px: {r['tables_outside_a_scroller']} tables outside a .table-scroll container")
        for t in r["wide_tables"]:
            if not t["first_column_in_view"]: problems.append(f"{width} px: first column scrolls out of view in table {t['table']}")
            if not t["last_column_reached"]: problems.append(f"{width} px: last column cut off in table {t['table']}")
    return problems


def check_site(site: Path, browser: Chromium) -> dict[str, dict]:
    """Open every page of the built site; return, per page, its console errors, what was typeset, loaded and
    linked, and its layout at each of `LAYOUT_WIDTHS` (see `layout_report`)."""
    site, reports = Path(site), {}
    with serve(site) as base:
        for page in sorted(site.glob("*.html")):
            browser.open(base + page.name)
            report = browser.evaluate(PAGE_REPORT)
            report["layout"] = layout_report(browser)
            report["errors"] = browser.errors()
            report["expects_math"] = has_math(page.read_text(encoding="utf-8"))
            report["links"] = [l.removeprefix(base) for l in report["links"] if l.startswith(base)]
            reports[page.name] = report
    return reports


def reachable(reports: dict[str, dict], start: str = "index.html") -> set[str]:
    "Pages reached by following the site's own links from `start`."
    seen, todo = set(), [start]
    while todo:
        page = todo.pop()
        if page in seen or page not in reports: continue
        seen.add(page)
        todo += [link.split("#")[0] for link in reports[page]["links"]]
    return seen


def screenshots(site: Path, out: Path = ROOT / "figures", browser: Chromium | None = None) -> list[Path]:
    "Screenshots of the front page and of the IAF chapter, for the README."
    written = []
    Path(out).mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(browser) if browser else Chromium()) as b, serve(site) as base:
        for name, page in SCREENSHOTS.items():
            b.open(base + page)
            written.append(b.screenshot(Path(out) / name))
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Check the built site in headless Chromium, or take its screenshots.")
    p.add_argument("command", choices=["check", "screenshots"])
    p.add_argument("--site", type=Path, default=ROOT / "_site", help="the built site (default: _site; see tools/build_site.py)")
    p.add_argument("--out", type=Path, default=ROOT / "figures", help="where screenshots go (default: figures)")
    args = p.parse_args(argv)
    if not (args.site / "index.html").exists():
        print(f"{args.site}/index.html not found: run `make docs` first", file=sys.stderr)
        return 2
    if args.command == "screenshots":
        for path in screenshots(args.site, args.out): print(f"wrote {path}")
        return 0
    with Chromium() as browser: reports = check_site(args.site, browser)
    bad = 0
    for page, r in reports.items():
        problems = r["errors"] + r["math_errors"] + [f"image not loaded: {i}" for i in r["broken_images"]] + layout_problems(r["layout"])
        if r["expects_math"] and not r["math"]: problems.append("has TeX but nothing was typeset")
        print(f"{page:>26}: {r['math']:4d} equations, {r['images']:2d} images" + ("".join(f"\n    {x}" for x in problems)))
        bad += bool(problems)
    missing = set(reports) - reachable(reports)
    if missing: print(f"not reachable from index.html: {sorted(missing)}")
    return 1 if bad or missing else 0


if __name__ == "__main__":
    sys.exit(main())
