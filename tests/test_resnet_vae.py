"""The ResNet VAE (chapter 23): masked-conv autoregressive property, IAF log-det, free bits, shapes, sampling, presets."""
from dataclasses import replace

import pytest
import torch
from hypothesis import given, strategies as st

from iaf_repro.cifar import CIFAR10
from iaf_repro.density import LOG_2PI, autograd_log_det
from iaf_repro.resnet_vae import (RESNET_PRESETS, ARConv, MaskedIAFStep, ResNetConfig, ResNetVAE, StochasticLayer, free_bits_kl,
                                  pixelcnn_masks)
from iaf_repro.train import TrainConfig, bound_terms, train

TINY = ResNetConfig(depth=2, hidden=6, latent=3)


def _pixels(n, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _order(C, H, W):
    c, i, j = torch.meshgrid(torch.arange(C), torch.arange(H), torch.arange(W), indexing="ij")
    return torch.argsort(((i * W + j) * C + c).flatten())


@given(C=st.integers(1, 4), hidden=st.integers(1, 6), layers=st.integers(1, 2), H=st.integers(1, 4), W=st.integers(1, 4), seed=st.integers(0, 99))
def test_masked_conv_net_is_strictly_autoregressive(C, hidden, layers, H, W, seed):
    torch.manual_seed(seed)
    net = ARConv(C, hidden, layers).double()
    with torch.no_grad():
        for p in net.parameters(): p.normal_()
    z, ctx = torch.randn(1, C, H, W, dtype=torch.double), torch.randn(1, hidden, H, W, dtype=torch.double)
    order = _order(C, H, W)
    for part in (0, 1):
        J = torch.autograd.functional.jacobian(lambda t: net(t.view_as(z), ctx)[part].flatten(), z.flatten())[order][:, order]
        assert torch.triu(J).abs().max() == 0


def test_masks_open_only_earlier_taps():
    for mask in pixelcnn_masks(3, [5, 5]):
        assert mask[:, :, 2].sum() == 0 and mask[:, :, 1, 2].sum() == 0 and mask[:, :, 0].all()


@pytest.mark.parametrize("learned", [True, False])
def test_iaf_step_log_det_matches_autograd(learned):
    torch.manual_seed(0)
    C, Hc, H, W = 2, 4, 3, 3
    step = MaskedIAFStep(C, Hc, 1, learned).double()
    with torch.no_grad():
        for p in step.parameters(): p.mul_(2)

    class Flat(torch.nn.Module):
        def forward(self, z, h):
            out, log_det = step(z.view(-1, C, H, W), h.view(-1, Hc, H, W))
            return out.flatten(1), log_det

    z, h = torch.randn(3, C * H * W, dtype=torch.double), torch.randn(3, Hc * H * W, dtype=torch.double)
    log_det = Flat()(z, h)[1]
    assert torch.allclose(log_det, autograd_log_det(Flat(), z, h), atol=1e-9)
    if not learned: assert log_det.abs().max() == 0


@given(B=st.integers(1, 5), J=st.integers(1, 6), lam=st.floats(0, 3), seed=st.integers(0, 99))
def test_free_bits_kl_mean_and_gradient(B, J, lam, seed):
    kl = torch.rand(B, J, generator=torch.Generator().manual_seed(seed)).mul(2).requires_grad_()
    term = free_bits_kl(kl, lam)
    m = kl.detach().mean(0)
    assert torch.allclose(term.mean(), torch.clamp(m, min=lam).sum(), atol=1e-6)
    term.mean().backward()
    assert torch.equal(kl.grad, ((m > lam).float() / B).expand(B, J))


def test_free_bits_in_training_mode_only():
    torch.manual_seed(0)
    model = ResNetVAE(TINY); x = _pixels(4)
    model.initialize(x)
    train_terms = model(x)
    assert train_terms.log_qz.abs().sum() == 0
    assert (-train_terms.log_pz >= TINY.free_bits * TINY.depth * TINY.latent - 1e-4).all()
    model.eval()
    eval_terms = model(x, k=2)
    assert eval_terms.log_qz.shape == (2, 4) and eval_terms.log_qz.abs().sum() > 0
    with torch.no_grad():                          # training mode without gradients (validation inside train): true terms
        model.train(); assert model(x).log_qz.abs().sum() > 0


@pytest.mark.parametrize("cfg", [TINY, replace(TINY, bidirectional=False, iaf_hidden_layers=0),
                                 replace(TINY, iaf_hidden_layers=2, learned_sigma=False), replace(TINY, free_bits=0.0)])
def test_shapes_finite_sampling(cfg):
    torch.manual_seed(0)
    model = ResNetVAE(cfg); x = _pixels(3)
    model.initialize(x)
    terms = model(x, k=2)
    assert all(t.shape == (2, 3) and torch.isfinite(t).all() for t in terms)
    vlb, _, _ = bound_terms(terms)
    (-vlb.mean()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    s = model.sample(2, torch.Generator().manual_seed(0))
    assert s.dtype == torch.uint8 and s.shape == (2, 3, 32, 32)
    assert model.reconstruct(x).shape == (3, 3, 32, 32)


def _down(layer, h, up, seed):
    "Run `StochasticLayer.down` with seeded noise; return ELU(z) as the layer passes it on (ELU is one-to-one) and log q."
    seen = []
    hook = layer.down_out.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, :layer.config.latent]))
    try: _, log_q, _ = layer.down(h, up, torch.Generator().manual_seed(seed))
    finally: hook.remove()
    return seen[0], log_q


