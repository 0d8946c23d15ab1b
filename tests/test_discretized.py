"""Property tests of the discretized logistic likelihood (chapter 21)."""
import math

import pytest
import torch
from hypothesis import given, strategies as st

from iaf_repro.discretized import (CIFAR_DIMS, DiscretizedLogistic, discretized_logistic_log_likelihood,
                                   discretized_logistic_log_prob, to_unit)
from iaf_repro.evaluate import bits_per_dim

BINS = torch.arange(256, dtype=torch.uint8)


@given(mu=st.floats(-3, 3), log_s=st.floats(-9, 4))
def test_bins_sum_to_one(mu, log_s):
    p = discretized_logistic_log_prob(BINS, torch.tensor(mu, dtype=torch.float64), torch.tensor(log_s, dtype=torch.float64)).exp()
    assert abs(p.sum().item() - 1) < 1e-10
    assert (p >= 0).all()


@given(mu=st.floats(-5, 5), log_s=st.floats(-12, 6), x=st.integers(0, 255))
def test_finite_and_nonpositive_in_float32(mu, log_s, x):
    log_p = discretized_logistic_log_prob(torch.tensor([x], dtype=torch.uint8), torch.tensor(mu), torch.tensor(log_s))
    assert torch.isfinite(log_p).all() and (log_p <= 1e-6).all()


def test_float32_matches_float64_far_in_the_tail():
    x = torch.tensor([0, 40, 128, 200, 255], dtype=torch.uint8)
    for mu, log_s in [(0.8, -7.0), (-0.9, -6.0), (0.0, 3.0)]:
        f32 = discretized_logistic_log_prob(x, torch.tensor(mu), torch.tensor(log_s)).double()
        f64 = discretized_logistic_log_prob(x, torch.tensor(mu, dtype=torch.float64), torch.tensor(log_s, dtype=torch.float64))
        assert torch.allclose(f32, f64, rtol=1e-5, atol=1e-4)


def test_edge_bins_take_the_tails():
    mu, log_s = torch.tensor(5.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    p = discretized_logistic_log_prob(BINS, mu, log_s).exp()
    expected_top = 1 - torch.sigmoid((to_unit(BINS[255:], torch.float64) - 1 / 255 - mu) / log_s.exp())
    assert torch.allclose(p[255], expected_top[0]) and p[255] > 0.99


def test_gradients_finite_for_narrow_scales():
    mu = torch.tensor([0.3, -0.99], requires_grad=True)
    log_s = torch.tensor(-9.0, requires_grad=True)
    discretized_logistic_log_prob(torch.tensor([250, 0], dtype=torch.uint8), mu, log_s).sum().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(log_s.grad)


def test_likelihood_sums_pixels_and_bits_per_dim():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=g)
    mu = torch.randn(5, 2, 3, 32, 32, generator=g, dtype=torch.float64) * 0.3
    lik = DiscretizedLogistic(3).double()
    log_px = lik(mu, x)
    assert log_px.shape == (5, 2)
    per = discretized_logistic_log_prob(x, mu, lik.log_scale[:, None, None])
    assert torch.allclose(log_px, per.flatten(-3).sum(-1))
    assert torch.allclose(bits_per_dim(log_px, CIFAR_DIMS), -per.flatten(-3).mean(-1) / math.log(2))


def test_log_scale_is_per_channel():
    lik = DiscretizedLogistic(3)
    with torch.no_grad(): lik.log_scale.copy_(torch.tensor([-3.0, 0.0, 1.0]))
    x = torch.full((1, 3, 1, 1), 128, dtype=torch.uint8)
    per = discretized_logistic_log_prob(x, to_unit(x), lik.channel_log_scale())[0, :, 0, 0]
    assert per[0] > per[1] > per[2]     # the narrowest logistic puts the most mass on its own bin


def test_bad_input():
    with pytest.raises(TypeError, match="uint8"): to_unit(torch.zeros(3))
    with pytest.raises(ValueError, match="image batch"): discretized_logistic_log_likelihood(BINS, BINS.float(), torch.tensor(0.0))
    with pytest.raises(ValueError, match="must end in the image shape"):
        discretized_logistic_log_likelihood(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, 3, 4, 5), torch.tensor(0.0))
    with pytest.raises(ValueError, match="channels"): DiscretizedLogistic(3)(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.uint8))


def test_sample_frequencies_match_probabilities():
    lik = DiscretizedLogistic(1, init_log_scale=-1.0)
    draws = lik.sample(torch.full((100_000, 1, 1, 1), -0.95), torch.Generator().manual_seed(0)).flatten().long()
    freq = torch.bincount(draws, minlength=256).double() / len(draws)
    p = discretized_logistic_log_prob(BINS, torch.tensor(-0.95, dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64)).exp()
    assert (freq - p).abs().max() < 5e-3 and freq[0] > 0.3


@given(mu=st.floats(-1.3, 1.3), log_s=st.floats(-6, 1))
def test_median_is_a_median_of_the_bins(mu, log_s):
    "`median` returns a bin with at least half the mass at or below it and at least half at or above it (Eq. 1)."
    p = discretized_logistic_log_prob(BINS, torch.tensor(mu, dtype=torch.float64), torch.tensor(log_s, dtype=torch.float64)).exp()
    m = DiscretizedLogistic(1).median(torch.tensor(mu, dtype=torch.float64)).item()
    assert p[:m + 1].sum() >= 0.5 - 1e-9 and p[m:].sum() >= 0.5 - 1e-9


def test_median_is_not_always_the_most_probable_bin():
    p = discretized_logistic_log_prob(BINS, torch.tensor(0.5, dtype=torch.float64), torch.tensor(-1.5, dtype=torch.float64)).exp()
    assert DiscretizedLogistic(1).median(torch.tensor(0.5)).item() == 191 and p.argmax().item() == 255


def test_likelihood_in_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8, generator=g)
    mu = (to_unit(x) + 0.01 * torch.randn(x.shape, generator=g)).to(torch.bfloat16)
    lik = DiscretizedLogistic(3, init_log_scale=-4.0)
    with torch.autocast("cpu", dtype=torch.bfloat16): out = lik(mu, x)
    assert out.dtype == torch.float32 and torch.equal(out, lik(mu.float(), x))
