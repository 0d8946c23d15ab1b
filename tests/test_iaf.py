"""Property tests for iaf_repro.iaf: log-det, triangular structure, inverses, stability, log q and the linear IAF."""
import pytest
import torch
from hypothesis import given, strategies as st

from iaf_repro.density import FlowChain, autograd_log_det, log_normal_diag, log_standard_normal
from iaf_repro.iaf import (IAF, IAFStep, LinearIAFStep, diagonal_kl_floor, fit_funnel, fit_linear_iaf, flow_jacobian,
                           funnel_log_prob, gaussian_kl, iaf_log_q, linear_iaf_covariance, location_only_kl_floor,
                           make_figures)

F64 = torch.float64


@st.composite
def step_configs(draw):
    D = draw(st.integers(1, 8))
    hidden = draw(st.lists(st.integers(1, 24), min_size=1, max_size=2))
    return dict(D=D, context_dim=draw(st.integers(0, 3)), hidden_sizes=hidden,
                learned_sigma=draw(st.booleans()))


def batch(cfg, B, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, cfg["D"], generator=g, dtype=F64)
    h = torch.randn(B, cfg["context_dim"], generator=g, dtype=F64) if cfg["context_dim"] else None
    return z, h


def randomize_(module, scale, seed):
    "Overwrite every parameter with N(0, scale^2) noise: arbitrary raw parameters, not just the initialisation."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


@given(cfg=step_configs(), reverse=st.booleans(), B=st.integers(1, 5), seed=st.integers(0, 2**16),
       scale=st.sampled_from([None, 0.3, 1.0]))
def test_step_log_det_matches_autograd(cfg, reverse, B, seed, scale):
    torch.manual_seed(seed)
    step = IAFStep(**cfg, reverse=reverse).double()
    if scale: randomize_(step, scale, seed)
    z, h = batch(cfg, B, seed)
    z_new, log_det = step(z, h)
    assert z_new.shape == (B, cfg["D"]) and log_det.shape == (B,)
    # The exact log-det of a triangular matrix is the sum of its log-diagonal: check the autograd Jacobian is
    # triangular in the step's order, then compare with its diagonal. (slogdet's pivoted LU loses relative
    # precision when sigma is tiny, as with raw weights of scale 1: seen 1e-5 at log_det = -43.)
    perm = torch.argsort(step.made.order)
    for b in range(B):
        jac = flow_jacobian(step, z[b], None if h is None else h[b])[perm][:, perm]     # [D, D] in autoregressive order
        assert (jac.triu(1) == 0).all()
        torch.testing.assert_close(log_det[b], jac.diagonal().abs().log().sum(), rtol=1e-12, atol=1e-12)
    if scale is None:                                                                # well-conditioned: slogdet agrees too
        torch.testing.assert_close(log_det, autograd_log_det(step, z, h), rtol=1e-9, atol=1e-9)
    if not cfg["learned_sigma"]:
        assert (log_det == 0).all()


@given(cfg=step_configs(), reverse=st.booleans(), seed=st.integers(0, 2**16))
def test_step_jacobian_is_triangular_with_sigma_on_the_diagonal(cfg, reverse, seed):
    torch.manual_seed(seed)
    step = randomize_(IAFStep(**cfg, reverse=reverse).double(), 0.5, seed)
    z, h = batch(cfg, 1, seed)
    jac = flow_jacobian(step, z[0], None if h is None else h[0])
    forbidden = torch.tril(jac, -1) if reverse else torch.triu(jac, 1)
    assert (forbidden == 0).all()                                           # exact zeros, not small numbers
    m, s = step.m_and_s(z, h)
    diagonal = torch.sigmoid(s[0]) if cfg["learned_sigma"] else torch.ones(cfg["D"], dtype=F64)
    torch.testing.assert_close(jac.diagonal(), diagonal, rtol=1e-12, atol=1e-12)


