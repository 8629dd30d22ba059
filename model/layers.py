"""Shared transformer pieces: attention, pre-norm blocks, AdaLayerNorm, timestep and patch embeddings.

Every attention goes through :func:`model.attention.attention`. Each module only touches its own
parameters inside its own ``forward`` (DeepSpeed ZeRO-3 gathers a module's parameters only while
that module's forward runs).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lavla.model.attention import attention


@contextmanager
def eval_no_grad(module: nn.Module) -> Iterator[None]:
    """Eval mode (quantizers neither count usage nor move EMA codebooks) and no grad, restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def normalize_image(images: Tensor) -> Tensor:
    """uint8 ``[B,3,H,W]`` in [0,255] -> float in [-1, 1] (the tiny encoders' and decoder's space)."""
    return images.float() / 127.5 - 1.0


def key_padding_mask(mask: Tensor | None) -> Tensor | None:
    """``[B, Tk]`` bool (True = real token) -> attention mask broadcastable to ``[B, heads, Tq, Tk]``."""
    return None if mask is None else mask[:, None, None, :]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps ``[...]`` -> ``[..., dim]`` (cos ‖ sin)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features followed by a 2-layer MLP (the DiT conditioning vector)."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch``x``patch`` patches -> tokens ``[B, (H/p)*(W/p), dim]``."""

    def __init__(self, image_size: int, patch_size: int, dim: int, in_channels: int = 3) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.grid = image_size // patch_size
        self.num_patches = self.grid**2
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Image ``[B, C, H, W]`` -> raw patch pixels ``[B, N, p*p*C]`` (row-major grid); inverse of :func:`unpatchify`."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: Tensor, patch_size: int, channels: int = 3) -> Tensor:
    """``[B, N, p*p*C]`` patch pixels (row-major grid) -> image ``[B, C, H, W]``."""
    b, n, _ = tokens.shape
    g = int(math.isqrt(n))
    x = tokens.reshape(b, g, g, patch_size, patch_size, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, g * patch_size, g * patch_size)


class AdaLayerNorm(nn.Module):
    """LayerNorm whose scale/shift come from a conditioning vector (the DiT timestep embedding)."""

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.proj = nn.Linear(cond_dim, 2 * dim)
        # Zero init: the block starts as a plain LayerNorm (scale 1, shift 0), as in DiT.
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.proj(F.silu(cond)).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention (``context_dim`` set) with its projections."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        b, t, d = x.shape
        ctx = x if context is None else context
        q = self.q(x).view(b, t, self.heads, -1).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        o = attention(q, k, v, mask=mask, causal=causal, dropout_p=self.dropout if self.training else 0.0)
        return self.out(o.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    """Two-layer GELU MLP."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """Pre-norm block: [self-attn] -> [cross-attn] -> MLP, each residual.

    ``self_attn=False`` with ``context_dim`` gives a cross-attention-only block (the DiT's even
    blocks). With ``cond_dim`` the attention norms are :class:`AdaLayerNorm` on ``cond``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        mlp_ratio: float = 4.0,
        self_attn: bool = True,
        context_dim: int | None = None,
        cond_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not self_attn and context_dim is None:
            raise ValueError("a block needs self-attention, cross-attention or both")

        def norm() -> nn.Module:
            return AdaLayerNorm(dim, cond_dim) if cond_dim is not None else nn.LayerNorm(dim)

        self.norm_self = norm() if self_attn else None
        self.self_attn = MultiHeadAttention(dim, heads, dropout=dropout) if self_attn else None
        self.norm_cross = norm() if context_dim is not None else None
        self.cross_attn = MultiHeadAttention(dim, heads, context_dim, dropout) if context_dim is not None else None
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def _norm(self, norm: nn.Module, x: Tensor, cond: Tensor | None) -> Tensor:
        return norm(x, cond) if isinstance(norm, AdaLayerNorm) else norm(x)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        cond: Tensor | None = None,
        causal: bool = False,
    ) -> Tensor:
        """``mask``/``context_mask``: ``[B, T]`` bool key-padding masks (True = real token)."""
        if self.self_attn is not None:
            x = x + self.self_attn(self._norm(self.norm_self, x, cond), mask=key_padding_mask(mask), causal=causal)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block cross-attends and needs a context")
            x = x + self.cross_attn(self._norm(self.norm_cross, x, cond), context, mask=key_padding_mask(context_mask))
        return x + self.mlp(self.norm_mlp(x))
