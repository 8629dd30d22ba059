"""Activation checkpointing by config: same math, same parameter names, real recomputation;
and under ZeRO-3 with frozen parameters inside the checkpointed blocks (DeepSpeed #8130)."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
from torch import nn

from tests.conftest import REPO, assert_no_shm_leak, free_port
from lavla.trainer.activation_checkpointing import apply_activation_checkpointing, is_checkpointed, select_blocks
from lavla.trainer.flops import count_flops


class Block(nn.Module):
    calls = 0

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        Block.calls += 1
        return x + scale * torch.tanh(self.fc(self.norm(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x, scale=0.5)  # keyword arguments pass through the checkpoint
        return self.head(x).square().mean()


def _grads(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(x).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_same_gradients_same_names_and_real_recompute():
    torch.manual_seed(0)
    plain = Net()
    ckpt = copy.deepcopy(plain)
    assert apply_activation_checkpointing(ckpt, ["Block"]) == 3
    assert all(is_checkpointed(b) for b in ckpt.blocks) and type(ckpt.blocks[0]).__name__ == "Block"
    assert isinstance(ckpt.blocks[0], Block)
    assert list(ckpt.state_dict()) == list(plain.state_dict())  # checkpoints interchangeable

    x = torch.randn(4, 8)
    Block.calls = 0
    g_plain = _grads(plain, x)
    assert Block.calls == 3
    Block.calls = 0
    g_ckpt = _grads(ckpt, x)
    assert Block.calls == 6  # every block ran again in backward
    for n in g_plain:
        torch.testing.assert_close(g_ckpt[n], g_plain[n], rtol=0, atol=0)

    Block.calls = 0
    ckpt.eval()
    with torch.no_grad():
        ckpt(x)
    assert Block.calls == 3  # no checkpointing without grad or in eval


def test_model_listed_blocks_and_outermost_nesting():
    net = Net()
    net.checkpointable_blocks = lambda: [net.blocks[0], net.blocks[0].fc]
    assert select_blocks(net, ["Block"]) == [net.blocks[0]]  # the inner Linear is inside it
    plain = Net()
    assert select_blocks(plain, ["ModuleList"]) == [plain.blocks]


def test_no_match_is_a_clear_error():
    with pytest.raises(ValueError, match="checkpoint_block_classes"):
        apply_activation_checkpointing(Net(), ["NoSuchBlock"])


def test_flops_exclude_recomputation():
    torch.manual_seed(0)
    plain, x = Net(), torch.randn(4, 8)
    ckpt = copy.deepcopy(plain)
    apply_activation_checkpointing(ckpt, ["Block"])
    with count_flops() as fp:
        plain(x).backward()
    with count_flops() as fc:
        ckpt(x).backward()
    assert fp().recompute == 0 and fc().recompute > 0
    assert fc().total == fp().total > 0


@pytest.mark.slow
def test_zero3_nonreentrant_checkpointing_with_frozen_params(tmp_path):
    """Two ranks, ZeRO-3, every parameter partitioned, frozen LayerNorms inside checkpointed
    blocks: training runs and matches the run without checkpointing bit for bit."""
    import os
    import subprocess

    out = tmp_path / "ac.json"
    port = free_port()
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(port),
           str(REPO / "tests" / "trainer" / "ac_zero3_job.py"), str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert_no_shm_leak(port)
    res = json.loads(out.read_text())
    plain, ckpt = res["plain"], res["checkpointed"]
    assert ckpt["block_forwards"] == 2 * plain["block_forwards"]  # recomputation happened
    assert ckpt["losses"] == plain["losses"]
    assert ckpt["weights"] == plain["weights"]
    assert set(plain["weights"]["blocks.0.norm.weight"]) == {1.0}  # frozen stayed frozen
