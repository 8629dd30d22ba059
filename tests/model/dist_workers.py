"""Worker processes for the multi-rank quantizer test (importable by name, as torch.multiprocessing.spawn needs)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from lavla.model.config import QuantizerConfig
from lavla.model.quantizer import build_quantizer

KINDS = ("st", "ema", "nsvq")
STEPS = 3


def rank_batches(rank: int) -> list[torch.Tensor]:
    """Each rank's data: different clusters per rank, so local-only statistics would disagree."""
    g = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(16, 4, generator=g) * 0.5 + (3.0 if rank else -3.0) for _ in range(STEPS)]


def make_quantizer(kind: str, restart_from: str = "codes") -> nn.Module:
    torch.manual_seed(0)  # identical initial codebooks on every rank (the trainer seeds the same way)
    return build_quantizer(QuantizerConfig(kind=kind, num_codes=8, restart_window=STEPS, restart_from=restart_from,
                                           restart_noise=0.5), 4)


def quantizer_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Trains each quantizer kind on this rank's data with the trainer's hooks, then restarts dead codes."""
    from lavla.trainer.model_hooks import QuantizerHooks

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {}
        for kind in KINDS:
            q = make_quantizer(kind)
            # Statistics are all-reduced through the hooks; restarts write buffers that no one
            # broadcasts, so they must agree by construction (called directly: no broadcast at all).
            QuantizerHooks(nn.Sequential(q), zero_stage=0)
            metrics = [q(z).metrics for z in rank_batches(rank)]
            pre_restart = {k: v.clone() for k, v in q.state_dict().items()}
            assert q.restart_due()
            restarted = q.restart_dead_codes()
            results[kind] = {"pre": pre_restart, "post": {k: v.clone() for k, v in q.state_dict().items()},
                             "restarted": restarted, "active": [float(m["active_codes"]) for m in metrics]}
        # Restarting from one rank's encoder outputs would make the ranks' codebooks diverge: refused.
        q = make_quantizer("st", restart_from="batch")
        QuantizerHooks(nn.Sequential(q), zero_stage=0)
        for z in rank_batches(rank):
            q(z)
        try:
            q.restart_dead_codes()
            results["batch_refused"] = False
        except RuntimeError:
            results["batch_refused"] = True
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
