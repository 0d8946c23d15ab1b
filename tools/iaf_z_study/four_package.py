"""The four-image model of chapter 12 with the package's IAF steps, same fit as chapter 12: `python four_package.py [SEED]
[VARIANT ...]`, VARIANT a name of variants.PACKAGE_VARIANTS (default: affine, the step the table runs train, chapter 04
Eq. 20). Appends each fit's KL to the true posterior, its z-dependence (chapter 04 Eqs. 17-19), each step's mean log scale
and the encoder's mean log sigma_0 to figures/tables/iaf_z_study/four_package_results.jsonl, with the commit."""
import json, sys, time
from dataclasses import replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from variants import PACKAGE_VARIANTS, package_flow, package_step, step_scales
from iaf_repro.utils import provenance, seeded
from iaf_repro.four_images import TOY_MODELS, fit_to_images, four_test_images, posterior_report
from iaf_repro.iaf import z_dependence
from iaf_repro.mlp_vae import MLPVAE

RESULTS = HERE.parents[1] / "figures" / "tables" / "iaf_z_study"
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
names = sys.argv[2:] or ["affine"]
torch.set_num_threads(1)
images, labels = four_test_images()
for name in names:
    start = time.time()
    config = replace(TOY_MODELS["IAF"], iaf_step=package_step(name))
    with seeded(seed):
        model = MLPVAE(config, hidden=256)
        if PACKAGE_VARIANTS[name] is not None: model.posterior.flow = package_flow(name, config.latent_dim, config.context_dim)
    history = fit_to_images(model, images, 4000, seed=seed, progress=False)
    model.eval()
    with torch.no_grad(): mu, log_sigma, h = model.encode(images)
    report, *_ = posterior_report(model, images, labels)
    row = dict(variant="package AffineIAFStep" if name == "affine" else name, seed=seed, steps=4000, final_train_vlb=history[-100:].mean().item(),
               kl=report.kl_to_posterior.mean(), kl_grid=report.kl_to_posterior_grid.mean(), vlb=report.vlb.mean(), rate=report.rate.mean(),
               **z_dependence(model.posterior.flow, mu, log_sigma, h), log_sigma0=log_sigma.mean().item(),
               steps_scale=step_scales(model.posterior.flow, mu, log_sigma, h), seconds=round(time.time() - start), **provenance("cpu"))
    with open(RESULTS / "four_package_results.jsonl", "a") as f: f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
