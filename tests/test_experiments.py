"""Tests for iaf_repro.experiments: presets, budgets, provenance, table assembly, a smoke run."""
import json
import time
from pathlib import Path

import pandas as pd
import pytest

from iaf_repro.experiments import (BUDGETS, CIFAR_RESULT_FIELDS, PAIRED_COLUMNS, PRESETS, RESULT_FIELDS, TABLES, TARGETS, build_table, get_budget,
                                   get_preset, get_table, paired_difference, published, ensure_run, read_result, result_path, run, run_name, table_markdown,
                                   write_table)

ROOT = Path(__file__).resolve().parents[1]
SHARED_TARGETS = ROOT.parent / "shared" / "reference" / "targets.csv"


@pytest.mark.skipif(not SHARED_TARGETS.exists(), reason="no shared reference folder")
def test_published_numbers_are_a_verbatim_copy_of_the_shared_reference():
    assert TARGETS.read_bytes() == SHARED_TARGETS.read_bytes()


def test_every_preset_has_published_numbers_where_a_source_exists():
    for name in TABLES["table1"].presets:
        p = PRESETS[name]
        numbers = published("table1", p.dataset, p.row)
        has_source = p.row.startswith(("diag", "iaf"))
        assert pd.notna(numbers["published_vlb"]) == has_source, name


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid presets: dynamic-diag"):
        get_preset("static-iaf-d16")
    with pytest.raises(ValueError, match="valid budgets: smoke, cpu, paper"):
        get_budget("fast")


FULL_RESULT = dict(vlb=-90.0, vlb_se=0.5, log_px=-88.0, log_px_se=0.4, gap=2.0, epochs=3, best_epoch=3, seed=0, is_samples=128,
                   eval_images=100, threads=1, train_seconds=1.0, budget="cpu", device="cpu", commit="abc", trained_commit="abc")


