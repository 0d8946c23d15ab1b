"Tests for iaf_repro.evaluate: the two estimates against exact answers, chunking, K = 1, determinism, standard errors, bad input, plots."
import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from iaf_repro.density import log_normal_diag
from iaf_repro.elbo import LinearGaussianModel
from iaf_repro.evaluate import (bits_per_dim, evaluate, log_px_by_k, plot_log_px_by_k, plot_reconstructions, plot_training_curves,
                                summarize)
from iaf_repro.train import TrainConfig, train
from iaf_repro.mlp_vae import MLPVAE
from iaf_repro.vae import Terms, VAEConfig, toy_images

SETTINGS = settings(max_examples=25, deadline=None)
F64 = dict(dtype=torch.float64)


class LinearGaussianVAE(nn.Module):
    "Linear-Gaussian model with q(z|x) = N(posterior mean, diag (scale * marginal std)^2), drawing its k samples row by row."
    def __init__(self, model, scale=2.0):
        super().__init__()
        self.model, self.scale = model, scale
        self.anchor = nn.Parameter(torch.zeros((), **F64))            # gives the model a device

    def posterior(self, x):
        mu, L = self.model.exact_posterior(x)
        return mu, torch.log(self.scale * L.norm(dim=1)).expand_as(mu)

    def forward(self, x, k=1):
        mu, log_sigma = self.posterior(x)
        z = torch.stack([mu + log_sigma.exp() * torch.randn_like(mu) for _ in range(k)])      # [k, B, d]
        log_qz = torch.stack([log_normal_diag(z_j, mu, log_sigma) for z_j in z])
        return Terms(self.model.log_likelihood(x, z), self.model.log_prior(z), log_qz)


def linear_problem(seed=0, n=100, d_z=3, d_x=5):
    g = torch.Generator().manual_seed(seed)
    linear = LinearGaussianModel(torch.randn(d_x, d_z, generator=g, **F64), torch.randn(d_x, generator=g, **F64), 0.7)
    _, x = linear.sample(n, g)
    return linear, LinearGaussianVAE(linear), x


def test_estimates_match_the_exact_answers():
    linear, toy, x = linear_problem()
    result = evaluate(toy, x, k=2000, chunk=500, progress=False)
    exact = {"log_px": linear.exact_log_px(x).numpy(), "vlb": linear.elbo_diag(x, *toy.posterior(x)).numpy()}
    for name, values in exact.items():
        diff = result.per_image[name] - values
        assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(len(diff)) + 1e-6, name
    assert (result.per_image.gap >= -1e-12).all() and result.summary["gap"] > 0                # Jensen, per image
    assert result.summary["n"] == 100 and result.summary["k"] == 2000
    assert list(result.per_image.columns) == ["vlb", "log_px", "gap", "recon", "kl"]
    torch.testing.assert_close(torch.tensor(result.per_image.vlb.values), torch.tensor((result.per_image.recon - result.per_image.kl).values))


@SETTINGS
@given(k=st.integers(1, 40), chunk=st.integers(1, 50), seed=st.integers(0, 1000))
def test_chunking_does_not_change_the_answer(k, chunk, seed):
    "The toy draws its samples row by row, so any chunking sees the same random stream: equal up to logaddexp rounding."
    _, toy, x = linear_problem(n=12)
    reference = evaluate(toy, x, k=k, batch_size=5, chunk=k, seed=seed, progress=False).per_image
    other = evaluate(toy, x, k=k, batch_size=5, chunk=chunk, seed=seed, progress=False).per_image
    pd.testing.assert_frame_equal(other, reference, rtol=1e-12, atol=1e-9)


def test_k_equal_one_is_the_vlb_estimator():
    _, toy, x = linear_problem()
    one = evaluate(toy, x, k=1, progress=False).per_image
    assert one.log_px.tolist() == one.vlb.tolist() and (one.gap == 0).all()


def test_evaluation_is_deterministic_under_a_seed_and_restores_mode_and_rng():
    torch.manual_seed(0)
    model = MLPVAE(VAEConfig(latent_dim=4, posterior="iaf", iaf_width=16, context_dim=8), hidden=32)
    x = toy_images(10, torch.Generator().manual_seed(1))
    state, mode = torch.get_rng_state(), model.training
    first = evaluate(model, x, k=16, batch_size=4, chunk=5, seed=7, progress=False)
    assert torch.equal(torch.get_rng_state(), state) and model.training == mode
    pd.testing.assert_frame_equal(first.per_image, evaluate(model, x, k=16, batch_size=4, chunk=5, seed=7, progress=False).per_image,
                                  check_exact=True)
    assert not first.per_image.equals(evaluate(model, x, k=16, batch_size=4, chunk=5, seed=8, progress=False).per_image)
    assert (first.per_image.gap > -1e-4).all()                                                    # float32 rounding only


