"""The MNIST arm of the study with the package's own posteriors, for more seeds: `python mnist_package.py SEED [STEP ...]`
trains the paper's VAE with a diagonal posterior and with each IAF step named (`VAEConfig.iaf_step`: gated, affine, or a
variant of one of them named in variants.PACKAGE_VARIANTS) for
5 epochs of 10,000 training images from seed SEED, evaluates the raw weights on 1,000 evenly spaced test images (K = 16),
and appends each posterior's test numbers, paired against the diagonal model, and its z-dependence (chapter 04,
Eqs. 17-19, on eight test images) to figures/tables/iaf_z_study/mnist_package_results.jsonl with provenance."""
import json, math, sys, tempfile, time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from variants import PACKAGE_VARIANTS, package_flow, package_step

from iaf_repro.data import evenly_spaced, load_mnist
from iaf_repro.evaluate import evaluate
from iaf_repro.iaf import z_dependence
from iaf_repro.train import TrainConfig, train
from iaf_repro.utils import provenance
from iaf_repro.vae import VAEConfig, make_vae

RESULTS = Path(__file__).resolve().parents[2] / "figures" / "tables" / "iaf_z_study"
seed, steps = int(sys.argv[1]), sys.argv[2:] or ["gated", "affine"]
torch.set_num_threads(1)
data = load_mnist("static")
data = replace(data, train=data.train[:10_000], test=evenly_spaced(data.test, 1000))
probe = data.test[::125][:8]

def trained(config: VAEConfig, variant: str | None = None):
    "The raw weights after 5 epochs from `seed` (the IAF replaced by package variant `variant`'s, if it changes the step), and the seconds it took."
    start = time.time()
    torch.manual_seed(seed)
    model = make_vae(config)
    if variant is not None and PACKAGE_VARIANTS[variant] is not None:
        model.posterior.flow = package_flow(variant, config.latent_dim, config.context_dim, config.iaf_depth, config.iaf_width)
    model.initialize(next(data.batches("train", 100, generator=torch.Generator().manual_seed(seed))))
    with tempfile.TemporaryDirectory() as tmp:
        train(model, data, TrainConfig(epochs=5, valid_images=1000, seed=seed), Path(tmp), progress=False)
    return model.eval(), time.time() - start

diag, _ = trained(VAEConfig())
base = evaluate(diag, data.test, k=16, seed=seed, progress=False).per_image
for step in steps:
    model, seconds = trained(VAEConfig(posterior="iaf", iaf_step=package_step(step)), step)
    per_image = evaluate(model, data.test, k=16, seed=seed, progress=False).per_image
    row = dict(step=step, seed=seed, steps=500, train_images=10_000, test_images=len(per_image), is_samples=16,
               test_vlb=per_image.vlb.mean(), seconds=round(seconds))
    for column in ("vlb", "log_px", "gap"):
        d = per_image[column] - base[column]
        row[f"d_{column}"], row[f"d_{column}_se"] = d.mean(), d.std() / math.sqrt(len(d))
    with torch.no_grad(): mu, log_sigma, h = model.encode(probe)
    row.update(z_dependence(model.posterior.flow, mu, log_sigma, h, samples=16), **provenance("cpu"))
    with open(RESULTS / "mnist_package_results.jsonl", "a") as f: f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
