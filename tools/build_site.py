"""Build the tutorial site offline: every notebook in nbs/ as an HTML page, from its committed outputs.

Quarto (what `nbdev_docs` needs) is not installable on these machines, so this renders the notebooks with
nbconvert instead, after nbdev's own docs processors (the ones `nbdev_docs` runs before Quarto): they turn
the title cell into front matter, drop `#| hide` cells and add `show_doc` output for every exported name.
Only those `show_doc`, import and export cells are executed, as in `nbdev_docs`; every other output is the
one committed in the notebook. Equations are typeset by a local MathJax 3, fetched once from the npm
registry (with `npm pack`, or a plain download of the same tarball where npm is missing) by `make setup`, or
by the first build where set-up had no network, and checked against a pinned SHA-256; after that neither the
build nor the built site needs the network.

    python tools/build_site.py [--out _site]
    python tools/build_site.py --fetch-mathjax       # what `make setup` runs: MathJax into the cache, if online

Pages come in file-name order with index first, so a new notebook in nbs/ appears without editing this file.
Nothing is written outside the output folder except the MathJax cache (~/.cache/iaf_repro).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path
from unittest import mock

import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).resolve().parent / "site_template"
MATHJAX_VERSION = "3.2.2"
MATHJAX_SHA256 = "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09"   # of npm's mathjax-3.2.2.tgz
MATHJAX_URL = f"https://registry.npmjs.org/mathjax/-/mathjax-{MATHJAX_VERSION}.tgz"
MATHJAX_FILES = ("es5/tex-chtml-full.js", "es5/output/chtml/fonts/woff-v2/")          # what the pages load
CACHE = Path(os.environ.get("IAF_REPRO_CACHE", Path.home() / ".cache" / "iaf_repro"))


def chapters(nbs: Path) -> list[Path]:
    "The notebooks of the site in reading order: index first, then by file name (`00_...` before `04b_...`)."
    found = sorted(p for p in Path(nbs).glob("*.ipynb") if not p.name.startswith(("_", ".")))
    if not found: raise FileNotFoundError(f"no notebooks in {nbs}")
    return sorted(found, key=lambda p: (p.stem != "index", p.name))


class MathJaxUnavailable(RuntimeError):
    "MathJax is not in the cache and could not be fetched (no network, no registry, or a tarball with the wrong hash)."
    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"{reason}: run `make setup` or `python tools/build_site.py --fetch-mathjax` where the npm "
                         f"registry ({MATHJAX_URL.split('/mathjax/')[0]}) can be reached; `make docs` then builds offline")


def _download_mathjax(folder: Path) -> Path:
    "Fetch npm's MathJax tarball into `folder` (with `npm pack`, else a plain download) and return its path."
    tgz = Path(folder) / f"mathjax-{MATHJAX_VERSION}.tgz"
    if shutil.which("npm"):
        subprocess.run(["npm", "pack", f"mathjax@{MATHJAX_VERSION}", "--loglevel=error", "--fetch-retries=1"], cwd=folder,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)        # offline: fails in seconds
    else:                                               # the same tarball from the same registry, without npm
        with urllib.request.urlopen(MATHJAX_URL, timeout=120) as r: tgz.write_bytes(r.read())
    return tgz


_NPM_PREFIX = re.compile(r"^npm (?:error|ERR!)\s*")


def _why(error: Exception) -> str:
    "One line saying why a download failed: npm's own reason (`FetchError: ... reason: ...`) where it gave one."
    if not isinstance(error, subprocess.CalledProcessError): return str(error)
    lines = [_NPM_PREFIX.sub("", l).strip() for l in (error.stderr or b"").decode(errors="replace").splitlines()]
    lines = [l for l in lines if l]
    return next((l for l in lines if "reason:" in l or "Error:" in l), lines[0] if lines else f"npm exited with status {error.returncode}")


def fetch_mathjax(cache: Path | None = None) -> Path:
    """A folder holding MathJax's `tex-chtml-full.js` and its fonts, unpacked on first use from the npm registry's
    tarball (hash checked); `make setup` calls this, so `make docs` runs offline afterwards. Raises
    `MathJaxUnavailable`, naming the fix, when MathJax is not cached and cannot be fetched."""
    folder = Path(cache or CACHE) / f"mathjax-{MATHJAX_VERSION}"
    if (folder / "tex-chtml-full.js").exists(): return folder
    with tempfile.TemporaryDirectory() as tmp:
        try: tgz = _download_mathjax(Path(tmp))
        except (OSError, subprocess.CalledProcessError) as e:
            raise MathJaxUnavailable(f"MathJax {MATHJAX_VERSION} is not in {folder} and could not be fetched ({_why(e)})") from e
        digest = hashlib.sha256(tgz.read_bytes()).hexdigest()
        if digest != MATHJAX_SHA256:
            raise MathJaxUnavailable(f"the fetched {tgz.name} has SHA-256 {digest}, expected {MATHJAX_SHA256}, so it was not unpacked")
        staging = Path(tmp) / "mathjax"
        with tarfile.open(tgz) as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix("package/")
                if member.isfile() and name.startswith(MATHJAX_FILES):
                    target = staging / name.removeprefix("es5/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.move(staging, folder)
    return folder


@contextlib.contextmanager
def _working_dir(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try: yield
    finally: os.chdir(old)


def _runs_for_docs(nbdev_rule):
    """nbdev's choice of the cells `show_doc` needs (exports, imports, `show_doc` calls), less the cells that mix
    imports with other code: nbdev runs those too (with a warning), which fails when they use names from cells it
    skipped, and would replace their committed outputs."""
    from nbdev.processors import _show_docs
    def run(cell):
        if not nbdev_rule(cell): return False
        if cell.directives_.keys() & {"export", "exports", "exporti", "exec_doc"}: return True
        statements = cell.parsed_()
        return all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in statements) or bool(_show_docs(statements))
    return run


def process_notebook(path: Path):
    "Run nbdev's docs processors on one notebook (as `nbdev_docs` does): front matter, hidden cells out, `show_doc` in."
    from execnb.nbio import read_nb
    from nbdev import processors
    nb = read_nb(path)
    with _working_dir(path.parent), warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr), \
            mock.patch.dict(os.environ, {"IN_TEST": "1"}), \
            mock.patch.object(processors, "_do_eval", _runs_for_docs(processors._do_eval)):
        warnings.simplefilter("ignore")                  # nbdev warns about each cell mixing imports and code
        processors.FilterDefaults()(nb)                  # IN_TEST=1 is what nbdev's docs driver sets meanwhile
    return nb


def front_matter(nb) -> dict:
    "The YAML front matter nbdev put in the first raw cell (title, description, output-file); {} if none."
    for cell in nb.cells:
        if cell.cell_type == "raw" and cell.source.lstrip().startswith("---"):
            return yaml.safe_load(cell.source.strip().strip("-")) or {}
    return {}


_DIRECTIVE = re.compile(r"^#\|\s*([\w-]+)\s*:\s*(.*?)\s*$")
_CALLOUT = re.compile(r"^::: *\{\.callout-(\w+)[^}]*\}\s*\n(.*?)\n:::\s*$", re.MULTILINE | re.DOTALL)
_QUARTO_ATTRS = re.compile(r"(\]\([^)]*\))\{[^}]*\}")          # [source](url){target="_blank" ...}
_NB_LINK = re.compile(r"\]\(([\w.-]+)\.ipynb(#[^)\s]*)?\)")
_UP_LINK = re.compile(r"\]\(\.\./(?!figures/)([^)\s]+)\)")


class Links:
    "Rewrites links written for the notebooks' folder (or nbdev's doc host) so they work inside the site."
    def __init__(self, pages: dict[str, str], doc_url: str, repo_url: str):
        self.pages, self.doc_url, self.repo_url = pages, doc_url, repo_url

    def _notebook(self, m: re.Match) -> str:
        stem = m.group(1)
        if stem not in self.pages: return m.group(0)            # e.g. a made-up name in a usage example
        return f"]({self.pages[stem]}{m.group(2) or ''})"

    def __call__(self, text: str) -> str:
        text = _QUARTO_ATTRS.sub(r"\1", text)
        text = text.replace(self.doc_url, "")
        text = text.replace("../figures/", "figures/")
        text = _NB_LINK.sub(self._notebook, text)
        return _UP_LINK.sub(lambda m: f"]({self.repo_url}/{m.group(1)})", text)


def _callouts(source: str) -> str:
    "Quarto callout blocks (`::: {.callout-note}`) as HTML divs that plain Markdown renders."
    return _CALLOUT.sub(lambda m: f'<div class="callout callout-{m.group(1)}">\n\n**{m.group(1).title()}.** {m.group(2)}\n\n</div>',
                        source)


_OVERWRITTEN = re.compile(r"[^\n]*\r(?!\n)")


def _overwrite(text) -> str:
    "Stream text as a terminal shows it: what a carriage return sends the cursor back over is overwritten (tqdm bars)."
    return _OVERWRITTEN.sub("", text if isinstance(text, str) else "".join(text))


def page_cells(nb, links: Links):
    "Make a processed notebook plain Jupyter: Quarto directives applied or dropped, callouts and links rewritten."
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "raw": continue
        if cell.cell_type == "markdown":
            cell.source = links(_callouts(cell.source))
            if "WARNING: THIS FILE WAS AUTOGENERATED" in cell.source: continue
        else:
            lines = cell.source.splitlines()
            directives = dict(m.groups() for m in map(_DIRECTIVE.match, lines) if m)
            cell.source = "\n".join(l for l in lines if not _DIRECTIVE.match(l)).strip("\n")
            tags = set(cell.metadata.get("tags", []))
            if directives.get("echo") == "false" or not cell.source: tags.add("remove_input")
            cell.metadata["tags"] = sorted(tags)
            for out in cell.get("outputs", []):
                if out.get("output_type") == "stream": out["text"] = _overwrite(out["text"])
                data = out.get("data", {})
                for kind in ("text/markdown", "text/html"):
                    if kind in data:
                        text = data[kind] if isinstance(data[kind], str) else "".join(data[kind])
                        data[kind] = links(text)
            if not cell.source and not cell.get("outputs"): continue
        cells.append(cell)
    nb.cells = cells
    return nb


_HEADING_ID = re.compile(r'(<h[1-6] id="([^"]+)"[^>]*>)')


def _lowercase_anchors(page: str) -> str:
    "Give each heading also nbdev's lowercase anchor (its doc links say `iaf.html#iafstep` for `### IAFStep`)."
    def add(m: re.Match) -> str:
        lower = m.group(2).lower()
        return m.group(1) + (f'<a class="anchor-alias" id="{lower}"></a>' if lower != m.group(2) and "%" not in lower else "")
    return _HEADING_ID.sub(add, page)


_TABLE = re.compile(r"<table\b.*?</table>", re.DOTALL)
_ROW = re.compile(r"<tr\b[^>]*>.*?</tr>", re.DOTALL)
_CELL = re.compile(r"<(t[hd])\b([^>]*)>")
_ROWSPAN = re.compile(r'(?<![\w-])rowspan="?(\d+)')
_CLASS = re.compile(r'((?<![\w-])class=")')


def _mark_first_column(table: str) -> str:
    "Add the class `first-col` to each cell of the table's first column (a cell spanning rows covers the rows below it)."
    covered = 0
    def mark(row: re.Match) -> str:
        nonlocal covered
        if covered:
            covered -= 1
            return row.group(0)
        cell = _CELL.search(row.group(0))
        if not cell: return row.group(0)
        if span := _ROWSPAN.search(cell.group(2)): covered = int(span.group(1)) - 1
        attrs, n = _CLASS.subn(r"\1first-col ", cell.group(2), count=1)
        if not n: attrs = f' class="first-col"{attrs}'
        return row.group(0)[:cell.start()] + f"<{cell.group(1)}{attrs}>" + row.group(0)[cell.end():]
    return _ROW.sub(mark, table)


def _scrolling_tables(page: str) -> str:
    """Put every table (Markdown, pandas, `show_doc`) in a `<div class="table-scroll">` and mark its first column, so a
    table wider than the text scrolls inside that box with its first column in view (site.css), never the page."""
    return _TABLE.sub(lambda m: f'<div class="table-scroll">{_mark_first_column(m.group(0))}</div>', page)


_ID = re.compile(r'\bid="([^"]+)"')
_PAGE_ANCHOR = re.compile(r'href="([\w.-]+\.html)#([^"]+)"')


def _resolve_anchors(pages: dict[str, str]) -> dict[str, str]:
    """Point links to anchors that no page has (nbdev links `IAFStep.inverse` to `iaf.html#iafstep.inverse`, but only
    names passed to `show_doc` get a heading) at the owner's anchor (`#iafstep`), else at the page's top."""
    ids = {name: set(_ID.findall(html)) for name, html in pages.items()}
    def fix(m: re.Match) -> str:
        page, anchor = m.groups()
        if page not in ids or anchor in ids[page]: return m.group(0)
        owner = anchor.split(".")[0]
        return f'href="{page}#{owner}"' if owner in ids[page] else f'href="{page}"'
    return {name: _PAGE_ANCHOR.sub(fix, html) for name, html in pages.items()}


def _exporter():
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = {"remove_input"}
    c.HTMLExporter.exclude_input_prompt = True
    c.HTMLExporter.exclude_output_prompt = True
    return HTMLExporter(config=c, template_name="iaf_site", extra_template_basedirs=[str(TEMPLATES)])


def _number(path: Path) -> str:
    m = re.match(r"(\d+[a-z]?)_", path.name)
    return m.group(1) if m else ""


def build_site(out: Path = ROOT / "_site", nbs: Path = ROOT / "nbs", figures: Path = ROOT / "figures",
               quiet: bool = False) -> list[Path]:
    "Render every notebook of `nbs` into `out` (emptied first) with figures, MathJax and a sidebar; return the pages in chapter order."
    out, nbs = Path(out).resolve(), Path(nbs).resolve()
    if out in (ROOT, nbs, Path(figures).resolve()) or out in ROOT.parents:
        raise ValueError(f"refusing to build the site into {out}: it is emptied first")
    import nbformat
    from nbdev.config import get_config
    from nbformat.v4.rwbase import rejoin_lines          # execnb keeps multi-line texts as lists; nbconvert wants str
    cfg = get_config(path=nbs)
    mathjax = fetch_mathjax()
    start = time.perf_counter()
    processed = []
    for path in chapters(nbs):
        t = time.perf_counter()
        nb = process_notebook(path)
        meta = front_matter(nb)
        processed.append((path, nb, meta, meta.get("output-file") or path.stem + ".html"))
        if not quiet: print(f"{path.name:>28}: processed in {time.perf_counter() - t:4.1f} s", file=sys.stderr)
    hrefs = [href for *_, href in processed]
    if len(set(hrefs)) != len(hrefs): raise ValueError(f"two notebooks map to the same page: {sorted(hrefs)}")
    nav = [{"href": href, "title": meta.get("title", path.stem), "number": _number(path)}
           for path, _, meta, href in processed]
    links = Links({path.stem: href for path, _, _, href in processed},
                  doc_url=f"{cfg.doc_host}{cfg.doc_baseurl}/", repo_url=f"{cfg.git_url}/blob/{cfg.branch}")

    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(mathjax, out / "mathjax")
    if Path(figures).exists(): shutil.copytree(figures, out / "figures")
    shutil.copy(TEMPLATES / "iaf_site" / "site.css", out / "site.css")
    exporter, pages = _exporter(), {}
    for path, nb, meta, href in processed:
        site = {"nav": nav, "href": href, "title": meta.get("title", path.stem), "description": meta.get("description", ""),
                "project": cfg.title, "mathjax": "mathjax/tex-chtml-full.js"}
        body, _ = exporter.from_notebook_node(rejoin_lines(nbformat.from_dict(page_cells(nb, links))),
                                              resources={"site": site, "metadata": {"name": site["title"]}})
        pages[href] = _scrolling_tables(_lowercase_anchors(body))
    for href, body in _resolve_anchors(pages).items(): (out / href).write_text(body, encoding="utf-8")
    if not quiet: print(f"built {len(pages)} pages into {out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return [out / href for href in pages]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "_site", help="output folder, emptied first (default: _site)")
    p.add_argument("--fetch-mathjax", action="store_true",
                   help="only put MathJax in the cache and exit (what `make setup` does); when it cannot be fetched, "
                        "print a one-line note and exit 0: the first `make docs` fetches it instead")
    args = p.parse_args(argv)
    try:
        if args.fetch_mathjax:
            print(f"MathJax {MATHJAX_VERSION} is in {fetch_mathjax()}")
            return 0
        build_site(args.out)
    except MathJaxUnavailable as e:
        if args.fetch_mathjax:
            print(f"note: {e.reason}; set-up goes on, and `make docs` will fetch it", file=sys.stderr)
            return 0
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
