"""L1 regression action head of the Pixels-to-Tokens recipes (VLA-Adapter style) and its masked loss.

The head owns N learned action-slot tokens (one per step of the chunk). Block i reads VLM hidden
state i+1 of the last ``num_blocks + 1`` (Pixels-to-Tokens: 11 blocks over the last 12 of
Qwen3-VL's hidden states) and, pre-norm and residual each:

1. adapter branch: the slots cross-attend to that layer's action-query states plus one
   projected-proprio token (Linear-GELU-Linear, shared by the blocks);
2. task branch: the slots cross-attend to that layer's task tokens (``task_mask``), scaled by
   ``tanh(gate)`` with the gate initialised at 0, so the head starts from the queries alone and
   lets the raw prompt in as it learns (VLA-Adapter's bridge gate);
3. self-attention among the slots, then an MLP.

A final LayerNorm + Linear maps each slot to its A-dim action. Nothing is masked in the output:
the recipe applies ``masked_l1`` with its supervision mask.

Differences from the reference implementation, on purpose:

* The slots are learned parameters. The reference feeds zeros plus N(0, 0.02) noise held in a
  *new* ``nn.Parameter`` created on every call (never registered, never learned), so its slots
  differ only by noise.
* The gate scales the task branch's *output*. Scaling only the attention logits (as a shared
  softmax over self/adapter/task keys does) still mixes task values in at gate 0.
* With Q = N*k queries (Pixels-to-Tokens baseline: 40 queries for 8 steps) query j belongs to step
  j // k; every query and the proprio token get a learned step embedding, so a slot can find its
  own step's queries. The alternative, reshaping the queries to N tokens of k*D and projecting them
  (the reference's ``[B, N, k*D]`` input layout), costs a k*D x D matrix per block (21M parameters
  per block at full size, k = 5) for the same information.

ZeRO-3: every parameter is used only inside its owning module's forward, every submodule runs on
every call whatever the batch holds (an all-False task mask is handled arithmetically).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lavla.model.head_config import L1HeadConfig
from lavla.model.layers import MultiHeadAttention, Mlp, key_padding_mask

Queries = Union[Tensor, Sequence[Tensor]]
"""Action-query positions ``[B,Q]`` int64 (gathered from every layer), or the per-layer query
states ``[B,Q,vlm_dim]`` already gathered (len ``num_blocks + 1``, indexed like ``layer_states``)."""


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean |pred - target| over the True elements of ``mask`` (same shape, e.g. [B,N,A]).

    Masked-out elements contribute neither value nor gradient, whatever they hold (NaN included).
    With no True element the result is 0, still attached to ``pred``'s graph (every rank backwards).
    """
    mask = mask.bool()
    zero = torch.zeros((), dtype=pred.dtype, device=pred.device)
    # Select before subtracting: |NaN| in a masked slot would otherwise leak NaN into the gradient.
    p = torch.where(mask, pred, zero)
    t = torch.where(mask, target.to(pred.dtype), zero)
    return (p - t).abs().float().sum() / mask.sum().clamp_min(1).float()


class ProprioProjector(nn.Module):
    """Proprio [B,P] -> one context token [B,1,D] (Linear-GELU-Linear, as the reference)."""

    def __init__(self, proprio_dim: int, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, proprio: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(proprio)))[:, None]


class L1HeadBlock(nn.Module):
    """Adapter cross-attention, gated task cross-attention, self-attention, MLP (pre-norm, residual)."""

    def __init__(self, dim: int, ctx_dim: int, heads: int, token_step: Tensor, num_steps: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_adapter_ctx = nn.LayerNorm(ctx_dim)
        self.norm_task_ctx = nn.LayerNorm(ctx_dim)
        # Step embedding per adapter token: queries of step s get row s, the proprio token row N,
        # latent-token queries (Pixels-to-Tokens la_direct/la_cond/la_tok) row N + 1.
        self.step_embed = nn.Parameter(torch.randn(num_steps + 2, ctx_dim) * 0.02)
        self.register_buffer("token_step", token_step.clone(), persistent=False)
        self.norm_adapter = nn.LayerNorm(dim)
        self.adapter_attn = MultiHeadAttention(dim, heads, ctx_dim, dropout)
        self.norm_task = nn.LayerNorm(dim)
        self.task_attn = MultiHeadAttention(dim, heads, ctx_dim, dropout)
        self.gate = nn.Parameter(torch.zeros(1))
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, heads, dropout=dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor, task: Tensor, task_mask: Tensor, has_task: Tensor, adapter: Tensor) -> Tensor:
        """x [B,N,dim]; task [B,T,ctx] with key mask [B,T] (every row allows >= 1 key) and has_task [B,1,1]
        (0 where the sample had no task token); adapter [B,Q+1,ctx] = queries + proprio token."""
        ctx_a = self.norm_adapter_ctx(adapter) + self.step_embed[self.token_step].to(adapter.dtype)
        x = x + self.adapter_attn(self.norm_adapter(x), ctx_a)
        t = self.task_attn(self.norm_task(x), self.norm_task_ctx(task), mask=key_padding_mask(task_mask))
        x = x + torch.tanh(self.gate).to(x.dtype) * has_task * t
        x = x + self.self_attn(self.norm_self(x))
        return x + self.mlp(self.norm_mlp(x))


