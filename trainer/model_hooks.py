"""Distributed duties the models delegate to the trainer (models hold no distributed code).

Quantizers count code usage per rank; the trainer makes those counts global (an all-reduce in
``reduce_fn``) and restarts dead codes. Under ZeRO-3 the codebook is partitioned, so the restart
runs inside ``GatheredParameters(modifier_rank=0)``: every rank sees the full codebook, rank 0's
edit wins and is re-partitioned on exit. Under stage 0-2 the codebook is replicated and rank 0's
edit is broadcast.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

from model.quantizer import VectorQuantizer, find_quantizers

log = logging.getLogger(__name__)


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class QuantizerHooks:
    """Wires every quantizer of a model into the process group and drives dead-code restarts."""

    def __init__(self, module: nn.Module, zero_stage: int) -> None:
        self.quantizers: list[VectorQuantizer] = list(find_quantizers(module))
        self.zero_stage = zero_stage
        for q in self.quantizers:
            q.reduce_fn = _all_reduce_sum

    def after_step(self) -> dict[str, float]:
        """Restart dead codes where a quantizer's window is full; returns metrics."""
        restarted = 0
        for q in self.quantizers:
            if not q.restart_due():  # usage counts are global, so every rank agrees
                continue
            if self.zero_stage == 3:
                import deepspeed

                with deepspeed.zero.GatheredParameters([q.codebook], modifier_rank=0):
                    restarted += q.restart_dead_codes()
            else:
                restarted += q.restart_dead_codes()
                if dist.is_initialized() and dist.get_world_size() > 1:
                    dist.broadcast(q.codebook.data, src=0)
        if restarted:
            log.info("restarted %d dead codes", restarted)
        return {"vq/restarted_codes": float(restarted)} if self.quantizers else {}
