"""Property tests for iaf_repro.nf: planar, radial and additive coupling layers, their constraints and inverses."""
import csv
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, strategies as st

from iaf_repro import nf
from iaf_repro.density import FlowChain, autograd_log_det
from iaf_repro.iaf import IAFStep
from iaf_repro.nf import (ENERGIES, AdditiveCoupling, PlanarFlow, RadialFlow, annealed_beta, fit_reverse_kl,
                          flow_log_density, log_partition, make_flow, planar_u_hat, radial_alpha_beta, reverse_kl)

dims, batches, seeds = st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**16)
raw = st.floats(-1e6, 1e6, allow_nan=False)          # arbitrary unconstrained parameter values, extremes included
EPS = torch.finfo(torch.float64).eps


def _planar(D, seed, scale=1.0):
    "A float64 planar layer with random parameters of the given scale."
    g = torch.Generator().manual_seed(seed)
    layer = PlanarFlow(D).double()
    with torch.no_grad():
        for p in (layer.u, layer.w, layer.b): p.copy_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return layer


def _radial(D, seed, alpha_raw, beta_raw):
    g = torch.Generator().manual_seed(seed)
    layer = RadialFlow(D).double()
    with torch.no_grad():
        layer.z0.copy_(torch.randn(D, generator=g, dtype=torch.float64))
        layer.alpha_raw.fill_(alpha_raw); layer.beta_raw.fill_(beta_raw)
    return layer


# --- log-det against the autograd Jacobian (float64) ---