def test_bad_results_files_stop_the_table_and_leave_both_table_files_untouched(tmp_path):
    out = tmp_path / "tables"
    _fake_result(tmp_path, "static-diag", "cpu", -90.0)
    write_table("table1", tmp_path, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    path = tmp_path / "static-diag__cpu__s0.json"
    good = json.loads(path.read_text())
    for bad, says in [({}, "missing vlb"), (dict(good, vlb="abc"), "vlb = 'abc' is not a finite number"),
                      (dict(good, epochs=None), "epochs = None"), ([good], "a JSON list")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=rf"{path} is not a valid results file \(.*{says}.*delete the file"):
            write_table("table1", tmp_path, out)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_committed_results_files_pass_the_checks():
    runs = ROOT / "figures" / "tables" / "runs"
    files = sorted(runs.glob("*.json"))
    assert files
    for path in files: read_result(path, CIFAR_RESULT_FIELDS if path.name.startswith("cifar-") else RESULT_FIELDS)


def _fake_result(results_dir, preset, budget, vlb):
    p = PRESETS[preset]
    result = dict(run=run_name(preset, budget, 0), preset=preset, budget=budget, seed=0, mnist=p.dataset, row=p.row,
                  label=p.label, epochs=3, eval_images=100, is_samples=128, vlb=vlb, vlb_se=0.5, log_px=vlb + 2,
                  log_px_se=0.4, gap=2.0, best_epoch=3, threads=1, train_seconds=1.0, eval_seconds=1.0, device="cpu", commit="abc",
                  trained_commit="abc", dirty=False)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{run_name(preset, budget, 0)}.json").write_text(json.dumps(result))


def test_table_has_a_row_per_budget_run_and_keeps_the_datasets_apart(tmp_path):
    _fake_result(tmp_path, "static-iaf-d2-w320", "cpu", -95.0)
    _fake_result(tmp_path, "static-iaf-d2-w320", "paper", -84.0)
    _fake_result(tmp_path, "dynamic-diag", "cpu", -97.0)
    _fake_result(tmp_path, "static-diag", "smoke", -300.0)
    df = build_table("table1", tmp_path)
    assert len(df) == 15                                  # 14 presets, one of them run at two budgets
    iaf = df[(df.mnist == "static") & (df.model == "IAF depth 2 width 320")]
    assert iaf.budget.tolist() == ["cpu", "paper"] and iaf.vlb.tolist() == [-95.0, -84.0]
    assert iaf.published_source.unique().tolist() == ["replication-T1"]
    assert df.vlb.min() > -300, "smoke results never enter a committed table"
    assert df[(df.mnist == "dynamic") & (df.model == "Diagonal covariance")].published_source.item() == "paper-T1"
    md = table_markdown(df, "T")
    dynamic, static = md.split("### Statically binarized MNIST")
    assert "-97.00 ± 0.50" in dynamic and "-97.00" not in static and "-84.00 ± 0.50" in static


def test_table2_pairs_constant_with_learned_sigma(tmp_path):
    df = write_table("table2", tmp_path / "none", tmp_path)
    static = df[df.mnist == "static"].set_index("model")
    assert static.loc["IAF depth 2 width 320, constant σ", "published_vlb"] == -84.67
    assert static.loc["IAF depth 2 width 320", "published_vlb"] == -84.40
    assert (tmp_path / "table2.csv").exists() and "not run" in (tmp_path / "table2.md").read_text()


def test_smoke_run_writes_results_with_provenance(tmp_path):
    result = run("static-diag", "smoke", runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", progress=False)
    saved = json.loads((tmp_path / "results" / "static-diag__smoke__s0.json").read_text())
    assert saved["vlb"] == result["vlb"] and saved["commit"] == saved["trained_commit"] != "unknown"
    assert saved["train_seconds"] > 0 and saved["eval_seconds"] >= 0 and saved["best_epoch"] == 1
    per_image = pd.read_csv(tmp_path / "results" / "static-diag__smoke__s0.per_image.csv.gz")
    assert len(per_image) == BUDGETS["smoke"].eval_images and abs(per_image.vlb.mean() - saved["vlb"]) < 1e-3
    assert (tmp_path / "runs" / "static-diag__smoke__s0" / "provenance.json").exists()
    assert saved["eval_images"] == BUDGETS["smoke"].eval_images and saved["is_samples"] == BUDGETS["smoke"].is_samples
    metrics = pd.read_csv(tmp_path / "results" / "static-diag__smoke__s0.metrics.csv")
    assert list(metrics.epoch) == [1]


def test_a_run_that_fails_or_stops_before_its_first_epoch_leaves_nothing_behind(tmp_path, monkeypatch):
    from iaf_repro.data import DataError
    from iaf_repro.train import TrainingInterrupted
    runs = tmp_path / "runs"
    with monkeypatch.context() as m:
        m.setenv("IAF_REPRO_DATA", str(tmp_path / "empty")); (tmp_path / "empty").mkdir()
        with pytest.raises(DataError): run("static-diag", "smoke", runs_dir=runs, results_dir=tmp_path / "results", progress=False)
    assert not (runs / "static-diag__smoke__s0").exists()
    with pytest.raises(TrainingInterrupted, match="nothing was saved"):
        run("static-diag", "smoke", runs_dir=runs, results_dir=tmp_path / "results", progress=False, deadline=time.time() - 1)
    assert not (runs / "static-diag__smoke__s0").exists() and not (tmp_path / "results").exists()


def test_ensure_run_calls_the_given_runner_only_while_the_results_file_is_missing(tmp_path):
    "A stand-in runner (here for a CIFAR-10 preset) is called once, then its results are read back."
    calls = []
    def runner(preset, budget, seed, device, runs_dir, results_dir):
        calls.append((preset, budget, seed))
        path = result_path(results_dir, preset, budget, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result := dict(FULL_RESULT, run=run_name(preset, budget, seed))))
        return result
    first = ensure_run("cifar-simple-diag", "smoke", runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", runner=runner)
    again = ensure_run("cifar-simple-diag", "smoke", runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", runner=runner)
    assert calls == [("cifar-simple-diag", "smoke", 0)] and first == again


@pytest.mark.parametrize("table", list(TABLES))
def test_the_committed_tables_are_the_ones_the_committed_results_give(table, tmp_path):
    write_table(table, ROOT / "figures" / "tables" / "runs", tmp_path)
    for suffix in (".md", ".csv"):
        committed = (ROOT / "figures" / "tables" / f"{table}{suffix}").read_text()
        assert (tmp_path / f"{table}{suffix}").read_text() == committed, f"run `iaf-repro table {'cifar' if 'cifar10' in TABLES[table].datasets else table[-1]}` and commit {table}{suffix}"


def test_paired_difference_of_committed_runs_is_their_rows_difference_with_a_smaller_error():
    runs = ROOT / "figures" / "tables" / "runs"
    iaf, diag = "static-iaf-d2-w320__cpu__s0", "static-diag__cpu__s0"
    d = paired_difference(runs, iaf, diag)
    a, b = (read_result(runs / f"{r}.json") for r in (iaf, diag))
    for c in PAIRED_COLUMNS: assert d.loc[c, "mean"] == pytest.approx(a[c] - b[c], abs=1e-3)   # per-image files keep 4 decimals
    assert (d.n == a["eval_images"]).all()
    assert d.loc["vlb", "se"] < (a["vlb_se"] ** 2 + b["vlb_se"] ** 2) ** 0.5 / 3               # pairing removes the images' spread
    with pytest.raises(ValueError, match=r"score different test images \(2000 images of static vs 1000 images of cifar10\)"):
        paired_difference(runs, diag, "cifar-simple-diag__cpu__s0")
    with pytest.raises(FileNotFoundError, match="static-diag__cpu__s9.per_image.csv.gz"):
        paired_difference(runs, diag, "static-diag__cpu__s9")


def test_paired_difference_names_a_corrupt_results_file(tmp_path):
    runs = ROOT / "figures" / "tables" / "runs"
    for r in ("static-iaf-d2-w320__cpu__s0", "static-diag__cpu__s0"):
        for suffix in (".json", ".per_image.csv.gz"): (tmp_path / f"{r}{suffix}").write_bytes((runs / f"{r}{suffix}").read_bytes())
    (tmp_path / "static-diag__cpu__s0.json").write_text('{"mnist": "static", ')                 # half-written
    with pytest.raises(ValueError, match=r"static-diag__cpu__s0.json is not a valid results file"):
        paired_difference(tmp_path, "static-iaf-d2-w320__cpu__s0", "static-diag__cpu__s0")


def test_a_row_trained_across_sessions_names_every_commit(tmp_path):
    result = json.loads((ROOT / "figures" / "tables" / "runs" / "static-diag__cpu__s0.json").read_text())
    result.update(trained_commit="aaa", trained_commits=["aaa", "bbb", "ccc"], commit="ccc")
    (tmp_path / "static-diag__cpu__s0.json").write_text(json.dumps(result))
    table = build_table("table1", tmp_path)
    row = table.dropna(subset=["vlb"]).iloc[0]
    assert row.trained_commit == "aaa" and row.trained_commits == "aaa bbb ccc"
    markdown = get_table("table1").markdown(table, "t")
    assert "| aaa +2 / ccc |" in markdown and "N more commits" in markdown                     # and the note that says what +2 means
    del result["trained_commits"]                                      # a file from before sessions were kept: one commit
    (tmp_path / "static-diag__cpu__s0.json").write_text(json.dumps(result))
    markdown = get_table("table1").markdown(build_table("table1", tmp_path), "t")
    assert "| aaa / ccc |" in markdown and "N more commits" not in markdown


def test_every_committed_iaf_result_names_the_step_its_run_trained():
    "A row marked gated or not is read from its results file: every IAF run's file must say which step it trained."
    import json
    from iaf_repro.experiments import FIGURE_PRESETS
    from iaf_repro.cifar_experiments import CIFAR_PRESETS
    from iaf_repro.vae import VAEConfig
    presets = {**PRESETS, **FIGURE_PRESETS, **CIFAR_PRESETS}
    has_iaf = lambda p: isinstance(p.model, VAEConfig) and p.model.posterior == "iaf"
    iaf = [json.loads(p.read_text()) for p in (ROOT / "figures" / "tables" / "runs").glob("*.json")]
    iaf = [r for r in iaf if r.get("preset") in presets and has_iaf(presets[r["preset"]])]
    assert iaf and all(r.get("iaf_step") in ("affine", "gated") for r in iaf), [r["run"] for r in iaf if "iaf_step" not in r]
