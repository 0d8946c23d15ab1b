"Tests for iaf_repro.train: exact resume after a crash, the NaN guard, checkpoint errors, EMA and free-bits math, the schedule, the progress record, the collective."
import copy
import os
import signal
from dataclasses import replace

import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st

from iaf_repro.data import BinarizedMNIST
from iaf_repro.utils import seeded
from iaf_repro.mlp_vae import MLPVAE
from iaf_repro.testing import CrashingData, SimulatedCrash, TurnsNaN
from iaf_repro.train import (CHECKPOINT_FORMAT, METRIC_COLUMNS, CheckpointError, NonFiniteLossError, RunState, SingleProcess, TrainConfig,
                             bound_terms, copy_buffers, ema_update, free_bits_objective, load_checkpoint, load_ema_model, save_checkpoint, train,
                             train_epoch, validate)
from iaf_repro.vae import Terms, VAEConfig, toy_images

SETTINGS = settings(max_examples=25, deadline=None)
F64 = dict(dtype=torch.float64)
CONFIG = TrainConfig(epochs=2, batch_size=16, ema_decay=0.9, seed=3)        # 4 steps an epoch on 64 images


def tiny_data(dynamic=False):
    "64/32/16 synthetic crosses; `dynamic`: training images are grey probabilities, resampled per batch."
    g = torch.Generator().manual_seed(0)
    train_x, valid, test = toy_images(64, g), toy_images(32, g), toy_images(16, g)
    if dynamic: train_x = 0.05 + 0.9 * train_x
    return BinarizedMNIST("synthetic", train_x, valid, test, dynamic=dynamic)


def tiny_model(seed=0, latent_dim=4, posterior="diagonal"):
    torch.manual_seed(seed)
    extra = dict(iaf_width=16, context_dim=8) if posterior == "iaf" else {}
    return MLPVAE(VAEConfig(latent_dim=latent_dim, posterior=posterior, **extra), hidden=32)


def metrics_without_time(run_dir):
    return pd.read_csv(run_dir / "metrics.csv").drop(columns="seconds")


def turns_nan(healthy_steps):
    "The tiny model of `tiny_model(0)`, but its log-likelihoods become NaN after `healthy_steps` training forward passes."
    torch.manual_seed(0)
    return TurnsNaN(healthy_steps, VAEConfig(latent_dim=4), hidden=32)


# ---- exact resume -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dynamic,posterior", [(False, "diagonal"), (True, "iaf")])
def test_kill_and_resume_gives_identical_metrics(tmp_path, dynamic, posterior):
    data = tiny_data(dynamic)
    straight = train(tiny_model(0, posterior=posterior), data, CONFIG, tmp_path / "straight", progress=False)
    with pytest.raises(SimulatedCrash):
        train(tiny_model(0, posterior=posterior), CrashingData(data, after=6), CONFIG, tmp_path / "crash", progress=False)
    assert load_checkpoint(tmp_path / "crash" / "checkpoint.pt")["run"]["epoch"] == 1
    torch.manual_seed(987)                                       # a new process: another global RNG state, other weights
    resumed = train(tiny_model(5, posterior=posterior), data, CONFIG, tmp_path / "crash", progress=False)
    assert list(straight.columns)[:len(METRIC_COLUMNS)] == METRIC_COLUMNS and len(straight) == 2   # IAF: flow_ columns follow
    pd.testing.assert_frame_equal(metrics_without_time(tmp_path / "crash"), metrics_without_time(tmp_path / "straight"), check_exact=True)
    pd.testing.assert_frame_equal(resumed.drop(columns="seconds"), straight.drop(columns="seconds"), check_exact=True)


def test_the_resume_comparison_can_fail(tmp_path):
    "Another seed changes the metrics, so the equality above is not vacuous."
    data = tiny_data()
    train(tiny_model(0), data, CONFIG, tmp_path / "a", progress=False)
    train(tiny_model(0), data, replace(CONFIG, seed=4), tmp_path / "b", progress=False)
    assert not metrics_without_time(tmp_path / "a").equals(metrics_without_time(tmp_path / "b"))


def test_extending_a_finished_run_equals_a_longer_run(tmp_path):
    data = tiny_data()
    train(tiny_model(0), data, replace(CONFIG, epochs=3), tmp_path / "long", progress=False)
    train(tiny_model(0), data, replace(CONFIG, epochs=1), tmp_path / "short", progress=False)
    again = train(tiny_model(0), data, replace(CONFIG, epochs=1), tmp_path / "short", progress=False)   # finished: no training
    assert len(again) == 1
    train(tiny_model(0), data, replace(CONFIG, epochs=3), tmp_path / "short", progress=False)
    pd.testing.assert_frame_equal(metrics_without_time(tmp_path / "short"), metrics_without_time(tmp_path / "long"), check_exact=True)


