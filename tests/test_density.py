"""Property tests for iaf_repro.density: Gaussian log-densities, the autograd reference, FlowChain."""
import math

import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn

from iaf_repro.density import (FlowChain, autograd_log_det, check_batch, check_context, flow_log_prob,
                               log_normal_diag, log_standard_normal)


class ElementwiseAffine(nn.Module):
    "z -> a * z + b with known log-det sum(log|a|): a layer whose answer is known in closed form."
    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, z, h=None):
        return self.a * z + self.b, torch.log(self.a.abs()).sum().expand(z.shape[0])


class LinearMap(nn.Module):
    "z -> z W^T with log-det log|det W|, computed independently of autograd_log_det."
    def __init__(self, W):
        super().__init__()
        self.W = W

    def forward(self, z, h=None):
        return z @ self.W.T, torch.linalg.slogdet(self.W).logabsdet.expand(z.shape[0])


@given(B=st.integers(1, 6), D=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_log_normal_matches_torch_distributions(B, D, seed):
    g = torch.Generator().manual_seed(seed)
    z, mu, log_sigma = (torch.randn(B, D, generator=g, dtype=torch.float64) for _ in range(3))
    expected = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(log_normal_diag(z, mu, log_sigma), expected)
    torch.testing.assert_close(log_standard_normal(z), torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1))


@given(B=st.integers(1, 5), D=st.integers(1, 5), depth=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_chain_log_det_is_sum_and_matches_autograd(B, D, depth, seed):
    g = torch.Generator().manual_seed(seed)
    layers = [LinearMap(torch.randn(D, D, generator=g, dtype=torch.float64) + 2 * torch.eye(D, dtype=torch.float64))
              for _ in range(depth)]
    layers.append(ElementwiseAffine(torch.rand(D, generator=g, dtype=torch.float64) + 0.5, torch.randn(D, generator=g, dtype=torch.float64)))
    chain = FlowChain(*layers)
    z = torch.randn(B, D, generator=g, dtype=torch.float64)
    z_out, log_det = chain(z)
    assert z_out.shape == (B, D) and log_det.shape == (B,)
    expected = sum(layer(z)[1] for layer in layers)          # each layer's log-det is constant in z
    torch.testing.assert_close(log_det, expected)
    torch.testing.assert_close(log_det, autograd_log_det(chain, z), rtol=1e-8, atol=1e-8)


def test_flow_log_prob_of_a_scaling_is_the_scaled_gaussian():
    # z ~ N(0, 1) pushed through z -> 3z + 1 is N(1, 3^2): Eq. 5 must give that density exactly.
    layer = ElementwiseAffine(torch.tensor([3.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
    z0 = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    zK, log_det = FlowChain(layer)(z0)
    expected = log_normal_diag(zK, torch.ones(1, dtype=torch.float64), torch.full((1,), math.log(3.0), dtype=torch.float64))
    torch.testing.assert_close(flow_log_prob(log_standard_normal(z0), log_det), expected)


def test_log_densities_stay_finite_far_out():
    z = torch.full((2, 4), 1e6, dtype=torch.float64)
    assert torch.isfinite(log_standard_normal(z)).all()
    assert torch.isfinite(log_normal_diag(z, torch.zeros(4), torch.full((4,), -20.0))).all()


def test_bad_input_is_rejected_clearly():
    with pytest.raises(ValueError, match=r"shape \[batch, dim\]"):
        log_standard_normal(torch.zeros(3))
    with pytest.raises(TypeError, match="floating-point"):
        check_batch(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="needs a context"):
        check_context(None, batch=2, dim=3)
    class WrongLogDetShape(nn.Module):
        def forward(self, z, h=None): return z, torch.zeros(z.shape[0], 2)
    with pytest.raises(ValueError, match=r"expected \(2,\)"):
        FlowChain(WrongLogDetShape())(torch.zeros(2, 3))


def test_the_package_has_its_docstring_and_version():
    import iaf_repro
    assert iaf_repro.__doc__ and iaf_repro.__doc__.startswith("iaf_repro: a literate PyTorch reproduction")
    assert iaf_repro.__version__
