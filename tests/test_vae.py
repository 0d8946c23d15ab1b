"Tests for iaf_repro.vae: Terms shapes per posterior, the Bernoulli likelihood, weight norm and its data-dependent init, errors, extremes."
import copy
import hashlib
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, strategies as st

from iaf_repro.elbo import elbo, iwae_bound, log_importance_weights
from iaf_repro.experiments import get_preset
from iaf_repro.utils import seeded
from iaf_repro.vae import (VAE, Decoder, Encoder, Posterior, ResBlock, Terms, VAEConfig, WNConv2d, WNConvTranspose2d,
                           WNLinear, bernoulli_log_likelihood, make_figures, make_posterior, make_vae, parameter_counts,
                           preactivation_stats, toy_images, unit_moments)

F64 = torch.float64
CONFIGS = {"diagonal": VAEConfig(), "iaf learned σ": VAEConfig(posterior="iaf"),
           "iaf constant σ": VAEConfig(posterior="iaf", learned_sigma=False),
           "planar": VAEConfig(posterior="planar")}
X = toy_images(6, torch.Generator().manual_seed(0))
EXTREMES = torch.cat([torch.zeros(1, 1, 28, 28), torch.ones(1, 1, 28, 28)])


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    built = {name: make_vae(config) for name, config in CONFIGS.items()}
    for model in built.values(): model.initialize(X)
    return built


# ---- the model's terms -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("k", [1, 3])
def test_terms_have_shape_k_by_batch_and_are_finite(models, name, k):
    for images in (X, EXTREMES):
        terms = models[name](images, k)
        assert isinstance(terms, Terms)
        for term in terms:
            assert term.shape == (k, images.shape[0])
            assert torch.isfinite(term).all()
        assert (terms.log_px_z <= 0).all()                          # a Bernoulli log-probability of a binary image


@pytest.mark.parametrize("name", list(CONFIGS))
def test_extreme_images_give_finite_gradients(models, name):
    model = models[name]
    model.zero_grad()
    (-elbo(log_importance_weights(*model(EXTREMES, 2))).mean()).backward()
    for p_name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), p_name


def test_every_parameter_gets_a_gradient(models):
    model = copy.deepcopy(models["iaf learned σ"])
    for first in (True, False):          # the IAF step starts with a zero output layer (ch. 04 Eq. 20): check after one step
        model.zero_grad()
        (-elbo(log_importance_weights(*model(X, 2))).mean()).backward()
        if first: torch.optim.Adamax(model.parameters(), lr=2e-3).step()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


@pytest.mark.parametrize("name", list(CONFIGS))
def test_vlb_never_exceeds_the_iwae_bound_on_the_same_samples(models, name):
    log_w = log_importance_weights(*models[name](X, 7))
    assert (elbo(log_w) <= iwae_bound(log_w) + 1e-4).all()


def test_encoder_runs_once_per_image_not_per_sample(models):
    model, seen = models["iaf learned σ"], []
    hook = model.encoder.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].shape[0]))
    try: model(X, k=5)
    finally: hook.remove()
    assert seen == [X.shape[0]]


def test_k_samples_share_mu_and_sigma():
    "Row j*B + b of the diagonal posterior's z is mu_b + sigma_b * eps: standardizing by image b's mu, sigma gives the noise."
    g = torch.Generator().manual_seed(3)
    mu, log_sigma = torch.randn(2, 4, 5, generator=g, dtype=F64)
    z, log_q = Posterior()(mu, log_sigma, None, 3, torch.Generator().manual_seed(9))
    eps = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(9), dtype=F64)
    torch.testing.assert_close(z.view(3, 4, 5), mu + log_sigma.exp() * eps)
    torch.testing.assert_close(log_q, torch.distributions.Normal(mu, log_sigma.exp()).log_prob(z.view(3, 4, 5)).sum(-1))


def test_constant_sigma_iaf_log_q_equals_the_diagonal_log_q():
    torch.manual_seed(0)
    mu, log_sigma, h = 0.5 * torch.randn(4, 32), 0.2 * torch.randn(4, 32), torch.randn(4, 450)
    z_d, log_q_d = make_posterior(VAEConfig())(mu, log_sigma, None, 3, torch.Generator().manual_seed(1))
    z_c, log_q_c = make_posterior(VAEConfig(posterior="iaf", learned_sigma=False, iaf_step="gated"))(
        mu, log_sigma, h, 3, torch.Generator().manual_seed(1))
    assert torch.equal(log_q_c, log_q_d)
    assert not torch.allclose(z_c, z_d)


