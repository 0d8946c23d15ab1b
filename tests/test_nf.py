"""Property tests for iaf_repro.nf: planar, radial and additive coupling layers, their constraints and inverses."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, strategies as st

from iaf_repro.density import FlowChain, autograd_log_det
from iaf_repro.nf import (ENERGIES, AdditiveCoupling, PlanarFlow, RadialFlow, fit_reverse_kl, flow_log_density,
                          log_partition, make_flow, planar_u_hat, radial_alpha_beta, reverse_kl)

dims, batches, seeds = st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**16)
raw = st.floats(-1e6, 1e6, allow_nan=False)          # arbitrary unconstrained parameter values, extremes included


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
    u_hat = planar_u_hat(u, w)
    assert torch.isfinite(u_hat).all()
    w_dot_u = (w @ u).item()
    assert (w @ u_hat).item() >= -1 - 1e-9 * (1 + abs(w_dot_u))       # rounding scales with |wᵀu|
    if (w @ w).item() > 1e-100:                                       # away from underflow: wᵀû = m(wᵀu) exactly
        m = -1 + F.softplus(torch.tensor(w_dot_u, dtype=torch.float64)).item()
        assert math.isclose((w @ u_hat).item(), m, rel_tol=1e-9, abs_tol=1e-9 * (1 + abs(w_dot_u)))


def test_planar_constraint_needs_norm_squared():
    # the common bug divides by ‖w‖: with ‖w‖ = 0.5 and wᵀu = -5 it leaves wᵀû < -1; Eq. 5 does not
    w = torch.tensor([0.5, 0.0], dtype=torch.float64)
    u = torch.tensor([-10.0, 3.0], dtype=torch.float64)
    wu = w @ u
    wrong = u + (-1 + F.softplus(wu) - wu) * w / w.norm()
    assert (w @ wrong).item() < -1 < (w @ planar_u_hat(u, w)).item()


@given(alpha_raw=raw, beta_raw=raw)
def test_radial_constraint_holds_for_any_raw_parameters(alpha_raw, beta_raw):
    alpha, beta = radial_alpha_beta(torch.tensor(alpha_raw, dtype=torch.float64), torch.tensor(beta_raw, dtype=torch.float64))
    assert alpha.item() >= 0 and beta.item() >= -alpha.item()
    assert math.isfinite(alpha.item()) and math.isfinite(beta.item())


# --- invertibility: the map along w is monotone, and the inverses recover z ---

@given(data=st.data(), D=dims)
def test_planar_map_along_w_is_monotone(data, D):
    u = torch.tensor(data.draw(st.lists(st.floats(-100, 100), min_size=D, max_size=D)), dtype=torch.float64)
    w = torch.tensor(data.draw(st.lists(st.floats(-100, 100), min_size=D, max_size=D)), dtype=torch.float64)
    c = w @ planar_u_hat(u, w)
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


# --- finite outputs for extreme but valid inputs ---

big = st.floats(-1e4, 1e4, allow_nan=False)


@given(data=st.data(), B=batches, D=dims)
def test_planar_finite_for_extreme_inputs(data, B, D):
    # valid = wᵀu not so negative that m(wᵀu) rounds to exactly -1 (then a point on the hyperplane has log-det -inf)
    params = [torch.tensor(data.draw(st.lists(st.floats(-50, 50), min_size=D, max_size=D)), dtype=torch.float64) for _ in range(2)]
    assume((params[0] @ params[1]).item() > -20)
    layer = PlanarFlow(D).double()
    with torch.no_grad():
        layer.u.copy_(params[0]); layer.w.copy_(params[1]); layer.b.fill_(data.draw(big))
    z = torch.tensor(data.draw(st.lists(st.lists(big, min_size=D, max_size=D), min_size=B, max_size=B)), dtype=torch.float64)
    z_new, log_det = layer(z)
    assert torch.isfinite(z_new).all() and torch.isfinite(log_det).all()


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
    z_new, log_det = layer(torch.zeros(4, 3), torch.zeros(4, 7))      # a well-formed context is ignored
    assert z_new.shape == (4, 3) and log_det.shape == (4,)


def test_bad_constructor_and_energy_inputs_raise():
    with pytest.raises(ValueError, match="dim >= 2"): AdditiveCoupling(1)
    with pytest.raises(ValueError, match="unknown flow kind"): make_flow("sylvester", 2)
    with pytest.raises(ValueError, match="expected 2"): ENERGIES["U3"](torch.zeros(4, 3))


# --- the fit itself ---

def test_short_fit_lowers_the_loss_and_the_kl():
    torch.manual_seed(0)
    flow = make_flow("planar", 4)
    log_Z = log_partition(ENERGIES["U2"])
    kl_before, _ = reverse_kl(flow, ENERGIES["U2"], log_Z, n=20_000)
    history = fit_reverse_kl(flow, ENERGIES["U2"], n_iter=300, batch=128, progress=False)
    kl_after, se = reverse_kl(flow, ENERGIES["U2"], log_Z, n=20_000)
    assert len(history) == 300 and sum(history[-30:]) < sum(history[:30])
    assert 0 < kl_after + 5 * se and kl_after < kl_before                # KL ≥ 0 up to Monte Carlo noise
