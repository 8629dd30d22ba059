"""Generate the DeepSpeed JSON and the optimizer parameter groups from the typed config."""

from __future__ import annotations

from typing import Any

from torch import nn

from lavla.trainer.batch_layout import batch_layout
from lavla.trainer.config import PretrainConfig

# Parameters that should never be weight-decayed, matched on the parameter name.
_NO_DECAY_MARKERS = ("bias", "norm", "embed", "pos_emb", "queries", "codebook", "token_type")


def gradient_accumulation_steps(cfg: PretrainConfig, world_size: int) -> int:
    """Accumulation steps so that micro x accum x world == global batch, or a clear error (the
    loop applies ``trainer.batch_layout=nearest`` before it gets here)."""
    return batch_layout(cfg.trainer.global_batch_size, cfg.trainer.micro_batch_size, world_size).grad_accum


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters only (frozen towers stay out of the optimizer), split into decay /
    no-decay groups: matrices decay; biases, norms, embeddings, queries and codebooks do not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lname = name.lower()
        if p.ndim < 2 or any(m in lname for m in _NO_DECAY_MARKERS):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def build_deepspeed_config(cfg: PretrainConfig, world_size: int, load_universal: bool = False) -> dict[str, Any]:
    """The engine config. ``load_universal``: the run resumes from a universal checkpoint (a
    different world size; DeepSpeed reads this flag at engine construction)."""
    t, o, z = cfg.trainer, cfg.optim, cfg.trainer.zero
    accum = gradient_accumulation_steps(cfg, world_size)
    # DeepSpeed's schedulers reject 0 warmup steps; a warmup that starts at the full lr is the
    # same as none.
    warmup = max(1, o.warmup_steps)
    start_ratio = 0.0 if o.warmup_steps > 0 else 1.0
    if o.schedule == "cosine":
        scheduler = {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": max(1, t.max_steps),
                "warmup_num_steps": warmup,
                "warmup_min_ratio": start_ratio,
                "cos_min_ratio": o.min_lr_ratio,
                "warmup_type": "linear",
            },
        }
    else:
        scheduler = {
            "type": "WarmupLR",
            "params": {"warmup_min_lr": start_ratio * o.lr, "warmup_max_lr": o.lr, "warmup_num_steps": warmup,
                       "warmup_type": "linear"},
        }
    zero: dict[str, Any] = {
        "stage": z.stage,
        "overlap_comm": z.overlap_comm,
        "contiguous_gradients": z.contiguous_gradients,
        "reduce_bucket_size": z.reduce_bucket_size,
    }
    if z.stage == 3:
        zero.update({
            "stage3_prefetch_bucket_size": z.prefetch_bucket_size,
            "stage3_param_persistence_threshold": z.param_persistence_threshold,
            "stage3_gather_16bit_weights_on_model_save": False,
        })
    ds: dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": t.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": t.precision == "bf16"},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay,
                       "torch_adam": o.implementation == "torch"},
        },
        "scheduler": scheduler,
        "steps_per_print": 2**62,  # our own metrics replace DeepSpeed's prints
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if load_universal:
        ds["checkpoint"] = {"load_universal": True}
    return ds
