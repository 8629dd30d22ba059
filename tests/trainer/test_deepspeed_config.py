"""The DeepSpeed JSON and optimizer groups generated from the typed config."""

from __future__ import annotations

import pytest
from torch import nn

from lavla.trainer.config import PretrainConfig, TrainerConfig
from lavla.trainer.deepspeed_config import build_deepspeed_config, gradient_accumulation_steps, parameter_groups


def test_batch_arithmetic_and_zero3_fields():
    cfg = PretrainConfig(trainer=TrainerConfig(global_batch_size=32, micro_batch_size=4))
    ds = build_deepspeed_config(cfg, world_size=2)
    assert ds["train_batch_size"] == 32
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 2 == 32
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_prefetch_bucket_size"] == cfg.trainer.zero.prefetch_bucket_size
    assert ds["optimizer"]["type"] == "AdamW"
    assert ds["scheduler"]["type"] == "WarmupCosineLR"
    assert ds["bf16"]["enabled"] is False


def test_indivisible_global_batch_is_a_clear_error():
    cfg = PretrainConfig(trainer=TrainerConfig(global_batch_size=10, micro_batch_size=4))
    with pytest.raises(ValueError, match="global_batch_size=10"):
        gradient_accumulation_steps(cfg, 1)


def test_parameter_groups_exclude_frozen_and_split_decay():
    m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    m[2].weight.requires_grad_(False)
    groups = parameter_groups(m, weight_decay=0.1)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert id(m[0].weight) in decay
    assert {id(m[0].bias), id(m[1].weight), id(m[1].bias), id(m[2].bias)} == no_decay
    assert id(m[2].weight) not in decay | no_decay  # frozen: not in the optimizer at all


def test_zero_warmup_starts_at_full_lr_and_universal_flag():
    from lavla.trainer.config import OptimConfig

    cfg = PretrainConfig(optim=OptimConfig(warmup_steps=0))
    params = build_deepspeed_config(cfg, world_size=1)["scheduler"]["params"]
    assert params["warmup_num_steps"] >= 1 and params["warmup_min_ratio"] == 1.0
    assert "checkpoint" not in build_deepspeed_config(cfg, 1)
    assert build_deepspeed_config(cfg, 1, load_universal=True)["checkpoint"] == {"load_universal": True}
    const = PretrainConfig(optim=OptimConfig(schedule="constant", warmup_steps=0, lr=0.5))
    assert build_deepspeed_config(const, 1)["scheduler"]["params"]["warmup_min_lr"] == 0.5


def test_stage_and_zero_init_validation():
    from lavla.trainer.config import ZeroConfig

    with pytest.raises(ValueError, match="zero.stage"):
        ZeroConfig(stage=0)
    with pytest.raises(ValueError, match="zero_init"):
        TrainerConfig(zero_init=True, zero=ZeroConfig(stage=2))
