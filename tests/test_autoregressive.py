"""Property tests for iaf_repro.autoregressive: one IAF module used as a MAF and as an IAF, and the flow KL duality."""
import math

import pandas as pd
import pytest
import torch
from hypothesis import given, strategies as st

from iaf_repro import autoregressive
from iaf_repro.autoregressive import (DiagonalGaussian, _median_seconds, _operations, count_made_passes,
                                      fit_both, iaf_log_prob_of, iaf_sample, inverse_map, kl_both_ways, kl_estimate,
                                      maf_log_prob, maf_sample, make_figures, mixture_target, pullback_log_prob, time_costs)
from iaf_repro.density import autograd_log_det, log_standard_normal
from iaf_repro.iaf import IAF

F64 = torch.float64


@st.composite
def flows(draw, with_context=True):
    "A random float64 IAF (depth, widths, context size C) with a random diagonal Gaussian base: `(flow, base, C)`."
    D, C = draw(st.integers(1, 5)), draw(st.integers(0, 2 if with_context else 0))
    depth = draw(st.integers(1, 3))
    hidden = draw(st.lists(st.integers(2, 16), min_size=1, max_size=2))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    flow = IAF(D, context_dim=C, depth=depth, hidden_sizes=hidden).double()
    base = DiagonalGaussian(D).double()
    with torch.no_grad():
        base.mu.normal_(); base.log_sigma.normal_(0, 0.5)
    return flow, base, C


def context(C, B):
    return torch.randn(B, C, dtype=F64) if C else None


@given(fb=flows(), B=st.integers(1, 5))
def test_maf_log_prob_is_base_plus_autograd_log_det(fb, B):
    flow, base, C = fb
    x, h = torch.randn(B, flow.D, dtype=F64) * 2, context(C, B)
    u, _ = flow(x, h)
    expected = base.log_prob(u) + autograd_log_det(flow, x, h)
    torch.testing.assert_close(maf_log_prob(flow, x, h, base), expected, rtol=1e-9, atol=1e-9)


