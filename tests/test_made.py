"""Property tests for iaf_repro.made: the autoregressive property over orders, widths, depths, contexts."""
import pytest
import torch
from hypothesis import given, strategies as st

from iaf_repro.made import MADE, MaskedLinear, autoregressive_violations, made_degrees, made_jacobians, made_masks


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


def test_masked_linear_is_the_masked_product_in_every_mode():
    """The paper layer has one path: F.linear with W ⊙ M, bit for bit, with and without gradients, in float32 and float64."""
    torch.manual_seed(0)
    layer = MaskedLinear((torch.rand(48, 40) > 0.5).float())
    x = torch.randn(300, 40)
    want = torch.nn.functional.linear(x, layer.weight * layer.mask, layer.bias)
    assert torch.equal(layer(x), want)
    with torch.inference_mode(): assert torch.equal(layer(x), want)
    layer.double()
    assert torch.equal(layer(x.double()), torch.nn.functional.linear(x.double(), layer.weight * layer.mask, layer.bias))


def test_a_checkpoint_with_cyclic_masks_loads_and_runs_with_them():
    """Weights saved before the degrees were sorted carry cyclic masks: loaded into a new MADE, they give the
    old network's outputs (the plain product with the loaded mask)."""
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
