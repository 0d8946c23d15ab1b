"""Tests for iaf_repro.accelerate (chapter 90): every fast route gives the plain path's outputs and gradients, a forced
fallback gives the plain numbers with one warning, and checkpoints move between plain and accelerated models."""
import copy
import warnings

import pytest
import torch
from hypothesis import given, strategies as st

import iaf_repro.accelerate as acc
from iaf_repro.accelerate import (FastMaskedLinear, _BlockedMaskedProduct, accelerate, conv_weight_layout, fast_path,
                                  fast_path_problem, staircase_blocks)
from iaf_repro.utils import seeded
from iaf_repro.made import MADE, MaskedLinear, autoregressive_violations, made_degrees, made_jacobians, made_masks
from iaf_repro.vae import VAEConfig, WNConv2d, WNConvTranspose2d, make_vae, toy_images
from test_made import made_configs                       # the MADE shapes chapter 03's property tests draw

X = toy_images(6, torch.Generator().manual_seed(0))


@pytest.fixture
def fresh_warnings():
    "Each test sees its own first warning."
    acc._WARNED.clear()
    yield
    acc._WARNED.clear()


@pytest.fixture
def routes_allowed(monkeypatch):
    "For tests of what a route does: run them even where IAF_REPRO_PLAIN is set for the rest of the suite."
    monkeypatch.delenv("IAF_REPRO_PLAIN", raising=False)


def _plain_and_fast(made):
    return made, accelerate(copy.deepcopy(made))


# ---- oneDNN's packed weights (inference) --------------------------------------------------------------------------

