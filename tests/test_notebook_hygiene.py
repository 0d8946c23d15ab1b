"""Committed notebooks keep their outputs and hold no error; the pre-commit hook refuses notebooks nbdev_clean would change.

That each notebook executes top to bottom in a fresh kernel is what `nbdev_test` checks in `make test`; nbdev_clean
strips execution counts, so the committed counts cannot show the order cells were run in.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))
HIDDEN = ("#| hide", "#| export", "#| exporti", "#| default_exp")


def _visible_code(cells):
    "Code cells a reader sees run (not hidden, not only exported definitions)."
    return [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).strip()
            and not "".join(c["source"]).lstrip().startswith(HIDDEN)]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_keep_their_outputs_and_hold_no_error(nb):
    cells = json.loads(nb.read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    errors = [o.get("ename") for o in outputs if o["output_type"] == "error"]
    assert not errors, f"{nb.name} was committed with errors: {errors}"
    if _visible_code(cells):
        assert outputs, f"{nb.name} has code a reader sees run but no outputs: run it top to bottom before committing"


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True)


@pytest.fixture
def repo(tmp_path):
    "A scratch git repository with this project's settings.ini and pre-commit hook."
    _git(tmp_path, "init", "-q")
    shutil.copy(ROOT / "settings.ini", tmp_path)
    _git(tmp_path, "config", "core.hooksPath", str(ROOT / "tools" / "hooks"))
    return tmp_path


def test_the_pre_commit_hook_refuses_an_unclean_notebook_and_cleans_it(repo, monkeypatch):
    # the hook runs the repository's .venv/bin/nbdev_clean, else the one on PATH: here, this interpreter's
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    nb = json.loads(NOTEBOOKS[0].read_text())
    nb["metadata"]["noise"] = {"last_run": "today"}                    # metadata nbdev_clean strips
    (repo / "a.ipynb").write_text(json.dumps(nb, indent=1))
    _git(repo, "add", "a.ipynb", "settings.ini")
    refused = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], cwd=repo,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "a.ipynb is not clean" in refused.stderr
    assert "noise" not in json.loads((repo / "a.ipynb").read_text())["metadata"]    # cleaned in the working tree
    _git(repo, "add", "a.ipynb")
    _git(repo, "commit", "-qm", "clean now")                                          # and now accepted
