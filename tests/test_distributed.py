"""Data-parallel training (chapter 25): 2 gloo processes on CPU take the single-process step and train alike; sharding; the train() hook."""
import pytest
import torch

from iaf_repro.cifar import CIFAR10
from iaf_repro.cifar_vae import CifarVAE
from iaf_repro.distributed import ddp_matches_single_process, ddp_train_agrees, init_distributed, own_initial_model
from iaf_repro.train import TrainConfig, train
from iaf_repro.vae import VAEConfig


def test_two_gloo_processes_match_a_single_process_step():
    gaps = ddp_matches_single_process(2)
    assert gaps["param_gap"] < 1e-6 and gaps["grad_gap_relative"] < 1e-6


def test_two_gloo_processes_train_alike_from_different_initial_weights():
    "train() under DDP: identical weight averages and metrics on both ranks (rank 0's start and decisions), different noise."
    starts = [own_initial_model(r, 2).state_dict() for r in range(2)]
    assert not all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])
    agreed = ddp_train_agrees(2, epochs=2)
    assert agreed["average_gap"] == 0 and agreed["metrics_equal"] and agreed["noise_differs"]
    assert list(agreed["metrics"].epoch) == [1, 2] and agreed["metrics"].steps.iloc[-1] == 4          # 16 images, global batch 8


def test_shards_partition_each_global_batch():
    x = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    data = CIFAR10("t", x, x[:4], x[:4])
    seeded = lambda: torch.Generator().manual_seed(3)
    shards = [list(data.shard(r, 3).batches("train", 6, generator=seeded())) for r in range(3)]
    whole = list(data.batches("train", 6, generator=seeded()))
    for step, batch in enumerate(whole):
        assert torch.equal(torch.cat([s[step] for s in shards]), batch)
    assert data.shard(0, 1) is data
    with pytest.raises(ValueError, match="divisible"): next(data.shard(0, 4).batches("train", 6))
    with pytest.raises(ValueError, match="rank must lie"): data.shard(3, 3)


def test_train_uses_the_step_wrapper(tmp_path):
    calls = []
    def wrapper(model):
        calls.append(model)
        return model
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(0)
    model = CifarVAE(VAEConfig(latent_dim=2, channels=(2, 2, 2), hidden_dim=8)); model.initialize(x)
    train(model, CIFAR10("t", x, x[:2], x[:2]), TrainConfig(epochs=1, batch_size=4), tmp_path, progress=False, step_wrapper=wrapper)
    assert calls == [model]


def test_outside_torchrun_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="not started by torchrun"): init_distributed()