def _layer_inputs(cfg):
    torch.manual_seed(0)
    layer = StochasticLayer(cfg).double()
    h = torch.randn(2, cfg.hidden, 4, 4, dtype=torch.double)
    up = tuple(torch.randn(2, c, 4, 4, dtype=torch.double) for c in (cfg.latent, cfg.latent, cfg.hidden))
    return layer, h, up


@pytest.mark.parametrize("bidirectional", [False, True])
def test_posterior_in_down_follows_the_top_down_input_only_when_bidirectional(bidirectional):
    "Bottom-up q(z_l) is a function of the bottom-up pass alone; bidirectional q(z_l) also moves with the top-down input h (Eq. 1)."
    layer, h, up = _layer_inputs(replace(TINY, bidirectional=bidirectional, iaf_hidden_layers=0))
    z, log_q = _down(layer, h, up, seed=1)
    z_other_h, log_q_other_h = _down(layer, h + torch.randn_like(h), up, seed=1)          # another top-down input, the same noise
    assert (not torch.allclose(z, z_other_h)) == bidirectional
    assert (not torch.allclose(log_q, log_q_other_h)) == bidirectional
    z_other_up, _ = _down(layer, h, tuple(t + 0.5 for t in up), seed=1)                   # the bottom-up input moves q in both
    assert not torch.allclose(z, z_other_up)


def _iaf_input(layer, h, up, seed):
    "Run `StochasticLayer.down` with seeded noise; return what its IAF step received (z_0, context), that noise ε and log q."
    seen = []
    hook = layer.iaf.ar.register_forward_pre_hook(lambda module, args: seen.append(args))
    try: _, log_q, _ = layer.down(h, up, torch.Generator().manual_seed(seed))
    finally: hook.remove()
    z0, context = seen[0]
    return z0, context, torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed), dtype=z0.dtype), log_q


@pytest.mark.parametrize("bidirectional", [False, True])
def test_log_q_in_down_is_log_normal_of_z0_minus_the_iaf_log_det(bidirectional):
    "log q(z_1) = log N(z_0; μ, σ²) - log|det ∂z_1/∂z_0| for the layer's own noise: pins the sign of the IAF term (IAF Eq. 4)."
    layer, h, up = _layer_inputs(replace(TINY, bidirectional=bidirectional))
    with torch.no_grad():
        for p in layer.iaf.parameters(): p.mul_(3)                                         # a log-det well away from zero
    z0, context, eps, log_q = _iaf_input(layer, h, up, seed=5)
    z0_again, _, eps_again, _ = _iaf_input(layer, h, up, seed=6)
    sigma = (z0 - z0_again) / (eps - eps_again)                                            # z_0 = μ + σ ε for both draws
    mu = z0 - sigma * eps
    if not bidirectional: assert torch.allclose(mu, up[0]) and torch.allclose(sigma, up[1].exp())   # the noise was the layer's
    _, log_det = layer.iaf(z0, context)                                                    # the flow contract: log|det ∂z_1/∂z_0|
    assert log_det.abs().min() > 0.5
    log_normal_z0 = (-0.5 * eps ** 2 - sigma.log() - 0.5 * LOG_2PI).flatten(1).sum(1)
    assert torch.allclose(log_q.flatten(1).sum(1), log_normal_z0 - log_det, atol=1e-8)


def test_train_refuses_free_bits_twice(tmp_path):
    data = CIFAR10("tiny", _pixels(8, 1), _pixels(4, 2), _pixels(4, 3))
    with pytest.raises(ValueError, match="free bits would apply twice"):
        train(ResNetVAE(TINY), data, TrainConfig(epochs=1, batch_size=4, free_bits=0.5), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_training_loop_runs_and_presets_are_complete(tmp_path):
    torch.manual_seed(0)
    data = CIFAR10("tiny", _pixels(8, 1), _pixels(4, 2), _pixels(4, 3))
    model = ResNetVAE(TINY); model.initialize(data.train[:4])
    metrics = train(model, data, TrainConfig(epochs=1, batch_size=4), tmp_path, progress=False)
    assert metrics.valid_vlb.notna().all()
    rows = {row for (_, row) in RESNET_PRESETS}
    assert {"d4-bu-diag", "d8-bi-iaf2h", "d4-bi-iaf1h-const", "d8-bi-iaf1h-learned", "rungs20-iaf", "resnet-vae-iaf"} <= rows


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="iaf_hidden_layers"): ResNetConfig(iaf_hidden_layers=3)
    with pytest.raises(ValueError, match="free_bits"): ResNetConfig(free_bits=-1)
    with pytest.raises(ValueError, match="uint8 image batch"): ResNetVAE(TINY)(_pixels(2).float())
    with pytest.raises(ValueError, match="at least 2"): ResNetVAE(TINY).initialize(_pixels(1))
