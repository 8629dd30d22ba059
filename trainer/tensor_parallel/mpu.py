"""megatron-core's process groups, created once and handed to DeepSpeed as its ``mpu``.

Layout: TP ranks are adjacent (ranks ``[k*tp, (k+1)*tp)`` form one TP group, inside one node when
``tp`` divides the GPUs per node); the data-parallel groups stride across them. ZeRO partitions
and averages over the data-parallel group only, so each TP rank's shard of a weight has its own
ZeRO partitioning and optimizer state.

DeepSpeed asks an ``mpu`` for a handful of names (``get_model_parallel_*``,
``get_data_parallel_*``, ``get_tensor_model_parallel_*``); megatron's ``parallel_state`` spells
some of them differently, hence :class:`MegatronMpu`. Nothing is exposed under DeepSpeed's
``get_sequence_parallel_*``: that is Ulysses (sequence-sharded attention across the DP group), not
megatron's sequence parallelism, which lives inside the TP group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist


@dataclass(frozen=True)
class ParallelLayout:
    """Where this rank sits in the TP x DP grid."""

    tp_size: int
    """Tensor-parallel ranks per model replica."""
    tp_rank: int
    """This rank's index inside its TP group."""
    dp_size: int
    """Model replicas (data-parallel ranks)."""
    dp_rank: int
    """This rank's index inside its data-parallel group: the rank the sample plan shards by."""


def initialize(tensor_parallel_size: int, seed: int = 0) -> ParallelLayout:
    """Create megatron's TP and DP groups over the running world (idempotent) and seed its RNG
    tracker; on CPU the shim is installed first. Every rank must call it."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from lavla.trainer.tensor_parallel import cpu_shim

    if not dist.is_initialized():
        raise RuntimeError("tensor parallelism needs the process group first (init_distributed)")
    world = dist.get_world_size()
    if tensor_parallel_size < 1 or world % tensor_parallel_size:
        raise ValueError(f"parallel.tensor_parallel_size={tensor_parallel_size} must divide the world size {world}")
    cpu_shim.install()
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel_size)
        # One RNG stream shared by a TP group (replicated dropout) and one per TP rank (dropout
        # inside sharded regions): megatron's tracker forks them from this seed.
        model_parallel_cuda_manual_seed(seed)
    elif ps.get_tensor_model_parallel_world_size() != tensor_parallel_size:
        raise RuntimeError(f"megatron is initialized at TP={ps.get_tensor_model_parallel_world_size()}, "
                           f"asked for {tensor_parallel_size}")
    return current_layout()


def is_initialized() -> bool:
    try:
        from megatron.core import parallel_state as ps
    except ImportError:
        return False
    return ps.model_parallel_is_initialized()


def current_layout() -> ParallelLayout:
    """This rank's layout; TP=1 over the whole world when megatron is not initialized."""
    if not is_initialized():
        world = dist.get_world_size() if dist.is_initialized() else 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        return ParallelLayout(1, 0, world, rank)
    from megatron.core import parallel_state as ps

    return ParallelLayout(ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank(),
                          ps.get_data_parallel_world_size(), ps.get_data_parallel_rank())


def tp_group() -> Any:
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_group()


def dp_group() -> Any:
    """The data-parallel group; None (the world) when megatron is not initialized."""
    if not is_initialized():
        return None
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_group()


class MegatronMpu:
    """megatron's ``parallel_state`` under the names DeepSpeed calls on its ``mpu`` argument."""

    def __init__(self) -> None:
        from megatron.core import parallel_state as ps

        self._ps = ps

    def get_model_parallel_rank(self) -> int:
        return self._ps.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        return self._ps.get_tensor_model_parallel_world_size()

    def get_model_parallel_group(self) -> Any:
        return self._ps.get_tensor_model_parallel_group()

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self._ps.get_tensor_model_parallel_src_rank()

    def get_data_parallel_rank(self) -> int:
        return self._ps.get_data_parallel_rank()

    def get_data_parallel_world_size(self) -> int:
        return self._ps.get_data_parallel_world_size()

    def get_data_parallel_group(self) -> Any:
        return self._ps.get_data_parallel_group()

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(self._ps._DATA_PARALLEL_GLOBAL_RANKS)

    def get_pipeline_model_parallel_rank(self) -> int:
        return 0

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1
