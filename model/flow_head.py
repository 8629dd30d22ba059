"""GR00T-N1.5-style flow-matching DiT action head (as used by LARA, without future tokens).

Sequence [state token, N action tokens]; embodiment-specific state/action encoders and action
decoder (weight tensors indexed by ``embodiment_id``); a DiT whose even blocks cross-attend to
the VL tokens and odd blocks self-attend, with AdaLayerNorm on the timestep embedding.

Flow matching: tau = (s - Beta(alpha,1)) / s, x_tau = (1 - tau) noise + tau a, target a - noise.
Inference integrates from noise (tau=0) to actions (tau=1) with Euler steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lavla.model.config import FlowHeadConfig
from lavla.model.layers import AdaLayerNorm, TimestepEmbedder, TransformerBlock, timestep_embedding


class CategorySpecificLinear(nn.Module):
    """A Linear per category: weights [C, in, out] gathered by category id (GR00T init 0.02 randn)."""

    def __init__(self, num_categories: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.02 * torch.randn(num_categories, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(num_categories, out_dim))

    def forward(self, x: Tensor, category: Tensor) -> Tensor:
        """``x`` [B, T, in], ``category`` [B] -> [B, T, out]."""
        return torch.bmm(x, self.weight[category]) + self.bias[category][:, None]


class CategorySpecificMLP(nn.Module):
    """Linear -> ReLU -> Linear, both embodiment-specific (state encoder, action decoder)."""

    def __init__(self, num_categories: int, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = CategorySpecificLinear(num_categories, in_dim, hidden_dim)
        self.fc2 = CategorySpecificLinear(num_categories, hidden_dim, out_dim)

    def forward(self, x: Tensor, category: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x, category)), category)


class ActionEncoder(nn.Module):
    """W3(swish(W2[W1(a) ‖ sin-emb(timestep)])), all embodiment-specific."""

    def __init__(self, num_categories: int, action_dim: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.w1 = CategorySpecificLinear(num_categories, action_dim, dim)
        self.w2 = CategorySpecificLinear(num_categories, 2 * dim, dim)
        self.w3 = CategorySpecificLinear(num_categories, dim, dim)

    def forward(self, actions: Tensor, timestep: Tensor, category: Tensor) -> Tensor:
        """``actions`` [B,N,A], ``timestep`` [B] bucketed ints -> [B,N,dim]."""
        a = self.w1(actions, category)
        t = timestep_embedding(timestep, self.dim).to(a.dtype)[:, None].expand_as(a)
        return self.w3(F.silu(self.w2(torch.cat([a, t], dim=-1), category)), category)


class DiT(nn.Module):
    """Interleaved DiT: block i cross-attends to the context if i is even, self-attends if odd."""

    def __init__(self, cfg: FlowHeadConfig, context_dim: int) -> None:
        super().__init__()
        d = cfg.dim
        self.time_embed = TimestepEmbedder(d)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                d,
                cfg.heads,
                self_attn=i % 2 == 1,
                context_dim=context_dim if i % 2 == 0 else None,
                cond_dim=d,
                dropout=cfg.dropout,
            )
            for i in range(cfg.depth)
        )
        self.norm_out = AdaLayerNorm(d, d)
        self.proj_out = nn.Linear(d, cfg.output_dim)

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, context_mask: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        """Returns (output [B,T,output_dim], hidden states [input, block 1 out, ..., block L out])."""
        temb = self.time_embed(timestep)
        hidden = [x]
        for blk in self.blocks:
            x = blk(x, context=context, context_mask=context_mask, cond=temb)
            hidden.append(x)
        return self.proj_out(self.norm_out(x, temb)), hidden


@dataclass
class FlowLoss:
    """Result of :meth:`FlowMatchingHead.loss`."""

    loss: Tensor
    """Masked velocity MSE (0-dim); exactly 0, still in the graph, when nothing is supervised."""
    hidden_states: list[Tensor]
    """DiT hidden states [input, block 1, ..., block L], each [B, 1+N, dim]."""
    num_supervised: Tensor
    """Number of supervised (sample, step, dim) entries."""


class FlowMatchingHead(nn.Module):
    """State + noisy action chunk + VL tokens -> velocity; owns no direct parameters."""

    def __init__(self, cfg: FlowHeadConfig, vl_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.num_embodiments
        self.state_encoder = CategorySpecificMLP(c, cfg.proprio_dim, cfg.hidden_dim, cfg.dim)
        self.action_encoder = ActionEncoder(c, cfg.action_dim, cfg.dim)
        self.action_pos = nn.Embedding(cfg.action_horizon, cfg.dim)
        self.vl_norm = nn.LayerNorm(vl_dim)
        self.dit = DiT(cfg, vl_dim)
        self.action_decoder = CategorySpecificMLP(c, cfg.output_dim, cfg.hidden_dim, cfg.action_dim)
        self.register_buffer("positions", torch.arange(cfg.action_horizon), persistent=False)

    def forward(
        self,
        vl_tokens: Tensor,
        vl_mask: Tensor | None,
        proprio: Tensor,
        embodiment_id: Tensor,
        noisy_action: Tensor,
        timestep: Tensor,
    ) -> tuple[Tensor, list[Tensor]]:
        """Velocity [B,N,A] and the DiT hidden states. ``timestep`` is the bucketed int [B]."""
        state = self.state_encoder(proprio[:, None].to(vl_tokens.dtype), embodiment_id)
        actions = self.action_encoder(noisy_action.to(vl_tokens.dtype), timestep, embodiment_id)
        actions = actions + self.action_pos(self.positions)[None]
        out, hidden = self.dit(torch.cat([state, actions], dim=1), timestep, self.vl_norm(vl_tokens), vl_mask)
        return self.action_decoder(out[:, 1:], embodiment_id), hidden

    def sample_time(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """tau = (s - b) / s with b ~ Beta(alpha, 1), via the inverse CDF b = U^(1/alpha) (seedable)."""
        u = torch.rand(batch_size, generator=generator, device=generator.device if generator else device)
        b = u.pow(1.0 / self.cfg.time_beta_alpha)
        return ((self.cfg.noise_s - b) / self.cfg.noise_s).to(device)

    def bucket(self, tau: Tensor) -> Tensor:
        """Continuous tau -> integer timestep in [0, buckets] for the sinusoidal embedding."""
        return (tau * self.cfg.num_timestep_buckets).long().clamp(0, self.cfg.num_timestep_buckets)

    def loss(
        self,
        vl_tokens: Tensor,
        vl_mask: Tensor | None,
        proprio: Tensor,
        embodiment_id: Tensor,
        action: Tensor,
        mask: Tensor,
        generator: torch.Generator | None = None,
    ) -> FlowLoss:
        """Flow-matching MSE over entries where ``mask`` [B,N,A] is True.

        The head always runs on the whole batch (no data-dependent skipping: ZeRO-3 needs every
        rank to run every module); unsupervised entries are zeroed, so their gradient is exactly 0.
        """
        b = action.shape[0]
        action = torch.where(mask, action, torch.zeros_like(action))  # NaN-safe for action-less rows
        noise = torch.randn(action.shape, generator=generator, device=generator.device if generator else action.device)
        noise = noise.to(action.device, action.dtype)
        tau = self.sample_time(b, action.device, generator)[:, None, None]
        x_tau = (1 - tau) * noise + tau * action
        velocity, hidden = self(vl_tokens, vl_mask, proprio, embodiment_id, x_tau, self.bucket(tau[:, 0, 0]))
        sq = (velocity.float() - (action - noise).float()).pow(2)
        sq = torch.where(mask, sq, torch.zeros_like(sq))
        n = mask.sum()
        return FlowLoss(sq.sum() / n.clamp_min(1), hidden, n)

    @torch.no_grad()
    def sample(
        self,
        vl_tokens: Tensor,
        vl_mask: Tensor | None,
        proprio: Tensor,
        embodiment_id: Tensor,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Euler-integrate the velocity field from noise; returns actions [B,N,A]."""
        steps = num_steps or self.cfg.num_inference_steps
        shape = (vl_tokens.shape[0], self.cfg.action_horizon, self.cfg.action_dim)
        dev = vl_tokens.device
        x = torch.randn(shape, generator=generator, device=generator.device if generator else dev).to(dev)
        for i in range(steps):
            t = torch.full((shape[0],), i / steps, device=dev)
            v, _ = self(vl_tokens, vl_mask, proprio, embodiment_id, x, self.bucket(t))
            x = x + v.float() / steps
        return x
