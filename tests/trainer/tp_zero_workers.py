"""Worker for the zero.Init-under-TP test (importable by name for torch.multiprocessing.spawn)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


def zero_init_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """At TP=2 x DP=2: how zero.Init partitions a replicated weight with and without the DP group."""
    import deepspeed
    from megatron.core import parallel_state as ps

    from lavla.trainer.tensor_parallel import mpu

    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world))  # zero.Init reads them
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        deepspeed.init_distributed(dist_backend="gloo", verbose=False)
        layout = mpu.initialize(2, seed=0)
        config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
        result = {"layout": layout}
        for name, group in (("dp_group", mpu.dp_group()), ("world", None)):
            torch.manual_seed(0)
            with deepspeed.zero.Init(config_dict_or_path=config, data_parallel_group=group):
                layer = nn.Linear(10, 30)  # 300 weights, replicated on every TP rank
            w = layer.weight
            with deepspeed.zero.GatheredParameters([w]):
                full = w.detach().clone()
            result[name] = {"local": w.ds_tensor.numel(), "group_size": dist.get_world_size(w.ds_process_group),
                            "full": full}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        ps.destroy_model_parallel()
        dist.destroy_process_group()