# ---- refusing a resume that does not fit, corrupt checkpoints ---------------------------------------------------

def test_resume_refuses_other_models_configs_and_overwrites(tmp_path):
    data = tiny_data()
    train(tiny_model(0), data, replace(CONFIG, epochs=1), tmp_path, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match="holds model weights for a different model"):
        train(tiny_model(0, latent_dim=6), data, CONFIG, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match=r"different configuration .*'free_bits': \(0.0, 1.0\)"):
        train(tiny_model(0), data, replace(CONFIG, free_bits=1.0), tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="resume=False"):
        train(tiny_model(0), data, CONFIG, tmp_path, progress=False, resume=False)
    with pytest.raises(CheckpointError, match="averaged weights for a different model"):
        load_ema_model(tiny_model(0, latent_dim=6), tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("corruption", ["noise", "truncated", "empty", "foreign"])
def test_corrupt_checkpoint_gives_a_clear_error_and_is_kept(tmp_path, corruption):
    data = tiny_data()
    train(tiny_model(0), data, replace(CONFIG, epochs=1), tmp_path, progress=False)
    path = tmp_path / "checkpoint.pt"
    good = path.read_bytes()
    if corruption == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.write_bytes({"noise": os.urandom(2000), "truncated": good[: len(good) // 2], "empty": b""}[corruption])
    bad = path.read_bytes()
    match = "not an iaf-repro training checkpoint" if corruption == "foreign" else "is not a readable checkpoint"
    with pytest.raises(CheckpointError, match=match):
        train(tiny_model(0), data, CONFIG, tmp_path, progress=False)
    assert path.read_bytes() == bad                                    # left exactly as it was
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == 1


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "epoch": 1, "w": torch.ones(3)}, path)
    good = path.read_bytes()

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(good[:100])
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": CHECKPOINT_FORMAT, "epoch": 2}, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]   # no temporary file left behind
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


# ---- the NaN guard ----------------------------------------------------------------------------------------------

def test_nan_guard_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    data = tiny_data()
    config = replace(CONFIG, epochs=3)
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss at epoch 2, step 3 of the epoch.*epoch 1\), is untouched") as error:
        train(turns_nan(healthy_steps=6), data, config, tmp_path, progress=False)   # 4 steps in epoch 1, NaN at the 7th
    assert (error.value.epoch, error.value.step) == (2, 3)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["run"]["epoch"] == 1 and all(torch.isfinite(t).all() for t in state["model"].values())
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == 1
    assert all(torch.isfinite(p).all() for p in load_ema_model(tiny_model(0), tmp_path).parameters())
    assert len(train(tiny_model(0), data, config, tmp_path, progress=False)) == 3   # a healthy model resumes from it


def test_nan_in_the_first_epoch_writes_nothing(tmp_path):
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1 of the epoch.*no checkpoint had been written yet"):
        train(turns_nan(healthy_steps=0), tiny_data(), CONFIG, tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "best.pt").exists()


# ---- schedule, early stopping, best weights ---------------------------------------------------------------------

def test_plateau_lowers_the_lr_then_stops_early(tmp_path):
    "With lr = 1e-30 the float32 weights never change, so the validation bound never improves after epoch 1."
    config = replace(CONFIG, epochs=20, lr=1e-30, lr_patience=1, early_stop_patience=3)
    metrics = train(tiny_model(0), tiny_data(), config, tmp_path, progress=False)
    assert metrics.epoch.tolist() == [1, 2, 3, 4]                         # stopped 3 epochs after the best (epoch 1)
    assert metrics.valid_vlb.nunique() == 1
    assert metrics.lr.tolist() == pytest.approx([1e-30, 1e-30, 1e-30, 1e-31], rel=1e-6)
    assert len(train(tiny_model(0), tiny_data(), config, tmp_path, progress=False)) == 4   # stopped runs stay stopped


def test_best_pt_holds_the_best_epochs_average(tmp_path):
    data = tiny_data()
    config = replace(CONFIG, epochs=3)
    metrics = train(tiny_model(0), data, config, tmp_path, progress=False)
    best = load_ema_model(tiny_model(1), tmp_path, "best")
    last = load_ema_model(tiny_model(1), tmp_path, "last")
    assert not best.training and not any(p.requires_grad for p in best.parameters())
    vlb = lambda m: validate(m, data.valid, config.batch_size, config.seed)[0].item()
    assert vlb(best) == pytest.approx(metrics.valid_vlb.max(), abs=1e-4)
    assert vlb(last) == pytest.approx(metrics.valid_vlb.iloc[-1], abs=1e-4)
    with pytest.raises(ValueError, match="which must be 'best' or 'last'"):
        load_ema_model(tiny_model(1), tmp_path, "first")


def test_metrics_are_consistent(tmp_path):
    metrics = train(tiny_model(0), tiny_data(), replace(CONFIG, max_steps_per_epoch=3, valid_images=8), tmp_path, progress=False)
    assert metrics.steps.tolist() == [3, 6]
    for split in ("train", "valid"):
        assert (metrics[f"{split}_vlb"] - (metrics[f"{split}_recon"] - metrics[f"{split}_kl"])).abs().max() < 1e-3
    assert (metrics.seconds > 0).all()
    assert list(pd.read_csv(tmp_path / "metrics.csv").columns) == METRIC_COLUMNS


def test_too_little_training_data_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="fewer images than batch_size"):
        train(tiny_model(0), tiny_data(), replace(CONFIG, batch_size=100), tmp_path, progress=False)


