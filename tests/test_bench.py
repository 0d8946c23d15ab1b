"""Tests for the benchmark (chapter 95): it runs and writes a well-formed table; the FLOP counts are exact; bad names are clear errors.
No speed is asserted: timings are measurements, not behaviour."""
import os
import platform
import subprocess
import sys

import pandas as pd
import pytest
import torch

from iaf_repro.bench import (BENCH_COLUMNS, BENCH_ROWS, REFERENCE, bench_device, bench_name, bench_targets, count_flops,
                             QUICK, get_bench_preset, load_reference, run_bench, train_speed, training_flops)
from iaf_repro.accelerate import accelerate
from iaf_repro.cli import main
from iaf_repro.made import MADE
from iaf_repro.vae import make_vae


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    frame = run_bench(["tiny"], threads=1, device="cpu", quick=True, out_dir=out, progress=False)
    return out, frame


def test_quick_bench_writes_a_well_formed_csv_with_provenance(quick_run):
    out, frame = quick_run
    written = pd.read_csv(out / "tables" / "bench.csv")
    assert list(written.columns) == BENCH_COLUMNS
    assert sorted(written.measurement) == sorted(["train", "is_log_px", "sample_latency", "sample_batch"])
    assert (written.preset == "tiny").all() and (written.dtype == "fp32").all()
    assert (written.threads == 1).all() and (written.cpus >= 1).all()
    for column in ("commit", "device", "cpu_model", "torch", "date"): assert written[column].notna().all(), column
    assert written.dirty.isin([True, False]).all() and written.load_avg_1m.notna().all()
    assert (written.images_per_s > 0).all() and (written.flops_per_image > 0).all()
    # Eq. 2 of the chapter: the rate and the fraction of peak follow from the measured columns
    pd.testing.assert_series_equal(written.gflop_s, written.flops_per_image * written.images_per_s / 1e9, check_names=False, rtol=1e-6)
    pd.testing.assert_series_equal(written.peak_fraction, written.gflop_s / written.matmul_peak_gflop_s, check_names=False, rtol=1e-6)
    is_row = written[written.measurement == "is_log_px"].iloc[0]
    assert is_row.projected_test_min == pytest.approx(10_000 / is_row.images_per_s / 60)
    assert (out / "bench_throughput.png").stat().st_size > 0
    assert (out / "tables" / "bench_profile_tiny_train.csv").exists() and (out / "tables" / "bench_profile_tiny_is.csv").exists()


