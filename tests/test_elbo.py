"Property tests for iaf_repro.elbo: KL, log-weights, ELBO/IWAE, the chunked log p(x) estimator, the linear-Gaussian model."
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from iaf_repro.elbo import (LinearGaussianModel, _iwae_experiment, elbo, gaussian_kl_diag, importance_sampled_log_px,
                            iwae_bound, iwae_bounds_by_k, log_importance_weights, make_figures, reparameterize)
from iaf_repro.testing import stream_from

SETTINGS = settings(max_examples=25, deadline=None)
F64 = dict(dtype=torch.float64)


def random_model(seed, d_z, d_x, sigma_x):
    g = torch.Generator().manual_seed(seed)
    return LinearGaussianModel(torch.randn(d_x, d_z, generator=g, **F64), torch.randn(d_x, generator=g, **F64), sigma_x)


# ---- closed-form KL and reparameterization -------------------------------------------------------------------

@SETTINGS
@given(B=st.integers(1, 5), D=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_gaussian_kl_diag_matches_torch_and_is_nonnegative(B, D, seed):
    g = torch.Generator().manual_seed(seed)
    mu_q, log_sigma_q, mu_p, log_sigma_p = torch.randn(4, B, D, generator=g, **F64)
    kl = gaussian_kl_diag(mu_q, log_sigma_q, mu_p, log_sigma_p)
    reference = kl_divergence(Normal(mu_q, log_sigma_q.exp()), Normal(mu_p, log_sigma_p.exp())).sum(-1)
    torch.testing.assert_close(kl, reference, rtol=1e-10, atol=1e-10)
    assert kl.shape == (B,) and (kl >= 0).all()
    torch.testing.assert_close(gaussian_kl_diag(mu_q, log_sigma_q, mu_q, log_sigma_q), torch.zeros(B, **F64))


def test_gaussian_kl_diag_rejects_unbatched_input():
    with pytest.raises(ValueError, match=r"mu_q must have shape \[batch, dim\]"):
        gaussian_kl_diag(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3))


