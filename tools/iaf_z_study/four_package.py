"""The four-image model of chapter 12 with the package's IAF step as the table runs train it (`iaf_step="affine"`, chapter 04
Eq. 20), same fit as chapter 12: `python four_package.py [SEED]`. Appends its KL to the true posterior and its z-dependence
(chapter 04 Eqs. 17-19) to figures/tables/iaf_z_study/four_package_results.jsonl, with the commit."""
import json, sys, time
from dataclasses import replace
from pathlib import Path

import torch

from iaf_repro.utils import provenance, seeded
from iaf_repro.four_images import TOY_MODELS, fit_to_images, four_test_images, posterior_report
from iaf_repro.iaf import z_dependence
from iaf_repro.mlp_vae import MLPVAE

RESULTS = Path(__file__).resolve().parents[2] / "figures" / "tables" / "iaf_z_study"
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
torch.set_num_threads(1)
start = time.time()
images, labels = four_test_images()
with seeded(seed): model = MLPVAE(replace(TOY_MODELS["IAF"], iaf_step="affine"), hidden=256)
history = fit_to_images(model, images, 4000, seed=seed, progress=False)
model.eval()
mu, log_sigma, h = model.encode(images)
report, *_ = posterior_report(model, images, labels)
row = dict(variant="package AffineIAFStep", seed=seed, steps=4000, final_train_vlb=history[-100:].mean().item(),
           kl=report.kl_to_posterior.mean(), kl_grid=report.kl_to_posterior_grid.mean(), vlb=report.vlb.mean(), rate=report.rate.mean(),
           **z_dependence(model.posterior.flow, mu, log_sigma, h), seconds=round(time.time() - start), **provenance("cpu"))
with open(RESULTS / "four_package_results.jsonl", "a") as f: f.write(json.dumps(row) + "\n")
print(json.dumps(row))
