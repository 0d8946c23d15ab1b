"IAF step variants of the z-dependence study behind chapter 04's 'The step we train' and 'Two more suspects' and chapter 12's last section (exploratory research code, run by mnist.py and four.py; PACKAGE_VARIANTS by mnist_package.py and four_package.py)."
import math, torch, torch.nn.functional as F
from torch import nn
from iaf_repro.made import MADE, MaskedLinear, made_degrees, made_masks
from iaf_repro.density import FlowChain, check_batch

class VariantStep(nn.Module):
    def __init__(self, D, C, W=320, reverse=False, context="concat", s_scale=1.0, s_bias=1.5, m_scale=1.0, init="default", form="sigmoid", zero_out=False):
        super().__init__()
        self.D, self.context_dim, self.learned_sigma, self.mode = D, C, True, context
        self.s_scale, self.s_bias, self.m_scale, self.form = s_scale, s_bias, m_scale, form
        order = torch.arange(D, 0, -1) if reverse else torch.arange(1, D + 1)
        degrees = made_degrees(D, [W, W], order, has_context=C > 0)
        masks = made_masks(degrees, 2, C if context == "concat" else 0)
        self.layers = nn.ModuleList(MaskedLinear(m) for m in masks)
        self.register_buffer("order", order)
        self.ctx = nn.Linear(C, W) if (C and context == "add") else None
        if init == "unit":
            with torch.no_grad():
                for l in self.layers:
                    fan = l.mask.sum(1).clamp(min=1)
                    l.weight.normal_().mul_(fan.rsqrt()[:, None]); l.bias.zero_()
                if self.ctx is not None: self.ctx.weight.normal_().mul_(C ** -0.5); self.ctx.bias.zero_()
        if zero_out:
            with torch.no_grad(): self.layers[-1].weight.zero_(); self.layers[-1].bias.zero_()

    def m_and_s(self, z, h=None):
        B = z.shape[0]
        x = z if (h is None or self.mode == "add") else torch.cat([z, h], 1)
        a = self.layers[0](x)
        if self.ctx is not None: a = a + self.ctx(h)
        a = F.elu(a)
        for l in self.layers[1:-1]: a = F.elu(l(a))
        out = self.layers[-1](a).view(B, 2, self.D)
        return self.m_scale * out[:, 0], self.s_scale * out[:, 1] + self.s_bias

    def log_scale_and_shift(self, z, h=None):
        m, s = self.m_and_s(z, h)
        if self.form == "exp":                       # openai/iaf: z_new = (z - mu) / exp(logsd), mu, logsd = m, s
            return -s, -m * torch.exp(-s)
        return F.logsigmoid(s), (1 - torch.sigmoid(s)) * m

    def forward(self, z, h=None):
        log_scale, shift = self.log_scale_and_shift(z, h)
        return torch.exp(log_scale) * z + shift, log_scale.sum(-1)

    def inverse(self, z_new, h=None):
        z = torch.zeros_like(z_new)
        for i in torch.argsort(self.order).tolist():
            ls, sh = self.log_scale_and_shift(z, h)
            z_i = (z_new[:, i] - sh[:, i]) * torch.exp(-ls[:, i])
            z = torch.cat([z[:, :i], z_i[:, None], z[:, i + 1:]], 1)
        return z

class VariantIAF(FlowChain):
    def __init__(self, D, C, depth=2, W=320, **kw):
        super().__init__(*[VariantStep(D, C, W, reverse=t % 2 == 1, **kw) for t in range(depth)])
        self.D, self.context_dim = D, C
    def inverse(self, z, h=None):
        for step in reversed(self.layers): z = step.inverse(z, h)
        return z

