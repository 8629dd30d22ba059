"""One DeepSpeed engine around the recipe module: build (optionally sharded at construction),
activation checkpointing, optimizer groups of trainable parameters only."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import nn

from lavla.trainer.activation_checkpointing import apply_activation_checkpointing
from lavla.trainer.config import PretrainConfig
from lavla.trainer.distributed import data_parallel_group
from lavla.trainer.deepspeed_config import build_deepspeed_config, gradient_accumulation_steps, parameter_groups
from lavla.trainer.zero_init import copy_shards_from_first_tp_rank, partitioned_construction

log = logging.getLogger(__name__)


def _numel(p: nn.Parameter) -> int:
    return int(getattr(p, "ds_numel", p.numel()))  # zero.Init leaves an empty local tensor


def build_engine(cfg: PretrainConfig, world_size: int, load_universal: bool = False) -> tuple[Any, Any]:
    """Returns ``(engine, lr_scheduler)``. Every rank builds the same initial weights (shared seed).
    ``world_size``: the data-parallel size (the world divided by ``parallel.tensor_parallel_size``;
    with TP > 1, megatron's groups exist already: ``tensor_parallel.mpu.initialize``)."""
    import deepspeed

    from lavla.model.factory import build_model

    tp = cfg.parallel.tensor_parallel_size
    ds_config = build_deepspeed_config(cfg, world_size, load_universal=load_universal)
    torch.manual_seed(cfg.run.seed)
    # zero.Init partitions each parameter as its module is constructed, so a model larger than
    # one device never exists whole on any rank. Plain construction is the default: it gives
    # bit-identical initial weights across configurations. zero.Init ignores DeepSpeed's mpu: under
    # TP it must be told the data-parallel group, or it splits replicated weights across TP ranks
    # (and transformers fills only TP rank 0's shards: see trainer/zero_init.py).
    mpu = None
    if tp > 1:
        from lavla.trainer.tensor_parallel.mpu import MegatronMpu

        mpu = MegatronMpu()
    init = (partitioned_construction(ds_config, mpu=mpu, data_parallel_group=data_parallel_group())
            if cfg.trainer.zero_init else contextlib.nullcontext())
    with init:
        model = build_model(cfg.model, cfg.data)
    if tp > 1 and cfg.trainer.zero_init:
        from lavla.trainer.tensor_parallel.mpu import tp_group

        copy_shards_from_first_tp_rank(model, tp_group())
    if tp > 1:
        from lavla.trainer.tensor_parallel.parallelize import parallelize
        from lavla.trainer.tensor_parallel.qwen3 import TextStackOptions

        parallelize(model, TextStackOptions(tp, cfg.parallel.sequence_parallel, cfg.trainer.activation_checkpointing))
    if cfg.trainer.activation_checkpointing:
        n = apply_activation_checkpointing(model, cfg.trainer.checkpoint_block_classes)
        log.info("activation checkpointing: %d blocks", n)

    n_params = sum(_numel(p) for p in model.parameters())
    n_train = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    accum = gradient_accumulation_steps(cfg, world_size)
    log.info("model %s: %.2fM parameters%s (%.2fM trainable, %.2fM frozen); data parallel %d, micro %d x accum %d "
             "= global %d", type(model).__name__, n_params / 1e6, f" on this TP rank of {tp}" if tp > 1 else "",
             n_train / 1e6, (n_params - n_train) / 1e6, world_size, cfg.trainer.micro_batch_size, accum,
             cfg.trainer.global_batch_size)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=parameter_groups(model, cfg.optim.weight_decay), config=ds_config, mpu=mpu)
    return engine, scheduler


def sync_lr_schedule(scheduler: Any, resumed: bool) -> None:
    """Put the schedule's lr for the coming update into the optimizer.

    DeepSpeed's schedulers start at iteration -1, whose lr is 0, and are stepped after each
    update: without this, the first update of a fresh run is wasted. After a resume (notably a
    universal one, which rebuilds the optimizer's param groups) the lr of the loaded iteration is
    re-applied rather than trusted from the optimizer state.
    """
    if scheduler is None:
        return
    if resumed:
        scheduler.step(scheduler.last_batch_iteration)
    else:
        scheduler.step()
