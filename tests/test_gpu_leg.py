"""tools/gpu_leg.py: run folders go to a lent GPU and come back whole, checked, with nothing local lost."""
import fcntl
import importlib.util
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from iaf_repro.experiments import run

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_leg", ROOT / "tools" / "gpu_leg.py")
leg = importlib.util.module_from_spec(spec); spec.loader.exec_module(leg)


def fake_run(folder: Path, epochs: int) -> Path:
    "A run folder with a loadable checkpoint and `epochs` rows of metrics."
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": torch.tensor(epochs)}, folder / "checkpoint.pt")
    pd.DataFrame({"epoch": range(1, epochs + 1), "valid_vlb": [-100.0 + e for e in range(epochs)]}).to_csv(folder / "metrics.csv", index=False)
    return folder


def test_parts_round_trip_and_refuse_what_cannot_come_back(tmp_path):
    stage = tmp_path / "stage"
    fake_run(stage / "runs" / "a__paper__s0", 3); (stage / "leg.json").write_text(json.dumps({"runs": ["a__paper__s0"]}))
    (stage / "runs" / "a__paper__s0" / "big.bin").write_bytes(os.urandom(50_000))
    parts = leg.write_parts(stage, ["leg.json", "runs"], tmp_path / "out", part_size=20_000)
    assert len(parts) >= 3 and all(p.stat().st_size <= 20_000 for p in parts)
    back = tmp_path / "back"; back.mkdir()
    leg.read_parts(tmp_path / "out", back)
    assert (back / "runs" / "a__paper__s0" / "big.bin").read_bytes() == (stage / "runs" / "a__paper__s0" / "big.bin").read_bytes()
    with pytest.raises(SystemExit, match="does not come back in 8 parts"):
        leg.write_parts(stage, ["runs"], tmp_path / "out2", part_size=5_000)


def test_pack_refuses_a_run_being_trained_or_without_checkpoint(tmp_path):
    busy = fake_run(tmp_path / "runs" / "a__paper__s0", 2)
    fd = os.open(busy, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)          # what `train` holds while it trains
    try:
        with pytest.raises(SystemExit, match="is being trained; stop its campaign first"): leg.check_idle(busy)
    finally: os.close(fd)
    (tmp_path / "runs" / "b__paper__s0").mkdir()
    with pytest.raises(SystemExit, match="holds no checkpoint.pt: finish or remove"): leg.check_idle(tmp_path / "runs" / "b__paper__s0")
    with pytest.raises(SystemExit, match="is not a run name"): leg.parse_run("static-diag")
    with pytest.raises(SystemExit, match="does not fit a leg"): leg.pack(["cifar-simple-diag__paper__s0"], tmp_path / "runs", tmp_path)


def test_unpack_refuses_a_local_run_that_trained_on_and_keeps_the_old_folder_otherwise(tmp_path):
    runs, stage = tmp_path / "runs", tmp_path / "stage"
    fake_run(runs / "a__paper__s0", 2)
    fake_run(stage / "runs" / "a__paper__s0", 5)
    (stage / "leg.json").write_text(json.dumps({"runs": ["a__paper__s0"], "device": "cuda"}))
    leg.write_parts(stage, ["leg.json", "runs"], tmp_path / "files")
    diverged = fake_run(tmp_path / "other" / "a__paper__s0", 3)
    pd.DataFrame({"epoch": [1, 2, 3], "valid_vlb": [0.0, 0.0, 0.0]}).to_csv(diverged / "metrics.csv", index=False)
    with pytest.raises(SystemExit, match="trained on after it was packed"):
        leg.unpack(tmp_path / "files", tmp_path / "other", tmp_path / "results")
    assert len(pd.read_csv(diverged / "metrics.csv")) == 3                        # untouched
    leg.unpack(tmp_path / "files", runs, tmp_path / "results")
    assert len(pd.read_csv(runs / "a__paper__s0" / "metrics.csv")) == 5
    kept, = (tmp_path / "superseded").iterdir()
    assert kept.name.startswith("a__paper__s0.before-cuda-") and len(pd.read_csv(kept / "metrics.csv")) == 2


def test_a_leg_rehearsed_on_the_cpu_end_to_end(tmp_path, monkeypatch):
    "pack a real (smoke) run, train the leg on the CPU as the GPU would, unpack it: results come back, the local run is kept."
    if not (Path(os.environ.get("IAF_REPRO_DATA", "")) / "binarized_mnist.npz").exists(): pytest.skip("needs IAF_REPRO_DATA")
    runs = tmp_path / "runs"; monkeypatch.setenv("IAF_REPRO_RUNS", str(runs))
    run("static-diag", "smoke", results_dir=tmp_path / "local-results", progress=False)
    name = "static-diag__smoke__s0"
    plan = leg.pack([name], runs, Path(os.environ["IAF_REPRO_DATA"]), stage=tmp_path / "stage", wheels=False)
    assert plan["epochs"] == {name: 1} and plan["carry_mib"] < 64
    assert leg.train("1m", "cpu", tmp_path / "out", stage=tmp_path / "stage", threads=1) == 0
    brought = leg.unpack(tmp_path / "out", runs, tmp_path / "results")
    assert brought["epochs_after"] == {name: 1} and brought["device"] == "cpu"
    assert json.loads((tmp_path / "results" / f"{name}.json").read_text())["run"] == name
    assert (runs / name / "checkpoint.pt").exists() and any((tmp_path / "superseded").iterdir())


def test_set_aside_leaves_the_committed_weights_behind_and_restore_brings_them_back(tmp_path):
    "The device call carries the working tree, 64 MiB in all: the released weights and saved fits stay here, committed, and come back."
    import subprocess
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    git("init", "-q"); git("config", "user.email", "t@t"); git("config", "user.name", "t")
    files = {"weights/a__cpu__s0.pt": b"w" * 1000, "figures/fits/four.pt": b"f" * 500, "nbs/x.ipynb": b"{}", "weights/README.md": b"r"}
    for name, data in files.items(): (tmp_path / name).parent.mkdir(parents=True, exist_ok=True); (tmp_path / name).write_bytes(data)
    git("add", "-A"); git("commit", "-qm", "c")
    assert sorted(p.name for p in leg.set_aside_files(tmp_path)) == ["a__cpu__s0.pt", "four.pt"]
    assert leg.checkout_bytes(tmp_path) == 3                                        # the notebook and the README only
    (tmp_path / "figures/fits/four.pt").write_bytes(b"changed")
    with pytest.raises(SystemExit, match="uncommitted changes"): leg.set_aside(tmp_path)
    assert (tmp_path / "weights/a__cpu__s0.pt").exists()                           # refused: nothing removed
    git("checkout", "--", "figures/fits/four.pt")
    assert leg.set_aside(tmp_path) == 1500
    assert not (tmp_path / "weights/a__cpu__s0.pt").exists() and (tmp_path / "nbs/x.ipynb").exists()
    (tmp_path / "weights").mkdir(exist_ok=True); (tmp_path / "weights/a__cpu__s0.pt").write_bytes(b"local")   # present: kept as it is
    leg.restore(tmp_path)
    assert (tmp_path / "figures/fits/four.pt").read_bytes() == files["figures/fits/four.pt"]
    assert (tmp_path / "weights/a__cpu__s0.pt").read_bytes() == b"local"