@given(cfg=step_configs(), depth=st.integers(1, 4), B=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_chain_log_det_matches_autograd_and_inverse_recovers_z(cfg, depth, B, seed):
    torch.manual_seed(seed)
    flow = IAF(depth=depth, **cfg).double()
    assert [step.reverse for step in flow.layers] == [t % 2 == 1 for t in range(depth)]
    z, h = batch(cfg, B, seed)
    z_T, log_det = flow(z, h)
    torch.testing.assert_close(log_det, autograd_log_det(flow, z, h), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(flow.inverse(z_T, h), z, rtol=1e-10, atol=1e-10)


@given(cfg=step_configs(), reverse=st.booleans(), B=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_step_inverse_recovers_z_for_arbitrary_parameters(cfg, reverse, B, seed):
    step = randomize_(IAFStep(**cfg, reverse=reverse).double(), 0.5, seed)
    z, h = batch(cfg, B, seed)
    torch.testing.assert_close(step.inverse(step(z, h)[0], h), z, rtol=1e-9, atol=1e-9)


@given(D=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_two_step_jacobian_is_dense_with_order_reversal_and_triangular_without(D, seed):
    "Autograd Jacobians of the composite two-step maps: reversed order fills every entry, same order leaves the upper triangle 0."
    torch.manual_seed(seed)
    flow = IAF(D, depth=2, hidden_sizes=[3 * D, 3 * D]).double()
    first, second = flow.layers[0], IAFStep(D, hidden_sizes=[3 * D, 3 * D]).double()
    z = torch.randn(D, dtype=F64)
    assert (flow_jacobian(flow, z) != 0).all()                              # reversed: dense
    same_order = flow_jacobian(FlowChain(first, second), z)                 # autograd through the composite map
    assert (torch.triu(same_order, 1) == 0).all()                           # same order: still triangular
    permitted = torch.tril(torch.ones(D, D, dtype=torch.bool))
    assert (same_order[permitted] != 0).all()                               # ... with every permitted entry used


@given(cfg=step_configs(), depth=st.integers(1, 4), B=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_log_q_matches_autograd_of_the_whole_sampling_path(cfg, depth, B, seed):
    torch.manual_seed(seed)
    flow = IAF(depth=depth, **cfg).double()
    D, C = cfg["D"], cfg["context_dim"]
    eps, h = batch(cfg, B, seed)
    mu, log_sigma0 = torch.randn(B, D, dtype=F64), 0.5 * torch.randn(B, D, dtype=F64)
    _, log_det = flow(mu + log_sigma0.exp() * eps, h)
    log_q = iaf_log_q(eps, log_sigma0, log_det)

    def sampling_path(eps, ctx):                                            # mu, log sigma_0 ride in the context
        return flow(ctx[:, C:C + D] + ctx[:, C + D:].exp() * eps, ctx[:, :C] if C else None)
    ctx = torch.cat([h if C else torch.zeros(B, 0, dtype=F64), mu, log_sigma0], 1)
    reference = log_standard_normal(eps) - autograd_log_det(sampling_path, eps, ctx)
    torch.testing.assert_close(log_q, reference, rtol=1e-9, atol=1e-9)


def test_log_q_without_flow_is_the_encoder_gaussian():
    eps, mu, log_sigma0 = torch.randn(6, 3, dtype=F64), torch.randn(6, 3, dtype=F64), torch.randn(6, 3, dtype=F64)
    log_q = iaf_log_q(eps, log_sigma0, torch.zeros(6, dtype=F64))
    torch.testing.assert_close(log_q, log_normal_diag(mu + log_sigma0.exp() * eps, mu, log_sigma0))


@pytest.mark.parametrize("s_bias", [1.0, 2.0])
def test_gate_starts_near_the_forget_gate_bias(s_bias):
    torch.manual_seed(0)
    step = IAFStep(10, context_dim=4, hidden_sizes=[64, 64], s_bias=s_bias)
    _, s = step.m_and_s(torch.randn(256, 10), torch.randn(256, 4))
    assert (s.mean() - s_bias).abs() < 0.2 and s.std() < 0.5


@pytest.mark.parametrize("learned_sigma", [True, False])
def test_extreme_inputs_and_huge_weights_give_finite_outputs(learned_sigma):
    torch.manual_seed(0)
    flow = IAF(8, context_dim=3, depth=4, hidden_sizes=[32, 32], learned_sigma=learned_sigma)
    with torch.no_grad():
        for name, p in flow.named_parameters():
            if name.endswith("weight"): p.mul_(1e3)
    z, h = 1e3 * torch.randn(16, 8), 1e3 * torch.randn(16, 3)
    z_T, log_det = flow(z, h)
    assert torch.isfinite(z_T).all() and torch.isfinite(log_det).all()
    if learned_sigma:
        assert (log_det <= 0).all() and (log_det < 0).any()                 # sigma in (0, 1): log-det bounded above
    else:
        assert (log_det == 0).all()                                         # constant sigma: volume preserving, exactly


def test_bad_input_is_rejected_clearly():
    step = IAFStep(3, context_dim=2, hidden_sizes=[8])
    z, h = torch.zeros(4, 3), torch.zeros(4, 2)
    with pytest.raises(ValueError, match="expected 3"):
        step(torch.zeros(4, 5), h)
    with pytest.raises(ValueError, match="needs a context"):
        step(z)
    with pytest.raises(ValueError, match="needs a context"):
        step.inverse(z)
    with pytest.raises(ValueError, match="takes no context"):
        IAFStep(3, hidden_sizes=[8])(z, h)
    with pytest.raises(ValueError, match="takes no context"):
        IAF(3, hidden_sizes=[8]).inverse(z, h)
    with pytest.raises(ValueError, match="z_new has dim 4"):
        step.inverse(torch.zeros(4, 4), h)
    with pytest.raises(ValueError, match="batch 5"):
        IAF(3, context_dim=2, hidden_sizes=[8])(z, torch.zeros(5, 2))
    with pytest.raises(ValueError, match="depth must be >= 1"):
        IAF(3, depth=0)
    with pytest.raises(ValueError, match="log_det must have shape"):
        iaf_log_q(z, torch.zeros(4, 3), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="expected 3"):
        LinearIAFStep(3)(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="h has batch 5"):
        LinearIAFStep(3)(z, torch.zeros(5, 2))
    with pytest.raises(ValueError, match="x has dim 3, expected 2"):
        funnel_log_prob(z)


def test_linear_step_accepts_and_ignores_a_context():
    step = randomize_(LinearIAFStep(3).double(), 1.0, 0)
    z, h = torch.randn(4, 3, dtype=F64), torch.randn(4, 7, dtype=F64)
    for with_h, without_h in zip(step(z, h), step(z)):
        assert torch.equal(with_h, without_h)


@given(D=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_linear_step_is_affine_with_the_covariance_of_eq_12(D, seed):
    step = randomize_(LinearIAFStep(D).double(), 1.0, seed)
    z = torch.randn(4, D, dtype=F64)
    L, c = step.affine()
    torch.testing.assert_close(flow_jacobian(step, z[0]), L)
    assert (torch.triu(L, 1) == 0).all()
    torch.testing.assert_close(step(z)[0], z @ L.T + c)
    torch.testing.assert_close(step(z)[1], autograd_log_det(step, z), rtol=1e-10, atol=1e-10)
    sigma0 = torch.rand(D, dtype=F64) + 0.5
    torch.testing.assert_close(linear_iaf_covariance(step, sigma0), L @ torch.diag(sigma0**2) @ L.T)


def test_linear_step_sample_covariance_matches_eq_12():
    step = LinearIAFStep(3).double()
    with torch.no_grad():
        step.W.copy_(torch.tensor([[0, 0, 0], [2.0, 0, 0], [-1.0, 1.5, 0]])); step.s.copy_(torch.tensor([1.0, 0.0, 0.5]))
    sigma0, N = torch.tensor([1.0, 0.5, 2.0], dtype=F64), 100_000
    g = torch.Generator().manual_seed(0)
    z_1 = step(sigma0 * torch.randn(N, 3, generator=g, dtype=F64))[0].detach()
    cov = linear_iaf_covariance(step, sigma0).detach()
    std_error = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / N).sqrt()
    assert ((torch.cov(z_1.T) - cov).abs() / std_error).max() < 5
    assert cov[~torch.eye(3, dtype=torch.bool)].abs().min() > 0.1            # full covariance


@given(D=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_gaussian_kl_and_the_diagonal_floor(D, seed):
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(D, D, generator=g, dtype=F64), torch.randn(D, D, generator=g, dtype=F64)
    cov_p, cov_q = A @ A.T + 0.5 * torch.eye(D, dtype=F64), B @ B.T + 0.5 * torch.eye(D, dtype=F64)
    mean_p, mean_q = torch.randn(D, generator=g, dtype=F64), torch.randn(D, generator=g, dtype=F64)
    precision, diff = torch.linalg.inv(cov_p), mean_q - mean_p                # Eq. (13), written out
    eq_13 = 0.5 * (torch.trace(precision @ cov_q) + diff @ precision @ diff - D + torch.logdet(cov_p) - torch.logdet(cov_q))
    torch.testing.assert_close(gaussian_kl(mean_q, cov_q, mean_p, cov_p), eq_13)
    best_diag = torch.diag(1 / torch.linalg.inv(cov_p).diagonal())           # v_i = 1 / Lambda_ii
    floor = diagonal_kl_floor(cov_p)
    assert abs(gaussian_kl(mean_p, best_diag, mean_p, cov_p).item() - floor) < 1e-10
    other_diag = best_diag * (torch.rand(D, generator=g, dtype=F64) + 0.5)
    assert gaussian_kl(mean_q, other_diag, mean_p, cov_p).item() >= floor - 1e-12


def test_linear_iaf_reaches_zero_kl_where_the_diagonal_stalls_at_its_floor():
    mean_p, cov_p = torch.tensor([1.0, -1.0]), torch.tensor([[2.0, 1.2], [1.2, 1.0]])
    floor = diagonal_kl_floor(cov_p)
    state = torch.get_rng_state()
    kl_diag, *_ = fit_linear_iaf(mean_p, cov_p, linear_iaf=False, seed=1)
    kl_iaf, _, cov_q = fit_linear_iaf(mean_p, cov_p, linear_iaf=True, seed=1)
    assert torch.equal(torch.get_rng_state(), state)                        # own generator: global RNG untouched
    assert abs(kl_diag[-1] - floor) < 0.005
    assert kl_iaf[-1] < 0.002
    torch.testing.assert_close(cov_q, cov_p, rtol=0, atol=0.1)
    assert fit_linear_iaf(mean_p, cov_p, n_steps=5, seed=3)[0] == fit_linear_iaf(mean_p, cov_p, n_steps=5, seed=3)[0]


@given(c=st.floats(0.0, 3.0), seed=st.integers(0, 2**16))
def test_funnel_log_prob_is_the_two_gaussian_factors(c, seed):
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    normal = torch.distributions.Normal
    expected = normal(0.0, 1.0).log_prob(x[:, 0]) + normal(0.0, (c * x[:, 0] / 2).exp()).log_prob(x[:, 1])
    torch.testing.assert_close(funnel_log_prob(x, c), expected)


def test_constant_sigma_stalls_at_the_location_only_floor_where_learned_sigma_does_not():
    state = torch.get_rng_state()
    _, kl_learned, _, x_learned = fit_funnel(True, seed=1)
    _, kl_constant, se_constant, x_constant = fit_funnel(False, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    floor = location_only_kl_floor(2.0)
    assert floor - 4 * se_constant < kl_constant < floor + 0.05
    assert kl_learned < 0.2 * floor
    width = lambda x, x1: x[(x[:, 0] - x1).abs() < 0.25, 1].std().item()    # spread of x_2 near a given x_1
    assert 0.8 < width(x_constant, 1.0) / width(x_constant, -1.0) < 1.25 < 3 < width(x_learned, 1.0) / width(x_learned, -1.0)


def test_make_figures_quick(tmp_path):
    paths = make_figures(tmp_path, quick=True)
    assert [p.name for p in paths] == ["iaf_jacobians.png", "iaf_linear_covariance.png", "iaf_learned_vs_constant_sigma.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
