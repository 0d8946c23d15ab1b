"""Released weights and the reproduction plan (chapter 09c): `release_weights` -> `pretrained` gives the run's model bit
for bit; unfinished runs, results files of other runs and corrupt files are refused with the fix; the plan says what
`make reproduce` reuses and what it trains, and `reproduce` trains only that (a stand-in trains here, nothing real)."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import iaf_repro
from iaf_repro import release
from iaf_repro.cli import main
from iaf_repro.experiments import DEFAULT_PRESETS, get_preset, result_path, run, run_name
from iaf_repro.release import (FIGURE_MODELS, RELEASE_FORMAT, pretrained, release_weights, released_path, reproduce,
                               reproduction_plan, retrain_runs_dir)
from iaf_repro.train import load_ema_model

ROOT = Path(__file__).resolve().parents[1]
PRESET = "static-diag-z2"                                 # a small released model; its smoke run trains in seconds


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    "A finished smoke run of PRESET, its results file, and its released weights, in a temporary folder."
    tmp = tmp_path_factory.mktemp("release")
    where = dict(runs_dir=tmp / "runs", results_dir=tmp / "results")
    run(PRESET, "smoke", progress=False, **where)
    run("static-diag", "smoke", progress=False, **where)                  # a table row's run (finished, not released)
    path = release_weights(PRESET, "smoke", out_dir=tmp / "weights", **where)
    return dict(tmp=tmp, where=where, path=path, load=dict(weights_dir=tmp / "weights", results_dir=tmp / "results"))


def copy_of(smoke, tmp_path):
    "A private copy of the smoke run's folders, for a test that damages them."
    for name in ("runs", "results", "weights"): shutil.copytree(smoke["tmp"] / name, tmp_path / name)
    return dict(runs_dir=tmp_path / "runs", results_dir=tmp_path / "results"), dict(weights_dir=tmp_path / "weights", results_dir=tmp_path / "results")


def test_pretrained_is_the_runs_weight_average_bit_for_bit(smoke):
    model = pretrained(PRESET, "smoke", **smoke["load"])
    from_run = load_ema_model(get_preset(PRESET).build_model(), smoke["where"]["runs_dir"] / run_name(PRESET, "smoke", 0))
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), from_run.state_dict().values()))
    x = (torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    torch.manual_seed(3); ours = model(x, 2)
    torch.manual_seed(3); theirs = from_run(x, 2)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert iaf_repro.pretrained is pretrained and "pretrained" in iaf_repro.__all__


def test_the_released_file_names_its_run_epoch_and_commits_and_loads_without_pickled_code(smoke):
    saved = torch.load(smoke["path"], weights_only=True)                 # would raise on any pickled object
    results = json.loads(result_path(smoke["where"]["results_dir"], PRESET, "smoke", 0).read_text())
    assert smoke["path"].name == "static-diag-z2__smoke__s0.pt" and saved["format"] == RELEASE_FORMAT
    assert (saved["run"], saved["preset"], saved["budget"], saved["seed"]) == (results["run"], PRESET, "smoke", 0)
    assert saved["epoch"] == results["best_epoch"] and saved["trained_commits"] == results["trained_commits"]
    assert saved["vlb"] == results["vlb"] and saved["results_file"] == "static-diag-z2__smoke__s0.json"
    assert all(isinstance(v, torch.Tensor) for v in saved["state_dict"].values())


def test_an_unfinished_run_is_refused(smoke, tmp_path):
    where, _ = copy_of(smoke, tmp_path)
    checkpoint = where["runs_dir"] / run_name(PRESET, "smoke", 0) / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["epochs"] = 2                                          # a run of two epochs, stopped after the first
    torch.save(state, checkpoint)
    with pytest.raises(ValueError, match=r"has not finished training \(stopped at epoch 1 of 2\).*iaf-repro train static-diag-z2"):
        release_weights(PRESET, "smoke", out_dir=tmp_path / "out", **where)
    with pytest.raises(ValueError, match="no checkpoint there"):
        release_weights("static-iaf-d2-w320", "smoke", out_dir=tmp_path / "out", **where)
    assert not (tmp_path / "out").exists()


def test_a_results_file_of_another_run_is_refused(smoke, tmp_path):
    where, load = copy_of(smoke, tmp_path)
    results = result_path(where["results_dir"], PRESET, "smoke", 0)
    results.write_text(json.dumps(dict(json.loads(results.read_text()), best_epoch=7)))
    with pytest.raises(ValueError, match=r"come from different runs \(the weights are from epoch 1, the results file scored epoch 7\)"):
        pretrained(PRESET, "smoke", **load)
    with pytest.raises(ValueError, match="does not describe the run.*evaluates this run again"):
        release_weights(PRESET, "smoke", out_dir=tmp_path / "out", **where)
    results.write_text(json.dumps(dict(json.loads(results.read_text()), best_epoch=1, trained_commits=["0123456789ab"])))
    with pytest.raises(ValueError, match=r"trained under commits \[.*\], the results file says \['0123456789ab'\]"):
        pretrained(PRESET, "smoke", **load)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:2000]), "is not a readable weights file"),            # truncated
    (lambda p: p.write_text("not weights"), "is not a readable weights file"),
    (lambda p: torch.save({"format": "iaf-repro-train-v1", "ema": {}}, p), "not iaf-repro released weights"),   # a checkpoint
])
def test_a_corrupt_weights_file_is_a_clear_error(smoke, tmp_path, damage, message):
    _, load = copy_of(smoke, tmp_path)
    path = released_path(PRESET, "smoke", 0, load["weights_dir"])
    damage(path)
    with pytest.raises(ValueError, match=message) as error:
        pretrained(PRESET, "smoke", **load)
    assert str(path) in str(error.value) and "git checkout --" in str(error.value)


def test_weights_of_another_run_or_model_are_refused(smoke, tmp_path):
    _, load = copy_of(smoke, tmp_path)
    path = released_path(PRESET, "smoke", 0, load["weights_dir"])
    saved = torch.load(path, weights_only=True)
    torch.save(dict(saved, run="static-diag__smoke__s0"), path)
    with pytest.raises(ValueError, match="holds the weights of the run 'static-diag__smoke__s0'"):
        pretrained(PRESET, "smoke", **load)
    torch.save(dict(saved, state_dict={k: v[..., :1] if v.dim() else v for k, v in saved["state_dict"].items()}), path)
    with pytest.raises(ValueError, match="weights of another model than static-diag-z2 builds"):
        pretrained(PRESET, "smoke", **load)


def test_pretrained_without_released_weights_names_the_file_and_the_commands(smoke):
    with pytest.raises(FileNotFoundError) as error:
        pretrained("static-iaf-d2-w320", "smoke", **smoke["load"])
    text = str(error.value)
    assert str(released_path("static-iaf-d2-w320", "smoke", 0, smoke["load"]["weights_dir"])) in text
    assert "iaf-repro train static-iaf-d2-w320 --budget smoke" in text and "iaf-repro release static-iaf-d2-w320 --budget smoke" in text
    with pytest.raises(ValueError, match="valid presets"):
        pretrained("static-nope", "smoke", **smoke["load"])
    with pytest.raises(ValueError, match="valid budgets"):
        pretrained(PRESET, "gpu", **smoke["load"])


def fake_release(preset: str, budget: str, weights_dir: Path, result: dict, epoch=None) -> Path:
    "A released file with the identity of `result` (or another `epoch`), and no weights: all the plan looks at."
    path = released_path(preset, budget, 0, weights_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(format=RELEASE_FORMAT, run=run_name(preset, budget, 0), epoch=epoch or result["best_epoch"],
                    trained_commits=result.get("trained_commits") or [result["trained_commit"]], state_dict={}), path)
    return path


@pytest.fixture
def clone(smoke, tmp_path):
    """A clone's state, mixed: a smoke row with results and a finished run (not released), a smoke row with nothing; for the figure models
    (always `cpu`) the committed results of two, released weights for one of them."""
    where, _ = copy_of(smoke, tmp_path)
    released_path(PRESET, "smoke", 0, tmp_path / "weights").unlink()                     # the smoke row: a finished run, not released
    committed = ROOT / "figures" / "tables" / "runs"
    for name in ("static-diag-z2", "thresholded-diag"):
        shutil.copy(result_path(committed, name, "cpu", 0), where["results_dir"])
    fake_release("static-diag-z2", "cpu", tmp_path / "weights", json.loads(result_path(committed, "static-diag-z2", "cpu", 0).read_text()))
    return dict(where, weights_dir=tmp_path / "weights", tmp=tmp_path)


def test_the_plan_says_what_it_reuses_and_what_it_trains(clone):
    where = {k: clone[k] for k in ("runs_dir", "results_dir", "weights_dir")}
    plan = reproduction_plan("smoke", [PRESET, "static-diag", "static-iaf-d2-w320"], **where)
    actions = {(r.model, r.role): (r.action, r.source) for r in plan.itertuples()}
    assert actions[("static-diag-z2__smoke__s0", "table row: no table")] == ("reuse results", str(result_path(clone["results_dir"], PRESET, "smoke", 0)))
    assert actions[("static-iaf-d2-w320__smoke__s0", "table row: table1, table2")][0] == "train"
    assert "no results file" in actions[("static-iaf-d2-w320__smoke__s0", "table row: table1, table2")][1]
    assert actions[("static-diag-z2__cpu__s0", "chapter 13 figure")] == ("reuse released weights", str(released_path(PRESET, "cpu", 0, clone["weights_dir"])))
    assert actions[("static-iaf-d2-w320-z2__cpu__s0", "chapter 13 figure")] == ("train", f"no results file {result_path(clone['results_dir'], 'static-iaf-d2-w320-z2', 'cpu', 0)}")
    assert actions[("thresholded-diag__cpu__s0", "chapter 14 figure")] == ("train", f"no released weights, no finished run in {clone['runs_dir']}")
    assert actions[("static-diag__smoke__s0", "table row: table1")][0] == "reuse results"
    assert actions[("static-diag__smoke__s0", "reconstructions, samples")] == ("reuse finished run", str(clone["runs_dir"] / "static-diag__smoke__s0"))
    assert ("static-diag-z2__smoke__s0", "reconstructions, samples") not in actions            # in no table: no such figure
    assert actions[("static-iaf-d2-w320__smoke__s0", "reconstructions, samples")] == ("draw", "from the run it trains")


def test_reproduce_prints_the_plan_then_trains_only_what_it_marks_train(clone, capsys):
    trained = []
    stand_in = lambda preset, budget, seed, **where: trained.append((preset, budget, where["runs_dir"]))
    reproduce("smoke", [PRESET, "static-iaf-d2-w320"], out_dir=clone["tmp"] / "tables", runner=stand_in,
              **{k: clone[k] for k in ("runs_dir", "results_dir", "weights_dir")})
    assert trained == [("static-iaf-d2-w320", "smoke", clone["runs_dir"]), ("static-iaf-d2-w320-z2", "cpu", clone["runs_dir"]),
                       ("thresholded-diag", "cpu", clone["runs_dir"]), ("thresholded-iaf-d4-w320", "cpu", clone["runs_dir"])]
    out = capsys.readouterr().out
    assert out.index("reuse released weights") < out.index("plan: train 4") < out.index("model 1 of 4: training static-iaf-d2-w320__smoke__s0")
    assert "model 4 of 4: training thresholded-iaf-d4-w320__cpu__s0" in out and "12: four-image VAEs" in out


def test_retrain_plans_to_train_everything_into_its_own_runs_folder(clone, monkeypatch, capsys):
    where = {k: clone[k] for k in ("runs_dir", "results_dir", "weights_dir")}
    plan = reproduction_plan("cpu", retrain=True, **where)
    assert set(plan.action) == {"train", "draw"}
    trains = plan[plan.action == "train"]
    assert list(trains.model) == [run_name(p, "cpu", 0) for p in (*DEFAULT_PRESETS, *FIGURE_MODELS)]
    assert (trains.source == f"--retrain: from scratch into {retrain_runs_dir(clone['runs_dir'])}").all()
    released, trained = [], []
    monkeypatch.setattr(release, "release_weights", lambda *a: released.append(a[:2]) or Path("weights/x.pt"))
    reproduce("cpu", retrain=True, out_dir=clone["tmp"] / "tables", runner=lambda p, b, s, **w: trained.append(w["runs_dir"]), **where)
    assert set(trained) == {clone["tmp"] / "runs-retrain"} and len(trained) == len(trains)
    assert released == [(p, "cpu") for p in (*DEFAULT_PRESETS, *FIGURE_MODELS)]       # every retrained small model, released again


def test_a_released_file_that_disagrees_stops_reproduce_before_anything_trains(clone):
    committed = json.loads(result_path(clone["results_dir"], "thresholded-diag", "cpu", 0).read_text())
    fake_release("thresholded-diag", "cpu", clone["weights_dir"], committed, epoch=3)
    where = {k: clone[k] for k in ("runs_dir", "results_dir", "weights_dir")}
    plan = reproduction_plan("smoke", [PRESET], **where).set_index("model")
    assert plan.loc["thresholded-diag__cpu__s0", "action"] == "error" and "epoch 3" in plan.loc["thresholded-diag__cpu__s0", "source"]
    trained = []
    with pytest.raises(ValueError, match="the plan has errors"):
        reproduce("smoke", [PRESET], out_dir=clone["tmp"] / "tables", runner=lambda *a, **k: trained.append(a), **where)
    assert trained == []


def test_quick_leaves_the_figure_models_to_the_chapters(clone):
    trained = []
    reproduce("smoke", [PRESET], quick=True, out_dir=clone["tmp"] / "tables", runner=lambda p, b, s, **w: trained.append(p),
              **{k: clone[k] for k in ("runs_dir", "results_dir", "weights_dir")})
    assert trained == []                                                   # the row has results; the chapters train smoke runs


def test_the_release_command_and_the_dry_run(smoke, tmp_path, monkeypatch, capsys):
    where, _ = copy_of(smoke, tmp_path)
    assert main(["release", PRESET, "--budget", "smoke", "--runs", str(where["runs_dir"]), "--results", str(where["results_dir"]),
                 "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "static-diag-z2__smoke__s0.pt").exists() and "wrote" in capsys.readouterr().out
    assert main(["release", "static-iaf-d2-w320", "--budget", "smoke", "--runs", str(where["runs_dir"])]) == 2
    assert "has not finished training (no checkpoint there)" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IAF_REPRO_RUNS", str(tmp_path / "runs"))
    assert main(["reproduce", "--budget", "smoke", "--presets", PRESET, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "static-diag-z2__smoke__s0" in out and "train" in out and not (tmp_path / "figures").exists()   # a plan, nothing done


def test_released_weights_are_not_ignored_by_git_and_checkpoints_are():
    ignored = lambda path: subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0
    assert not ignored("weights/static-diag__cpu__s0.pt") and ignored("runs/x/best.pt") and ignored("checkpoint.pt")


def test_list_says_where_each_presets_weights_would_come_from(smoke):
    from iaf_repro.cli import presets_overview
    table = presets_overview("smoke", **smoke["where"]).set_index("preset")
    assert table.loc["static-diag", "weights"] == "run"                          # finished here, not released
    assert table.loc["dynamic-diag", "weights"] == "no" and table.loc["static-diag", "results"] == "yes"


def test_every_pretrained_call_on_the_front_page_loads_its_released_weights():
    import re
    calls = re.findall(r'pretrained\("([\w-]+)", "(\w+)"\)', (ROOT / "README.md").read_text())
    assert calls, "the README shows how to load a released model"
    for preset, budget in calls:
        model = pretrained(preset, budget, weights_dir=ROOT / "weights", results_dir=ROOT / "figures" / "tables" / "runs")
        assert not model.training and sum(p.numel() for p in model.parameters()) > 0


def test_the_plan_draws_converged_rows_from_their_weights_and_never_trains_them(clone):
    where = {k: clone[k] for k in ("runs_dir", "results_dir", "weights_dir")}
    committed = json.loads(result_path(ROOT / "figures" / "tables" / "runs", "static-diag", "paper", 0).read_text())
    (clone["results_dir"] / "static-diag__paper__s0.json").write_text(json.dumps(committed))
    row = lambda plan: plan.set_index("model").loc["static-diag__paper__s0"]
    unreleased = row(reproduction_plan("smoke", [PRESET], **where))
    assert (unreleased.role, unreleased.action) == ("converged row: reconstructions, samples", "not drawn")
    fake_release("static-diag", "paper", clone["weights_dir"], committed)
    released = row(reproduction_plan("smoke", [PRESET], retrain=True, **where))                  # --retrain leaves it alone too
    assert released.action == "reuse released weights" and released.source == str(released_path("static-diag", "paper", 0, clone["weights_dir"]))
    own = reproduction_plan("paper", [PRESET], **where)                                            # at its own budget: the budget's row
    assert not own.role.str.startswith("converged").any() and row(own).role == "reconstructions, samples"


def test_retrain_again_reuses_what_it_finished_and_resumes_the_rest(clone, monkeypatch):
    "An interrupted --retrain, run again: a model it finished (run done, results file describing it) is released, not trained or evaluated again; the rest train, with the threads and deadline given."
    where = {k: clone[k] for k in ("runs_dir", "results_dir", "weights_dir")}
    retrain_dir = retrain_runs_dir(clone["runs_dir"])
    shutil.copytree(clone["runs_dir"] / run_name(PRESET, "smoke", 0), retrain_dir / run_name(PRESET, "smoke", 0))   # finished earlier
    (retrain_dir / run_name("thresholded-diag", "cpu", 0)).mkdir(parents=True)                                  # begun, never finished
    plan = reproduction_plan("smoke", [PRESET], retrain=True, **where).set_index(["model", "role"])
    assert plan.loc[(run_name(PRESET, "smoke", 0), "table row: no table")].tolist() == ["reuse retrained run", str(retrain_dir / run_name(PRESET, "smoke", 0))]
    assert plan.loc[(run_name("thresholded-diag", "cpu", 0), "chapter 14 figure"), "source"].endswith("resuming the run an earlier --retrain began")
    released, trained = [], []
    monkeypatch.setattr(release, "release_weights", lambda *a: released.append(a[:2]) or Path("weights/x.pt"))
    runner = lambda p, b, s, **w: trained.append((p, torch.get_num_threads(), w["deadline"]))
    threads = 2 if torch.get_num_threads() == 1 else 1                                  # not the number already in effect
    reproduce("smoke", [PRESET], retrain=True, threads=threads, deadline=1e12, out_dir=clone["tmp"] / "tables", runner=runner, **where)
    assert [p for p, _, _ in trained] == list(FIGURE_MODELS) and {(t, d) for _, t, d in trained} == {(threads, 1e12)}
    assert released == [(PRESET, "smoke"), *[(p, "cpu") for p in FIGURE_MODELS]]       # the finished one released, never retrained


def test_retrain_evaluates_a_finished_run_its_results_file_does_not_describe_and_says_so(clone):
    "A run an earlier --retrain finished, beside a results file of another run (restored from git, say): evaluated, not trained; the plan says which."
    where = {k: clone[k] for k in ("runs_dir", "results_dir", "weights_dir")}
    retrain_dir = retrain_runs_dir(clone["runs_dir"])
    shutil.copytree(clone["runs_dir"] / run_name(PRESET, "smoke", 0), retrain_dir / run_name(PRESET, "smoke", 0))
    results = result_path(clone["results_dir"], PRESET, "smoke", 0)
    results.write_text(json.dumps(dict(json.loads(results.read_text()), best_epoch=99)))
    row = reproduction_plan("smoke", [PRESET], retrain=True, **where).set_index(["model", "role"]).loc[(run_name(PRESET, "smoke", 0), "table row: no table")]
    assert row.action == "evaluate" and "not trained again" in row.source and "epoch 99" in row.source
    trained = []
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        reproduce("smoke", [PRESET], retrain=True, threads=0, out_dir=clone["tmp"] / "tables", runner=lambda *a, **k: trained.append(a), **where)
    assert trained == []                                                            # refused before anything ran