def test_posterior_context_only_for_iaf():
    assert make_posterior(VAEConfig(posterior="iaf")).context_dim == 450
    assert make_posterior(VAEConfig(posterior="iaf", context_dim=0)).context_dim == 0
    for name in ("diagonal", "planar"): assert make_posterior(VAEConfig(posterior=name)).context_dim == 0
    with pytest.raises(ValueError, match="needs a context"):
        make_posterior(VAEConfig(posterior="iaf"))(torch.zeros(2, 32), torch.zeros(2, 32), None, 1)


def test_reconstruct_and_sample(models):
    model = models["diagonal"]
    means = model.reconstruct(X)
    assert means.shape == X.shape and ((means >= 0) & (means <= 1)).all()
    a, b = model.sample(4, torch.Generator().manual_seed(2)), model.sample(4, torch.Generator().manual_seed(2))
    assert a.shape == (4, 1, 28, 28) and torch.equal(a, b)


def test_model_runs_in_float64():
    torch.manual_seed(0)
    model = make_vae(VAEConfig(posterior="iaf", iaf_width=32, context_dim=8)).double()
    model.initialize(X.double())
    terms = model(X.double(), 2)
    assert all(t.dtype == F64 and torch.isfinite(t).all() for t in terms)


# ---- the Bernoulli likelihood ----------------------------------------------------------------------------------

def test_bernoulli_log_likelihood_by_hand():
    x = torch.tensor([[[[1.0, 0.0, 1.0]]]], dtype=F64)                          # [B=1, C=1, H=1, W=3]
    logits = torch.tensor([[[[0.0, 2.0, -1.0]]]], dtype=F64)
    # log(1/2) + log(1 - sigmoid(2)) + log(sigmoid(-1)) = -log 2 - log(1 + e^2) - log(1 + e)
    expected = -math.log(2) - math.log(1 + math.e**2) - math.log(1 + math.e)
    torch.testing.assert_close(bernoulli_log_likelihood(logits, x), torch.tensor([expected], dtype=F64))


@given(k=st.integers(1, 3), B=st.integers(1, 3), seed=st.integers(0, 10_000), scale=st.sampled_from([0.1, 3.0, 30.0]))
def test_bernoulli_log_likelihood_matches_torch_distributions(k, B, seed, scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (B, 1, 4, 5), generator=g).to(F64)
    logits = scale * torch.randn(k, B, 1, 4, 5, generator=g, dtype=F64)
    reference = torch.distributions.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum((-3, -2, -1))
    torch.testing.assert_close(bernoulli_log_likelihood(logits, x), reference, rtol=1e-10, atol=1e-10)


def test_bernoulli_log_likelihood_is_stable_for_huge_logits():
    x = torch.tensor([[[[1.0, 0.0]]]])
    assert bernoulli_log_likelihood(torch.tensor([[[[500.0, -500.0]]]]), x).item() == 0.0
    torch.testing.assert_close(bernoulli_log_likelihood(torch.tensor([[[[-500.0, 500.0]]]]), x), torch.tensor([-1000.0]))


# ---- weight normalization and its data-dependent init ----------------------------------------------------------

def wn_layer(kind, c_in, c_out, init_scale=1.0):
    return {"linear": lambda: WNLinear(c_in, c_out, init_scale), "conv": lambda: WNConv2d(c_in, c_out, 2, init_scale),
            "convT": lambda: WNConvTranspose2d(c_in, c_out, 1, init_scale)}[kind]()


def layer_input(kind, c_in, shift, scale, seed):
    shape = (32, c_in) if kind == "linear" else (8, c_in, 5, 5)
    return shift + scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@given(kind=st.sampled_from(["linear", "conv", "convT"]), c_in=st.integers(1, 6), c_out=st.integers(1, 6),
       seed=st.integers(0, 10_000))
