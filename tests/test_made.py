"""Property tests for iaf_repro.made: the autoregressive property over orders, widths, depths, contexts."""
import pytest
import torch
from hypothesis import given, strategies as st

import iaf_repro.made as made_module
from iaf_repro.made import (MADE, MaskedLinear, _BlockedMaskedProduct, autoregressive_violations, made_degrees, made_jacobians,
                            made_masks, staircase_blocks)


@st.composite
def made_configs(draw):
    D = draw(st.integers(1, 7))
    hidden = draw(st.lists(st.integers(1, 24), min_size=1, max_size=3))
    context_dim = draw(st.integers(0, 3))
    n_params = draw(st.integers(1, 3))
    perm = draw(st.permutations(list(range(1, D + 1))))
    return D, hidden, context_dim, n_params, torch.tensor(perm)


@given(cfg=made_configs(), seed=st.integers(0, 2**16))
def test_outputs_never_see_their_own_or_later_inputs(cfg, seed):
    D, hidden, context_dim, n_params, order = cfg
    torch.manual_seed(seed)
    made = MADE(D, hidden, n_params=n_params, context_dim=context_dim, order=order).double()
    z = torch.randn(D, dtype=torch.float64)
    h = torch.randn(context_dim, dtype=torch.float64) if context_dim else None
    jac_z, _ = made_jacobians(made, z, h)
    assert jac_z.shape == (n_params, D, D)
    assert autoregressive_violations(jac_z, made.order) == 0