@torch.no_grad()
def z_dependence(flow, mu, log_sigma, h=None, samples=32, seed=0):
    "Per-image averages of: off-diagonal/diagonal Jacobian norm ratio, Jacobian variation over samples, per-step shift spread / z spread, log-sigma spread, gate mean, saturated fraction."
    import copy
    f64 = copy.deepcopy(flow).double().eval()
    g = torch.Generator().manual_seed(seed)
    B, D = mu.shape
    out = dict(offdiag=[], variation=[], shift_ratio=[], logsig_spread=[], gate=[], saturated=[])
    for b in range(B):
        eps = torch.randn(samples, D, generator=g, dtype=torch.float64)
        z0 = mu[b].double() + log_sigma[b].double().exp() * eps
        hb = None if h is None else h[b].double().expand(samples, -1)
        def f(z, hh): return f64(z[None], None if hh is None else hh[None])[0][0]
        with torch.enable_grad():
            J = torch.func.vmap(torch.func.jacrev(f), in_dims=(0, 0 if hb is not None else None))(z0, hb)  # [S, D, D]
        diag = torch.diagonal(J, dim1=1, dim2=2)
        off = J - torch.diag_embed(diag)
        out["offdiag"].append((off.flatten(1).norm(dim=1) / diag.norm(dim=1)).mean().item())
        Jm = J.mean(0)
        out["variation"].append(((J - Jm).flatten(1).norm(dim=1).mean() / Jm.norm()).item())
        z = z0
        sr, ls, gt, sat = [], [], [], []
        for step in f64.layers:
            log_scale, shift = step.log_scale_and_shift(z, hb)
            sigma = torch.exp(log_scale)
            sr.append((shift.std(0) / z.std(0).clamp(min=1e-12)).mean().item())
            ls.append(log_scale.std(0).mean().item())
            gt.append(sigma.mean().item()); sat.append((sigma.float() == 1.0).float().mean().item())
            z, _ = step(z, hb)
        out["shift_ratio"].append(sum(sr) / len(sr)); out["logsig_spread"].append(sum(ls) / len(ls))
        out["gate"].append(sum(gt) / len(gt)); out["saturated"].append(sum(sat) / len(sat))
    return {k: sum(v) / len(v) for k, v in out.items()}

# the variants of the study, by name (keyword arguments of VariantIAF; None: the diagonal posterior)
VARIANTS = {
  "diag": None,
  "baseline": dict(),
  "sgate0.1": dict(s_scale=0.1),
  "add": dict(context="add"),
  "add+unit": dict(context="add", init="unit"),
  "concat+unit": dict(init="unit"),
  "add+unit+sgate0.1": dict(context="add", init="unit", s_scale=0.1),
  "add+unit+m0.1s0.1": dict(context="add", init="unit", s_scale=0.1, m_scale=0.1),
  "exp": dict(form="exp", s_scale=0.1, m_scale=0.1, s_bias=0.0),
  "add+unit+exp": dict(context="add", init="unit", form="exp", s_scale=0.1, m_scale=0.1, s_bias=0.0),
  "add+unit+exp+zero": dict(context="add", init="unit", form="exp", s_scale=0.1, m_scale=0.1, s_bias=0.0, zero_out=True),
  "add+unit+exp1+zero": dict(context="add", init="unit", form="exp", s_scale=1.0, m_scale=1.0, s_bias=0.0, zero_out=True),
  "add+exp": dict(context="add", form="exp", s_scale=0.1, m_scale=0.1, s_bias=0.0),
}

# ---- the package's own steps with one change each: the hypotheses of chapter 04's "Does the flow use z?" ----
from iaf_repro.iaf import IAF, IAF_STEPS, AffineIAFStep

def unit_gain(made) -> None:
    "Redraw a MADE's hidden weights at unit gain for z and for h after its masks changed (as AffineIAFStep draws them; output layer kept at zero)."
    *hidden, output = [layer for layer in made.net if isinstance(layer, MaskedLinear)]
    with torch.no_grad():
        for layer in hidden:
            groups = [slice(0, made.D), slice(made.D, None)] if layer is hidden[0] else [slice(None)]
            weight = torch.randn_like(layer.weight)
            for cols in groups: weight[:, cols] /= layer.mask[:, cols].sum(1, keepdim=True).clamp(min=1).sqrt()
            layer.weight.copy_(weight); layer.bias.zero_()

