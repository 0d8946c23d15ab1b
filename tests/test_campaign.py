"""Tests for the runs folder, per-session provenance, `campaign`, `status` and their commands (chapters 09, 09b, 99)."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from iaf_repro.campaign import STATUS_COLUMNS, campaign, parse_duration, status, write_campaign_status
from iaf_repro.cli import main
from iaf_repro.experiments import ensure_run, read_result, resolve_runs_dir, result_path, run, run_name
from iaf_repro.train import TrainingInterrupted, load_checkpoint, save_checkpoint, training_finished


def test_the_runs_folder_comes_from_the_environment_else_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IAF_REPRO_RUNS", str(tmp_path / "elsewhere"))
    assert resolve_runs_dir() == tmp_path / "elsewhere" and resolve_runs_dir(tmp_path) == tmp_path
    monkeypatch.delenv("IAF_REPRO_RUNS")
    assert resolve_runs_dir() == Path.home() / ".cache" / "iaf_repro" / "runs"


def test_run_trains_in_the_runs_folder_of_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("IAF_REPRO_RUNS", str(tmp_path / "runs"))
    run("static-diag", "smoke", results_dir=tmp_path / "results", progress=False)
    assert training_finished(tmp_path / "runs" / "static-diag__smoke__s0")


def test_a_stopped_run_writes_no_results_and_every_session_is_recorded(tmp_path):
    where = dict(runs_dir=tmp_path / "runs", results_dir=tmp_path / "results")
    run_dir = tmp_path / "runs" / "static-diag__smoke__s0"
    run_dir.mkdir(parents=True)
    (run_dir / "provenance.json").write_text(json.dumps({"commit": "0ld0ld", "dirty": False, "device": "old cpu", "threads": 2,
                                                         "date": "2025-01-01 00:00:00", "torch": "2.0"}))   # before sessions were kept
    with pytest.raises(TrainingInterrupted, match="deadline"):
        run("static-diag", "smoke", progress=False, deadline=time.time() - 1, **where)
    assert not result_path(tmp_path / "results", "static-diag", "smoke", 0).exists()
    results = run("static-diag", "smoke", progress=False, **where)
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["commit"] == "0ld0ld" and provenance["torch"] == "2.0"                    # the old fields, kept
    assert [s["commit"] for s in provenance["sessions"]] == ["0ld0ld", results["commit"], results["commit"]]
    assert results["trained_commit"] == "0ld0ld" and results["trained_commits"] == ["0ld0ld", results["commit"]]
    assert results["trained_devices"] == ["old cpu", results["device"]]
    run("static-diag", "smoke", progress=False, **where)                                         # evaluated again, not trained:
    assert len(json.loads((run_dir / "provenance.json").read_text())["sessions"]) == 3             # no session added


def test_weights_of_an_unfinished_run_are_never_used(tmp_path):
    "A results file beside an unfinished run of the same name (retraining began) makes `ensure_run(weights=True)` train."
    where = dict(runs_dir=tmp_path / "runs", results_dir=tmp_path / "results")
    run("static-diag", "smoke", progress=False, **where)
    path = tmp_path / "runs" / "static-diag__smoke__s0" / "checkpoint.pt"
    state = load_checkpoint(path)
    state["config"]["epochs"] = 3                                                                # epoch 1 of 3: unfinished
    save_checkpoint(state, path)
    calls = []
    ensure_run("static-diag", "smoke", **where, weights=True, runner=lambda *a, **k: calls.append(a) or {})
    ensure_run("static-diag", "smoke", **where, runner=lambda *a, **k: calls.append(a) or {})   # results alone: enough
    assert calls == [("static-diag", "smoke", 0)]


def test_status_reports_every_folder_and_survives_broken_ones(tmp_path):
    assert list(status(tmp_path / "missing").columns) == STATUS_COLUMNS and len(status(tmp_path)) == 0
    run("static-diag", "smoke", runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", progress=False)
    broken = tmp_path / "runs" / "static-diag__cpu__s0"
    broken.mkdir()
    (broken / "checkpoint.pt").write_bytes(b"PK\x03\x04 half a zip")
    (broken / "metrics.csv").write_text("epoch,valid_vlb\n1,")
    metrics = tmp_path / "runs" / "static-diag__smoke__s0" / "metrics.csv"
    pd.read_csv(metrics).assign(grad_norm=3.0, kl_per_unit="[1, 2]").to_csv(metrics, index=False)   # diagnostics columns
    (tmp_path / "runs" / "static-diag__smoke__s0.log").write_text("a log beside its folder\n")
    table = write_campaign_status(tmp_path / "runs", tmp_path / "results", tmp_path / "figures").set_index("run")
    assert list(table.index) == ["static-diag__cpu__s0", "static-diag__smoke__s0"]
    assert "unreadable checkpoint" in table.loc["static-diag__cpu__s0", "problem"]
    good = table.loc["static-diag__smoke__s0"]
    assert good.finished and good.results and good.epoch == 1 and good.epochs_left_max == 0 and good.problem == ""
    saved = pd.read_csv(tmp_path / "figures" / "tables" / "campaign.csv")
    assert {"date", "commit", "dirty", "device", "threads", "host_cpu"} <= set(saved.columns) and len(saved) == 2
    assert (tmp_path / "figures" / "campaign_progress.png").exists()


def test_sigterm_to_a_campaign_stops_its_children_and_it_returns(tmp_path):
    "A `cpu`-budget run takes minutes an epoch; a SIGTERM a few seconds in stops it, and the campaign reports it stopped."
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(8, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    start = time.time()
    try:
        outcomes = campaign(["static-diag", "static-iaf-d2-w320"], "cpu", parallel=1, runs_dir=tmp_path / "runs",
                            results_dir=tmp_path / "results", poll=0.2)
    finally:
        timer.cancel()
    assert time.time() - start < 120 and signal.getsignal(signal.SIGTERM) is before
    assert outcomes.outcome.tolist() == ["stopped", "not started"]
    assert not result_path(tmp_path / "results", "static-diag", "cpu", 0).exists()
    assert (tmp_path / "runs" / "static-diag__cpu__s0.log").exists()


def test_the_campaign_and_status_commands(tmp_path, capsys):
    where = ["--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    assert main(["campaign", "static-diag", "--budget", "smoke", "--parallel", "1", *where]) == 0
    assert "finished" in capsys.readouterr().out
    assert read_result(result_path(tmp_path / "results", "static-diag", "smoke", 0))["run"] == run_name("static-diag", "smoke", 0)
    assert main(["status", *where, "--write", "--out", str(tmp_path / "figures")]) == 0
    assert "static-diag__smoke__s0" in capsys.readouterr().out
    assert (tmp_path / "figures" / "tables" / "campaign.csv").exists()
    fit = pd.read_csv(tmp_path / "figures" / "tables" / "campaign" / "static-diag__smoke__s0.fit.csv")   # the bound on training images
    assert fit.weights.tolist() == ["best", "last"] and (fit.train_images == 10_000).all()
    assert main(["status", *where, "--budget", "paper"]) == 0 and "no runs yet" in capsys.readouterr().out
    assert main(["status", *where, "--budget", "weekly"]) == 2 and "weekly" in capsys.readouterr().err
    assert main(["campaign", "static-diag", "--threads", "0", *where]) == 2
    assert "threads must be a positive integer" in capsys.readouterr().err


def test_train_command_exits_3_when_its_deadline_stops_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("iaf_repro.campaign.parse_duration", lambda text: -1.0)     # a deadline already past
    code = main(["train", "static-diag", "--budget", "smoke", "--until", "1s", "--runs", str(tmp_path), "--results", str(tmp_path)])
    assert code == TrainingInterrupted.exit_status == 3 and "training stopped (deadline" in capsys.readouterr().err
    assert parse_duration("2h40m") == 9600


class _Exited:
    "A finished child process, as `campaign` sees one."
    def __init__(self, returncode): self.returncode = returncode
    def poll(self): return self.returncode
    def terminate(self): pass


def test_no_run_starts_after_one_was_stopped_by_the_deadline(tmp_path, monkeypatch):
    import iaf_repro.campaign as campaign_module
    started = []
    def start(command, log, threads, nice):
        started.append(command)
        return _Exited(TrainingInterrupted.exit_status)            # stopped at the deadline, with time left on the clock
    monkeypatch.setattr(campaign_module, "_start", start)
    out = campaign(["static-diag", "static-iaf-d2-w320"], budget="smoke", parallel=1, until="1h",
                   runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", poll=0.01)
    assert len(started) == 1 and out.outcome.tolist() == ["stopped", "not started"]
