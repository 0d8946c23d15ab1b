"""CIFAR-10 presets, budgets, runs and tables (chapters 09 and 24), on synthetic pixels."""
import json
import time

import pandas as pd
import pytest
import torch

from iaf_repro.cifar import CIFAR10
from iaf_repro.cifar_experiments import _curves_title
from iaf_repro.experiments import (CIFAR_BUDGETS, CIFAR_PRESETS, TABLES, TARGETS, build_table, cifar_table_markdown, get_budget, get_preset,
                                   initial_model, result_path, run)
from iaf_repro.train import TrainingInterrupted, training_finished


def _data():
    g = torch.Generator().manual_seed(0)
    px = lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return CIFAR10("synthetic", px(40), px(8), px(8))


@pytest.mark.parametrize("preset", ["cifar-simple-diag", "cifar-resnet-d4-bi-iaf1h"])
def test_smoke_run_writes_results_with_provenance(preset, tmp_path):
    r = run(preset, "smoke", runs_dir=tmp_path / "runs", results_dir=tmp_path / "res", progress=False, data=_data())
    saved = json.loads((tmp_path / "res" / f"{preset}__smoke__s0.json").read_text())
    for key in ("bits_per_dim", "bits_per_dim_vlb", "epochs", "device", "seed", "is_samples", "commit", "trained_commit", "eval_seconds",
                "world", "global_batch"):
        assert key in saved
    assert (saved["world"], saved["batch_size"], saved["global_batch"]) == (1, 8, 8)
    assert saved["bits_per_dim"] == pytest.approx(-r["log_px"] / (3072 * 0.6931471805599453))
    assert saved["bits_per_dim"] <= saved["bits_per_dim_vlb"] + 1e-9         # IS log p(x) >= VLB on the same samples
    assert (tmp_path / "res" / f"{preset}__smoke__s0.per_image.csv.gz").exists()


def test_a_run_stopped_by_its_deadline_writes_no_results_and_resumes(tmp_path):
    "CIFAR-10 runs get MNIST's deadline, resumption and record of every training session."
    where = dict(runs_dir=tmp_path / "runs", results_dir=tmp_path / "res", progress=False, data=_data())
    with pytest.raises(TrainingInterrupted, match="deadline"):
        run("cifar-simple-diag", "smoke", deadline=time.time() - 1, **where)
    assert not result_path(tmp_path / "res", "cifar-simple-diag", "smoke", 0).exists()
    assert not (tmp_path / "runs" / "cifar-simple-diag__smoke__s0").exists()            # stopped before its first epoch: nothing left
    saved = run("cifar-simple-diag", "smoke", **where)
    assert saved["trained_commits"] == [saved["commit"]] and saved["trained_devices"] == [saved["device"]]
    sessions = json.loads((tmp_path / "runs" / "cifar-simple-diag__smoke__s0" / "provenance.json").read_text())["sessions"]
    assert [s["resumed_from_epoch"] for s in sessions] == [0]


def test_the_default_runs_folder_is_the_shared_one(tmp_path, monkeypatch):
    monkeypatch.setenv("IAF_REPRO_RUNS", str(tmp_path / "shared-runs"))
    run("cifar-simple-diag", "smoke", results_dir=tmp_path / "res", progress=False, data=_data())
    assert training_finished(tmp_path / "shared-runs" / "cifar-simple-diag__smoke__s0")


def test_tables_say_not_yet_run_and_carry_published_numbers(tmp_path):
    df = build_table("cifar-paper-t4", tmp_path)
    assert set(df.status) == {"not yet run at this budget"} and len(df) == 2 * 8
    row = df[df.preset == "cifar-resnet-d8-bi-iaf2h"].iloc[0]
    t = pd.read_csv(TARGETS)
    assert row.published_bits_per_dim == t[(t.table == "paper-T4") & (t.row == "d8-bi-iaf2h")].value.iloc[0]
    assert "not yet run at this budget" in cifar_table_markdown(df, "T4")


