"""The study on MNIST: `python mnist.py VARIANT[,VARIANT...] EPOCHS TRAIN_IMAGES` trains the paper's VAE with each posterior
variant from the same seed, logs z_dependence per epoch, evaluates raw weights on 1000 test images (K=16), appends to
mnist_results.jsonl and writes per-image values. Run from this folder with IAF_REPRO_DATA set; summarize.py tabulates."""
import sys, time, json, math, tempfile, torch
from pathlib import Path
from pathlib import Path
HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[1] / "figures" / "tables" / "iaf_z_study"
sys.path.insert(0, str(HERE))
torch.set_num_threads(1)
from variants import VARIANTS, VariantIAF, z_dependence
from iaf_repro.data import load_mnist, evenly_spaced
from iaf_repro.vae import VAEConfig, make_vae
from iaf_repro.train import TrainConfig, train, load_ema_model
from iaf_repro.evaluate import evaluate
from dataclasses import replace

names = sys.argv[1].split(","); epochs = int(sys.argv[2]); n_train = int(sys.argv[3])
data = load_mnist("static")
data = replace(data, train=data.train[:n_train], test=evenly_spaced(data.test, 1000))
probe = data.test[:: 125][:8]
for name in names:
    t0 = time.time()
    cfg = VAEConfig() if name == "diag" else VAEConfig(posterior="iaf", iaf_depth=2, iaf_width=320)
    torch.manual_seed(0)
    model = make_vae(cfg)
    if VARIANTS[name] is not None: model.posterior.flow = VariantIAF(32, cfg.context_dim, 2, 320, **VARIANTS[name])
    model.initialize(next(data.batches("train", 100, generator=torch.Generator().manual_seed(0))))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for e in range(1, epochs + 1):
            metrics = train(model, data, TrainConfig(epochs=e, valid_images=1000), Path(tmp), progress=False)
            row = dict(variant=name, epoch=e, valid_vlb=metrics.valid_vlb.iloc[-1], valid_kl=metrics.valid_kl.iloc[-1])
            if model.posterior.flow is not None:
                mu, ls, h = model.eval().encoder(probe)
                row.update(z_dependence(model.posterior.flow, mu.detach(), ls.detach(), h.detach(), samples=16))
            print(json.dumps(row), flush=True)
            rows.append(row)
    ev = evaluate(model, data.test, k=16, progress=False)   # raw weights: the average lags a short run
    ev.per_image.to_csv(RESULTS / f"mnist_{name}_{epochs}e.per_image.csv.gz", index=False)
    res = dict(variant=name, epochs=epochs, n_train=n_train, test_vlb=ev.summary["vlb"], test_log_px16=ev.summary["log_px"],
               seconds=round(time.time() - t0), **{k: v for k, v in rows[-1].items() if k not in ("variant", "epoch")})
    print(json.dumps(res), flush=True)
    with open(RESULTS / "mnist_results.jsonl", "a") as f: f.write(json.dumps(res) + "\n")
