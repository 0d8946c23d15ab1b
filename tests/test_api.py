"The importer's API: q(z|x) as a distribution object (FlowPosterior), root exports that shadow no module, no matplotlib on import."
import importlib
import math
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import iaf_repro
from iaf_repro.cifar_vae import CifarVAE
from iaf_repro.mlp_vae import MLPVAE
from iaf_repro.vae import FlowPosterior, Posterior, VAEConfig, make_posterior, make_vae, toy_images

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(latent_dim=4, iaf_width=16, channels=(4, 4, 4), hidden_dim=16, context_dim=8, planar_length=3)
POSTERIOR_CONFIGS = {"diagonal": VAEConfig(**SMALL), "iaf affine": VAEConfig(posterior="iaf", **SMALL),
                     "iaf gated": VAEConfig(posterior="iaf", iaf_step="gated", **SMALL),
                     "iaf constant σ": VAEConfig(posterior="iaf", learned_sigma=False, **SMALL),
                     "planar": VAEConfig(posterior="planar", **SMALL)}
SUBMODULES = sorted(m.name for m in pkgutil.iter_modules(iaf_repro.__path__))


def encoder_outputs(config, B=5, dtype=torch.float32, seed=0):
    "Random (mu, log_sigma, h) of the shapes the encoder gives for `config`."
    g = torch.Generator().manual_seed(seed)
    D, C = config.latent_dim, make_posterior(config).context_dim
    mu, log_sigma = torch.randn(B, D, generator=g, dtype=dtype), 0.3 * torch.randn(B, D, generator=g, dtype=dtype)
    return mu, log_sigma, (torch.randn(B, C, generator=g, dtype=dtype) if C else None)


def in_a_fresh_python(code: str) -> str:
    "Run `code` in a new interpreter importing this checkout's package; return its stdout."
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    return result.stdout.strip()


# ---- the distribution object -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(POSTERIOR_CONFIGS))
def test_one_shape_convention_k_by_batch(name):
    posterior = make_posterior(POSTERIOR_CONFIGS[name])
    q = posterior.distribution(*encoder_outputs(POSTERIOR_CONFIGS[name]))
    assert isinstance(q, torch.distributions.Distribution) and q.has_rsample
    assert (q.batch_shape, q.event_shape) == ((5,), (4,))
    z, log_q = q.rsample_and_log_prob(3)
    assert (z.shape, log_q.shape) == ((3, 5, 4), (3, 5))
    assert q.rsample_and_log_prob((3,))[0].shape == (3, 5, 4)
    assert q.rsample().shape == (5, 4) and q.rsample((2, 3)).shape == (2, 3, 5, 4)
    assert q.log_prob(z := q.rsample((3,))).shape == (3, 5) and torch.isfinite(q.log_prob(z)).all()
    assert q.sample((2,)).shape == (2, 5, 4)                                    # torch's no-grad sample, from rsample


@pytest.mark.parametrize("name", list(POSTERIOR_CONFIGS))
def test_log_prob_of_its_own_draw_is_the_log_q_of_the_draw(name):
    q = make_posterior(POSTERIOR_CONFIGS[name]).distribution(*encoder_outputs(POSTERIOR_CONFIGS[name]))
    z, log_q = q.rsample_and_log_prob(3, torch.Generator().manual_seed(1))
    assert q.log_prob(z) is log_q
    z_again = q.rsample((3,), torch.Generator().manual_seed(1))
    torch.testing.assert_close(q.log_prob(z_again), log_q, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["iaf affine", "iaf gated", "iaf constant σ", "diagonal"])
def test_log_prob_by_inversion_agrees_with_the_draw_in_float64(name):
    torch.manual_seed(0)
    config = POSTERIOR_CONFIGS[name]
    q = make_posterior(config).double().distribution(*encoder_outputs(config, dtype=torch.float64))
    with torch.no_grad():
        for module in q.flow.modules() if q.flow is not None else []:                # move the affine step off the identity
            if isinstance(module, torch.nn.Linear): module.weight.add_(0.3 * torch.randn_like(module.weight))
        z, log_q = q.rsample_and_log_prob(3)
        torch.testing.assert_close(q.log_prob_by_inversion(z), log_q, rtol=0, atol=1e-9)


def test_diagonal_log_prob_takes_any_z():
    mu, log_sigma, _ = encoder_outputs(POSTERIOR_CONFIGS["diagonal"])
    q = Posterior().distribution(mu, log_sigma)
    z = torch.randn(2, 5, 4)
    expected = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(q.log_prob(z), expected)


def test_the_vae_forward_pass_samples_posterior_of_x():
    torch.manual_seed(0)
    model = make_vae(POSTERIOR_CONFIGS["iaf gated"])
    x = toy_images(5, torch.Generator().manual_seed(1))
    model.initialize(x)
    with torch.no_grad():
        torch.manual_seed(2); terms = model(x, 3)
        torch.manual_seed(2); q = model.posterior_of(x); z = q.rsample((3,))
        torch.manual_seed(2); z_rows, log_q_rows = model.posterior(*model.encode(x), 3)     # the module's [k*B, D] form
    torch.testing.assert_close(q.log_prob(z), terms.log_qz, rtol=0, atol=0)
    torch.testing.assert_close((z.reshape(15, 4), q.log_prob(z)), (z_rows, log_q_rows), rtol=0, atol=0)


