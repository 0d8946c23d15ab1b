"""Tests for the iaf-repro command line and the README/front-page link."""
from pathlib import Path

import pytest

from iaf_repro.cli import CHAPTERS, main, render_figures, render_readme

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_rendered_from_the_front_page_notebook():
    rendered = render_readme(ROOT / "nbs" / "index.ipynb")
    assert (ROOT / "README.md").read_text() == rendered, "README.md is stale: run `.venv/bin/iaf-repro readme`"


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make reproduce", "make test"]


def test_every_chapter_module_can_draw_its_figures():
    import importlib
    for name, module in CHAPTERS.items():
        assert callable(getattr(importlib.import_module(module), "make_figures", None)), name


def test_unknown_chapter_is_an_error_listing_valid_names(capsys):
    assert main(["figures", "planar"]) == 2
    err = capsys.readouterr().err
    assert "unknown chapter(s) ['planar']" in err and "planar_radial" in err
    with pytest.raises(ValueError, match="valid names"):
        render_figures(["nope"])


def test_quick_figures_land_in_the_output_folder(tmp_path):
    assert main(["figures", "change_of_variables", "made", "--quick", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["change_of_variables_1d.png", "made_masks.png"]


def test_the_package_root_gives_the_flows():
    import iaf_repro
    for name in ("FlowChain", "PlanarFlow", "RadialFlow", "AdditiveCoupling", "MADE", "IAF", "IAFStep", "iaf_log_q",
                 "iwae_bound", "importance_sampled_log_px", "Posterior", "FlowPosterior"):
        assert name in iaf_repro.__all__ and callable(getattr(iaf_repro, name)), name


def test_cifar_commands_are_registered(tmp_path, monkeypatch, capsys):
    assert {"cifar_data", "discretized_logistic", "cifar_simple", "resnet_vae"} <= set(CHAPTERS)
    assert main(["train", "cifar-nope", "--budget", "smoke"]) == 2
    assert "unknown preset 'cifar-nope'" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figures" / "tables" / "runs").mkdir(parents=True)
    assert main(["table", "cifar"]) == 0
    assert "not yet run at this budget" in capsys.readouterr().out
    assert (tmp_path / "figures" / "tables" / "cifar-paper-t4.md").exists()


@pytest.mark.parametrize("number", ["1", "2", "cifar"])
def test_table_outside_the_repository_says_where_it_expected_the_project(tmp_path, monkeypatch, capsys, number):
    monkeypatch.chdir(tmp_path)
    assert main(["table", number]) == 2
    assert f"expected the iaf-repro repository here ({tmp_path})" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []                          # no table of "not run" rows


def test_unknown_device_is_our_own_one_line_error(capsys):
    assert main(["train", "static-diag", "--budget", "smoke", "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown device 'tpu'; valid devices: cpu, cuda, auto" in err


def test_list_shows_every_preset_with_its_table_and_what_exists(tmp_path, capsys):
    assert main(["list", "--budget", "cpu", "--runs", str(tmp_path)]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["static-diag"][2] == "table1" and lines["static-diag"][-2:] == ["yes", "released"]   # committed results and weights
    assert lines["static-iaf-d8-w1920"][-2:] == ["yes", "no"]                                        # committed results, no weights here
    assert lines["dynamic-diag"][-2:] == ["no", "no"] and lines["cifar-simple-diag"][1] == "CIFAR-10"


def test_reproduce_passes_its_threads_and_deadline_and_exits_3_when_stopped(tmp_path, monkeypatch, capsys):
    "`reproduce --threads 1 --until 2h` hands both to chapter 09c's `reproduce`; stopped at the deadline, it exits 3 (resumable) and draws nothing."
    import time
    from iaf_repro import release
    from iaf_repro.train import TrainingInterrupted
    seen = {}
    def stopped(*args, **kw):
        seen.update(kw, now=time.time())
        raise TrainingInterrupted("deadline", tmp_path / "runs" / "x", 3)
    monkeypatch.setattr(release, "reproduce", stopped)
    assert main(["reproduce", "--retrain", "--threads", "1", "--until", "2h", "--out", str(tmp_path / "figures")]) == 3
    assert seen["threads"] == 1 and seen["retrain"] and abs(seen["deadline"] - seen["now"] - 7200) < 60
    assert not (tmp_path / "figures").exists()


def test_a_malformed_until_fails_even_a_dry_run(capsys):
    assert main(["reproduce", "--dry-run", "--until", "soon"]) == 2
    assert "a duration must look like 2h40m" in capsys.readouterr().err