@given(cfg=made_configs(), rows=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_onednn_inference_path_gives_the_plain_paths_numbers(cfg, rows, seed):
    """The CPU inference route (oneDNN, packed W ⊙ M) and the plain F.linear path agree to float32 rounding,
    and the packed weight follows in-place changes of the weight."""
    D, hidden, context_dim, n_params, order = cfg
    torch.manual_seed(seed)
    plain, fast = _plain_and_fast(MADE(D, hidden, n_params=n_params, context_dim=context_dim, order=order))
    z = torch.randn(rows, D)
    h = torch.randn(rows, context_dim) if context_dim else None
    with torch.inference_mode():
        torch.testing.assert_close(fast(z, h), plain(z, h), rtol=1e-5, atol=1e-5)
    assert (fast.net[0] in acc._PACKED) == (fast_path_problem("onednn") is None)
    with torch.no_grad():
        for m in (plain, fast): m.net[0].weight.mul_(-1.5)
    with torch.inference_mode():
        torch.testing.assert_close(fast(z, h), plain(z, h), rtol=1e-5, atol=1e-5)


def test_training_and_float64_do_not_take_the_onednn_path():
    torch.manual_seed(0)
    made = accelerate(MADE(4, [16, 16], n_params=2, context_dim=3))
    z, h = torch.randn(5, 4), torch.randn(5, 3)
    acc._PACKED.clear()
    out = made(z, h)
    assert out.requires_grad and len(acc._PACKED) == 0
    with torch.no_grad():
        made.double()(z.double(), h.double())
    assert len(acc._PACKED) == 0


# ---- the blocked training product (ch. 90 Eq. 1) ------------------------------------------------------------------

@given(D=st.integers(2, 9), widths=st.tuples(st.integers(2, 40), st.integers(2, 40)), rows=st.integers(1, 7),
       n_blocks=st.integers(1, 9), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_blocked_product_and_its_gradients_equal_the_masked_dense_ones(D, widths, rows, n_blocks, bias, seed):
    """Any sorted-degree hidden-to-hidden mask, any number of blocks (some reaching no column at all), with and
    without bias: output and gradients of x, W and b match F.linear(x, W ⊙ M, b) in float64."""
    g = torch.Generator().manual_seed(seed)
    degrees = made_degrees(D, list(widths), has_context=True)
    mask = (degrees[2][:, None] >= degrees[1][None, :]).double()               # Eq. 1 of ch. 03 between the two hidden layers
    mask[: widths[1] // 3] = 0                                                 # some rows see nothing
    blocks = staircase_blocks(mask, n_blocks, max_fraction=1.0, min_weights=0)
    assert all(not mask[r0:r1, c:].any() for r0, r1, c in blocks)             # each block really ends at column c
    x = torch.randn(rows, widths[0], generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(widths[1], widths[0], generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(widths[1], generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    weights = torch.randn(rows, widths[1], generator=g, dtype=torch.float64)
    inputs = [x, w] + ([b] if bias else [])
    blocked = _BlockedMaskedProduct.apply(x, w, mask, b, blocks)
    plain = torch.nn.functional.linear(x, w * mask, b)
    torch.testing.assert_close(blocked, plain, rtol=1e-12, atol=1e-12)
    for got, want in zip(torch.autograd.grad((blocked * weights).sum(), inputs), torch.autograd.grad((plain * weights).sum(), inputs)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_staircase_blocks_of_sorted_cyclic_and_small_masks():
    degrees = made_degrees(32, [1920, 1920], has_context=True)
    sorted_mask = (degrees[2][:, None] >= degrees[1][None, :]).float()
    blocks = staircase_blocks(sorted_mask)
    assert [c for *_, c in blocks] == [240 * b for b in range(1, 9)]           # 60 units per degree, 4 degrees per block
    assert sum((r1 - r0) * c for r0, r1, c in blocks) == 9 * sorted_mask.numel() // 16
    cyclic = torch.arange(1920) % 32
    assert staircase_blocks((cyclic[:, None] >= cyclic[None, :]).float()) is None   # unsorted degrees: no savings
    assert staircase_blocks(sorted_mask[:320, :320]) is None                    # too small to pay
    assert staircase_blocks(sorted_mask[:320, :320], min_weights=0) is not None


def test_wide_made_trains_through_the_blocks_and_keeps_the_autoregressive_property():
    """A width-1920 MADE: training uses the blocks on its hidden-to-hidden layer, with the plain path's output and
    gradients; torch.func's Jacobian (which falls back to the plain path) still shows no forbidden dependence."""
    torch.manual_seed(0)
    plain, fast = _plain_and_fast(MADE(32, [1920, 1920], n_params=2, context_dim=16).double())
    z, h = torch.randn(3, 32, dtype=torch.float64, requires_grad=True), torch.randn(3, 16, dtype=torch.float64)

    def run(made):
        out = made(z, h)
        return [out.detach(), *torch.autograd.grad(out.square().sum(), [z, *made.parameters()])]

    acc._STAIRS.clear()
    for got, want in zip(run(fast), run(plain)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert isinstance(fast.net[2], FastMaskedLinear) and acc._STAIRS[fast.net[2]][1] is not None
    jac_z, _ = made_jacobians(fast, z[0].detach(), h[0])
    assert autoregressive_violations(jac_z, fast.order) == 0


def test_a_checkpoint_with_cyclic_masks_runs_the_plain_path_when_accelerated():
    torch.manual_seed(0)
    made = MADE(32, [1024, 1024], n_params=2, context_dim=8)
    state = made.state_dict()
    for i, mask in zip((0, 2, 4), made_masks([torch.arange(1, 33), torch.arange(1024) % 32, torch.arange(1024) % 32], 2, 8)):
        state[f"net.{i}.mask"] = mask
    old = accelerate(MADE(32, [1024, 1024], n_params=2, context_dim=8))
    old.load_state_dict(state)
    plain = MADE(32, [1024, 1024], n_params=2, context_dim=8)
    plain.load_state_dict(state)
    z, h = torch.randn(4, 32, requires_grad=True), torch.randn(4, 8)
    torch.testing.assert_close(old(z, h), plain(z, h), rtol=1e-5, atol=1e-5)
    assert acc._STAIRS[old.net[2]][1] is None


# ---- channels-last convolution weights -----------------------------------------------------------------------------

def test_conv_weights_are_channels_last_and_give_the_terms_of_the_nchw_layout(routes_allowed):
    torch.manual_seed(0)
    plain = make_vae(VAEConfig()).double()
    plain.initialize(X.double())
    fast = accelerate(copy.deepcopy(plain))
    convs = [m for m in fast.modules() if isinstance(m, (WNConv2d, WNConvTranspose2d))]
    assert convs and all(m.v.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert not any(m.v.is_contiguous() for m in convs if m.v.shape[1] > 1)           # one input channel: both layouts agree
    assert all(p.is_contiguous() for p in plain.parameters())                         # the paper layer: default layout
    assert fast.encoder.blocks(X.double()).is_contiguous(memory_format=torch.channels_last)   # activations follow
    with seeded(1): ours = fast(X.double(), 2)
    with seeded(1): want = plain(X.double(), 2)
    for a, b in zip(ours, want): torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-9)
    conv_weight_layout(fast, torch.contiguous_format)
    assert all(p.is_contiguous() for p in fast.parameters())


# ---- accelerate: same state dict, checkpoints both ways, optimizer kept ----------------------------------------------

IAF = VAEConfig(posterior="iaf", iaf_depth=2, iaf_width=32, context_dim=8)


def test_accelerate_keeps_the_state_dict_and_checkpoints_load_both_ways(tmp_path):
    torch.manual_seed(0)
    plain = make_vae(IAF)
    plain.initialize(X)
    fast = accelerate(copy.deepcopy(plain))
    n_masked = sum(isinstance(m, MaskedLinear) for m in plain.modules())
    assert n_masked > 0 and sum(type(m) is FastMaskedLinear for m in fast.modules()) == n_masked
    state, fast_state = plain.state_dict(), fast.state_dict()
    assert list(fast_state) == list(state)
    assert all(fast_state[k].shape == state[k].shape and torch.equal(fast_state[k], state[k]) for k in state)
    torch.save(state, tmp_path / "plain.pt"); torch.save(fast_state, tmp_path / "fast.pt")
    torch.manual_seed(1)
    into_fast, into_plain = accelerate(make_vae(IAF)), make_vae(IAF)
    into_fast.load_state_dict(torch.load(tmp_path / "plain.pt", weights_only=True))     # plain checkpoint -> fast model
    into_plain.load_state_dict(torch.load(tmp_path / "fast.pt", weights_only=True))     # fast checkpoint -> plain model
    for model in (into_fast, into_plain):
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        with seeded(3): got = model(X, 4)
        with seeded(3): want = plain(X, 4)
        for a, b in zip(got, want): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_accelerate_shares_the_tensors_so_an_optimizer_built_before_still_trains_it():
    torch.manual_seed(0)
    model = MADE(5, [16, 16], n_params=2, context_dim=3)
    before = {name: p for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert accelerate(model) is model
    assert all(p is before[name] for name, p in model.named_parameters())
    weight = model.net[2].weight.detach().clone()
    model(torch.randn(4, 5), torch.randn(4, 3)).sum().backward()
    optimizer.step()
    assert not torch.equal(model.net[2].weight, weight)
    assert type(accelerate(MaskedLinear(torch.ones(3, 2)))) is FastMaskedLinear         # a lone layer is returned fast


# ---- the fallback ----------------------------------------------------------------------------------------------------

def test_forced_fallback_gives_the_plain_numbers_with_one_warning_per_route(monkeypatch, fresh_warnings):
    monkeypatch.setenv("IAF_REPRO_PLAIN", "1")
    torch.manual_seed(0)
    plain = MADE(32, [1920, 1920], n_params=2, context_dim=16)
    with pytest.warns(RuntimeWarning) as caught:
        fast = accelerate(copy.deepcopy(plain))
        z, h = torch.randn(20, 32, requires_grad=True), torch.randn(20, 16)
        for _ in range(3):
            with torch.no_grad(): assert torch.equal(fast(z, h), plain(z, h))        # inference: bit for bit the plain path
            out, want = fast(z, h), plain(z, h)
            assert torch.equal(out, want)                                             # training: the same
            for a, b in zip(torch.autograd.grad(out.sum(), [z, *fast.parameters()]), torch.autograd.grad(want.sum(), [z, *plain.parameters()])):
                assert torch.equal(a, b)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 3 and all("IAF_REPRO_PLAIN is set" in m for m in messages)   # channels_last, onednn, blocks: once each
    assert len(acc._PACKED) == 0 or fast.net[0] not in acc._PACKED


@pytest.mark.parametrize("value,forced", [("", False), ("0", False), ("1", True), ("yes", True)])
def test_the_environment_variable_forces_the_plain_path(monkeypatch, value, forced):
    monkeypatch.setenv("IAF_REPRO_PLAIN", value)
    assert (fast_path_problem("onednn") == "IAF_REPRO_PLAIN is set") is forced


def test_a_missing_feature_falls_back_with_its_reason(monkeypatch, routes_allowed, fresh_warnings):
    """A route whose probe fails (here: as on a CPU without oneDNN's kernels) runs the plain path and says why, once."""
    monkeypatch.setitem(acc.FEATURES, "onednn", lambda: "no oneDNN here")
    acc._probe.cache_clear()
    try:
        torch.manual_seed(0)
        plain, fast = _plain_and_fast(MADE(4, [16], n_params=2, context_dim=3))
        z, h = torch.randn(5, 4), torch.randn(5, 3)
        with pytest.warns(RuntimeWarning, match="onednn route is unavailable.*no oneDNN here"):
            with torch.no_grad(): assert torch.equal(fast(z, h), plain(z, h))
        with warnings.catch_warnings():
            warnings.simplefilter("error")                                          # no second warning
            with torch.no_grad(): fast(z, h)
            assert not fast_path("onednn")
    finally:
        acc._probe.cache_clear()
    with pytest.raises(ValueError, match="unknown fast route 'sse'"):
        fast_path_problem("sse")


def test_the_bf16_probe_answers_without_raising(routes_allowed):
    """On a CPU without AVX-512 (or AVX-NE-CONVERT) oneDNN's bf16 reorder raises; the probe turns that into a reason."""
    problem = fast_path_problem("onednn_bf16")
    assert problem is None or "bf16" in problem or "oneDNN" in problem
