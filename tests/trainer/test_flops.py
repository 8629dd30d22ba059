"""Per-module FLOPs attribution (trainer.flops.flops_by_child)."""

from __future__ import annotations

import torch
import torch.nn as nn

from lavla.trainer.flops import count_flops, forward_flops_by_child


def test_forward_flops_by_child_credits_modules_reached_through_methods():
    class Lam(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc, self.dec = nn.Linear(4, 8), nn.Linear(8, 4)

        def encode(self, x):  # reaches enc without calling Lam itself
            return self.enc(x)

    class Policy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lam, self.head = Lam(), nn.Linear(8, 2)

        def forward(self, x):
            y = self.head(self.lam.encode(x))
            return (y @ torch.ones(2, 5)).sum()  # glue in the module itself

    class Engine(nn.Module):  # stands for DeepSpeedEngine(module=...)
        def __init__(self) -> None:
            super().__init__()
            self.module = Policy()

        def forward(self, x):
            return self.module(x)

    engine = Engine()
    split = forward_flops_by_child(engine.module, lambda: engine(torch.randn(3, 4)))
    assert split == {"lam": 2 * 3 * 4 * 8, "head": 2 * 3 * 8 * 2, "other": 2 * 3 * 2 * 5}  # 2*M*K*N each
    assert torch.is_grad_enabled()


def test_cpu_attention_is_counted_like_the_cuda_kernels():
    from torch.utils.flop_counter import FlopCounterMode

    b, h, s, d = 2, 4, 16, 8
    q = torch.randn(b, h, s, d, requires_grad=True)
    with count_flops() as counted:
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
    assert counted().total == 4 * b * h * s * s * d * (1 + 2.5)  # QK^T and AV; backward as torch's flash formula
    counter = FlopCounterMode(display=False)
    with counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 4 * b * h * s * s * d