@given(fb=flows(), B=st.integers(1, 5), seed=st.integers(0, 1000))
def test_maf_sample_round_trips_to_its_base_draw(fb, B, seed):
    flow, base, C = fb
    h = context(C, B)
    x = maf_sample(flow, B, h, base, generator=torch.Generator().manual_seed(seed))
    u, _ = base.sample(B, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(flow(x, h)[0], u, rtol=1e-8, atol=1e-8)


@given(fb=flows(), B=st.integers(1, 5))
def test_iaf_log_prob_of_its_own_sample_matches_the_free_density(fb, B):
    flow, base, C = fb
    h = context(C, B)
    x, log_q = iaf_sample(flow, B, h, base)
    torch.testing.assert_close(iaf_log_prob_of(flow, x, h, base), log_q, rtol=1e-8, atol=1e-8)


@given(fb=flows(with_context=False), B=st.integers(1, 4))
def test_flow_kl_duality_holds_pointwise_both_ways(fb, B):
    "log p_x(x) - log q_x(x) = log p_u(u) - log pi(u) at u = T^-1(x), for T = F^-1 (MAF) and T = F (IAF)."
    flow, base, _ = fb
    log_p = log_standard_normal                          # any normalised target will do
    x = torch.randn(B, flow.D, dtype=F64) * 1.5
    u = flow(x)[0].detach()                              # MAF: T = F^-1, so u = F(x)
    lhs = log_p(x) - maf_log_prob(flow, x, base=base)
    rhs = pullback_log_prob(log_p, inverse_map(flow), u) - base.log_prob(u)
    torch.testing.assert_close(lhs, rhs, rtol=1e-7, atol=1e-7)
    z0 = base.sample(B)[0].detach()                      # IAF: T = F
    x_q, log_q = flow(z0)[0], base.log_prob(z0) - flow(z0)[1]
    torch.testing.assert_close(log_q - log_p(x_q), base.log_prob(z0) - pullback_log_prob(log_p, flow, z0),
                               rtol=1e-7, atol=1e-7)


@given(fb=flows(), B=st.integers(1, 4))
def test_inverse_map_keeps_the_flow_contract(fb, B):
    "inverse_map(flow) returns (F^-1(u), log|det dF^-1/du|), the log-det matching autograd on the sequential inverse."
    flow, _, C = fb
    u, h = torch.randn(B, flow.D, dtype=F64), context(C, B)
    x, log_det = inverse_map(flow)(u, h)
    assert x.shape == (B, flow.D) and log_det.shape == (B,)
    torch.testing.assert_close(flow(x, h)[0], u, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(log_det, autograd_log_det(inverse_map(flow), u, h), rtol=1e-7, atol=1e-7)


def test_both_densities_normalise_in_2d():
    torch.manual_seed(3)
    flow, base = IAF(2, depth=3, hidden_sizes=(12,)).double(), DiagonalGaussian(2).double()
    axis = torch.linspace(-9, 9, 361, dtype=F64)
    grid, cell = torch.cartesian_prod(axis, axis), (axis[1] - axis[0]) ** 2
    with torch.no_grad():
        for log_q in (maf_log_prob, iaf_log_prob_of):
            assert abs((log_q(flow, grid, base=base).exp() * cell).sum().item() - 1) < 1e-4


@given(D=st.integers(1, 6), depth=st.integers(1, 3), B=st.integers(1, 3))
def test_made_passes_are_constant_or_linear_in_D(D, depth, B):
    flow = IAF(D, depth=depth, hidden_sizes=(4,))
    with torch.no_grad():
        counts = {name: count_made_passes(flow, op)[1] for name, op in _operations(flow, torch.randn(B, D)).items()}
    assert counts == {"MAF density": depth, "IAF sample": depth, "MAF sample": depth * D,
                      "IAF density of x": depth * D + depth}


def test_count_made_passes_removes_its_hooks():
    flow = IAF(3, hidden_sizes=(4,))
    count_made_passes(flow, lambda: flow(torch.randn(2, 3)))
    assert count_made_passes(flow, lambda: None)[1] == 0
    assert all(not m._forward_hooks for m in flow.modules())


def test_kl_estimate_and_eq8():
    p = mixture_target(dtype=F64)
    assert kl_estimate(torch.ones(4), torch.ones(4)) == (0.0, 0.0)
    heaviest = torch.distributions.Independent(torch.distributions.Normal(p.component_distribution.base_dist.loc[0], 0.4), 1)
    torch.manual_seed(0)
    x = heaviest.sample((5000,))
    kl, se = kl_estimate(heaviest.log_prob(x), p.log_prob(x))
    assert abs(kl + math.log(0.4)) < 4 * se + 1e-3


def test_short_fits_beat_the_initialisation_and_each_wins_its_own_kl():
    p = mixture_target()
    maf, iaf = fit_both(p, depth=2, hidden_sizes=(32, 32), steps=600, lr=1e-2, progress=False)
    state = torch.get_rng_state()
    kl_maf, kl_iaf = kl_both_ways(*maf, "maf", p, n=4000), kl_both_ways(*iaf, "iaf", p, n=4000)
    assert torch.get_rng_state().equal(state)                       # seeded internally, caller's RNG untouched
    assert kl_both_ways(*maf, "maf", p, n=500, seed=3) == kl_both_ways(*maf, "maf", p, n=500, seed=3)
    torch.manual_seed(0)
    untrained = kl_both_ways(IAF(2, hidden_sizes=(32, 32)), DiagonalGaussian(2), "maf", p, n=4000)
    assert kl_maf["forward"][0] < untrained["forward"][0]
    assert kl_maf["forward"][0] < kl_iaf["forward"][0]
    assert kl_iaf["reverse"][0] < kl_maf["reverse"][0]


def test_bad_input_raises():
    flow, ctx_flow = IAF(2, hidden_sizes=(4,)), IAF(2, context_dim=3, hidden_sizes=(4,))
    with pytest.raises(ValueError, match="x has dim 3, expected 2"): maf_log_prob(flow, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="x has dim 1, expected 2"): iaf_log_prob_of(flow, torch.zeros(4, 1))
    with pytest.raises(ValueError, match="shape \\[batch, dim\\]"): maf_log_prob(flow, torch.zeros(2))
    with pytest.raises(ValueError, match="needs a context"): iaf_sample(ctx_flow, 4)
    with pytest.raises(ValueError, match="needs a context"): maf_log_prob(ctx_flow, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="h has batch 2"): maf_sample(ctx_flow, 4, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="must be >= 1"): maf_sample(flow, 0)
    with pytest.raises(ValueError, match="role must be"): kl_both_ways(flow, DiagonalGaussian(2), "nice", mixture_target())
    with pytest.raises(ValueError, match="std > 0"): mixture_target(std=-1.0)
    with pytest.raises(ValueError, match="repeats must be >= 1"): _median_seconds(lambda: None, repeats=0)


def test_make_figures_quick_writes_figures_and_a_costs_table(tmp_path, monkeypatch):
    real, calls = autoregressive.fit_figures, []
    monkeypatch.setattr(autoregressive, "fit_figures", lambda **kwargs: calls.append(kwargs) or real(**kwargs))
    paths = make_figures(tmp_path, quick=True)
    assert [p.name for p in paths] == ["maf_vs_iaf_costs.png", "maf_vs_iaf_costs.csv", "forward_vs_reverse_kl.png"]
    assert all(p.stat().st_size > 10_000 for p in paths if p.suffix == ".png")
    costs = pd.read_csv(paths[1])
    assert set(costs.operation) == {"MAF density", "IAF sample", "MAF sample", "IAF density of x"}
    assert {"device", "torch", "threads", "commit", "dirty", "batch", "hidden_sizes", "depth", "repeats"} <= set(costs.columns)
    assert (costs.median_s > 0).all()

    # a second call draws from the saved fit: nothing timed or fitted, the same bytes, the timing's own provenance
    outputs, fit_file = [p.read_bytes() for p in paths], tmp_path / "fits" / "maf_vs_iaf.pt"
    assert make_figures(tmp_path, quick=True) == paths and len(calls) == 1
    assert [p.read_bytes() for p in paths] == outputs
    record = torch.load(fit_file, weights_only=True)
    assert costs.to_dict("records") == pd.DataFrame(record["fit"]["costs"]).to_dict("records")
    assert costs.threads.tolist() == [1] * len(costs)                   # the thread count the timing ran with
    flows = autoregressive.fitted_flows(record["fit"])                  # the saved flows are the ones drawn
    for role, kl in zip(["maf", "iaf"], record["fit"]["panels"]["kls"]):
        again = kl_both_ways(*flows[role], role, mixture_target(), n=record["settings"]["panels"]["n_kl"])
        assert all(abs(again[way][0] - kl[way][0]) < 1e-4 for way in ("forward", "reverse"))

    record["settings"]["fits"]["steps"] = 51                            # as if fitted with other settings: fit again
    torch.save(record, fit_file)
    make_figures(tmp_path, quick=True)
    assert len(calls) == 2 and calls[-1]["fits"]["steps"] == 50
    make_figures(tmp_path, quick=True, refit=True)
    assert len(calls) == 3


def test_time_costs_rows():
    costs = time_costs([2, 3], batch=4, hidden_sizes=(4,), depth=1, repeats=1, progress=False)
    assert len(costs) == 8 and costs.made_passes.tolist() == [1, 1, 2, 3, 1, 1, 3, 4]