def without_h_only_units(flow):
    """Give every hidden unit of every step's MADE a degree of at least 1 (the degrees a MADE without context gets), so no
    hidden unit sees h alone; h still reaches every hidden unit. The first output in the order then sees no hidden unit:
    its m and s are constants (the encoder's mu, sigma_0 already depend on x). Same parameters, only the masks change."""
    for step in flow.layers:
        made = step.made
        layers = [layer for layer in made.net if isinstance(layer, MaskedLinear)]
        degrees = made_degrees(made.D, [layer.mask.shape[0] for layer in layers[:-1]], made.order, has_context=False)
        for layer, mask in zip(layers, made_masks(degrees, made.n_params, made.context_dim)): layer.mask.copy_(mask)
        if isinstance(step, AffineIAFStep): unit_gain(made)
    return flow

# name -> the change to the package's step (None: the package's step as VAEConfig(iaf_step=...) builds it)
PACKAGE_VARIANTS = {
    "gated": None, "affine": None,
    "gated, forget bias 0": dict(step="gated", s_bias=0.0),        # sigma starts at 0.5: (1 - sigma) m at full weight
    "gated, forget bias 4": dict(step="gated", s_bias=4.0),        # sigma starts at 0.98: close to the identity
    "gated, no h-only units": dict(step="gated", h_only_units=False),
    "affine, no h-only units": dict(step="affine", h_only_units=False),
    "affine, L = 1": dict(step="affine", max_log_sigma=1.0),       # tighter bound on |log sigma| per step
    "affine, L = 10": dict(step="affine", max_log_sigma=10.0),     # wider bound
    "affine, constant sigma": dict(step="affine", learned_sigma=False),   # no scale to trade against sigma_0
}

def package_step(name: str) -> str:
    "The VAEConfig.iaf_step a package variant starts from."
    return name if PACKAGE_VARIANTS[name] is None else PACKAGE_VARIANTS[name]["step"]

def package_flow(name: str, D: int, C: int, depth: int = 2, width: int = 320):
    "The IAF of package variant `name` (one that is not None in PACKAGE_VARIANTS)."
    change = dict(PACKAGE_VARIANTS[name])
    step, h_only = change.pop("step"), change.pop("h_only_units", True)
    learned_sigma, max_log_sigma = change.pop("learned_sigma", True), change.pop("max_log_sigma", None)
    flow = IAF(D, C, depth, (width, width), learned_sigma, IAF_STEPS[step], **change)
    if max_log_sigma is not None:
        for layer in flow.layers: layer.max_log_sigma = max_log_sigma
    return flow if h_only else without_h_only_units(flow)

@torch.no_grad()
def step_scales(flow, mu, log_sigma0, h=None, samples=32, seed=0):
    "Per step, at samples of z_0: the mean log of its scale (log sigma for the gated step, -log sigma for the affine one) and the fraction of scales within 1% of their bound (affine) or equal to 1 in float32 (gated)."
    g = torch.Generator().manual_seed(seed)
    B, D = mu.shape
    eps = torch.randn(B * samples, D, generator=g)
    z = mu.repeat_interleave(samples, 0) + log_sigma0.exp().repeat_interleave(samples, 0) * eps
    hh = None if h is None else h.repeat_interleave(samples, 0)
    out = []
    for step in flow.layers:
        m, s = step.m_and_s(z, hh)
        if s is None: log_scale, at_bound = torch.zeros_like(z), torch.zeros_like(z)
        elif isinstance(step, AffineIAFStep):
            log_scale = -step.log_sigma(s); at_bound = (log_scale.abs() > 0.99 * step.max_log_sigma).float()
        else:
            log_scale = F.logsigmoid(s); at_bound = (torch.sigmoid(s) == 1.0).float()
        out.append(dict(log_scale=log_scale.mean().item(), log_scale_min=log_scale.min().item(), log_scale_max=log_scale.max().item(),
                        at_bound=at_bound.mean().item(), s_abs_max=(0.0 if s is None else s.abs().max().item())))
        z = step(z, hh)[0]
    return out
