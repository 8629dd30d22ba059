"""A DeepSpeed job (``deepspeed --num_gpus 2 ac_zero3_job.py OUT.json``) for test_activation_checkpointing.

Trains the same small model twice under ZeRO-3 -- with and without activation checkpointing --
where every checkpointed block holds a *frozen* LayerNorm next to trainable Linears, and every
parameter is partitioned (persistence threshold 0). That is the combination of DeepSpeed
PR #8130/#8148: non-reentrant recompute + partitioned frozen parameters. Rank 0 writes the
losses and final weights of both runs as JSON.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    forwards = 0  # counts recomputation too: proves checkpointing really ran

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.norm.requires_grad_(False)  # frozen inside a block that trains

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Block.forwards += 1
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class Net(nn.Module):
    def __init__(self, d: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.tower = nn.Linear(8, d)  # a frozen tower in front, as a VLM backbone
        self.tower.requires_grad_(False)
        self.blocks = nn.ModuleList(Block(d) for _ in range(depth))
        self.head = nn.Linear(d, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.tower(batch["x"])
        for blk in self.blocks:
            x = blk(x)
        loss = F.mse_loss(self.head(x).squeeze(-1), batch["y"])
        return loss, {"loss/mse": loss.detach()}


def train(checkpointing: bool, steps: int = 3) -> tuple[list[float], dict[str, list[float]], int]:
    import deepspeed

    from lavla.trainer.activation_checkpointing import apply_activation_checkpointing
    from lavla.trainer.deepspeed_config import parameter_groups

    torch.manual_seed(0)
    Block.forwards = 0
    model = Net()
    if checkpointing:
        assert apply_activation_checkpointing(model, ["Block"]) == 3
    config = {
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0, "overlap_comm": False},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}, "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=parameter_groups(model, 0.01), config=config)
    rank = engine.global_rank
    g = torch.Generator().manual_seed(100 + rank)
    losses = []
    for _ in range(steps):
        batch = {"x": torch.randn(4, 8, generator=g), "y": torch.randn(4, generator=g)}
        loss, _ = engine(batch)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    weights = {}
    for name, p in engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([p]):
            weights[name] = p.detach().flatten().tolist()
    return losses, weights, Block.forwards


def main() -> None:
    from lavla.trainer.distributed import init_distributed

    init_distributed()  # gloo on CPU; also releases DeepSpeed's /dev/shm segments
    out = {}
    for mode in (False, True):
        losses, weights, forwards = train(mode)
        out["checkpointed" if mode else "plain"] = {"losses": losses, "weights": weights, "block_forwards": forwards}
    if int(os.environ.get("RANK", "0")) == 0:
        with open(sys.argv[-1], "w") as f:  # deepspeed puts --local_rank first
            json.dump(out, f)


if __name__ == "__main__":
    main()
