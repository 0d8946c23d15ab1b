"""The front page (README.md, rendered from nbs/index.ipynb): its numbers come from the results files, and its
first screen gives the two commands, the results and the key figure."""
import re
from pathlib import Path

from iaf_repro.cli import results_summary

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TABLES = ROOT / "figures" / "tables"


def test_the_results_summary_in_the_readme_is_the_one_the_results_files_give():
    summary = results_summary(TABLES)
    assert summary in README
    assert summary.count("\n| Table") >= 1, "no row has run: the front page would show no results"


def test_the_readme_holds_tables_1_and_2_exactly_as_written_to_figures_tables():
    lines = set(README.splitlines())
    for name in ("table1.md", "table2.md"):
        rows = [l for l in (TABLES / name).read_text().splitlines() if l.startswith("|")]
        assert rows and all(r in lines for r in rows), f"README.md's copy of {name} differs: run `iaf-repro readme`"


def test_the_first_screen_gives_commands_then_results_then_the_key_figure():
    lines = README.splitlines()
    first = lambda pattern: next(i for i, l in enumerate(lines) if re.search(pattern, l))
    commands, table, figure = first(r"^```bash"), first(r"^\| table \| posterior"), first(r"^!\[")
    assert commands < first(r"^## ") < table < figure < first(r"^## Running it")
    assert figure < 45, "the key figure has slipped out of the README's first screen"
    assert "cpu" in README[:README.index("| table | posterior")] and "not reproduced yet" in README


def test_every_picture_and_local_link_in_the_readme_exists():
    targets = re.findall(r"\]\((?![a-z]+:|#)([^)\s]+)\)", README)
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert targets and not missing, missing
    assert "figures/site_front_page.png" in targets and "figures/site_chapter_iaf.png" in targets
