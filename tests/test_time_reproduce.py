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


def test_the_command_is_named_without_its_deadline():
    assert timer.command_name(["--retrain", "--threads", "1", "--until", "2h30m"]) == "make reproduce --retrain --threads 1"
    assert timer.command_name(["--until=90m"]) == "make reproduce"


def test_an_older_table_gains_the_sittings_column(tmp_path):
    table = tmp_path / "reproduce_times.csv"
    old = {k: v for k, v in row(80.7).items()}
    with open(table, "w", newline="") as f:                                       # written before sittings were counted
        writer = csv.DictWriter(f, fieldnames=list(old)); writer.writeheader(); writer.writerow(old)
    timer.record(dict(row(9000.0), sittings=3), table)
    rows = list(csv.DictReader(open(table)))
    assert list(rows[0]) == timer.FIELDS and [(r["seconds"], r["sittings"]) for r in rows] == [("80.7", "1"), ("9000.0", "3")]


def test_a_reproduction_in_sittings_records_their_sum_once_it_finishes(monkeypatch, tmp_path):
    import subprocess
    clone = tmp_path / "clone"
    clone.mkdir()
    for args in (["init", "-q"], ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *args], cwd=clone, check=True)                      # the clone an earlier sitting made
    outcomes = iter([(3, 3600.0), (3, 3000.5), (0, 1200.0)])                        # stopped, stopped, finished
    def sitting(clone, extra):                                                      # `sit` without the process: it keeps the sitting
        status, seconds = next(outcomes)
        timer.append_csv(clone.parent / "sittings.csv", timer.SITTING_FIELDS, dict(date="2026-12-05", command=timer.command_name(extra),
                                                                                 seconds=seconds, status=status, load_before=1.0, load_after=2.0))
        return subprocess.CompletedProcess([], status, stdout="plan: train 9, draw 3.\n", stderr="")
    monkeypatch.setattr(timer, "sit", sitting)
    extra = ["--retrain", "--until", "2h"]
    assert timer.time_reproduce(clone, extra) is None and timer.time_reproduce(clone, extra) is None
    with pytest.raises(SystemExit, match="holds the sittings of make reproduce --retrain, not of make reproduce"):
        timer.time_reproduce(clone, ["--until", "2h"])                             # another command is not added to these sittings
    done = timer.time_reproduce(clone, extra)
    assert (done["seconds"], done["sittings"], done["command"], done["plan"]) == (7800.5, 3, "make reproduce --retrain", "train 9, draw 3")
    assert len(list(csv.DictReader(open(tmp_path / "sittings.recorded.csv")))) == 3 and not (tmp_path / "sittings.csv").exists()
    with pytest.raises(SystemExit, match="finished and was recorded"):
        timer.time_reproduce(clone, extra)                                          # never timed twice


def test_a_sitting_ended_by_a_signal_keeps_its_time(monkeypatch, tmp_path):
    import subprocess
    clone = tmp_path / "clone"; clone.mkdir()
    def interrupted(*args, **kwargs): raise KeyboardInterrupt
    monkeypatch.setattr(subprocess, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        timer.sit(clone, ["--retrain", "--until", "2h"])
    (kept,) = timer.read_sittings(tmp_path)
    assert (kept["status"], kept["command"]) == ("interrupted", "make reproduce --retrain") and float(kept["seconds"]) >= 0


def test_a_deadline_needs_a_folder_to_resume_in():
    with pytest.raises(SystemExit, match="give --keep a folder"):
        timer.main(["--retrain", "--until", "2h"])


def test_sittings_kept_before_commands_were_named_are_resumed(tmp_path):
    import subprocess
    clone = tmp_path / "clone"; clone.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
    (tmp_path / "sittings.csv").write_text("date,seconds,status,load_before,load_after\n2026-12-05 23:59:00,8400.0,3,1.5,2.0\n")
    assert timer.prepare_clone(clone, "make reproduce --retrain --threads 1") is True
    timer.append_csv(tmp_path / "sittings.csv", timer.SITTING_FIELDS, dict(command="make reproduce --retrain --threads 1", seconds=60.0))
    assert [r["seconds"] for r in timer.read_sittings(tmp_path)] == ["8400.0", "60.0"]