def test_a_run_enters_its_table(tmp_path):
    run("cifar-simple-diag", "smoke", runs_dir=tmp_path / "runs", results_dir=tmp_path, progress=False, data=_data())
    df = build_table("cifar-replication-t3", tmp_path, budgets=("smoke",))
    ran = df[df.status == "ran"]
    assert list(ran.preset) == ["cifar-simple-diag"] and ran.bits_per_dim.notna().all()


def test_every_table_cell_has_a_preset_and_names_are_checked():
    cifar_tables = {name: t for name, t in TABLES.items() if t.datasets == {"cifar10"}}
    assert {n for t in cifar_tables.values() for n in t.presets} == set(CIFAR_PRESETS) and all(t.presets for t in cifar_tables.values())
    assert set(CIFAR_BUDGETS) == {"smoke", "cpu", "paper"}
    with pytest.raises(ValueError, match="valid presets"): get_preset("cifar-nope")
    with pytest.raises(ValueError, match="valid budgets"): get_budget("huge", "cifar10")
    with pytest.raises(ValueError, match="valid tables"): build_table("table9")


def test_paired_difference_of_two_runs(tmp_path):
    from iaf_repro.cifar_experiments import paired_bits_per_dim
    for preset in ("cifar-simple-diag", "cifar-simple-iaf-d2-w320"):
        run(preset, "smoke", runs_dir=tmp_path / "runs", results_dir=tmp_path, progress=False, data=_data())
    d = paired_bits_per_dim("cifar-simple-iaf-d2-w320", "cifar-simple-diag", "smoke", tmp_path)
    a, b = (pd.read_csv(tmp_path / f"{n}__smoke__s0.per_image.csv.gz").log_px for n in ("cifar-simple-iaf-d2-w320", "cifar-simple-diag"))
    assert d["n"] == 4 and d["mean"] == pytest.approx(-(a - b).mean() / (3072 * 0.6931471805599453))
    same = paired_bits_per_dim("cifar-simple-diag", "cifar-simple-diag", "smoke", tmp_path)
    assert same["mean"] == 0 and same["se"] == 0


def test_every_rank_builds_the_same_initial_model():
    "The data-dependent init uses the same first images on every rank (and the single-process run's), not the rank's share."
    data, preset = _data(), get_preset("cifar-simple-diag")
    states = [initial_model(preset, d, 8, seed=0).state_dict() for d in (data, data.shard(0, 2), data.shard(1, 2))]
    assert all(torch.equal(s[k], states[0][k]) for s in states[1:] for k in s)
    other_seed = initial_model(preset, data, 8, seed=1).state_dict()
    assert not all(torch.equal(other_seed[k], states[0][k]) for k in other_seed)


def test_the_budget_batch_is_per_process(tmp_path):
    "Rank 0 of 2 at the smoke budget (8 images per process): global batches of 16, so 32 training images make 2 steps an epoch."
    r = run("cifar-simple-diag", "smoke", runs_dir=tmp_path / "runs", results_dir=tmp_path, progress=False, data=_data(), rank=0, world=2)
    assert (r["world"], r["batch_size"], r["global_batch"]) == (2, 8, 16)
    assert pd.read_csv(tmp_path / "cifar-simple-diag__smoke__s0.metrics.csv").steps.tolist() == [32 // 16]


def test_data_parallel_runs_are_for_cifar(tmp_path):
    with pytest.raises(ValueError, match="is for CIFAR-10 presets"):
        run("static-diag", "smoke", runs_dir=tmp_path, results_dir=tmp_path, progress=False, world=2)


def test_curves_title_names_the_free_bits_term():
    assert "the two terms of the bound" in _curves_title(["cifar-simple-diag"], "cpu")
    title = _curves_title(["cifar-simple-diag", "cifar-resnet-d4-bi-iaf1h"], "cpu")
    assert "free-bits term" in title and "terms of the bound" not in title
