"""LAPA-style latent action model (LAQ).

  x_t, x_{t+H} --pixel patches (LN, Linear, LN)--> spatial transformer (per frame)
  --> causal temporal transformer (per patch, across the 2 frames) --> tokens [B,2,N,D]
  per frame: Linear D->Dl, conv map, pool to G x G --> difference (frame 2 - frame 1) [B,G*G,Dl]
  --> NSVQ (default) --> Linear Dl->D --> decoder: self-attention over the DETACHED x_t tokens,
  cross-attention to the action tokens --> pixels of x_{t+H}. Loss: pixel MSE only.

Simplification vs LAQ: learned position embeddings instead of the PEG and continuous relative
position bias. Every parameter lives in a submodule called through ``__call__`` (ZeRO-3).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lavla.model.lam import LatentActions, lam_metrics
from lavla.model.lam_config import LapaLamConfig
from lavla.model.layers import TransformerBlock, normalize_image, patchify, unpatchify
from lavla.model.quantizer import build_quantizer


class PixelPatchEmbed(nn.Module):
    """Raw ``p x p x 3`` patches -> LayerNorm -> Linear -> LayerNorm (LAQ's patch embedding)."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        n = patch_size * patch_size * 3
        self.net = nn.Sequential(nn.LayerNorm(n), nn.Linear(n, dim), nn.LayerNorm(dim))

    def forward(self, images: Tensor) -> Tensor:
        return self.net(patchify(normalize_image(images), self.patch_size))


class SpaceTimeEncoder(nn.Module):
    """Frames ``[B,T,3,H,W]`` (uint8) -> tokens ``[B,T,N,D]``: spatial layers, then causal temporal layers.

    Causal in time: frame t's tokens never see later frames, so encoding x_t alone gives the
    same x_t tokens as encoding the pair (what :meth:`LapaLatentActionModel.decode` relies on).
    """

    def __init__(self, cfg: LapaLamConfig) -> None:
        super().__init__()
        n = (cfg.image_size // cfg.patch_size) ** 2
        self.embed = PixelPatchEmbed(cfg.patch_size, cfg.dim)
        self.pos = nn.Parameter(torch.randn(1, 1, n, cfg.dim) * 0.02)
        self.time = nn.Parameter(torch.randn(1, 2, 1, cfg.dim) * 0.02)
        self.spatial = nn.ModuleList(TransformerBlock(cfg.dim, cfg.heads) for _ in range(cfg.spatial_depth))
        self.temporal = nn.ModuleList(TransformerBlock(cfg.dim, cfg.heads) for _ in range(cfg.temporal_depth))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, frames: Tensor) -> Tensor:
        b, t = frames.shape[:2]
        x = self.embed(frames.flatten(0, 1))
        n, d = x.shape[1:]
        x = x.view(b, t, n, d) + self.pos + self.time[:, :t]
        x = x.flatten(0, 1)
        for blk in self.spatial:
            x = blk(x)
        x = x.view(b, t, n, d).transpose(1, 2).reshape(b * n, t, d)
        for blk in self.temporal:
            x = blk(x, causal=True)
        return self.norm(x.view(b, n, t, d).transpose(1, 2))


class ActionMap(nn.Module):
    """Per-frame tokens ``[B,2,N,D]`` -> frame-difference latent ``[B, G*G, Dl]``.

    LAQ: Linear D->Dl, reshape to the patch grid, 3x3 stride-2 conv, ReLU, 3x3 conv, down to a
    G x G map (here an adaptive average pool, so any grid size works); frame 2 minus frame 1.
    """

    def __init__(self, cfg: LapaLamConfig) -> None:
        super().__init__()
        self.grid = cfg.image_size // cfg.patch_size
        dl = cfg.latent_dim
        self.proj = nn.Linear(cfg.dim, dl)
        self.conv = nn.Sequential(
            nn.Conv2d(dl, dl, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(dl, dl, 3, padding=1),
            nn.AdaptiveAvgPool2d(cfg.action_grid),
        )

    def forward(self, tokens: Tensor) -> Tensor:
        b, t = tokens.shape[:2]
        x = self.proj(tokens).reshape(b * t, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        x = self.conv(x).flatten(2).transpose(1, 2)  # [B*T, G*G, Dl]
        x = x.reshape(b, t, *x.shape[1:])
        return x[:, 1] - x[:, 0]


class LapaDecoder(nn.Module):
    """x_t tokens ``[B,N,D]`` (detached by the caller) + quantized latent ``[B,G*G,Dl]`` -> x_{t+H} in [-1,1]."""

    def __init__(self, cfg: LapaLamConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.action_in = nn.Linear(cfg.latent_dim, cfg.dim)
        self.action_pos = nn.Parameter(torch.randn(1, cfg.action_grid**2, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.dim, cfg.heads, context_dim=cfg.dim) for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.patch_size**2 * 3)

    def forward(self, first_tokens: Tensor, quantized: Tensor) -> Tensor:
        actions = self.action_in(quantized) + self.action_pos
        x = first_tokens
        for blk in self.blocks:
            x = blk(x, context=actions)
        return unpatchify(self.head(self.norm(x)), self.patch_size)


class LapaLatentActionModel(nn.Module):
    """encode(x_t, x_tH) -> LatentActions; decode(x_t, quantized) -> image; forward(batch) -> (loss, metrics)."""

    def __init__(self, cfg: LapaLamConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = SpaceTimeEncoder(cfg)
        self.action_map = ActionMap(cfg)
        self.quantizer = build_quantizer(cfg.quantizer, cfg.latent_dim)
        self.decoder = LapaDecoder(cfg)

    def _latents(self, tokens: Tensor) -> LatentActions:
        z = self.action_map(tokens)
        q = self.quantizer(z)
        return LatentActions(z, q.ids, q.quantized, q.loss, q.metrics)

    def encode(self, x_t: Tensor, x_tH: Tensor) -> LatentActions:
        """uint8 frames [B,3,H,W] -> latent actions (G*G tokens)."""
        return self._latents(self.encoder(torch.stack([x_t, x_tH], dim=1)))

    def decode(self, x_t: Tensor, quantized: Tensor) -> Tensor:
        """Predicted x_{t+H} in [-1,1] [B,3,H,W] (x_t tokens re-encoded alone: the encoder is causal in time)."""
        first = self.encoder(x_t[:, None])[:, 0]
        return self.decoder(first.detach(), quantized)

    def preview(self, x_t: Tensor, quantized: Tensor) -> Tensor:
        """Image-space view of the prediction for logging: the decoded frame, [-1,1]."""
        return self.decode(x_t, quantized)

    def forward(self, batch: dict[str, Any], return_latents: bool = False):  # type: ignore[no-untyped-def]
        """Loss = pixel MSE (the NSVQ has no loss; an ST/EMA quantizer adds its own)."""
        x_t, x_tH = batch["image_primary"], batch["image_future"]
        tokens = self.encoder(torch.stack([x_t, x_tH], dim=1))
        lat = self._latents(tokens)
        # LAQ detaches the x_t tokens: only the action path can carry what changed.
        recon = F.mse_loss(self.decoder(tokens[:, 0].detach(), lat.quantized).float(), normalize_image(x_tH))
        loss = recon + lat.vq_loss
        metrics = lam_metrics(loss, recon, lat)
        return (loss, metrics, lat) if return_latents else (loss, metrics)