def test_cli_bench_quick(tmp_path):
    assert main(["bench", "--presets", "tiny", "--quick", "--threads", "1", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "tables" / "bench.csv").exists()


NO_AVX512 = dict(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")   # as on an x86-64 CPU without AVX-512


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AVX-512 limits are x86-64 settings")
def test_bf16_gemm_row_is_skipped_with_its_reason_without_avx512():
    """With oneDNN held to AVX2, its bf16 packed product is unsupported: the GEMM table keeps the row, without a rate,
    and says why, instead of raising (the error `iaf-repro bench` used to stop with)."""
    code = ("import torch; from iaf_repro.bench import gemm_backends; "
            "t = gemm_backends(torch.device('cpu'), rows=(8,), width=16, repeats=1); "
            "print(t[(t.dtype == 'bf16') & (t.backend == 'oneDNN linear')].skipped.iloc[0]); print(t[t.dtype == 'fp32'].gflop_s.notna().all())")
    env = {k: v for k, v in os.environ.items() if k != "IAF_REPRO_PLAIN"} | NO_AVX512   # the check itself, not a forced fallback
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "oneDNN has no bf16 kernels for this CPU" in out and out.strip().endswith("True")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AVX-512 limits are x86-64 settings")
def test_cli_bench_in_bf16_runs_without_avx512(tmp_path):
    args = ["bench", "--presets", "tiny", "--quick", "--threads", "1", "--device", "cpu", "--dtype", "bf16", "--out", str(tmp_path)]
    code = f"import sys; from iaf_repro.cli import main; sys.exit(main({args!r}))"            # `iaf-repro bench ...`
    done = subprocess.run([sys.executable, "-c", code], env=os.environ | NO_AVX512, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "tables" / "bench_bf16.csv").exists()


@pytest.mark.parametrize("n_in,n_out,batch", [(30, 20, 7), (1, 5, 1), (64, 3, 16)])
def test_flop_counter_gives_the_analytic_count_of_a_linear_layer(n_in, n_out, batch):
    lin, x = torch.nn.Linear(n_in, n_out), torch.randn(batch, n_in, requires_grad=True)
    assert count_flops(lambda: lin(x)) == 2 * batch * n_in * n_out
    assert count_flops(lambda: lin(x).sum().backward()) == 3 * 2 * batch * n_in * n_out


@pytest.mark.parametrize("D,hidden,n_params,context", [(6, [24, 24], 2, 5), (3, [8], 1, 0), (32, [1920, 1920], 2, 450)])
def test_flop_counter_gives_the_analytic_count_of_a_made(D, hidden, n_params, context):
    made, B = MADE(D, hidden, n_params=n_params, context_dim=context), 4
    sizes = [D + context, *hidden, n_params * D]
    expected = sum(2 * B * a * b for a, b in zip(sizes[:-1], sizes[1:]))
    z, h = torch.randn(B, D), (torch.randn(B, context) if context else None)
    with torch.no_grad(): assert count_flops(lambda: made(z, h)) == expected
    fast = accelerate(made)
    with torch.no_grad(): assert count_flops(lambda: fast(z, h)) == expected                  # oneDNN's product where it runs


def test_training_flops_are_about_three_forward_passes():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    model = make_vae(get_bench_preset("tiny")); model.initialize(x)
    forward = count_flops(lambda: model(x, 1)) / len(x)
    assert 2 * forward < training_flops(model, x) <= 3 * forward          # the first layer needs no input gradient
    assert all(p.grad is None for p in model.parameters())                  # the count leaves no gradients behind


def test_bad_preset_device_and_dtype_are_clear_errors(capsys):
    with pytest.raises(ValueError, match="unknown bench preset 'iaf-d16'; valid presets: diag, iaf-d2-w320"):
        run_bench(["iaf-d16"], quick=True)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        bench_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            run_bench(["tiny"], device="cuda", quick=True)
    with pytest.raises(ValueError, match="dtype must be one of fp32, bf16"):
        run_bench(["tiny"], device="cpu", dtype="fp16", quick=True)
    assert main(["bench", "--presets", "nope", "--quick"]) == 2
    assert "unknown bench preset 'nope'" in capsys.readouterr().err


def test_results_files_are_named_by_precision_and_compilation():
    assert [bench_name(), bench_name("bf16"), bench_name(compile=True)] == ["bench", "bench_bf16", "bench_compile"]


def test_reference_figures_come_from_the_committed_csv_with_their_source():
    ref = load_reference()
    assert REFERENCE.name == "bench_reference.csv"
    assert set(ref[ref.metric == "train_img_s"].preset) == set(BENCH_ROWS)
    assert ref.source.str.startswith("issue 4").all()


def test_targets_compare_with_the_reference():
    ref = load_reference()
    frame = pd.DataFrame([dict(preset="iaf-d8-w1920", dtype="fp32", measurement="train", batch_size=100, images_per_s=600.0, peak_fraction=0.7),
                          dict(preset="iaf-d8-w1920", dtype="fp32", measurement="is_log_px", batch_size=100, images_per_s=20.0,
                               projected_test_min=10_000 / 20 / 60, peak_fraction=0.5)])
    t = bench_targets(frame, ref).iloc[0]
    assert t.train_ratio == pytest.approx(600 / 368) and t.train_met
    assert t.reference_is_test_min == pytest.approx(122 * 10 / 60) and t.is_speedup == pytest.approx(122 * 10 / 60 / (10_000 / 20 / 60))
    assert t.is_met and t.peak_met


def test_compiled_training_steps_take_a_second_batch_size():
    "torch.compile with static shapes: a new batch size compiles again, where automatic dynamic shapes failed in randn."
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(0))
    rates = [train_speed("tiny", x, batch, torch.device("cpu"), QUICK, compile=True)["images_per_s"] for batch in (4, 8)]
    assert all(rate > 0 for rate in rates)
