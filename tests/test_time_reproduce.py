"Tests for tools/time_reproduce.py: the timings table it appends to, and its refusal to time anything but a commit."
import csv
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("time_reproduce", ROOT / "tools" / "time_reproduce.py")
timer = importlib.util.module_from_spec(spec); spec.loader.exec_module(timer)


def row(seconds: float) -> dict:
    return dict(command="make reproduce", seconds=seconds, clean=True, changed="", plan="reuse results 5", commit="abc", date="2026-12-05",
                cpu_model="cpu", cpus=2, load_before=0.1, load_after=0.2)


def test_record_writes_the_header_once_and_appends(tmp_path):
    table = tmp_path / "tables" / "reproduce_times.csv"
    timer.record(row(60.0), table)
    timer.record(row(75.5), table)
    rows = list(csv.DictReader(open(table)))
    assert [r["seconds"] for r in rows] == ["60.0", "75.5"] and list(rows[0]) == timer.FIELDS


def test_it_times_only_a_commit(monkeypatch, tmp_path):
    monkeypatch.setattr(timer, "git", lambda *args, **kw: " M nbs/index.ipynb")       # uncommitted changes
    with pytest.raises(SystemExit, match="commit first"):
        timer.time_reproduce(tmp_path / "clone", [])
    assert not (tmp_path / "clone").exists()
