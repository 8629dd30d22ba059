"""Distributed duties the models delegate to the trainer (models hold no distributed code).

Quantizers count code usage per rank; the trainer makes those counts global (an all-reduce in
``reduce_fn``) and triggers dead-code restarts. Restarts write only buffers (never parameters:
DeepSpeed's master weights would revert them) from globally reduced statistics, so every rank
computes the same new codes and nothing needs broadcasting. Under ZeRO-3 a learnable codebook is
partitioned, so the restart runs inside a read-only ``GatheredParameters`` to see it whole.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

from lavla.model.quantizer import Quantizer, find_quantizers

log = logging.getLogger(__name__)


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the data-parallel ranks: the TP ranks of one replica see the same samples, so
    summing over them too would count each sample TP times."""
    from lavla.trainer.distributed import data_parallel_group

    if dist.is_initialized():
        group = data_parallel_group()
        if dist.get_world_size(group) > 1:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


class QuantizerHooks:
    """Wires every quantizer of a model into the process group and drives dead-code restarts."""

    def __init__(self, module: nn.Module, zero_stage: int) -> None:
        self.quantizers: list[Quantizer] = list(find_quantizers(module))
        self.zero_stage = zero_stage
        for q in self.quantizers:
            q.reduce_fn = _all_reduce_sum

    def after_step(self) -> dict[str, float]:
        """Restart dead codes where a quantizer's window (counted in forward passes) is full."""
        restarted = 0
        for q in self.quantizers:
            if not q.restart_due():  # usage counts are global, so every rank agrees
                continue
            codebook = q.codebook
            if self.zero_stage == 3 and isinstance(codebook, nn.Parameter):
                import deepspeed

                with deepspeed.zero.GatheredParameters([codebook]):  # read-only gather
                    restarted += q.restart_dead_codes()
            else:
                restarted += q.restart_dead_codes()
        if restarted:
            log.info("restarted %d dead codes", restarted)
        return {"vq/restarted_codes": float(restarted)} if self.quantizers else {}
