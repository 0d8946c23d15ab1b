"""The tutorial site: built offline from nbs/ (tools/build_site.py), then opened page by page in headless Chromium.

Chromium comes from Debian's `chromium` package, which .ci/run installs; without it these tests fail (they do not
skip), saying how to install it.
"""
import hashlib
import importlib
import json
import re
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_site  # noqa: E402
import site_browser  # noqa: E402


def _fingerprint(folder: Path) -> str:
    "A digest of every file's path and bytes under `folder`."
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts:
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The site built once into a temporary folder, with fingerprints of nbs/ and figures/ taken around the build."
    before = {d: _fingerprint(ROOT / d) for d in ("nbs", "figures")}
    out = tmp_path_factory.mktemp("site") / "_site"
    pages = build_site.build_site(out, quiet=True)
    after = {d: _fingerprint(ROOT / d) for d in ("nbs", "figures")}
    return out, pages, before, after


@pytest.fixture(scope="module")
def reports(site):
    "What headless Chromium saw on every page of the site."
    try: site_browser.find_chromium()
    except FileNotFoundError as e: pytest.fail(f"{e}: the site is tested in a real browser")
    with site_browser.Chromium() as browser:
        return site_browser.check_site(site[0], browser)


def test_chapters_are_every_notebook_index_first_then_by_file_name(tmp_path):
    for name in ("10_b.ipynb", "index.ipynb", "02_a.ipynb", "04b_c.ipynb", "04_d.ipynb", "_hidden.ipynb"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in build_site.chapters(tmp_path)] == ["index.ipynb", "02_a.ipynb", "04_d.ipynb", "04b_c.ipynb", "10_b.ipynb"]
    with pytest.raises(FileNotFoundError, match="no notebooks"):
        build_site.chapters(tmp_path / "empty")


def test_the_build_refuses_to_empty_a_source_folder():
    for folder in (ROOT, ROOT / "nbs", ROOT / "figures"):
        with pytest.raises(ValueError, match="refusing to build"):
            build_site.build_site(folder)


def test_links_are_rewritten_for_the_site():
    links = build_site.Links({"04_iaf": "iaf.html"}, doc_url="https://h.io/base/", repo_url="https://git/x/blob/main")
    text = ("[a](04_iaf.ipynb) [b](04_iaf.ipynb#the-gate) ![f](../figures/x.png) [c](https://h.io/base/iaf.html#iaf) "
            "[d](../reference/targets.csv) [src](https://git/x/blob/main/m.py#L3){target=\"_blank\" style=\"float:right\"} [e](00_x.ipynb)")
    assert links(text) == ("[a](iaf.html) [b](iaf.html#the-gate) ![f](figures/x.png) [c](iaf.html#iaf) "
                           "[d](https://git/x/blob/main/reference/targets.csv) [src](https://git/x/blob/main/m.py#L3) [e](00_x.ipynb)")


def test_progress_bars_show_their_last_state():
    assert build_site._overwrite(["a 0%\r", "a 50%\ra 100%\n", "done\r\n"]) == "a 100%\ndone\r\n"


def test_every_notebook_becomes_a_page_and_nothing_is_written_into_nbs_or_figures(site):
    out, pages, before, after = site
    assert len(pages) == len(build_site.chapters(ROOT / "nbs"))
    assert {p.name for p in out.glob("*.html")} == {p.name for p in pages}
    assert before == after, "building the site changed files in nbs/ or figures/"


def test_the_front_page_opens_with_the_two_commands(site):
    text = re.sub(r"<[^>]+>", "", (site[0] / "index.html").read_text())        # the commands are syntax-highlighted
    assert text.index("make reproduce") < text.index("make test") < text.index("Results:")


def test_pages_load_without_console_errors(reports):
    errors = {page: r["errors"] for page, r in reports.items() if r["errors"]}
    assert not errors, f"console errors: {json.dumps(errors, indent=1)}"


def test_equations_are_typeset(reports):
    untypeset = [page for page, r in reports.items() if r["expects_math"] and not r["math"]]
    assert not untypeset, f"pages with TeX that MathJax did not typeset: {untypeset}"
    tex_errors = {page: r["math_errors"] for page, r in reports.items() if r["math_errors"]}
    assert not tex_errors, f"TeX errors: {tex_errors}"
    assert sum(r["expects_math"] for r in reports.values()) >= len(reports) // 2       # the detector is not blind


def test_every_image_loads(reports):
    broken = {page: r["broken_images"] for page, r in reports.items() if r["broken_images"]}
    assert not broken, f"images that did not load: {broken}"
    assert reports["index.html"]["images"] >= 1


def test_the_sidebar_lists_every_chapter_in_order_and_links_reach_them_all(site, reports):
    out, pages, *_ = site
    order = [p.name for p in pages]
    assert order[0] == "index.html"
    for page, r in reports.items():
        assert r["nav"] == order, page
    assert site_browser.reachable(reports) == set(reports)


def test_links_between_pages_land_on_existing_anchors(reports):
    missing = []
    for page, r in reports.items():
        for link in r["links"]:
            target, _, anchor = link.partition("#")
            target = target or page
            if target.endswith(".html") and (target not in reports or (anchor and not {anchor, unquote(anchor)} & set(reports[target]["ids"]))):
                missing.append(f"{page} -> {link}")
    assert not missing, missing


def _exported_modules():
    "The modules the notebooks export (`#| default_exp` in their first cell)."
    for nb in build_site.chapters(ROOT / "nbs"):
        cells = json.loads(nb.read_text())["cells"]
        if cells and (m := re.search(r"^#\| default_exp (\w+)", "".join(cells[0]["source"]), re.MULTILINE)):
            yield f"iaf_repro.{m.group(1)}"


def test_the_exported_api_is_documented_by_show_doc(site):
    headings = {m for page in site[1] for m in re.findall(r'<h[34] id="([^"]+)"', page.read_text())}
    undocumented = []
    for module in _exported_modules():
        mod = importlib.import_module(module)
        undocumented += [f"{module}.{n}" for n in mod.__all__ if callable(getattr(mod, n)) and n not in headings]
    assert not undocumented, f"no show_doc entry on any page for {undocumented}"      # nbdev documents functions and classes


def test_hidden_cells_are_not_shown(reports):
    shown = {" ".join(src.split()) for r in reports.values() for src in r["inputs"]}
    hidden = []
    for nb in build_site.chapters(ROOT / "nbs"):
        for cell in json.loads(nb.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and re.search(r"^#\|\s*hide\s*$", source, re.MULTILINE):
                body = " ".join(l for l in source.splitlines() if not l.startswith("#|"))
                if " ".join(body.split()) in shown: hidden.append(f"{nb.name}: {body[:60]}")
    assert not hidden, f"hidden cells shown on the site: {hidden}"
    assert any("def " in s for s in shown)                                            # exported code is shown


def test_a_missing_chromium_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(FileNotFoundError, match="apt-get install -y chromium"):
        site_browser.find_chromium()
