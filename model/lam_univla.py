"""UniVLA-style latent action model in the feature space of a frozen encoder (DINOv2).

  x_t, x_{t+H} --frozen encoder--> patch features F_t, F_{t+H} [B,N,Df]
  [A action queries | Linear(F)] per frame --> spatio-temporal blocks
  (spatial attention within a frame -> causal temporal attention per position -> MLP)
  --> the queries of x_{t+H} --> Linear D->Dl --> VQ (straight-through, 16 codes)
  --> decoder: spatial blocks over [Linear(z_q), Linear(F_t)] --> predicted F_{t+H}
  Loss = MSE(pred, F_{t+H}) + codebook + beta * commitment.

Not reproduced: stage 1's language conditioning and stage 2's second ("task-centric") codebook.
Every parameter lives in a submodule called through ``__call__`` (ZeRO-3).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lavla.model.frame_encoder import build_frame_encoder
from lavla.model.lam import LatentActions, lam_metrics
from lavla.model.lam_config import UnivlaLamConfig
from lavla.model.layers import Mlp, MultiHeadAttention, TransformerBlock
from lavla.model.quantizer import build_quantizer


class SpatioTemporalBlock(nn.Module):
    """Pre-norm: spatial attention within each frame, causal temporal attention per position, MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm_s, self.attn_s = nn.LayerNorm(dim), MultiHeadAttention(dim, heads)
        self.norm_t, self.attn_t = nn.LayerNorm(dim), MultiHeadAttention(dim, heads)
        self.norm_m, self.mlp = nn.LayerNorm(dim), Mlp(dim, 4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, s, d = x.shape
        h = x.reshape(b * t, s, d)
        h = h + self.attn_s(self.norm_s(h))
        h = h.view(b, t, s, d).transpose(1, 2).reshape(b * s, t, d)
        h = h + self.attn_t(self.norm_t(h), causal=True)
        h = h + self.mlp(self.norm_m(h))
        return h.view(b, s, t, d).transpose(1, 2)


class UnivlaEncoder(nn.Module):
    """Features of both frames ``[B,2,N,Df]`` -> action-query states of the second frame ``[B,A,Dl]``."""

    def __init__(self, feat_dim: int, num_patches: int, cfg: UnivlaLamConfig) -> None:
        super().__init__()
        self.num_queries = cfg.num_queries
        self.in_proj = nn.Linear(feat_dim, cfg.dim)
        self.queries = nn.Parameter(torch.randn(1, 1, cfg.num_queries, cfg.dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 1, cfg.num_queries + num_patches, cfg.dim) * 0.02)
        self.time = nn.Parameter(torch.randn(1, 2, 1, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(SpatioTemporalBlock(cfg.dim, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.latent_dim)

    def forward(self, feats: Tensor) -> Tensor:
        b, t = feats.shape[:2]
        x = torch.cat([self.queries.expand(b, t, -1, -1), self.in_proj(feats)], dim=2)
        x = x + self.pos + self.time[:, :t]
        for blk in self.blocks:
            x = blk(x)
        return self.out(self.norm(x[:, -1, : self.num_queries]))


class UnivlaDecoder(nn.Module):
    """x_t features ``[B,N,Df]`` + quantized latent ``[B,A,Dl]`` -> predicted x_{t+H} features ``[B,N,Df]``."""

    def __init__(self, feat_dim: int, num_patches: int, cfg: UnivlaLamConfig) -> None:
        super().__init__()
        self.action_up = nn.Linear(cfg.latent_dim, cfg.dim)
        self.patch_up = nn.Linear(feat_dim, cfg.dim)
        self.pos = nn.Parameter(torch.randn(1, cfg.num_queries + num_patches, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(cfg.dim, cfg.heads) for _ in range(cfg.decoder_depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, feat_dim)
        self.num_queries = cfg.num_queries

    def forward(self, feats_t: Tensor, quantized: Tensor) -> Tensor:
        x = torch.cat([self.action_up(quantized), self.patch_up(feats_t)], dim=1) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, self.num_queries :]))


class UnivlaLatentActionModel(nn.Module):
    """encode(x_t, x_tH) -> LatentActions; decode(x_t, quantized) -> features; forward(batch) -> (loss, metrics)."""

    def __init__(self, cfg: UnivlaLamConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = build_frame_encoder(cfg.image_size, cfg.patch_size, cfg.encoder)
        if not self.encoder.frozen:
            raise ValueError("the UniVLA LAM needs a frozen frame encoder (its features are the target)")
        self.prefix = self.encoder.num_prefix_tokens
        n = self.encoder.num_tokens - self.prefix
        self.num_patches = n
        self.lam_encoder = UnivlaEncoder(self.encoder.dim, n, cfg)
        self.quantizer = build_quantizer(cfg.quantizer, cfg.latent_dim)
        self.decoder = UnivlaDecoder(self.encoder.dim, n, cfg)

    def features(self, images: Tensor) -> Tensor:
        """Frozen patch features ``[B,N,Df]`` (prefix tokens dropped), no grad."""
        with torch.no_grad():
            return self.encoder(images)[:, self.prefix :].float()

    def _latents(self, feats: Tensor) -> LatentActions:
        z = self.lam_encoder(feats)
        q = self.quantizer(z)
        return LatentActions(z, q.ids, q.quantized, q.loss, q.metrics)

    def _pair_features(self, x_t: Tensor, x_tH: Tensor) -> Tensor:
        b = x_t.shape[0]
        f = self.features(torch.cat([x_t, x_tH], dim=0))  # one encoder pass for both frames
        return torch.stack([f[:b], f[b:]], dim=1)

    def encode(self, x_t: Tensor, x_tH: Tensor) -> LatentActions:
        """uint8 frames [B,3,H,W] -> latent actions (num_queries tokens)."""
        return self._latents(self._pair_features(x_t, x_tH))

    def decode(self, x_t: Tensor, quantized: Tensor) -> Tensor:
        """Predicted features of x_{t+H} ``[B,N,Df]``."""
        return self.decoder(self.features(x_t), quantized)

    def preview(self, x_t: Tensor, quantized: Tensor) -> Tensor:
        """Image-space view for logging: where the predicted features change, ||F^_{t+H} - F_t|| per patch,
        as a gray map [B,3,H,W] in [-1,1] (bright = predicted motion)."""
        feats = self.features(x_t)
        change = (self.decoder(feats, quantized) - feats).norm(dim=-1)
        b, g = change.shape[0], int(round(self.num_patches**0.5))
        m = change.view(b, 1, g, g)
        m = m / m.flatten(1).amax(1).clamp_min(1e-6)[:, None, None, None]
        m = F.interpolate(m, size=x_t.shape[-2:], mode="nearest")
        return (m * 2.0 - 1.0).expand(-1, 3, -1, -1)

    def forward(self, batch: dict[str, Any], return_latents: bool = False):  # type: ignore[no-untyped-def]
        """Loss = feature MSE + quantizer loss (codebook + beta * commitment)."""
        feats = self._pair_features(batch["image_primary"], batch["image_future"])
        lat = self._latents(feats)
        pred = self.decoder(feats[:, 0], lat.quantized)
        recon = F.mse_loss(pred.float(), feats[:, 1])
        loss = recon + lat.vq_loss
        metrics = lam_metrics(loss, recon, lat)
        return (loss, metrics, lat) if return_latents else (loss, metrics)
