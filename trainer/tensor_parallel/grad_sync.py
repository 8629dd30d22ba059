"""Sum the TP-partial gradients of replicated weights over the TP group.

Inside a tensor-parallel region some weights are replicated on every TP rank but each rank sees
only part of what they act on: q/k-norms normalize only the rank's heads, and under sequence
parallelism the layer norms see only the rank's slice of the sequence. Their per-rank gradients
are partial sums. Megatron's own optimizer all-reduces them; DeepSpeed does not (it averages over
the data-parallel group only), so without this the copies drift apart across TP ranks.

A tensor hook on each such parameter all-reduces its gradient over TP as autograd produces it,
before DeepSpeed's accumulation and ZeRO reduction hooks see it (summing is linear, so doing it
per micro step equals doing it once per step).
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import Tensor, nn


def partial_grad_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Parameters marked ``tp_partial_grad`` (by the TP norms) that train."""
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad and getattr(p, "tp_partial_grad", False)]


def register_tp_grad_sums(module: nn.Module, group: Any) -> int:
    """Hook every TP-partial parameter of ``module`` to sum its gradient over ``group``; returns the
    number hooked. Nothing to do (0) when the group has one rank."""
    if dist.get_world_size(group) == 1:
        return 0
    params = partial_grad_parameters(module)

    def summed(grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, group=group)
        return grad

    for _, p in params:
        p.register_hook(summed)
    return len(params)
