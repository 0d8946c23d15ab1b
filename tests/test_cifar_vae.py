"""The simple CIFAR-10 model (chapter 22): shapes, the training contract, clear errors, MNIST unchanged."""
import pytest
import torch

from iaf_repro.cifar import CIFAR10
from iaf_repro.cifar_vae import SIMPLE_PRESETS, CifarVAE, check_pixels, epoch_cost, step_flops
from iaf_repro.train import TrainConfig, train
from iaf_repro.vae import VAEConfig, make_vae, toy_images

SMALL = VAEConfig(latent_dim=4, channels=(4, 4, 4), hidden_dim=16, context_dim=8, posterior="iaf", iaf_depth=2, iaf_width=16)


def _pixels(n, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("posterior", ["diagonal", "iaf", "planar"])
def test_terms_shapes_and_finite(posterior):
    torch.manual_seed(0)
    model = CifarVAE(VAEConfig(latent_dim=4, channels=(4, 4, 4), hidden_dim=16, context_dim=8, posterior=posterior, iaf_width=16))
    x = _pixels(5)
    model.initialize(x)
    terms = model(x, k=3)
    assert all(t.shape == (3, 5) and torch.isfinite(t).all() for t in terms)
    assert (terms.log_px_z < 0).all()
    assert model.sample(2).dtype == torch.uint8 and model.sample(2).shape == (2, 3, 32, 32)
    assert model.reconstruct(x[:2]).dtype == torch.uint8


def test_bad_input_is_refused():
    model = CifarVAE(SMALL)
    with pytest.raises(ValueError, match="uint8 image batch"): model(_pixels(2).float())
    with pytest.raises(ValueError, match="uint8 image batch"): model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least 2"): model.initialize(_pixels(1))
    with pytest.raises(ValueError, match="uint8 image batch"): check_pixels([1, 2])


def test_train_runs_unchanged_on_cifar(tmp_path):
    torch.manual_seed(0)
    data = CIFAR10("tiny", _pixels(16, 1), _pixels(4, 2), _pixels(4, 3))
    model = CifarVAE(SMALL); model.initialize(data.train[:8])
    before = [p.detach().clone() for p in model.parameters()]
    metrics = train(model, data, TrainConfig(epochs=2, batch_size=8), tmp_path, progress=False)
    assert list(metrics.epoch) == [1, 2] and metrics.valid_vlb.notna().all()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert (tmp_path / "checkpoint.pt").exists()


def test_mnist_model_is_unchanged_by_the_generalization():
    "Same seed, same construction order: the MNIST VAE's parameters and shapes do not depend on the new arguments."
    torch.manual_seed(0); a = make_vae(VAEConfig())
    assert a.decoder.blocks[0].conv1.output_padding == 0 and a.encoder.blocks[0].conv1.v.shape[1] == 1
    assert a.decoder(torch.zeros(2, 32)).shape == (2, 1, 28, 28)
    assert a(toy_images(2)).log_px_z.shape == (1, 2)


def test_cost_estimate_counts_flops():
    model = CifarVAE(SMALL); model.initialize(_pixels(4))
    flops = step_flops(model, _pixels(4))
    assert flops > 0 and step_flops(model, _pixels(8)) > 1.5 * flops     # roughly linear in the batch
    cost = epoch_cost(model, _pixels(4), train_images=40, steps=1)
    assert cost["epoch_tflop"] == pytest.approx(flops * 10 / 1e12) and cost["step_seconds"] > 0


def test_presets_are_the_replication_rows():
    assert list(SIMPLE_PRESETS) == ["diag", "iaf-d2-w320", "iaf-d2-w1920", "iaf-d4-w1920", "iaf-d8-w1920"]
    assert SIMPLE_PRESETS["iaf-d8-w1920"][1].iaf_depth == 8