@given(D=st.integers(1, 6), context_dim=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_wide_enough_made_uses_every_permitted_connection_and_all_of_h(D, context_dim, seed):
    torch.manual_seed(seed)
    made = MADE(D, [3 * D + 2, 3 * D + 2], n_params=2, context_dim=context_dim).double()
    jac_z, jac_h = made_jacobians(made, torch.randn(D, dtype=torch.float64), torch.randn(context_dim, dtype=torch.float64))
    permitted = made.order[None, :] < made.order[:, None]
    assert (jac_z[:, permitted] != 0).all()
    assert (jac_h != 0).all()


@given(cfg=made_configs())
def test_connectivity_of_mask_product_is_strictly_autoregressive(cfg):
    D, hidden, context_dim, n_params, order = cfg
    masks = made_masks(made_degrees(D, hidden, order, has_context=context_dim > 0), n_params, context_dim)
    reach = masks[0]
    for m in masks[1:]:
        reach = (m @ reach).clamp(max=1)
    reach_z = reach[:, :D].view(n_params, D, D)
    forbidden = order[None, :] >= order[:, None]
    assert (reach_z[:, forbidden] == 0).all()


def test_unmasked_network_is_caught():
    made = MADE(4, [12], n_params=1).double()
    for layer in made.net:
        if hasattr(layer, "mask"):
            layer.mask.fill_(1.0)
    jac_z, _ = made_jacobians(made, torch.randn(4, dtype=torch.float64))
    assert autoregressive_violations(jac_z, made.order) > 0


def test_extreme_inputs_give_finite_outputs():
    made = MADE(5, [16, 16], n_params=2, context_dim=2)
    out = made(torch.full((3, 5), 1e4), torch.full((3, 2), -1e4))
    assert torch.isfinite(out).all()


def test_bad_input_is_rejected_clearly():
    made = MADE(3, [8], context_dim=2)
    with pytest.raises(ValueError, match="needs a context"):
        made(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="expected 3"):
        made(torch.zeros(2, 4), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="batch 5"):
        made(torch.zeros(2, 3), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, [8], order=torch.tensor([1, 2, 2]))


@given(cfg=made_configs(), rows=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_onednn_inference_path_gives_the_plain_paths_numbers(cfg, rows, seed):
    """The CPU inference path (oneDNN, packed W ⊙ M) and the plain F.linear path agree to float32 rounding,
    and the packed weight follows in-place changes of the weight."""
    import iaf_repro.made as made_module
    D, hidden, context_dim, n_params, order = cfg
    torch.manual_seed(seed)
    made = MADE(D, hidden, n_params=n_params, context_dim=context_dim, order=order)
    z = torch.randn(rows, D)
    h = torch.randn(rows, context_dim) if context_dim else None

    def both():
        with torch.inference_mode():
            fast = made(z, h)
            made_module.ONEDNN_INFERENCE = False
            try: plain = made(z, h)
            finally: made_module.ONEDNN_INFERENCE = True
        return fast, plain

    fast, plain = both()
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    if torch.backends.mkldnn.is_available():
        assert made.net[0] in made_module._PACKED
    with torch.no_grad():
        made.net[0].weight.mul_(-1.5)
    fast, plain = both()
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def test_training_and_float64_do_not_take_the_onednn_path():
    import iaf_repro.made as made_module
    torch.manual_seed(0)
    made = MADE(4, [16, 16], n_params=2, context_dim=3)
    z, h = torch.randn(5, 4), torch.randn(5, 3)
    made_module._PACKED.clear()
    out = made(z, h)
    assert out.requires_grad and len(made_module._PACKED) == 0
    with torch.no_grad():
        made.double()(z.double(), h.double())
    assert len(made_module._PACKED) == 0


# ---- the blocked training product (ch. 03 Eq. 3) ---------------------------------------------------------------

@given(D=st.integers(2, 9), widths=st.tuples(st.integers(2, 40), st.integers(2, 40)), rows=st.integers(1, 7),
       n_blocks=st.integers(1, 9), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_blocked_product_and_its_gradients_equal_the_masked_dense_ones(D, widths, rows, n_blocks, bias, seed):
    """Any sorted-degree hidden-to-hidden mask, any number of blocks (some reaching no column at all), with and
    without bias: output and gradients of x, W and b match F.linear(x, W ⊙ M, b) in float64."""
    g = torch.Generator().manual_seed(seed)
    degrees = made_degrees(D, list(widths), has_context=True)
    mask = (degrees[2][:, None] >= degrees[1][None, :]).double()               # Eq. 1 between the two hidden layers
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
    assert staircase_blocks((cyclic[:, None] >= cyclic[None, :]).float()) is None   # a mask from before the sort: no savings
    assert staircase_blocks(sorted_mask[:320, :320]) is None                    # too small to pay
    assert staircase_blocks(sorted_mask[:320, :320], min_weights=0) is not None


def test_wide_made_trains_through_the_blocks_and_keeps_the_autoregressive_property():
    """A width-1920 MADE: training uses the blocks on its hidden-to-hidden layer, with the plain path's output and
    gradients; torch.func's Jacobian (which falls back to the plain path) still shows no forbidden dependence."""
    torch.manual_seed(0)
    made = MADE(32, [1920, 1920], n_params=2, context_dim=16).double()
    z, h = torch.randn(3, 32, dtype=torch.float64, requires_grad=True), torch.randn(3, 16, dtype=torch.float64)

    def run(blocked):
        with made_module.blocked_products(blocked):
            out = made(z, h)
            grads = torch.autograd.grad(out.square().sum(), [z, *made.parameters()])
        return [out.detach(), *grads]

    made_module._STAIRS.clear()
    blocked = run(True)
    hidden = made.net[2]
    assert isinstance(hidden, MaskedLinear) and made_module._STAIRS[hidden][1] is not None
    for got, want in zip(blocked, run(False)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    jac_z, _ = made_jacobians(made, z[0].detach(), h[0])
    assert autoregressive_violations(jac_z, made.order) == 0


def test_a_checkpoint_with_cyclic_masks_loads_and_runs_the_plain_path():
    """Weights saved before the degrees were sorted carry cyclic masks: loaded into a new MADE, they give the
    old network's outputs (the plain product with the loaded mask), without blocks."""
    torch.manual_seed(0)
    made = MADE(32, [1024, 1024], n_params=2, context_dim=8)
    state = made.state_dict()
    cyclic = made_masks([torch.arange(1, 33), torch.arange(1024) % 32, torch.arange(1024) % 32], 2, 8)
    for i, mask in zip((0, 2, 4), cyclic): state[f"net.{i}.mask"] = mask
    old = MADE(32, [1024, 1024], n_params=2, context_dim=8)
    old.load_state_dict(state)
    z, h = torch.randn(4, 32), torch.randn(4, 8)
    out = old(z, h)
    x = torch.cat([z, h], 1)
    for i in (0, 2, 4):
        layer = old.net[i]
        x = torch.nn.functional.linear(x, layer.weight * cyclic[i // 2], layer.bias)
        if i < 4: x = torch.nn.functional.elu(x)
    torch.testing.assert_close(out, x.view(4, 2, 32), rtol=1e-5, atol=1e-5)
    assert made_module._STAIRS[old.net[2]][1] is None


def test_blocked_products_switch_restores_the_flag_even_after_an_error():
    with pytest.raises(RuntimeError, match="inside"):
        with made_module.blocked_products(False):
            assert made_module.BLOCKED_PRODUCTS is False
            raise RuntimeError("inside")
    assert made_module.BLOCKED_PRODUCTS is True
