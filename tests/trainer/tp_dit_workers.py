"""Workers for the tensor-parallel DiT tests (importable by name for torch.multiprocessing.spawn).

Every rank builds the same tiny DiT, runs it as the TP=1 reference, then parallelizes a copy over
the group and runs the same batch through it."""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

DIM, HEADS, CONTEXT_DIM, OUTPUT_DIM = 32, 4, 20, 24


def tiny_dit(dropout: float = 0.0) -> nn.Module:
    """Two blocks (cross-attention, then self-attention), identical on every rank."""
    from lavla.model.config import FlowHeadConfig
    from lavla.model.flow_head import DiT
    from lavla.model.layers import AdaLayerNorm

    torch.manual_seed(0)
    dit = DiT(FlowHeadConfig(dim=DIM, heads=HEADS, depth=2, output_dim=OUTPUT_DIM, dropout=dropout), CONTEXT_DIM)
    for m in dit.modules():  # zero-initialized: scale and shift would play no part
        if isinstance(m, AdaLayerNorm):
            nn.init.normal_(m.proj.weight, std=0.2)
            nn.init.normal_(m.proj.bias, std=0.2)
    return dit


def batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 9, DIM, generator=g)
    timestep = torch.randint(0, 1000, (3,), generator=g)
    context = torch.randn(3, 7, CONTEXT_DIM, generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    weights = torch.randn(3, 9, OUTPUT_DIM, generator=g)
    return x, timestep, context, mask, weights


def run(dit: nn.Module) -> dict:
    """Forward and backward of a weighted-sum loss; outputs, hidden states and gradients."""
    x, timestep, context, mask, weights = batch()
    context.requires_grad_(True)
    dit.zero_grad(set_to_none=True)
    out, hidden = dit(x, timestep, context, mask)
    ((out * weights).sum() / 10.0).backward()
    return {"out": out.detach(), "hidden": [h.detach() for h in hidden], "context_grad": context.grad,
            "grads": {n: p.grad.clone() for n, p in dit.named_parameters()}}


def dit_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from megatron.core import parallel_state as ps

    from lavla.trainer.activation_checkpointing import apply_activation_checkpointing
    from lavla.trainer.tensor_parallel import mpu
    from lavla.trainer.tensor_parallel.dit import parallelize_dit

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        layout = mpu.initialize(world)
        ref = tiny_dit()
        tp = copy.deepcopy(ref)
        replaced = parallelize_dit(tp, layout.tp_rank, layout.tp_size)
        results = {"replaced": replaced, "ref": run(ref), "tp": run(tp), "ref_state": ref.state_dict(),
                   "tp_state": tp.state_dict(),
                   "sharded": sorted(n for n, p in tp.named_parameters() if getattr(p, "tensor_model_parallel", False))}

        # Dropout: the ranks start from the same default stream, as TP ranks must.
        drop = tiny_dit(dropout=0.3)
        parallelize_dit(drop, layout.tp_rank, layout.tp_size)
        drop.train()
        torch.manual_seed(5)
        results["dropout"] = run(drop)
        drop.eval()
        results["dropout_eval"] = run(drop)
        drop.train()
        apply_activation_checkpointing(drop, ["TransformerBlock"])
        torch.manual_seed(5)
        results["dropout_recomputed"] = run(drop)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
        dist.destroy_process_group()