class L1RegressionHead(nn.Module):
    """``forward(layer_states, task_mask, queries, proprio) -> actions [B,N,A]`` (see module docstring)."""

    def __init__(self, cfg: L1HeadConfig, vlm_dim: int, num_queries: int, num_latent_queries: int = 0) -> None:
        super().__init__()
        n = cfg.action_horizon
        if num_queries < n or num_queries % n:
            raise ValueError(f"the L1 head needs num_queries = action_horizon * k (k >= 1 queries per step), "
                             f"got {num_queries} queries for {n} steps")
        self.cfg, self.vlm_dim = cfg, vlm_dim
        # Queries arrive as [latent-token queries (any number, not tied to a step), action queries].
        self.num_queries = num_latent_queries + num_queries
        self.queries_per_step = num_queries // n
        self.num_layers = cfg.num_blocks + 1
        token_step = torch.cat([torch.full((num_latent_queries,), n + 1), torch.arange(num_queries) // self.queries_per_step,
                                torch.tensor([n])])
        self.slots = nn.Parameter(torch.randn(n, cfg.dim) * 0.02)
        self.proprio = ProprioProjector(cfg.proprio_dim, vlm_dim)
        self.blocks = nn.ModuleList(
            L1HeadBlock(cfg.dim, vlm_dim, cfg.heads, token_step, n, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.num_blocks)
        )
        self.norm_out = nn.LayerNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.action_dim)

    def _layer_queries(self, layer_states: Sequence[Tensor], queries: Queries) -> list[Tensor]:
        if isinstance(queries, Tensor):
            if queries.dtype not in (torch.int32, torch.int64) or queries.dim() != 2:
                raise ValueError(f"query_index must be an integer [B,Q] tensor, got {queries.dtype} {tuple(queries.shape)}")
            idx = queries.long()[:, :, None].expand(-1, -1, self.vlm_dim)
            out = [torch.gather(h, 1, idx) for h in layer_states]
        else:
            out = list(queries)
            if len(out) != self.num_layers:
                raise ValueError(f"the L1 head needs query states of {self.num_layers} layers, got {len(out)}")
        if out[0].shape[1] != self.num_queries:
            raise ValueError(f"the L1 head was built for {self.num_queries} queries, got {out[0].shape[1]}")
        return out

    def forward(self, layer_states: Sequence[Tensor], task_mask: Tensor, queries: Queries, proprio: Tensor) -> Tensor:
        """layer_states: the last ``num_blocks + 1`` VLM hidden states, each [B,T,vlm_dim] (block i reads
        entry i + 1; entry 0 is accepted so callers can pass ``hidden_states[-(num_blocks + 1):]``);
        task_mask [B,T] bool (True = task token); queries: see ``Queries``; proprio [B,P] (padded dims 0).
        Returns normalized actions [B,N,A]."""
        if len(layer_states) != self.num_layers:
            raise ValueError(f"the L1 head needs the last {self.num_layers} hidden states (num_blocks + 1), got {len(layer_states)}")
        layer_queries = self._layer_queries(layer_states, queries)
        ref = layer_states[-1]
        b, t = ref.shape[:2]
        task_mask = task_mask.bool()
        # A sample without task tokens would leave an all-masked softmax row (NaN under SDPA): let it
        # attend to position 0 and zero that branch for it instead of branching on the batch.
        has_task = task_mask.any(dim=1)
        first = torch.zeros(b, t, dtype=torch.bool, device=ref.device)
        first[:, 0] = True
        task_mask = task_mask | (first & ~has_task[:, None])
        has_task_f = has_task.to(ref.dtype)[:, None, None]

        prop = self.proprio(proprio.to(ref.dtype))
        x = self.slots.to(ref.dtype)[None].expand(b, -1, -1)
        for i, block in enumerate(self.blocks):
            adapter = torch.cat([layer_queries[i + 1], prop], dim=1)
            x = block(x, layer_states[i + 1], task_mask, has_task_f, adapter)
        return self.out(self.norm_out(x))