def test_weight_has_length_g_per_output_unit(kind, c_in, c_out, seed):
    torch.manual_seed(seed)
    layer = wn_layer(kind, c_in, c_out).double()
    with torch.no_grad(): layer.g.uniform_(0.1, 3.0)
    others = {"linear": [1], "conv": [1, 2, 3], "convT": [0, 2, 3]}[kind]
    torch.testing.assert_close(torch.linalg.vector_norm(layer.weight(), dim=others), layer.g)


@given(kind=st.sampled_from(["linear", "conv", "convT"]), c_in=st.integers(1, 6), c_out=st.integers(1, 6),
       shift=st.floats(-5, 5), scale=st.floats(0.1, 20), init_scale=st.sampled_from([0.1, 1.0]), seed=st.integers(0, 10_000))
def test_data_dependent_init_gives_zero_mean_and_the_target_std(kind, c_in, c_out, shift, scale, init_scale, seed):
    torch.manual_seed(seed)
    layer = wn_layer(kind, c_in, c_out, init_scale).double()
    x = layer_input(kind, c_in, shift, scale, seed)
    layer.pending_init = True
    out = layer(x)
    assert not layer.pending_init
    mean, std = unit_moments(out)
    torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=1e-9)
    torch.testing.assert_close(std, torch.full_like(std, init_scale), rtol=1e-6, atol=1e-9)   # g = s / (std + 1e-8)
    torch.testing.assert_close(layer(x), out)                                     # the stored g, b reproduce it


def test_vae_initialize_gives_unit_variance_preactivations():
    torch.manual_seed(0)
    model = make_vae(VAEConfig(posterior="iaf"))
    x = toy_images(32, torch.Generator().manual_seed(1))
    torch.manual_seed(5); model.initialize(x)
    stats = preactivation_stats(model, x, seed=5)                                  # same batch, same posterior noise
    assert len(stats) == 32
    for name, (mean, std) in stats.items():
        s = 0.1 if name == "encoder.mu_log_sigma" else 1.0
        torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=1e-4 * s)
        torch.testing.assert_close(std, torch.full_like(std, s), rtol=0, atol=1e-4 * s)


# ---- architecture and parameter counts -------------------------------------------------------------------------

def test_encoder_and_decoder_shapes():
    config = VAEConfig()
    mu, log_sigma, h = Encoder(config, context_dim=7)(X)
    assert (mu.shape, log_sigma.shape, h.shape) == ((6, 32), (6, 32), (6, 7))
    assert Encoder(config)(X)[2] is None
    assert Decoder(config)(torch.randn(5, 32)).shape == (5, 1, 28, 28)
    sides = [ResBlock(1, 4, "down")(torch.zeros(1, 1, n, n)).shape[-1] for n in (28, 14, 7)]
    assert sides == [14, 7, 4]
    ups = [ResBlock(4, 4, "up", output_padding=o)(torch.zeros(1, 4, n, n)).shape[-1] for n, o in ((4, 0), (7, 1), (14, 1))]
    assert ups == [7, 14, 28]


def test_parameter_counts():
    assert parameter_counts(make_vae(VAEConfig())) == dict(encoder=332_612, posterior=0, decoder=316_566, total=649_178)
    iaf = parameter_counts(make_vae(VAEConfig(posterior="iaf")))
    assert iaf["posterior"] == 2 * 277_824 and iaf["encoder"] == 332_612 + 450 * 450 + 900
    assert parameter_counts(make_vae(VAEConfig(posterior="planar", planar_length=80)))["posterior"] == 80 * (2 * 32 + 1)


# ---- bad input -------------------------------------------------------------------------------------------------

def test_unknown_posterior_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown posterior 'maf'; valid names: diagonal, iaf, planar"):
        VAEConfig(posterior="maf")


@pytest.mark.parametrize("field, value, match", [("latent_dim", 0, "latent_dim must be a positive integer"),
                                                 ("iaf_width", 2.5, "iaf_width must be a positive integer"),
                                                 ("channels", (16, 32), "3 feature-map counts"),
                                                 ("context_dim", -1, "context_dim must be a non-negative integer")])
def test_bad_config_fields(field, value, match):
    with pytest.raises(ValueError, match=match):
        VAEConfig(**{field: value})