def test_the_forward_pass_equals_the_composition_of_its_parts():
    "VAE.forward (through FlowPosterior) draws the same noise in the same order as encode + Posterior + decoder, bit for bit."
    from iaf_repro.density import log_standard_normal
    from iaf_repro.vae import bernoulli_log_likelihood
    torch.manual_seed(0)
    for config in POSTERIOR_CONFIGS.values():
        model = make_vae(config)
        x = toy_images(4, torch.Generator().manual_seed(1))
        model.initialize(x)
        torch.manual_seed(5); terms = model(x, 2)
        torch.manual_seed(5)
        z, log_qz = model.posterior(*model.encoder(x), 2)
        logits = model.decoder(z).view(2, 4, 1, 28, 28)
        for got, want in zip(terms, (bernoulli_log_likelihood(logits, x), log_standard_normal(z).view(2, 4), log_qz)):
            assert torch.equal(got, want)


def test_posterior_of_for_the_cifar_and_mlp_models():
    torch.manual_seed(0)
    cifar = CifarVAE(POSTERIOR_CONFIGS["iaf affine"])
    pixels = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert cifar.posterior_of(pixels).rsample((2,)).shape == (2, 3, 4)
    mlp = MLPVAE(POSTERIOR_CONFIGS["iaf affine"], hidden=16)
    z, log_q = mlp.posterior_of(toy_images(3)).rsample_and_log_prob(2)
    assert (z.shape, log_q.shape) == ((2, 3, 4), (2, 3))


# ---- bad input -----------------------------------------------------------------------------------------------------

def test_a_z_it_did_not_draw_is_refused_with_the_way_out():
    config = POSTERIOR_CONFIGS["iaf affine"]
    q = make_posterior(config).distribution(*encoder_outputs(config))
    z = q.rsample((3,))
    with pytest.raises(ValueError, match=r"known only for the z it drew last.*log_prob_by_inversion\(z\)"):
        q.log_prob(z.detach().clone())
    q.rsample((3,))                                                                 # a newer draw replaces it
    with pytest.raises(ValueError, match="log_prob_by_inversion"):
        q.log_prob(z)
    planar = make_posterior(POSTERIOR_CONFIGS["planar"]).distribution(*encoder_outputs(POSTERIOR_CONFIGS["planar"]))
    with pytest.raises(ValueError, match="FlowChain has no inverse"):
        planar.log_prob_by_inversion(torch.zeros(5, 4))


@pytest.mark.parametrize("bad", [0, -1, (0,), (2, 0), True])
def test_non_positive_sample_counts_are_refused(bad):
    q = Posterior().distribution(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="positive integer"):
        q.rsample(bad)


def test_wrong_shapes_are_refused():
    mu, log_sigma, h = encoder_outputs(POSTERIOR_CONFIGS["iaf affine"])
    with pytest.raises(ValueError, match=r"mu must have shape \[batch, dim\]"):
        FlowPosterior(mu[0], log_sigma[0])
    with pytest.raises(ValueError, match="log_sigma must have the shape of mu"):
        FlowPosterior(mu, log_sigma[:, :2])
    with pytest.raises(ValueError, match="h has batch 2, but mu has batch 5"):
        FlowPosterior(mu, log_sigma, h[:2])
    q = Posterior().distribution(mu, log_sigma)
    with pytest.raises(ValueError, match=r"z must have shape \[\.\.\., 5, 4\]"):
        q.log_prob(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="needs a context"):
        make_posterior(POSTERIOR_CONFIGS["iaf affine"]).distribution(mu, log_sigma).rsample()
    with pytest.raises(ValueError, match=r"\[batch, 1, 28, 28\]"):
        make_vae(POSTERIOR_CONFIGS["diagonal"]).posterior_of(torch.zeros(2, 28, 28))


# ---- the package root ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SUBMODULES)
def test_no_root_name_shadows_a_submodule(name):
    module = importlib.import_module(f"iaf_repro.{name}")
    namespace = {}
    exec(f"import iaf_repro.{name} as m", namespace)
    assert namespace["m"] is module and getattr(iaf_repro, name) is module


def test_the_root_exports_the_public_names():
    assert {"FlowPosterior", "Posterior", "VAE", "VAEConfig", "make_posterior", "IAF", "AffineIAFStep", "IAFStep",
            "iaf_log_q", "iwae_bound", "FlowChain", "MADE"} <= set(iaf_repro.__all__)
    assert not set(iaf_repro.__all__) & set(SUBMODULES)
    for name in iaf_repro.__all__: assert getattr(iaf_repro, name).__module__.startswith("iaf_repro."), name
    assert iaf_repro.FlowPosterior is FlowPosterior and iaf_repro.elbo.elbo(torch.zeros(2, 3)).shape == (3,)


def test_importing_the_package_does_not_import_matplotlib():
    assert in_a_fresh_python("import sys, iaf_repro; print('matplotlib' in sys.modules)") == "False"


def test_no_module_imports_matplotlib_until_it_plots():
    code = ("import importlib, pkgutil, sys, iaf_repro\n"
            "for m in pkgutil.iter_modules(iaf_repro.__path__): importlib.import_module('iaf_repro.' + m.name)\n"
            "print('matplotlib' in sys.modules)\n"
            "from iaf_repro.made import MADE, plot_made_masks\n"
            "plot_made_masks(MADE(3, [6]))\n"
            "print('matplotlib' in sys.modules)")
    assert in_a_fresh_python(code).split() == ["False", "True"]
