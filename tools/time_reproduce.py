"""Time `make reproduce` on a fresh clone and record it in figures/tables/reproduce_times.csv (issue 15).

    python tools/time_reproduce.py                 # clone HEAD into a temporary folder, reproduce there, time it
    python tools/time_reproduce.py --keep /tmp/c   # the same, keeping the clone to look at

It runs what `make reproduce` runs once the environment is set up (`iaf-repro reproduce`), with this checkout's
Python, the clone's package first on the path, and an empty runs folder, so nothing trained earlier on this
machine is reused: only what a fresh clone has (the committed results files, released weights and saved fits).
It records the wall time, whether the clone's `git status` stayed clean (and which files changed), the machine,
its load before and after, and the commit; the front page renders its last row. Setting up the environment
(`make setup`: a virtual environment and pip installs) is not part of the time.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "figures" / "tables" / "reproduce_times.csv"
FIELDS = ["command", "seconds", "clean", "changed", "plan", "commit", "date", "cpu_model", "cpus", "load_before", "load_after"]


def git(*args, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def cpu_model() -> str:
    try: return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration): return platform.processor() or platform.machine()


def time_reproduce(clone: Path, extra: list[str]) -> dict:
    "Clone HEAD into `clone`, run `iaf-repro reproduce` there with an empty runs folder, and return the row to record."
    if git("status", "--porcelain", "--untracked-files=no"): raise SystemExit("commit first: the clone is made from HEAD, not from the working tree")
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env = os.environ | {"PYTHONPATH": str(clone), "IAF_REPRO_RUNS": str(clone.parent / "runs")}
    env.setdefault("IAF_REPRO_DATA", str(ROOT.parent / "shared" / "data"))
    command = [sys.executable, "-m", "iaf_repro.cli", "reproduce", *extra]
    load_before, start = os.getloadavg()[0], time.perf_counter()
    run = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True)
    seconds, load_after = time.perf_counter() - start, os.getloadavg()[0]
    (clone.parent / "reproduce.log").write_text(run.stdout + run.stderr)
    if run.returncode: raise SystemExit(f"reproduce failed ({run.returncode}); its log: {clone.parent / 'reproduce.log'}\n{run.stderr[-2000:]}")
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True).stdout
    changed = [line[3:] for line in status.splitlines()]                          # "XY path": git() would strip the first X
    plan = next((l for l in run.stdout.splitlines() if l.startswith("plan: ")), "")
    return dict(command="make reproduce" + (" " + " ".join(extra) if extra else ""), seconds=round(seconds, 1), clean=not changed,
                changed=" ".join(changed), plan=plan.removeprefix("plan: ").rstrip("."), commit=git("rev-parse", "--short=12", "HEAD"),
                date=time.strftime("%Y-%m-%d %H:%M:%S"), cpu_model=cpu_model(), cpus=os.cpu_count(),
                load_before=round(load_before, 2), load_after=round(load_after, 2))


def record(row: dict, table: Path = TABLE) -> None:
    "Append `row` to the timings table, writing its header when the table is new."
    new = not table.exists()
    table.parent.mkdir(parents=True, exist_ok=True)
    with open(table, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new: writer.writeheader()
        writer.writerow(row)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", type=Path, default=None, help="clone into this (new) folder and keep it (default: a temporary folder)")
    args, extra = ap.parse_known_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True)
        row = time_reproduce(args.keep / "clone", extra)
    else:
        with tempfile.TemporaryDirectory() as tmp: row = time_reproduce(Path(tmp) / "clone", extra)
    record(row)
    print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