@pytest.mark.parametrize("field,value,match", [("epochs", 0, "epochs must be a positive integer"),
                                               ("ema_decay", 1.0, r"ema_decay must lie in \[0, 1\)"),
                                               ("free_bits", -0.5, "free_bits must be >= 0"),
                                               ("lr", 0.0, "lr must be positive"),
                                               ("betas", (0.9, 1.0), "betas must be two numbers"),
                                               ("valid_images", 0, "valid_images must be a positive integer")])
def test_train_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        replace(CONFIG, **{field: value})


# ---- the math: bound terms, free bits, EMA ------------------------------------------------------------------------

@SETTINGS
@given(k=st.integers(1, 5), B=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_bound_terms_split_the_vlb(k, B, seed):
    g = torch.Generator().manual_seed(seed)
    terms = Terms(*(10 * torch.randn(3, k, B, generator=g, **F64)))
    vlb, recon, kl = bound_terms(terms)
    torch.testing.assert_close(vlb, (terms.log_px_z + terms.log_pz - terms.log_qz).mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vlb, recon - kl, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(B=st.integers(1, 8), free_bits=st.floats(0.01, 50.0), seed=st.integers(0, 10_000))
def test_free_bits_gradient(B, free_bits, seed):
    g = torch.Generator().manual_seed(seed)
    recon = (-80 + torch.randn(B, generator=g, **F64)).requires_grad_()
    kl = (free_bits * 2 * torch.rand(B, generator=g, **F64)).requires_grad_()        # mean below or above lambda
    objective = free_bits_objective(recon, kl, free_bits)
    objective.backward()
    below = kl.mean().item() < free_bits
    expected_kl_grad = 0.0 if below else -1.0 / B
    torch.testing.assert_close(kl.grad, torch.full((B,), expected_kl_grad, **F64))
    torch.testing.assert_close(recon.grad, torch.full((B,), 1.0 / B, **F64))
    assert objective.item() == pytest.approx(recon.mean().item() - max(free_bits, kl.mean().item()), rel=1e-12)


def test_free_bits_zero_is_the_plain_vlb_even_for_a_negative_kl_estimate():
    recon, kl = torch.tensor([-5.0, -7.0], **F64), torch.tensor([-0.5, 0.1], **F64)
    assert free_bits_objective(recon, kl, 0.0).item() == pytest.approx(-6.0 + 0.2)
    with pytest.raises(ValueError, match="free_bits must be >= 0"):
        free_bits_objective(recon, kl, -1.0)


@SETTINGS
@given(decay=st.floats(0.0, 0.999), steps=st.integers(1, 30), seed=st.integers(0, 10_000))
def test_ema_update_is_the_unrolled_average(decay, steps, seed):
    g = torch.Generator().manual_seed(seed)
    thetas = torch.randn(steps + 1, 3, generator=g, **F64)                          # theta_0 .. theta_steps
    model = torch.nn.Linear(3, 1, bias=False).double()
    with torch.no_grad(): model.weight.copy_(thetas[0])
    ema = copy.deepcopy(model)
    for t in range(1, steps + 1):
        with torch.no_grad(): model.weight.copy_(thetas[t])
        ema_update(ema, model, decay)
    weights = torch.tensor([decay**steps] + [(1 - decay) * decay ** (steps - s) for s in range(1, steps + 1)], **F64)
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, **F64))
    torch.testing.assert_close(ema.weight[0], weights @ thetas, rtol=1e-10, atol=1e-12)


def test_ema_update_leaves_buffers_and_copy_buffers_copies_them_all():
    model, ema = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    model.running_mean.fill_(2.0); model.num_batches_tracked.fill_(7)
    ema_update(ema, model, 0.5)
    assert ema.running_mean.eq(0).all() and ema.num_batches_tracked.item() == 0
    copy_buffers(ema, model)
    for name, buffer in model.named_buffers(): assert torch.equal(dict(ema.named_buffers())[name], buffer)
    ema.running_mean.zero_()                                                       # the average's copy written (a load, say)
    copy_buffers(ema, model)                                                       # copied again: no memory of an earlier copy
    assert torch.equal(ema.running_mean, model.running_mean)
    with pytest.raises(ValueError, match="same parameters"):
        ema_update(torch.nn.Linear(2, 1), torch.nn.Linear(2, 1, bias=False), 0.9)
    with pytest.raises(ValueError, match="same buffers"):
        copy_buffers(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(2))


