"""The tutorial site: built offline from nbs/ (tools/build_site.py), then opened page by page in headless Chromium.

Chromium comes from Debian's `chromium` package, which .ci/run installs; without it these tests fail (they do not
skip), saying how to install it.
"""
import hashlib
import importlib
import io
import json
import re
import sys
import tarfile
import urllib.error
from pathlib import Path
from unittest import mock
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


def test_tables_get_a_scroll_box_and_their_first_column_is_marked():
    page = ('<p>a</p><table class="dataframe"><thead><tr><th data-class="x"></th><th class="a">A</th></tr></thead><tbody>'
            '<tr><th rowspan="2">diag</th><th>64</th><td>1</td></tr><tr><th>100</th><td>2</td></tr>'
            '<tr><td class="b">iaf</td><td>3</td><td>4</td></tr></tbody></table><table><tr><td>x</td></tr></table>')
    assert build_site._scrolling_tables(page) == (
        '<p>a</p><div class="table-scroll"><table class="dataframe"><thead><tr><th class="first-col" data-class="x"></th><th class="a">A</th></tr></thead><tbody>'
        '<tr><th class="first-col" rowspan="2">diag</th><th>64</th><td>1</td></tr><tr><th>100</th><td>2</td></tr>'   # under the rowspan: not the first column
        '<tr><td class="first-col b">iaf</td><td>3</td><td>4</td></tr></tbody></table></div>'
        '<div class="table-scroll"><table><tr><td class="first-col">x</td></tr></table></div>')


def test_progress_bars_show_their_last_state():
    assert build_site._overwrite(["a 0%\r", "a 50%\ra 100%\n", "done\r\n"]) == "a 100%\ndone\r\n"


def _mathjax_tarball(folder: Path) -> bytes:
    "A small stand-in for npm's MathJax tarball: the script and a font the pages load, and a file they do not."
    for name, text in {"es5/tex-chtml-full.js": "window.MathJax = {};", "es5/output/chtml/fonts/woff-v2/MathJax_Zero.woff": "font",
                       "es5/tex-svg.js": "not used"}.items():
        (folder / "package" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "package" / name).write_text(text)
    with tarfile.open(folder / "m.tgz", "w:gz") as tar: tar.add(folder / "package", arcname="package")
    return (folder / "m.tgz").read_bytes()


@pytest.fixture
def registry(monkeypatch, tmp_path):
    """The npm registry, mocked: `registry["tarball"]` is what a download of MathJax returns (None: no network);
    npm is hidden so the plain download runs. Every call is counted in `registry["calls"]`."""
    state = {"tarball": None, "calls": 0}
    def urlopen(url, timeout=None):
        state["calls"] += 1
        assert url == build_site.MATHJAX_URL
        if state["tarball"] is None: raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return io.BytesIO(state["tarball"])
    monkeypatch.setattr(build_site.shutil, "which", lambda name: None)
    monkeypatch.setattr(build_site.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(build_site, "CACHE", tmp_path / "cache")
    return state


def test_setup_fetches_mathjax_so_the_build_needs_no_network(registry, tmp_path, capsys):
    registry["tarball"] = _mathjax_tarball(tmp_path)
    with mock.patch.object(build_site, "MATHJAX_SHA256", hashlib.sha256(registry["tarball"]).hexdigest()):
        assert build_site.main(["--fetch-mathjax"]) == 0
    folder = tmp_path / "cache" / f"mathjax-{build_site.MATHJAX_VERSION}"
    assert f"is in {folder}" in capsys.readouterr().out
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == \
        ["output/chtml/fonts/woff-v2/MathJax_Zero.woff", "tex-chtml-full.js"]
    registry["tarball"] = None                                       # offline from here on: the cache is used
    assert build_site.fetch_mathjax() == folder and registry["calls"] == 1
    setup_recipe = (ROOT / "Makefile").read_text().split("\n$(STAMP):")[1].split("\n\n")[0]
    assert "tools/build_site.py --fetch-mathjax" in setup_recipe                          # `make setup` runs this


def test_a_tarball_with_the_wrong_hash_is_not_unpacked(registry, tmp_path):
    registry["tarball"] = _mathjax_tarball(tmp_path)
    with pytest.raises(build_site.MathJaxUnavailable, match=f"expected {build_site.MATHJAX_SHA256}, so it was not unpacked"):
        build_site.fetch_mathjax()
    assert not (tmp_path / "cache").exists()


def test_setup_without_network_goes_on_and_docs_then_names_the_fix(registry, tmp_path, capsys):
    assert build_site.main(["--fetch-mathjax"]) == 0                 # set-up does not fail
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("note: MathJax") and "name resolution" in err and "`make docs` will fetch it" in err
    assert build_site.main(["--out", str(tmp_path / "_site")]) == 2  # neither does the build crash: it says what to do
    err = capsys.readouterr().err
    assert "could not be fetched" in err and "make setup" in err and "--fetch-mathjax" in err
    assert not (tmp_path / "_site").exists() and not (tmp_path / "cache").exists()


def test_npm_without_network_gives_its_reason_in_one_line(monkeypatch, tmp_path):
    stderr = (b"npm error code ECONNREFUSED\nnpm error errno ECONNREFUSED\nnpm error FetchError: request to "
              b"https://registry.npmjs.org/mathjax failed, reason: connect ECONNREFUSED\nnpm error   code: 'ECONNREFUSED',\n")
    def npm_pack(cmd, **kwargs):
        assert cmd[:3] == ["npm", "pack", f"mathjax@{build_site.MATHJAX_VERSION}"]
        raise build_site.subprocess.CalledProcessError(1, cmd, stderr=stderr)
    monkeypatch.setattr(build_site.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(build_site.subprocess, "run", npm_pack)
    with pytest.raises(build_site.MathJaxUnavailable) as e:
        build_site.fetch_mathjax(tmp_path / "cache")
    assert e.value.reason.endswith("(FetchError: request to https://registry.npmjs.org/mathjax failed, reason: connect ECONNREFUSED)")


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


def _layout_problems(reports, *kinds: str) -> dict[str, list[str]]:
    "Per page, the layout problems `site_browser.layout_problems` names with any of `kinds` in their line."
    found = {page: [p for p in site_browser.layout_problems(r["layout"]) if any(k in p for k in kinds)] for page, r in reports.items()}
    return {page: problems for page, problems in found.items() if problems}


def test_no_page_nests_scroll_boxes_or_scrolls_sideways(reports):
    bad = _layout_problems(reports, "nested scroll box", "scrolls sideways", "display equation")
    assert not bad, f"scroll boxes inside pages, or pages wider than the window: {json.dumps(bad, indent=1)}"
    assert any(r["layout"][min(site_browser.LAYOUT_WIDTHS)]["wide_equations"] for r in reports.values()), \
        "no display equation scrolls even in the narrow window: is the scroll-box check looking at anything?"


def test_wide_tables_scroll_in_their_own_box_with_the_first_column_in_view(reports):
    bad = _layout_problems(reports, "table")
    assert not bad, f"tables: {json.dumps(bad, indent=1)}"
    narrow = min(site_browser.LAYOUT_WIDTHS)
    assert reports["table1.html"]["layout"][narrow]["wide_tables"], \
        f"Table 1 (15 columns) fits a {narrow} px window: the sticky-column check tested nothing"


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
