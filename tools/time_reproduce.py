"""Time `make reproduce` on a fresh clone and record it in figures/tables/reproduce_times.csv (issue 15).

    python tools/time_reproduce.py                 # clone HEAD into a temporary folder, reproduce there, time it
    python tools/time_reproduce.py --keep /tmp/c   # the same, keeping the clone to look at
    python tools/time_reproduce.py --keep ~/.cache/iaf_repro/retrain-timing --retrain --threads 1 --until 2h30m
                                                   # hours of retraining, in sittings: each stops at --until, and the
                                                   # same command in a later session resumes the clone it made

It runs what `make reproduce` runs once the environment is set up (`iaf-repro reproduce`, with any further
arguments), with this checkout's Python, the clone's package first on the path, and an empty runs folder, so
nothing trained earlier on this machine is reused: only what a fresh clone has (the committed results files,
released weights and saved fits). It records the wall time, whether the clone's `git status` stayed clean (and
which files changed), the machine, its load before and after, and the commit; the front page renders the last
row of a plain `make reproduce` and the last of `--retrain`. Setting up the environment (`make setup`: a virtual environment and pip installs) is not
part of the time.

A reproduction stopped before it finished (by `--until`, exit status 3, or by a signal) is a *sitting*: its wall
time and command are kept in `<keep>/sittings.csv` and nothing is recorded yet. Run the same command again and it
resumes in the same clone (of the commit it was made from, whatever HEAD is now); another command there is refused.
When the reproduction finishes, the row records the sum of its sittings' times and their number, and the sittings
file is renamed `sittings.recorded.csv`, so the finished clone is never timed twice. Time lost to an epoch cut short
is in that sum: it is what the retraining took.
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
FIELDS = ["command", "seconds", "clean", "changed", "plan", "commit", "date", "cpu_model", "cpus", "load_before", "load_after", "sittings"]
SITTING_FIELDS = ["date", "command", "seconds", "status", "load_before", "load_after"]
STOPPED = 3                                            # iaf-repro's exit status when --until stopped it (resumable)


def git(*args, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def cpu_model() -> str:
    try: return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration): return platform.processor() or platform.machine()


def command_name(extra: list[str]) -> str:
    "How the timings table names what was timed: `make reproduce` and its arguments, less `--until` (when to stop a sitting is not what ran)."
    kept, skip = [], False
    for arg in extra:
        if skip: skip = False; continue
        if arg == "--until": skip = True; continue
        if not arg.startswith("--until="): kept.append(arg)
    return " ".join(["make reproduce", *kept])


def prepare_clone(clone: Path, command: str) -> bool:
    "Clone HEAD into `clone`, or find the clone an earlier sitting of the same `command` made there; True when resuming."
    if (clone.parent / "sittings.recorded.csv").exists():
        raise SystemExit(f"the reproduction in {clone} finished and was recorded: give --keep a new folder")
    if (clone / ".git").exists():
        earlier = {r.get("command") for r in read_sittings(clone.parent)} - {None, ""}   # a sitting kept before commands were: unnamed
        if earlier and earlier != {command}:
            raise SystemExit(f"{clone} holds the sittings of {' / '.join(sorted(earlier))}, not of {command}: give --keep a new folder")
        return True
    if clone.exists(): raise SystemExit(f"{clone} exists but is not a clone: give --keep a new folder, or the one an earlier sitting used")
    if git("status", "--porcelain", "--untracked-files=no"): raise SystemExit("commit first: the clone is made from HEAD, not from the working tree")
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    return False


def read_sittings(folder: Path) -> list[dict]:
    "The sittings kept in `folder` so far (none before the first)."
    path = folder / "sittings.csv"
    return list(csv.DictReader(open(path))) if path.exists() else []


def sit(clone: Path, extra: list[str]) -> subprocess.CompletedProcess:
    "Run `iaf-repro reproduce` once in the clone, its runs folder beside it, and keep the sitting's time, even when a signal ends it; the finished process."
    env = os.environ | {"PYTHONPATH": str(clone), "IAF_REPRO_RUNS": str(clone.parent / "runs")}
    env.setdefault("IAF_REPRO_DATA", str(ROOT.parent / "shared" / "data"))
    load_before, start, run = os.getloadavg()[0], time.perf_counter(), None
    try:
        run = subprocess.run([sys.executable, "-m", "iaf_repro.cli", "reproduce", *extra], cwd=clone, env=env, capture_output=True, text=True)
        with open(clone.parent / "reproduce.log", "a") as log: log.write(run.stdout + run.stderr)
        return run
    finally:
        append_csv(clone.parent / "sittings.csv", SITTING_FIELDS, dict(
            date=time.strftime("%Y-%m-%d %H:%M:%S"), command=command_name(extra), seconds=round(time.perf_counter() - start, 1),
            status=run.returncode if run else "interrupted", load_before=round(load_before, 2), load_after=round(os.getloadavg()[0], 2)))


def append_csv(path: Path, fields: list[str], row: dict) -> None:
    "Append `row` to a csv of `fields`, rewriting it under `fields` when it was written with fewer (an older header); a missing `sittings` is 1."
    rows = list(csv.DictReader(open(path))) if path.exists() else []
    if rows and list(rows[0]) != fields:
        rows = [{k: r.get(k, 1 if k == "sittings" else "") for k in fields} for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows([*rows, row])


def record(row: dict, table: Path = TABLE) -> None:
    "Append `row` to the timings table."
    append_csv(table, FIELDS, row)


def finished_row(clone: Path, extra: list[str], sittings: list[dict], stdout: str) -> dict:
    "The timings row of a reproduction that finished: its sittings' total time, the clone's `git status`, its plan and machine."
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True).stdout
    changed = [line[3:] for line in status.splitlines()]                          # "XY path": git() would strip the first X
    plan = next((l for l in stdout.splitlines() if l.startswith("plan: ")), "")
    return dict(command=command_name(extra), seconds=round(sum(float(s["seconds"]) for s in sittings), 1), clean=not changed,
                changed=" ".join(changed), plan=plan.removeprefix("plan: ").rstrip("."), commit=git("rev-parse", "--short=12", "HEAD", cwd=clone),
                date=sittings[-1]["date"], cpu_model=cpu_model(), cpus=os.cpu_count(),
                load_before=sittings[0]["load_before"], load_after=sittings[-1]["load_after"], sittings=len(sittings))


def time_reproduce(clone: Path, extra: list[str]) -> dict | None:
    "One sitting of `iaf-repro reproduce` in `clone` (made from HEAD, or resumed): the row to record once it finished, None when it stopped (exit status 3)."
    resuming = prepare_clone(clone, command_name(extra))
    print(("resuming in " if resuming else "cloned HEAD into ") + str(clone), flush=True)
    run = sit(clone, extra)
    if run.returncode not in (0, STOPPED):
        raise SystemExit(f"reproduce failed ({run.returncode}); its log: {clone.parent / 'reproduce.log'}\n{run.stderr[-2000:]}")
    if run.returncode == STOPPED: return None
    row = finished_row(clone, extra, read_sittings(clone.parent), run.stdout)
    (clone.parent / "sittings.csv").rename(clone.parent / "sittings.recorded.csv")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", type=Path, default=None, help="clone into this folder and keep it (default: a temporary folder); "
                    "a folder an earlier sitting used is resumed")
    args, extra = ap.parse_known_args(argv)
    if any(a == "--until" or a.startswith("--until=") for a in extra) and not args.keep:
        raise SystemExit("--until stops a sitting to be resumed later: give --keep a folder to resume in")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        row = time_reproduce(args.keep / "clone", extra)
    else:
        with tempfile.TemporaryDirectory() as tmp: row = time_reproduce(Path(tmp) / "clone", extra)
    if row is None:
        print(f"stopped before it finished; its time is kept in {args.keep / 'sittings.csv'}: run the same command again to resume")
        return STOPPED
    record(row)
    print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
