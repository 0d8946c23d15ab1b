"""iaf_repro: a literate PyTorch reproduction of Inverse Autoregressive Flow (Kingma et al., 2016).

The flows, densities and bounds are importable from the package root; every module is also importable
on its own (`iaf_repro.iaf`, `iaf_repro.vae`, `iaf_repro.experiments`, ...). This file is the only one in
iaf_repro/ written by hand: nbdev rewrites just its version line, everything else is exported from nbs/.
"""
__version__ = "0.1.0"

from .density import FlowChain, autograd_log_det, flow_log_prob, log_normal_diag, log_standard_normal
from .elbo import elbo, importance_sampled_log_px, iwae_bound, log_importance_weights
from .made import MADE
from .nf import AdditiveCoupling, PlanarFlow, RadialFlow
from .iaf import IAF, IAFStep, iaf_log_q