def test_summarize_computes_the_standard_error():
    frame = pd.DataFrame({"vlb": [-90.0, -85.0, -80.0, -95.0, -100.0], "gap": [1.0, 2.0, 3.0, 2.0, 2.0]})
    summary = summarize(frame, k=128)
    mean = sum(frame.vlb) / 5
    s = math.sqrt(sum((v - mean) ** 2 for v in frame.vlb) / 4)
    assert summary["vlb"] == pytest.approx(-90.0) and summary["vlb_se"] == pytest.approx(s / math.sqrt(5), rel=1e-12)
    assert summary["gap_se"] == pytest.approx(math.sqrt(0.5) / math.sqrt(5), rel=1e-12)
    assert (summary["n"], summary["k"]) == (5, 128)
    assert math.isnan(summarize(frame[:1], k=1)["vlb_se"])
    with pytest.raises(ValueError, match="nothing to summarize"):
        summarize(frame[:0], k=1)


def test_log_px_by_k_uses_nested_samples():
    linear, toy, x = linear_problem(n=50)
    by_k = log_px_by_k(toy, x, [1, 4, 64, 256], chunk=64, progress=False)
    assert by_k.k.tolist() == [1, 4, 64, 256] and by_k.shortfall.iloc[-1] == 0
    assert by_k.log_px.iloc[-1] > by_k.log_px.iloc[0]
    assert abs(by_k.log_px.iloc[-1] - linear.exact_log_px(x).mean().item()) < 0.05
    k_one = evaluate(toy, x, k=1, progress=False).summary                 # same seed: K = 1 is the first nested sample
    assert by_k.log_px.iloc[0] == pytest.approx(k_one["vlb"], abs=1e-9)


@pytest.mark.parametrize("kwargs,match", [(dict(k=0), "k must be a positive integer"),
                                          (dict(k=2.5), "k must be a positive integer"),
                                          (dict(chunk=0), "chunk must be a positive integer"),
                                          (dict(batch_size=0), "batch_size must be a positive integer")])
def test_bad_arguments_raise_clearly(kwargs, match):
    _, toy, x = linear_problem(n=4)
    with pytest.raises(ValueError, match=match):
        evaluate(toy, x, progress=False, **kwargs)


@pytest.mark.parametrize("images", [torch.zeros(0, 5, **F64), torch.zeros(5, **F64), [1.0, 2.0]])
def test_empty_or_unbatched_images_raise_clearly(images):
    _, toy, _ = linear_problem(n=4)
    with pytest.raises(ValueError, match="images must be a non-empty batch"):
        evaluate(toy, images, progress=False)


def test_bits_per_dim():
    assert bits_per_dim(-3072 * 3.0 * math.log(2), 3072) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="num_dims must be a positive integer"):
        bits_per_dim(-80.0, 0)


def test_plots_have_labels_and_legends(tmp_path):
    from iaf_repro.data import BinarizedMNIST
    g = torch.Generator().manual_seed(0)
    data = BinarizedMNIST("synthetic", toy_images(64, g), toy_images(16, g), toy_images(16, g))
    torch.manual_seed(0)
    model = MLPVAE(VAEConfig(latent_dim=4), hidden=32)
    metrics = train(model, data, TrainConfig(epochs=2, batch_size=16), tmp_path / "run", progress=False)
    fig = plot_training_curves({"frame": metrics, "folder": tmp_path / "run"})
    recon_ax, kl_ax = fig.axes
    assert "epoch" in recon_ax.get_xlabel() and "nats" in kl_ax.get_ylabel() and kl_ax.get_legend() is not None
    assert len(kl_ax.get_lines()) == 4                                   # 2 runs x (train, valid)
    fig = plot_reconstructions({"a": model, "b": model}, data.test, n=4)
    assert len([ax for ax in fig.axes if ax.get_images()]) == 5 * 4      # 1 + 2 x 2 rows of 4 images
    fig = plot_log_px_by_k({"a": log_px_by_k(model, data.test, [1, 4], progress=False)})
    assert all(ax.get_legend() is not None and ax.get_xlabel() for ax in fig.axes)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        plot_reconstructions(model, data.test, n=0)
    plt.close("all")