def test_train_epoch_leaves_the_average_with_the_models_buffers():
    "Buffers copied once, at the end of the epoch: the average validated and saved after it holds the model's."
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    ema = copy.deepcopy(model)
    class Bound(torch.nn.Module):                                                  # the VAE's (vlb, recon, kl) terms, per image
        def __init__(self, net): super().__init__(); self.net = net
        def forward(self, x, k): out = self.net(x).sum(-1)[None]; return Terms(out, torch.zeros_like(out), torch.zeros_like(out))
    batches = [torch.randn(8, 4) for _ in range(3)]
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-2)
    class Bar:
        def update(self): pass
    train_epoch(model, Bound(model), ema, batches, optimizer, TrainConfig(epochs=1), Bar())
    assert not model[1].running_mean.eq(0).all()                                   # training moved the running statistics
    for name, buffer in model.named_buffers(): assert torch.equal(dict(ema.named_buffers())[name], buffer)


def test_validate_is_deterministic_and_leaves_the_callers_rng():
    model, data = tiny_model(0), tiny_data()
    state = torch.get_rng_state()
    first = validate(model, data.valid, 10, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, validate(model, data.valid, 10, seed=1))
    assert not torch.equal(first, validate(model, data.valid, 10, seed=2))
    with seeded(5):
        a = torch.rand(3)
    with seeded(5):
        assert torch.equal(a, torch.rand(3))


def test_ema_update_equals_the_per_tensor_lerp_bit_for_bit():
    import copy
    from iaf_repro.train import ema_update
    torch.manual_seed(0)
    model = MLPVAE(VAEConfig(latent_dim=4, posterior="iaf", iaf_width=16, context_dim=8), hidden=16)
    ema, reference = copy.deepcopy(model), copy.deepcopy(model)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters(): p.add_(torch.randn_like(p))
            for r, p in zip(reference.parameters(), model.parameters()): r.lerp_(p, 1 - 0.99)
        ema_update(ema, model, 0.99)
    for a, b in zip(ema.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)


def test_run_state_reads_back_the_record_a_checkpoint_stores(tmp_path):
    "The progress record stays the plain dict of the checkpoint format: the same keys, read back and written out unchanged."
    train(tiny_model(0), tiny_data(), CONFIG, tmp_path, progress=False)
    record = load_checkpoint(tmp_path / "checkpoint.pt")["run"]
    assert set(record) == {"epoch", "steps", "best_vlb", "best_epoch", "since_best", "stopped", "rows"}   # never moved
    state = RunState.from_dict(record)
    assert (state.epoch, state.steps, len(state.rows), state.device_changes) == (2, 8, 2, [])
    assert state.to_dict() == record and state.finished(CONFIG.epochs) and not state.finished(3)
    assert list(state.epochs_left(4)) == [3, 4] and list(replace(state, stopped=True).epochs_left(4)) == []
    with pytest.raises(CheckpointError, match=r"unknown \['lr'\]"): RunState.from_dict(record | {"lr": 0.1})


class Rank1Collective(SingleProcess):
    "A collective for rank 1 of `world` whose rank 0 reports fixed validation numbers; records the SIGTERM handler at each reduction."
    rank = 1
    def __init__(self, world): self.world, self.handlers = world, []
    def sum_over_ranks(self, losses, sums, n):
        self.handlers.append(signal.getsignal(signal.SIGTERM))
        return losses, sums, n
    def from_rank0(self, t): return t.new_tensor([-100.0, -60.0, 40.0])


@pytest.mark.parametrize("world", [1, 2])
def test_train_seeds_reduces_and_catches_signals_through_its_collective(tmp_path, world):
    data, before = tiny_data(), signal.getsignal(signal.SIGTERM)
    alone = train(tiny_model(0), data, CONFIG, tmp_path / "alone", progress=False)
    collective = Rank1Collective(world)
    as_rank1 = train(tiny_model(0), data, CONFIG, tmp_path / "rank1", progress=False, collective=collective)
    assert (as_rank1.valid_vlb == -100.0).all() and (as_rank1.valid_kl == 40.0).all()                 # rank 0's numbers decide
    assert (as_rank1.train_vlb != alone.train_vlb).all()                                                # noise seeded with seed + rank
    assert len(collective.handlers) == CONFIG.epochs
    assert all((h == before) == (world > 1) for h in collective.handlers)       # a process group's processes keep their handlers