@given(B=batches, D=dims, seed=seeds, scale=st.floats(0.1, 3.0))
def test_planar_log_det_matches_autograd(B, D, seed, scale):
    layer = _planar(D, seed, scale)
    z = 2 * torch.randn(B, D, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    z_new, log_det = layer(z)
    assert z_new.shape == (B, D) and log_det.shape == (B,)
    torch.testing.assert_close(log_det, autograd_log_det(layer, z), rtol=1e-9, atol=1e-9)


@given(B=batches, D=dims, seed=seeds, alpha_raw=st.floats(-5, 5), beta_raw=st.floats(-8, 8))
def test_radial_log_det_matches_autograd(B, D, seed, alpha_raw, beta_raw):
    layer = _radial(D, seed, alpha_raw, beta_raw)
    z = 2 * torch.randn(B, D, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    z_new, log_det = layer(z)
    assert z_new.shape == (B, D) and log_det.shape == (B,)
    torch.testing.assert_close(log_det, autograd_log_det(layer, z), rtol=1e-8, atol=1e-8)


@given(B=batches, D=st.integers(2, 7), hidden=st.integers(1, 16), flip=st.booleans(), seed=seeds)
def test_coupling_is_volume_preserving_and_inverts(B, D, hidden, flip, seed):
    torch.manual_seed(seed)
    layer = AdditiveCoupling(D, hidden, flip).double()
    z = torch.randn(B, D, dtype=torch.float64)
    z_new, log_det = layer(z)
    assert torch.equal(log_det, torch.zeros(B, dtype=torch.float64))
    torch.testing.assert_close(autograd_log_det(layer, z), log_det, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.inverse(z_new), z, rtol=0, atol=1e-12)
    d = D // 2
    kept = slice(d, None) if flip else slice(0, d)                    # the conditioning half passes unchanged
    assert torch.equal(z_new[:, kept], z[:, kept])


def test_chain_of_all_three_matches_autograd():
    torch.manual_seed(0)
    chain = FlowChain(PlanarFlow(3), RadialFlow(3), AdditiveCoupling(3, 8), AdditiveCoupling(3, 8, flip=True), PlanarFlow(3)).double()
    z = torch.randn(6, 3, dtype=torch.float64)
    h = torch.randn(6, 4, dtype=torch.float64)                        # a chain hands every layer its context
    torch.testing.assert_close(chain(z, h)[1], autograd_log_det(chain, z), rtol=1e-9, atol=1e-9)


# --- invertibility constraints hold for arbitrary raw parameters ---

@given(data=st.data(), D=dims)
def test_planar_constraint_holds_for_any_raw_parameters(data, D):
    u = torch.tensor(data.draw(st.lists(raw, min_size=D, max_size=D)), dtype=torch.float64)
    w = torch.tensor(data.draw(st.lists(raw, min_size=D, max_size=D)), dtype=torch.float64)
    u_hat, margin = planar_u_hat(u, w)
    assert torch.isfinite(u_hat).all() and torch.isfinite(margin)
    a = (w @ u).item()
    # the margin 1 + wᵀû is softplus(wᵀu), positive until softplus underflows (wᵀu < -744 in float64)
    exact = a + math.log1p(math.exp(-a)) if a > 0 else math.log1p(math.exp(a))
    assert math.isclose(margin.item(), exact, rel_tol=1e-13, abs_tol=0)
    assert margin.item() > 0 or a < -744
    if (w @ w).item() > 1e-100:                                       # away from underflow of ‖w‖²: wᵀû = m(wᵀu)
        # recomputing wᵀû from û is a dot product: its rounding error is bounded by a few D·eps·Σ|w_i||û_i|
        # (Higham, Accuracy and Stability, Sec. 3.1), plus the rounding of û itself, of order eps(|w|ᵀ|u| + |wᵀu|)
        tol = 2 * (D + 2) * EPS * ((w.abs() @ u.abs()).item() + (w.abs() @ u_hat.abs()).item() + abs(a) + 2)
        assert abs((w @ u_hat).item() - (margin.item() - 1)) <= tol


def test_planar_constraint_needs_norm_squared():
    # the common bug divides by ‖w‖: with ‖w‖ = 0.5 and wᵀu = -5 it leaves wᵀû < -1; Eq. 5 does not
    w = torch.tensor([0.5, 0.0], dtype=torch.float64)
    u = torch.tensor([-10.0, 3.0], dtype=torch.float64)
    wu = w @ u
    wrong = u + (-1 + F.softplus(wu) - wu) * w / w.norm()
    assert (w @ wrong).item() < -1 < (w @ planar_u_hat(u, w)[0]).item()


@given(alpha_raw=raw, beta_raw=raw)
def test_radial_constraint_holds_for_any_raw_parameters(alpha_raw, beta_raw):
    alpha, beta = radial_alpha_beta(torch.tensor(alpha_raw, dtype=torch.float64), torch.tensor(beta_raw, dtype=torch.float64))
    assert alpha.item() > 0 and beta.item() >= -alpha.item()            # α > 0 even where softplus(α̃) underflows
    assert math.isfinite(alpha.item()) and math.isfinite(beta.item())


@given(B=batches, D=dims, seed=seeds, alpha_raw=raw, beta_raw=st.floats(-10, 1e6))
def test_radial_finite_at_its_centre_for_any_alpha(B, D, seed, alpha_raw, beta_raw):
    # at z = z0 (r = 0) Eq. 6 divides by α: α = softplus(α̃) alone underflows to 0 for α̃ < -744 and gave NaN.
    # (β̃ ≥ -10 keeps softplus(β̃) above 1e-16 α: below that 1 + β/α rounds to 0 at z0, the documented edge)
    layer = _radial(D, seed, alpha_raw, beta_raw)
    z = layer.z0.detach().expand(B, D).clone()
    z_new, log_det = layer(z)
    assert torch.isfinite(z_new).all() and torch.isfinite(log_det).all()
    torch.testing.assert_close(z_new, z, rtol=0, atol=0)               # the centre stays put


# --- invertibility: the map along w is monotone, and the inverses recover z ---

@given(data=st.data(), D=dims)
def test_planar_map_along_w_is_monotone(data, D):
    u = torch.tensor(data.draw(st.lists(st.floats(-100, 100), min_size=D, max_size=D)), dtype=torch.float64)
    w = torch.tensor(data.draw(st.lists(st.floats(-100, 100), min_size=D, max_size=D)), dtype=torch.float64)
    c = w @ planar_u_hat(u, w)[0]
    s = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    t = s + c * torch.tanh(s)                                          # Eq. 4: wᵀf(z) + b as a function of wᵀz + b
    assert (t.diff() >= 0).all()


@given(B=batches, D=dims, seed=seeds, scale=st.floats(0.1, 5.0))
def test_planar_inverse_recovers_z(B, D, seed, scale):
    layer = _planar(D, seed, scale)
    z = 3 * torch.randn(B, D, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    torch.testing.assert_close(layer.inverse(layer(z)[0]), z, rtol=1e-9, atol=1e-9)


@given(B=batches, D=dims, seed=seeds, alpha_raw=st.floats(-5, 5), beta_raw=st.floats(-10, 10))
def test_radial_inverse_recovers_z(B, D, seed, alpha_raw, beta_raw):
    layer = _radial(D, seed, alpha_raw, beta_raw)
    z = 3 * torch.randn(B, D, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    torch.testing.assert_close(layer.inverse(layer(z)[0]), z, rtol=1e-8, atol=1e-8)


def test_flow_log_density_matches_forward_pass():
    torch.manual_seed(0)
    flow = make_flow("planar", 6).double()
    z0 = torch.randn(200, 2, dtype=torch.float64)
    z_K, log_det = flow(z0)
    log_q = -0.5 * (z0**2).sum(1) - math.log(2 * math.pi) - log_det
    torch.testing.assert_close(flow_log_density(flow, z_K.detach()), log_q.detach(), rtol=1e-8, atol=1e-8)


def test_flow_log_density_inverts_a_chain_with_conditional_iaf_steps():
    # every layer's inverse takes (y, h), so one loop inverts planar/radial/coupling layers next to IAF steps
    torch.manual_seed(0)
    D, C = 3, 4
    chain = FlowChain(PlanarFlow(D), IAFStep(D, context_dim=C, hidden_sizes=[16]), RadialFlow(D),
                      AdditiveCoupling(D, 8), IAFStep(D, context_dim=C, hidden_sizes=[16], reverse=True)).double()
    z0, h = torch.randn(50, D, dtype=torch.float64), torch.randn(50, C, dtype=torch.float64)
    z_K, log_det = chain(z0, h)
    log_q = -0.5 * (z0**2).sum(1) - 1.5 * math.log(2 * math.pi) - log_det
    torch.testing.assert_close(flow_log_density(chain, z_K.detach(), h), log_q.detach(), rtol=1e-8, atol=1e-8)


# --- finite outputs for extreme but valid inputs ---

big = st.floats(-1e4, 1e4, allow_nan=False)


def _check_planar_log_det_is_safe(layer, z):
    "Never NaN; finite while softplus(wᵀu) > 0; between 0 and log softplus(wᵀu) (a weighted average of 1 and it)."
    z_new, log_det = layer(z)
    margin = planar_u_hat(layer.u, layer.w)[1].item()
    assert torch.isfinite(z_new).all() and not log_det.isnan().any()
    if margin > 0:
        assert torch.isfinite(log_det).all()
        lo, hi = sorted((0.0, math.log(margin)))
        tol = 1e-12 * (1 + abs(math.log(margin)))
        assert (log_det >= lo - tol).all() and (log_det <= hi + tol).all()


@given(data=st.data(), B=batches, D=dims)
def test_planar_finite_for_extreme_inputs(data, B, D):
    # wᵀu ranges over ±15000 here, far past where softplus(wᵀu) underflows (-744)
    params = [torch.tensor(data.draw(st.lists(st.floats(-50, 50), min_size=D, max_size=D)), dtype=torch.float64) for _ in range(2)]
    layer = PlanarFlow(D).double()
    with torch.no_grad():
        layer.u.copy_(params[0]); layer.w.copy_(params[1]); layer.b.fill_(data.draw(big))
    z = torch.tensor(data.draw(st.lists(st.lists(big, min_size=D, max_size=D), min_size=B, max_size=B)), dtype=torch.float64)
    _check_planar_log_det_is_safe(layer, z)


@given(data=st.data(), B=batches, D=dims, constructed=st.booleans())
def test_planar_finite_on_and_near_the_hyperplane_for_any_raw_parameters(data, B, D, constructed):
    # the old log1p(ûᵀψ) recomputed wᵀû from û; near wᵀû = -1 rounding pushed 1 + ûᵀψ below 0: NaN on the hyperplane
    vec = lambda: torch.tensor(data.draw(st.lists(raw, min_size=D, max_size=D)), dtype=torch.float64)
    w, u = vec(), vec()
    w_sq = (w @ w).item()
    assume(w_sq > 1e-12)                                              # a hyperplane to stand on
    if constructed:                                                   # wᵀu ≪ 0 on purpose, plus a part orthogonal to w
        a = data.draw(st.floats(-2000, 50))
        u = a * w / w_sq + (u - (w @ u) * w / w_sq)
    layer = PlanarFlow(D).double()
    with torch.no_grad():
        layer.u.copy_(u); layer.w.copy_(w); layer.b.fill_(data.draw(raw))
    z = torch.tensor(data.draw(st.lists(st.lists(big, min_size=D, max_size=D), min_size=B, max_size=B)), dtype=torch.float64)
    offset = data.draw(st.sampled_from([0.0, 1e-12, -1e-8, 1e-3]))   # wᵀz + b after the projection
    z = z - ((z @ w + layer.b.detach() - offset) / w_sq)[:, None] * w
    _check_planar_log_det_is_safe(layer, z)


@pytest.mark.parametrize("a", [-40.0, -300.0, -700.0])
def test_planar_log_det_on_the_hyperplane_is_log_softplus(a):
    # w = (2, 0, 0), b = 0: the points (0, x, y) lie exactly on the hyperplane, where 1 + ûᵀψ = softplus(wᵀu)
    layer = PlanarFlow(3).double()
    with torch.no_grad():
        layer.w.copy_(torch.tensor([2.0, 0.0, 0.0])); layer.u.copy_(torch.tensor([a / 2, 5.0, -3.0])); layer.b.zero_()
    z = torch.tensor([[0.0, 1.0, -2.0], [0.0, -7.0, 0.5]], dtype=torch.float64)
    log_det = layer(z)[1]
    expected = math.log(math.log1p(math.exp(a)))                      # ≈ a for a ≪ 0
    torch.testing.assert_close(log_det, torch.full((2,), expected, dtype=torch.float64), rtol=1e-12, atol=0)
    with torch.no_grad(): layer.u[0] = -500.0                          # wᵀu = -1000: softplus underflows to 0
    assert not layer(z)[1].isnan().any()


@given(data=st.data(), B=batches, D=dims, alpha_raw=st.floats(-20, 20), beta_raw=st.floats(-20, 50))
def test_radial_finite_for_extreme_inputs(data, B, D, alpha_raw, beta_raw):
    layer = _radial(D, 0, alpha_raw, beta_raw)
    z = torch.tensor(data.draw(st.lists(st.lists(big, min_size=D, max_size=D), min_size=B, max_size=B)), dtype=torch.float64)
    z_new, log_det = layer(z)
    assert torch.isfinite(z_new).all() and torch.isfinite(log_det).all()


@given(name=st.sampled_from(sorted(ENERGIES)))
def test_energies_finite_far_from_the_box(name):
    z = torch.tensor([[0.0, 0.0], [30.0, -30.0], [-1e3, 1e3], [4.0, 0.0]], dtype=torch.float64)
    assert torch.isfinite(ENERGIES[name](z)).all()


def test_u2_normalizer_is_the_closed_form():
    # Gaussian of width 0.4 in z2 for every z1; box of length 8 in z1 plus two half-Gaussian walls of width 0.2
    expected = math.log(0.4 * math.sqrt(2 * math.pi) * (8 + 0.4 * math.sqrt(math.pi / 2)))
    assert math.isclose(log_partition(ENERGIES["U2"]), expected, abs_tol=1e-6)


# --- bad input raises a clear error ---

@pytest.mark.parametrize("layer", [PlanarFlow(3), RadialFlow(3), AdditiveCoupling(3)])
def test_wrong_dim_and_bad_context_raise(layer):
    with pytest.raises(ValueError, match="expected 3"): layer(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="shape \\[batch, dim\\]"): layer(torch.zeros(3))
    with pytest.raises(ValueError, match="batch 5"): layer(torch.zeros(4, 3), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="expected 3"): layer.inverse(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="batch 5"): layer.inverse(torch.zeros(4, 3), torch.zeros(5, 2))
    z_new, log_det = layer(torch.zeros(4, 3), torch.zeros(4, 7))      # a well-formed context is ignored
    assert z_new.shape == (4, 3) and log_det.shape == (4,)
    assert torch.equal(layer.inverse(z_new, torch.zeros(4, 7)), layer.inverse(z_new))


def test_bad_constructor_and_energy_inputs_raise():
    with pytest.raises(ValueError, match="dim >= 2"): AdditiveCoupling(1)
    with pytest.raises(ValueError, match="dim >= 1"): PlanarFlow(0)
    with pytest.raises(ValueError, match="dim >= 1"): RadialFlow(0)
    with pytest.raises(ValueError, match="unknown flow kind"): make_flow("sylvester", 2)
    with pytest.raises(ValueError, match="expected 2"): ENERGIES["U3"](torch.zeros(4, 3))


# --- the fit itself ---

def test_annealed_beta_schedule():
    assert [annealed_beta(t, 100) for t in (0, 49, 99, 500)] == [0.01, 0.5, 1.0, 1.0]
    assert annealed_beta(0, 0) == annealed_beta(7, 0) == 1.0           # no warm-up: the full energy from the start
    with pytest.raises(ValueError, match="n_warmup must be >= 0"): annealed_beta(0, -1)


def test_short_fit_lowers_the_loss_and_the_kl():
    torch.manual_seed(0)
    flow = make_flow("planar", 4)
    log_Z = log_partition(ENERGIES["U2"])
    kl_before, _ = reverse_kl(flow, ENERGIES["U2"], log_Z, n=20_000)
    history = fit_reverse_kl(flow, ENERGIES["U2"], n_iter=300, batch=128, progress=False)
    kl_after, se = reverse_kl(flow, ENERGIES["U2"], log_Z, n=20_000)
    assert len(history) == 300 and sum(history[-30:]) < sum(history[:30])
    assert 0 < kl_after + 5 * se and kl_after < kl_before                # KL ≥ 0 up to Monte Carlo noise


# --- the chapter's figure, drawn from a saved fit ---

def _counting(monkeypatch, module, name):
    "Replace `module.name` by a wrapper that records each call's keywords and runs the real function once, then replays its result."
    real, calls, result = getattr(module, name), [], []
    def fit(**kwargs):
        calls.append(kwargs)
        if not result: result.append(real(**kwargs))
        return result[0]
    monkeypatch.setattr(module, name, fit)
    return calls


def test_make_figures_fits_once_then_draws_from_the_saved_fit(tmp_path, monkeypatch):
    calls = _counting(monkeypatch, nf, "fit_energy_grid")
    paths = nf.make_figures(tmp_path, quick=True)
    outputs = [p.read_bytes() for p in paths]
    fit_file = tmp_path / "fits" / "planar_radial.pt"
    record = torch.load(fit_file, weights_only=True)
    assert len(calls) == 1 and record["settings"] == {k: v for k, v in calls[0].items() if k != "progress"}
    assert nf.make_figures(tmp_path, quick=True) == paths and len(calls) == 1           # drawn from the file, not fitted
    assert [p.read_bytes() for p in paths] == outputs                                     # byte for byte the same
    with open(paths[1]) as f: table = list(csv.DictReader(f))
    assert {(r["commit"], r["date"]) for r in table} == {(record["provenance"]["commit"], record["provenance"]["date"])}
    flows, log_Z = nf.energy_grid_flows(record["fit"]), log_partition(ENERGIES["U3"])
    for row in table[8:12]:                                                              # U3: the saved flows are the fitted ones
        kl, _ = reverse_kl(flows["U3", row["flow"], int(row["K"])], ENERGIES["U3"], log_Z, n=record["settings"]["n_kl"])
        assert abs(kl - float(row["kl_nats"])) < 1e-3
    record["settings"] = dict(record["settings"], n_iter=41)                             # as if fitted with other settings
    torch.save(record, fit_file)
    nf.make_figures(tmp_path, quick=True)
    assert len(calls) == 2 and calls[-1]["n_iter"] == 40
    nf.make_figures(tmp_path, quick=True, refit=True)
    assert len(calls) == 3