@SETTINGS
@given(k=st.integers(1, 6), B=st.integers(1, 4), D=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_reparameterize_log_q_is_the_gaussian_density(k, B, D, seed):
    g = torch.Generator().manual_seed(seed)
    mu, log_sigma = torch.randn(2, B, D, generator=g, **F64)
    z, log_q = reparameterize(mu, log_sigma, k, generator=g)
    assert z.shape == (k, B, D) and log_q.shape == (k, B)
    torch.testing.assert_close(log_q, Normal(mu, log_sigma.exp()).log_prob(z).sum(-1), rtol=1e-10, atol=1e-10)


# ---- log-weights, ELBO and IWAE -------------------------------------------------------------------------------

def test_log_importance_weights_combines_and_checks_shapes():
    a, b, c = torch.randn(3, 4, 2, **F64)
    torch.testing.assert_close(log_importance_weights(a, b, c), a + b - c)
    with pytest.raises(ValueError, match="share one shape"):
        log_importance_weights(a, b, c[:3])
    with pytest.raises(ValueError, match=r"log_pz must be a tensor of shape \[K samples, B batch\]"):
        log_importance_weights(a, b[0], c)
    with pytest.raises(ValueError, match=r"shape \[K samples, B batch\]"):
        elbo(torch.zeros(3))


@SETTINGS
@given(K=st.integers(1, 50), B=st.integers(1, 4), scale=st.floats(0.01, 30), seed=st.integers(0, 10_000))
def test_iwae_bound_between_elbo_and_max(K, B, scale, seed):
    log_w = scale * torch.randn(K, B, generator=torch.Generator().manual_seed(seed), **F64)
    bound = iwae_bound(log_w)
    assert bound.shape == (B,)
    assert (bound >= elbo(log_w) - 1e-12).all()                        # Jensen on the empirical distribution
    assert (bound <= log_w.max(0).values + 1e-12).all()
    torch.testing.assert_close(iwae_bound(log_w[:1]), elbo(log_w[:1]))  # K = 1 is the ELBO


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iwae_bound_is_stable_for_very_negative_log_weights(dtype):
    log_w = torch.randn(100, 3, generator=torch.Generator().manual_seed(0), **F64)
    shifted = (log_w - 1e4).to(dtype)
    assert torch.exp(shifted).max() == 0                                # naive exp-then-average would give log 0
    result = iwae_bound(shifted)
    assert torch.isfinite(result).all()
    torch.testing.assert_close(result.double(), iwae_bound(log_w) - 1e4, rtol=0, atol=1e-2 if dtype == torch.float32 else 1e-9)


def test_iwae_bounds_by_k_uses_prefixes_and_checks_ks():
    log_w = torch.randn(16, 2, **F64)
    torch.testing.assert_close(iwae_bounds_by_k(log_w, [1, 5, 16]), torch.stack([iwae_bound(log_w[:k]) for k in (1, 5, 16)]))
    with pytest.raises(ValueError, match=r"every k must lie in \[1, 16\]"):
        iwae_bounds_by_k(log_w, [0, 4])
    with pytest.raises(ValueError, match=r"every k must lie in \[1, 16\]"):
        iwae_bounds_by_k(log_w, [17])


# ---- the chunked importance-sampled log p(x) ------------------------------------------------------------------

@SETTINGS
@given(k=st.integers(1, 300), chunk=st.integers(1, 400), B=st.integers(1, 4), seed=st.integers(0, 10_000),
       offset=st.sampled_from([0.0, -80.0, -1e4]))
def test_chunked_equals_unchunked_on_the_same_stream(k, chunk, B, seed, offset):
    stream = 5 * torch.randn(k, B, generator=torch.Generator().manual_seed(seed), **F64) + offset
    chunked = importance_sampled_log_px(stream_from(stream), k, chunk)
    unchunked = importance_sampled_log_px(stream_from(stream), k, k)
    torch.testing.assert_close(chunked, unchunked, rtol=0, atol=1e-9)
    torch.testing.assert_close(chunked, iwae_bound(stream), rtol=0, atol=1e-9)
    assert torch.isfinite(chunked).all()


def test_chunked_estimator_with_a_seeded_generator_matches_what_was_drawn():
    generator, drawn = torch.Generator().manual_seed(0), []
    def draw(n):
        drawn.append(torch.randn(n, 3, generator=generator, **F64) - 1e4)
        return drawn[-1]
    estimate = importance_sampled_log_px(draw, k=1000, chunk=64)        # 64 does not divide 1000
    assert [len(d) for d in drawn] == [64] * 15 + [40]
    torch.testing.assert_close(estimate, iwae_bound(torch.cat(drawn)), rtol=0, atol=1e-9)


@pytest.mark.parametrize("k, chunk, message", [(0, 4, "k must be a positive integer"), (-3, 4, "k must be a positive integer"),
                                               (2.5, 4, "k must be a positive integer"), (True, 4, "k must be a positive integer"),
                                               (10, 0, "chunk must be a positive integer")])
def test_chunked_estimator_rejects_bad_counts(k, chunk, message):
    with pytest.raises(ValueError, match=message):
        importance_sampled_log_px(lambda n: torch.zeros(n, 2), k, chunk)


def test_chunked_estimator_rejects_bad_draws():
    with pytest.raises(ValueError, match=r"draw_log_w\(4\) must return log-weights of shape \[4, B\]"):
        importance_sampled_log_px(lambda n: torch.zeros(n + 1, 2), 10, 4)
    batches = iter([3, 2])
    with pytest.raises(ValueError, match=r"shape \[4, 3\], got \(4, 2\)"):
        importance_sampled_log_px(lambda n: torch.zeros(n, next(batches)), 10, 4)
    with pytest.raises(ValueError, match=r"shape \[K samples, B batch\]"):
        importance_sampled_log_px(lambda n: torch.zeros(n), 10, 4)
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        importance_sampled_log_px(lambda n: torch.full((n, 2), float("inf")), 10, 4)


# ---- the linear-Gaussian model --------------------------------------------------------------------------------

@SETTINGS
@given(d_z=st.integers(1, 4), d_x=st.integers(1, 5), sigma_x=st.floats(0.1, 3.0), B=st.integers(1, 4),
       seed=st.integers(0, 10_000))
def test_bayes_rule_and_elbo_gap_identity(d_z, d_x, sigma_x, B, seed):
    model = random_model(seed, d_z, d_x, sigma_x)
    g = torch.Generator().manual_seed(seed + 1)
    _, x = model.sample(B, g)
    mu, L = model.exact_posterior(x)
    z = 2 * torch.randn(3, B, d_z, generator=g, **F64)
    log_px = model.exact_log_px(x)
    torch.testing.assert_close(model.log_joint(x, z) - MultivariateNormal(mu, scale_tril=L).log_prob(z), log_px.expand(3, B))
    mu_q, log_sigma_q = torch.randn(B, d_z, generator=g, **F64), 0.5 * torch.randn(B, d_z, generator=g, **F64)
    gap = model.kl_to_posterior(x, mu_q, log_sigma_q)
    elbo_q = model.elbo_diag(x, mu_q, log_sigma_q)
    # ELBO and gap can each be large and cancel to a small log p(x): float64 rounding scales with the terms added
    cancellation = 1e-12 * (elbo_q.abs() + gap.abs()).max().item()
    torch.testing.assert_close(elbo_q + gap, log_px, rtol=1e-10, atol=1e-9 + cancellation)
    assert (gap >= -1e-10).all()


@SETTINGS
@given(d_z=st.integers(1, 4), d_x=st.integers(1, 5), sigma_x=st.floats(0.1, 3.0), seed=st.integers(0, 10_000))
def test_exact_posterior_gives_zero_variance_weights(d_z, d_x, sigma_x, seed):
    model = random_model(seed, d_z, d_x, sigma_x)
    g = torch.Generator().manual_seed(seed + 1)
    _, x = model.sample(3, g)
    z, log_q = model.sample_posterior(x, k=50, generator=g)
    log_w = log_importance_weights(model.log_likelihood(x, z), model.log_prior(z), log_q)
    expected = model.exact_log_px(x)
    torch.testing.assert_close(log_w, expected.expand(50, 3), rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(iwae_bound(log_w), expected, rtol=1e-10, atol=1e-9)


def test_exact_log_px_by_quadrature_in_one_dimension():
    model = random_model(3, 1, 2, 0.4)
    _, x = model.sample(2, torch.Generator().manual_seed(0))
    axis = torch.linspace(-10, 10, 20_001, **F64)
    log_px = torch.logsumexp(model.log_joint(x, axis[:, None, None].expand(-1, 2, 1)), 0) + torch.log(axis[1] - axis[0])
    torch.testing.assert_close(log_px, model.exact_log_px(x), rtol=0, atol=1e-8)


def test_monte_carlo_elbo_matches_closed_form():
    model = random_model(0, 3, 4, 0.7)
    g = torch.Generator().manual_seed(1)
    _, x = model.sample(3, g)
    mu_q, log_sigma_q = torch.randn(3, 3, generator=g, **F64), 0.3 * torch.randn(3, 3, generator=g, **F64)
    z, log_q = reparameterize(mu_q, log_sigma_q, 100_000, g)
    log_w = log_importance_weights(model.log_likelihood(x, z), model.log_prior(z), log_q)
    se = log_w.std(0) / math.sqrt(len(log_w))
    assert ((elbo(log_w) - model.elbo_diag(x, mu_q, log_sigma_q)).abs() < 4 * se).all()


def test_model_rejects_bad_shapes():
    model = random_model(0, 2, 3, 0.5)
    x = torch.zeros(4, 3, **F64)
    with pytest.raises(ValueError, match=r"z must have shape \[\.\.\., 4, 2\]"):
        model.log_likelihood(x, torch.zeros(5, 3, 2, **F64))
    with pytest.raises(ValueError, match="x has dim 2, expected 3"):
        model.exact_posterior(torch.zeros(4, 2, **F64))
    with pytest.raises(ValueError, match="z must end in dim 2"):
        model.log_prior(torch.zeros(4, 3, **F64))
    with pytest.raises(ValueError, match=r"b must have shape \(3,\)"):
        LinearGaussianModel(torch.zeros(3, 2), torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match="sigma_x must be positive"):
        LinearGaussianModel(torch.zeros(3, 2), torch.zeros(3), 0.0)


# ---- the IWAE bound on the running example, and the figure -----------------------------------------------------

def test_iwae_bound_monotone_and_converging_on_demo():
    ks = [4**i for i in range(6)]
    bounds, elbos, log_px = _iwae_experiment(ks, replicates=200, seed=5)
    for name, values in bounds.items():
        steps = values[1:] - values[:-1]
        assert (steps.mean(1) > -3 * steps.std(1) / math.sqrt(steps.shape[1])).all(), name
        mean = values.mean(1)
        assert log_px - mean[-1] < (log_px - mean[0]) / 4, name
    matched = bounds["matched marginals"][-1]
    assert abs(log_px - matched.mean()) < 0.03


def test_make_figures_quick(tmp_path):
    paths = make_figures(tmp_path, quick=True)
    assert [p.name for p in paths] == ["elbo_iwae_bound_vs_k.png"]
    assert paths[0].stat().st_size > 10_000
