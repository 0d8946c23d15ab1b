"""The study on chapter 12's four-image model: `python four.py VARIANT[,VARIANT...] [STEPS] [SEED]`; appends to four_results.jsonl.
The grid and the IS estimate run in float64; a flow whose inverse fails on the grid gets NaN grid densities."""
import sys, time, json, math, torch
from pathlib import Path
HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[1] / "figures" / "tables" / "iaf_z_study"
sys.path.insert(0, str(HERE))
torch.set_num_threads(1)
from variants import VARIANTS, VariantIAF, z_dependence
import iaf_repro.four_images as FI
_lg = FI.latent_grid
def _lg64(*a, **k):
    z, axis, area = _lg(*a, **k)
    return z.double(), axis.double(), area
FI.latent_grid = _lg64
_lq = FI.log_q_on_grid
def _lq_safe(model, images, z):
    try: return _lq(model, images, z)
    except RuntimeError: return torch.full((len(images), len(z)), float('nan'), dtype=z.dtype)
FI.log_q_on_grid = _lq_safe
from iaf_repro.four_images import four_test_images, fit_to_images, posterior_report, TOY_MODELS
from iaf_repro.mlp_vae import MLPVAE
from iaf_repro.utils import seeded
from iaf_repro.iaf import IAF

names = sys.argv[1].split(",")
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
SEED = int(sys.argv[3]) if len(sys.argv) > 3 else 0
images, labels = four_test_images()
for name in names:
    t0 = time.time()
    cfg = TOY_MODELS["diagonal" if name == "diag" else "IAF"]
    with seeded(SEED):
        model = MLPVAE(cfg, hidden=256)
        if VARIANTS[name] is not None:
            model.posterior.flow = VariantIAF(2, cfg.context_dim, 2, 320, **VARIANTS[name])
    hist = fit_to_images(model, images, steps, seed=SEED, progress=False)
    model.eval().double(); images = images.double()
    report, log_q, log_post = posterior_report(model, images, labels, 4.0, 200, 4096, 0)
    model.float(); images = images.float()
    row = dict(variant=name, steps=steps, kl=report.kl_to_posterior.mean(), kl_grid=report.kl_to_posterior_grid.mean(),
               vlb=report.vlb.mean(), rate=report.rate.mean(), train_vlb=hist[-100:].mean().item(), seconds=round(time.time() - t0))
    if model.posterior.flow is not None:
        mu, ls, h = model.encoder(images)
        row.update(z_dependence(model.posterior.flow, mu.detach(), ls.detach(), h.detach()))
        row["s_max"] = max(step.m_and_s(mu.detach(), h.detach())[1].abs().max().item() for step in model.posterior.flow.layers)
        row["seed"] = SEED
    print(json.dumps(row), flush=True)
    with open(RESULTS / "four_results.jsonl", "a") as f: f.write(json.dumps(row) + "\n")
