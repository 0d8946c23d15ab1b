"""iaf_repro: a literate PyTorch reproduction of Inverse Autoregressive Flow (Kingma et al., 2016).

The flows, densities, bounds and the VAE's posterior are importable from the package root (see `__all__`);
`FlowPosterior` is q(z|x) of a batch as a `torch.distributions.Distribution`; `pretrained(preset, budget)` is a table row's
trained model, from the repository's released weights. Every module is importable on
its own by its name (`iaf_repro.iaf`, `iaf_repro.elbo`, `iaf_repro.vae`, ...): no root name shadows a module,
so the ELBO function is `iaf_repro.elbo.elbo`. Importing the package does not import matplotlib; the plotting
functions import it when called. This file is the only one in iaf_repro/ written by hand: nbdev rewrites just
its version line, everything else is exported from nbs/.
"""
__version__ = "0.1.0"

from .density import FlowChain, autograd_log_det, flow_log_prob, log_normal_diag, log_standard_normal
from .elbo import importance_sampled_log_px, iwae_bound, log_importance_weights
from .made import MADE
from .nf import AdditiveCoupling, PlanarFlow, RadialFlow
from .iaf import IAF, AffineIAFStep, IAFStep, iaf_log_q
from .vae import VAE, FlowPosterior, Posterior, VAEConfig, make_posterior, make_vae
from .release import pretrained

__all__ = ["FlowChain", "autograd_log_det", "flow_log_prob", "log_normal_diag", "log_standard_normal",
           "importance_sampled_log_px", "iwae_bound", "log_importance_weights", "MADE",
           "AdditiveCoupling", "PlanarFlow", "RadialFlow", "IAF", "AffineIAFStep", "IAFStep", "iaf_log_q",
           "VAE", "FlowPosterior", "Posterior", "VAEConfig", "make_posterior", "make_vae", "pretrained"]
