"""Continue campaign runs on a lent GPU for one call of the `device` tool, and bring them back (issue 13).

A call of the device tool carries the checkout (64 MiB in all, ignored folders named in `carry` included) and
brings back at most 8 files of 16 MiB from $OUT. A paper-budget run folder is 13-35 MB, so a leg takes the
folders of a few runs, trains them on the GPU until a deadline, and returns them as one tar in 15 MiB parts.
The runs' checkpoints move between kinds of device as chapter 07 describes ("Moving a run to another kind of
device"): weights, optimizer and schedule carry over, the random streams restart from the seed and the epoch.

    # here: stop the local campaign, then stage the runs, the data and the wheels the GPU machine lacks
    python tools/gpu_leg.py pack static-diag__paper__s0 static-iaf-d2-w320__paper__s0
    python tools/gpu_leg.py set-aside     # the committed weights and saved fits stay here: the call would not fit with them
    # here, as a rehearsal on the CPU (a minute), then on the GPU through the device tool, carry [".device-data"]:
    python3 tools/gpu_leg.py train --until 1m --device cpu --out /tmp/leg-out
    python3 tools/gpu_leg.py train --until 8m --device cuda --out $OUT
    # here, with the folder the device tool put the files in:
    python tools/gpu_leg.py unpack FILES_AT

`unpack` brings the set-aside files back from git, and checks every run it brings back against the local folder (the checkpoint loads, the epochs only grew, the
local metrics are the start of the new ones), keeps the local folder under `<runs>/../superseded/`, and never
deletes run state.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / ".device-data"                   # ignored by git; the device tool's `carry` names it
CARRY_LIMIT = 64 * 2**20                        # the device tool: what travels, checkout and carried folders together
PART_SIZE = 15 * 2**20                          # the device tool: files back are at most 16 MiB each ...
MAX_PARTS = 8                                   # ... and at most 8 of them
WHEELS = ("fastcore",)
SET_ASIDE = ("weights/*.pt", "figures/fits/*.pt")  # committed, tens of MB, read only when drawing: left behind by a leg
CIFAR_MIB = 161                                 # cifar10_train.npz and cifar10_test.npz                          # iaf_repro's requirements the GPU machine's image lacks


def parse_run(name: str) -> tuple[str, str, int]:
    "`<preset>__<budget>__s<seed>` -> (preset, budget, seed). Chapter 09b parses run names too, but `train` runs this on the device before the package's requirements are installed there, so it imports nothing from the package."
    parts = name.split("__")
    if len(parts) != 3 or not parts[2].startswith("s") or not parts[2][1:].isdigit():
        raise SystemExit(f"{name!r} is not a run name (<preset>__<budget>__s<seed>, as `iaf-repro status` lists them)")
    return parts[0], parts[1], int(parts[2][1:])


def check_idle(folder: Path) -> None:
    "Refuse a run folder that a trainer holds (the lock `train` takes), or that has no checkpoint to carry (a run not begun has no folder)."
    if not (folder / "checkpoint.pt").exists():
        raise SystemExit(f"{folder} holds no checkpoint.pt: finish or remove what is there before a leg carries it")
    from iaf_repro.train import being_trained                                   # packing runs here, where the package is installed
    if being_trained(folder): raise SystemExit(f"{folder} is being trained; stop its campaign first (SIGTERM), then pack")


def set_aside_files(root: Path = ROOT) -> list[Path]:
    "The committed files a leg leaves out of the working tree (`SET_ASIDE`: released weights, saved fits), which training never reads."
    files = subprocess.run(["git", "ls-files", "-z", "--", *SET_ASIDE], cwd=root, capture_output=True, check=True).stdout
    return [root / f for f in files.decode().split("\0") if f]


def checkout_bytes(root: Path = ROOT) -> int:
    "Bytes of what the device tool sends besides the carried folders: tracked and untracked-not-ignored files, less those set aside."
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True, check=True).stdout
    aside = set(set_aside_files(root))
    return sum(p.stat().st_size for f in files.decode().split("\0") if f and (p := root / f).is_file() and p not in aside)


def set_aside(root: Path = ROOT) -> int:
    "Remove the `SET_ASIDE` files from the working tree before a device call (each is committed: `restore` brings it back); the bytes freed."
    files = [f for f in set_aside_files(root) if f.exists()]
    changed = subprocess.run(["git", "status", "--porcelain", "--", *map(str, files)], cwd=root, capture_output=True, text=True,
                             check=True).stdout if files else ""
    if changed.strip(): raise SystemExit(f"uncommitted changes in files a leg sets aside:\n{changed}commit them first, then set-aside")
    freed = sum(f.stat().st_size for f in files)
    for f in files: f.unlink()
    return freed


def restore(root: Path = ROOT) -> None:
    "Bring the set-aside files that are missing back from git; a file present is left as it is, changes and all."
    if missing := [str(f.relative_to(root)) for f in set_aside_files(root) if not f.exists()]:
        subprocess.run(["git", "checkout", "--", *missing], cwd=root, check=True)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def pack(runs: list[str], source: Path, data: Path, stage: Path = STAGE, wheels: bool = True) -> dict:
    "Stage run folders (a run not begun starts there), the MNIST data and the missing wheels in `stage`; refuse if the call would exceed the carry limit."
    for name in runs:
        if parse_run(name)[0].startswith("cifar"): raise SystemExit(f"{name}: CIFAR-10 data ({CIFAR_MIB} MiB) does not fit a leg")
        if (source / name).exists(): check_idle(source / name)
    if stage.exists(): shutil.rmtree(stage)                                    # our own staging copy, not run state
    (stage / "data").mkdir(parents=True); (stage / "runs").mkdir()
    for name in runs:
        if (source / name).exists(): shutil.copytree(source / name, stage / "runs" / name)
    shutil.copy2(data / "binarized_mnist.npz", stage / "data")
    if any(parse_run(name)[0].startswith(("dynamic-", "thresholded-")) for name in runs):   # grey MNIST, binarized as it trains
        shutil.copytree(data / "mnist", stage / "data" / "mnist")
    if wheels:
        pins = [f"{w}=={importlib.metadata.version(w)}" for w in WHEELS]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", stage / "wheels", *pins], check=True)
    plan = dict(runs=runs, created=time.strftime("%Y-%m-%d %H:%M:%S"),
                epochs={name: epoch_of(stage / "runs" / name) for name in runs})
    (stage / "leg.json").write_text(json.dumps(plan, indent=1))
    total = checkout_bytes() + folder_bytes(stage)
    if total > CARRY_LIMIT:
        raise SystemExit(f"the call would carry {total / 2**20:.1f} MiB, over the device tool's {CARRY_LIMIT / 2**20:.0f} MiB: pack fewer runs")
    return dict(plan, carry_mib=round(total / 2**20, 1))


def epoch_of(folder: Path) -> int:
    "The last finished epoch of a run folder, from its metrics.csv (0 when it has none)."
    path = folder / "metrics.csv"
    return max(len(path.read_text().strip().splitlines()) - 1, 0) if path.exists() else 0


def train(until: str, device: str, out: Path, stage: Path = STAGE, threads: int = 4) -> int:
    "On the device: train the staged runs with `iaf-repro campaign` until `until`, then tar them into `out` in parts."
    plan = json.loads((stage / "leg.json").read_text())
    groups = {parse_run(name)[1:] for name in plan["runs"]}
    if len(groups) != 1: raise SystemExit(f"a leg trains runs of one budget and seed; these have {sorted(groups)}")
    (budget, seed), = groups
    env = dict(os.environ, IAF_REPRO_DATA=str(stage / "data"), IAF_REPRO_RUNS=str(stage / "runs"), PYTHONUNBUFFERED="1")
    if (stage / "wheels").exists():
        site = Path(tempfile.mkdtemp(prefix="leg-site-"))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", site,
                        *sorted((stage / "wheels").glob("*.whl"))], check=True)
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), env.get("PYTHONPATH", "")])
    presets = [parse_run(name)[0] for name in plan["runs"]]
    start = time.time()
    status = subprocess.run([sys.executable, "-m", "iaf_repro.cli", "campaign", *presets, "--budget", budget, "--seed", str(seed),
                             "--parallel", str(len(presets)), "--threads", str(threads), "--device", device, "--until", until,
                             "--runs", str(stage / "runs"), "--results", str(stage / "results")], env=env, cwd=ROOT).returncode
    plan.update(device=device, trained_seconds=round(time.time() - start), campaign_status=status,
                epochs_after={name: epoch_of(stage / "runs" / name) for name in plan["runs"]})
    (stage / "leg.json").write_text(json.dumps(plan, indent=1))
    write_parts(stage, ["leg.json", "runs", *(["results"] if (stage / "results").exists() else [])], out)
    print(json.dumps({k: plan[k] for k in ("epochs", "epochs_after", "trained_seconds", "campaign_status")}))
    return status


def write_parts(stage: Path, members: list[str], out: Path, part_size: int = PART_SIZE) -> list[Path]:
    "One tar of `members` of `stage`, cut into `out/leg.tar.partNN` files of at most `part_size` bytes."
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "leg.tar"
        with tarfile.open(tar, "w") as t:
            for m in members: t.add(stage / m, arcname=m)
        n = -(-tar.stat().st_size // part_size)
        if n > MAX_PARTS: raise SystemExit(f"{tar.stat().st_size / 2**20:.1f} MiB does not come back in {MAX_PARTS} parts: carry fewer runs")
        parts = []
        with open(tar, "rb") as f:
            for i in range(n):
                parts.append(out / f"leg.tar.part{i:02d}"); parts[-1].write_bytes(f.read(part_size))
    return parts


def read_parts(folder: Path, into: Path) -> None:
    "Join `folder/leg.tar.partNN` and extract it into `into`, refusing members outside it."
    parts = sorted(Path(folder).glob("leg.tar.part*"))
    if not parts: raise SystemExit(f"no leg.tar.partNN files in {folder}")
    tar = into / "leg.tar"
    with open(tar, "wb") as f:
        for p in parts: f.write(p.read_bytes())
    with tarfile.open(tar) as t: t.extractall(into, filter="data")          # "data": no absolute paths, links or `..`


def check_continuation(local: Path, new: Path) -> None:
    "Refuse `new` unless its checkpoint loads, it has at least the local epochs, and the local metrics are its first rows."
    import pandas as pd
    import torch
    try: torch.load(new / "checkpoint.pt", map_location="cpu", weights_only=True)
    except Exception as e: raise SystemExit(f"{new / 'checkpoint.pt'} does not load ({e}); the local run is untouched") from None
    if not local.exists(): return
    old, now = pd.read_csv(local / "metrics.csv"), pd.read_csv(new / "metrics.csv")
    if len(now) < len(old) or not now.iloc[: len(old)].equals(old):
        raise SystemExit(f"{local} trained on after it was packed (or is another run): its {len(old)} epochs are not the start of the "
                         f"{len(now)} brought back; nothing was changed")


def unpack(files: Path, runs: Path, results: Path, superseded: Path | None = None) -> dict:
    "Check the runs brought back and put them in `runs` (the local folders kept in `superseded`), their results in `results`."
    superseded = superseded or runs.parent / "superseded"
    with tempfile.TemporaryDirectory(dir=runs.parent) as tmp:
        read_parts(files, Path(tmp))
        plan = json.loads((Path(tmp) / "leg.json").read_text())
        brought = [name for name in plan["runs"] if (Path(tmp) / "runs" / name / "checkpoint.pt").exists()]
        for name in sorted(set(plan["runs"]) - set(brought)): print(f"{name}: the leg brought back no checkpoint; left as it was")
        for name in brought: check_continuation(runs / name, Path(tmp) / "runs" / name)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for name in brought:
            if (runs / name).exists():
                superseded.mkdir(parents=True, exist_ok=True)
                (runs / name).rename(superseded / f"{name}.before-{plan.get('device', 'leg')}-{stamp}")
            (Path(tmp) / "runs" / name).rename(runs / name)
            log = Path(tmp) / "runs" / f"{name}.log"                            # the leg's training log, after the local one
            if log.exists():
                with open(runs / f"{name}.log", "a") as f: f.write(f"\n--- {plan.get('device', 'leg')} leg, unpacked {stamp} ---\n{log.read_text()}")
        if (Path(tmp) / "results").exists():
            results.mkdir(parents=True, exist_ok=True)
            for f in (Path(tmp) / "results").iterdir(): shutil.copy2(f, results / f.name)
    restore()                                                                   # the released weights and saved fits, back from git
    return plan


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="stage run folders, data and wheels in .device-data (here)")
    p.add_argument("runs", nargs="+", help="run names, <preset>__<budget>__s<seed>")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("IAF_REPRO_DATA", ROOT.parent / "shared" / "data")))
    t = sub.add_parser("train", help="train the staged runs until a deadline and write leg.tar parts (on the device)")
    t.add_argument("--until", required=True, help="how long to train, e.g. 8m")
    t.add_argument("--device", default="cuda", help="cuda on the device; cpu for the rehearsal here")
    t.add_argument("--out", type=Path, required=True, help="folder for the leg.tar parts ($OUT on the device)")
    t.add_argument("--threads", type=int, default=4, help="CPU threads of each run (default: 4)")
    sub.add_parser("set-aside", help="remove the committed weights and saved fits from the working tree before the device call (here)")
    sub.add_parser("restore", help="bring them back from git (unpack does it too)")
    u = sub.add_parser("unpack", help="check the runs brought back and put them in the runs folder (here)")
    u.add_argument("files", type=Path, help="the folder holding leg.tar.partNN (the device tool's files_at)")
    u.add_argument("--results", type=Path, default=ROOT / "figures" / "tables" / "runs")
    args = ap.parse_args(argv)
    if args.command == "train": return train(args.until, args.device, args.out, threads=args.threads)   # no iaf_repro import here
    if args.command == "set-aside": print(f"set aside {set_aside() / 2**20:.1f} MiB; `python tools/gpu_leg.py restore` brings them back"); return 0
    if args.command == "restore": restore(); return 0
    from iaf_repro.experiments import resolve_runs_dir                          # here (pack, unpack) the package is installed
    if args.command == "pack": print(json.dumps(pack(args.runs, resolve_runs_dir(), args.data), indent=1))
    else: print(json.dumps(unpack(args.files, resolve_runs_dir(), args.results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