def test_bad_images_raise_clear_errors(models):
    model = models["diagonal"]
    with pytest.raises(ValueError, match=r"shape \[batch, 1, 28, 28\], got \(4, 28, 28\)"): model(torch.zeros(4, 28, 28))
    with pytest.raises(ValueError, match=r"got \(4, 3, 28, 28\)"): model(torch.zeros(4, 3, 28, 28))
    with pytest.raises(ValueError, match=r"got \(4, 1, 32, 32\)"): model(torch.zeros(4, 1, 32, 32))
    with pytest.raises(TypeError, match="floating-point"): model(torch.zeros(4, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"): model([[0.0]])
    with pytest.raises(ValueError, match="k must be a positive integer"): model(X, k=0)


def test_initialize_rejects_grey_images_and_single_images():
    model = make_vae(VAEConfig())
    with pytest.raises(ValueError, match="must be binary"): model.initialize(torch.full((4, 1, 28, 28), 0.5))
    with pytest.raises(ValueError, match="at least 2 images"): model.initialize(X[:1])


def test_resblock_rejects_bad_arguments():
    with pytest.raises(ValueError, match="keeps the channels"): ResBlock(4, 8)
    with pytest.raises(ValueError, match="resample must be"): ResBlock(4, 8, "sideways")


def test_make_figures_quick(tmp_path: Path):
    paths = make_figures(tmp_path, quick=True)
    assert [p.name for p in paths] == ["vae_weight_norm_init.png"] and paths[0].stat().st_size > 10_000


# ---- checkpoints of the training campaign ---------------------------------------------------------------------------

# For the campaign's MNIST presets: the count and sha256 of the "name:shape" lines of named_parameters(), in order, and
# of the state_dict() keys, in order. Checkpoints hold model.state_dict() and Adamax's state, which refers to parameters
# by their position in model.parameters(): a change of names, shapes or registration order would make the campaign's
# checkpoints unloadable, or load the optimizer's moments onto the wrong parameters.
PARAMETER_DIGESTS = {
    "static-diag": (93, "9cbba0a3284c6c14e6281eee1dd81fb96ae8e757b66d0a309087895201800338"),
    "static-iaf-d2-w320": (108, "96b723f8d0f94d735cc011140f4872b13fb3740741ee65c051ffb15bfc71f1d1"),
    "static-iaf-d2-w320-const": (108, "115a2996451f4f789b1f43d45058ee1d45132811f1ce99baf25dfb7634793223"),
}
STATE_DICT_DIGESTS = {
    "static-diag": (93, "0ecc4d932bb037b825a75c080f74abaf2d8684f6dd5ab439fe8e989f7b26efe3"),
    "static-iaf-d2-w320": (116, "5d06814b53efedfe439e300dd9d079bf2662af5bcb8cf2c3588dd14faf07f609"),
    "static-iaf-d2-w320-const": (116, "5d06814b53efedfe439e300dd9d079bf2662af5bcb8cf2c3588dd14faf07f609"),
}


def _count_and_digest(lines):
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()


@pytest.mark.parametrize("preset", list(PARAMETER_DIGESTS))
def test_campaign_presets_keep_their_parameter_names_shapes_and_order(preset):
    model = get_preset(preset).build_model()
    parameters = [f"{name}:{tuple(p.shape)}" for name, p in model.named_parameters()]
    assert _count_and_digest(parameters) == PARAMETER_DIGESTS[preset]
    assert _count_and_digest(list(model.state_dict())) == STATE_DICT_DIGESTS[preset]
    parts = list(dict.fromkeys(line.split(".")[0] for line in parameters))
    assert parts == (["encoder", "decoder"] if preset == "static-diag" else ["posterior", "encoder", "decoder"])


def test_a_vae_composed_by_hand_is_make_vae_s_model():
    config = VAEConfig(posterior="iaf", iaf_width=32, context_dim=8)
    with seeded(0): built = make_vae(config)
    with seeded(0):
        posterior = make_posterior(config)
        by_hand = VAE(Encoder(config, posterior.context_dim), Decoder(config), posterior, config.latent_dim)
    assert list(by_hand.state_dict()) == list(built.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(by_hand.state_dict().values(), built.state_dict().values()))
    with pytest.raises(TypeError, match="posterior must be a Posterior"): VAE(built.encoder, built.decoder, posterior.flow, 32)
    with pytest.raises(ValueError, match="latent_dim must be a positive integer"): VAE(built.encoder, built.decoder, posterior, 0)
