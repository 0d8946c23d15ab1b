"""Summarise the IAF z-dependence study (chapter 04, "The step we train") into figures/tables/iaf_z_study.csv.

The study itself is mnist.py (static MNIST, the paper's VAE, 5 epochs of 10,000 training images = 500 steps, seed 0,
raw weights evaluated on 1,000 evenly spaced test images with K = 16) and four.py (chapter 12's four-image model), run
with variants.py's IAF steps. This script pairs every variant with the diagonal model on the same test images."""
import gzip, json, math
from pathlib import Path
import pandas as pd

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[1] / "figures" / "tables" / "iaf_z_study"
DESCRIPTIONS = {   # variant -> (step form, how z and h enter the MADE and its initialisation)
    "diag": ("no flow", "diagonal Gaussian posterior"),
    "baseline": ("gated (IAF Alg. 1)", "z and h concatenated, PyTorch's default init, s bias 1.5"),
    "add+unit+m0.1s0.1": ("gated, m and s times 0.1", "z and h each at unit gain, s bias 1.5"),
    "exp": ("affine (openai/iaf), outputs times 0.1", "z and h concatenated, PyTorch's default init"),
    "add+unit+exp": ("affine (openai/iaf), outputs times 0.1", "z and h each at unit gain"),
    "add+unit+exp+zero": ("affine (openai/iaf), outputs times 0.1", "z and h each at unit gain, output layer zero: starts as the identity"),
    "add+unit+exp1+zero": ("affine, outputs not scaled", "z and h each at unit gain, output layer zero: starts as the identity"),
}
COMMITS = {"add+unit+exp+zero": "9ec5851", "add+unit+exp1+zero": "9ec5851"}   # package at the start of each batch (dirty)

def per_image(variant: str) -> pd.DataFrame:
    return pd.read_csv(RESULTS / f"mnist_{variant}_5e.per_image.csv.gz")

def main():
    rows = [json.loads(line) for line in (RESULTS / "mnist_results.jsonl").read_text().splitlines()]
    diag = per_image("diag")
    out = []
    for r in rows:
        x = per_image(r["variant"])
        paired = {}
        for column in ("vlb", "log_px", "gap"):
            d = x[column] - diag[column]
            paired[f"d_{column}"], paired[f"d_{column}_se"] = d.mean(), d.std() / math.sqrt(len(d))
        form, inputs = DESCRIPTIONS[r["variant"]]
        out.append(dict(variant=r["variant"], step_form=form, made_inputs=inputs, steps=r["epochs"] * r["n_train"] // 100,
                        train_images=r["n_train"], test_images=len(x), is_samples=16, seed=0,
                        test_vlb=r["test_vlb"], **paired,
                        **{k: r.get(k, math.nan) for k in ("offdiag", "variation", "shift_ratio", "logsig_spread", "gate", "saturated")},
                        seconds=r["seconds"], package_commit=COMMITS.get(r["variant"], "1dcd88e"), device="cpu, 1 thread (busy 2-core AMD EPYC)"))
    pd.DataFrame(out).to_csv(HERE.parents[1] / "figures" / "tables" / "iaf_z_study.csv", index=False, float_format="%.4g")

if __name__ == "__main__":
    main()
