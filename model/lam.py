"""Moto/LARA-style latent action model (LAM).

  x_t, x_{t+H} --FrameEncoder--> tokens --M-Former(queries | cond | SEP | target)--> Q query states
  --down (Linear, tanh, Linear; Moto's resampler)--> continuous latent [B,Q,Dl] --VQ--> quantized
  --up--> fused into every x_t patch embedding --pixel decoder--> x_{t+H}

The LAM module owns no parameters directly; every parameter lives in a submodule called through
``__call__`` so ZeRO-3 gathers it (``encode``/``decode`` are plain methods and stay safe).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from model.config import FrameEncoderConfig, LamConfig
from model.layers import PatchEmbed, TransformerBlock, normalize_image, unpatchify
from model.quantizer import VectorQuantizer


class FrameEncoder(nn.Module, ABC):
    """uint8 images ``[B,3,H,W]`` -> tokens ``[B, num_tokens, dim]`` (normalizes internally).

    The seam for a frozen HF ViT (``from_pretrained``) that brings its own normalization.
    """

    dim: int
    num_tokens: int

    @abstractmethod
    def forward(self, images: Tensor) -> Tensor: ...


class TinyViTEncoder(FrameEncoder):
    """Patch embedding + learned positions + a few transformer layers; trainable or frozen."""

    def __init__(self, image_size: int, patch_size: int, cfg: FrameEncoderConfig) -> None:
        super().__init__()
        self.patch = PatchEmbed(image_size, patch_size, cfg.dim)
        self.dim, self.num_tokens = cfg.dim, self.patch.num_patches
        self.pos = nn.Parameter(torch.randn(1, self.num_tokens, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(cfg.dim, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.frozen = cfg.frozen
        if cfg.frozen:
            self.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            x = self.patch(normalize_image(images)) + self.pos
            for blk in self.blocks:
                x = blk(x)
            return self.norm(x)


class MFormer(nn.Module):
    """Learnable queries reading [queries, cond tokens, SEP, target tokens]; returns query states.

    Token types: 0 = query, 1 = condition frame (+SEP), 2 = target frame. Moto's legacy code gave
    both frames type 0, leaving only positions to tell them apart.
    """

    def __init__(self, in_dim: int, num_tokens: int, cfg: LamConfig) -> None:
        super().__init__()
        q, d = cfg.num_queries, cfg.dim
        self.num_queries = q
        self.in_proj = nn.Linear(in_dim, d)
        self.queries = nn.Parameter(torch.randn(1, q, d) * 0.02)
        self.sep = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, q + 2 * num_tokens + 1, d) * 0.02)
        self.type_emb = nn.Embedding(3, d)
        self.register_buffer(
            "type_ids",
            torch.tensor([0] * q + [1] * (num_tokens + 1) + [2] * num_tokens, dtype=torch.long),
            persistent=False,
        )
        self.blocks = nn.ModuleList(TransformerBlock(d, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d)

    def forward(self, cond: Tensor, target: Tensor) -> Tensor:
        b = cond.shape[0]
        x = torch.cat(
            [self.queries.expand(b, -1, -1), self.in_proj(cond), self.sep.expand(b, -1, -1), self.in_proj(target)], dim=1
        )
        x = x + self.pos + self.type_emb(self.type_ids)[None]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x[:, : self.num_queries])


class PixelDecoder(nn.Module):
    """Predicts x_{t+H} (in [-1,1]) from x_t patches with the latent added to every patch (Moto's fusion)."""

    def __init__(self, cfg: LamConfig) -> None:
        super().__init__()
        d, p = cfg.decoder_dim, cfg.patch_size
        self.patch_size = p
        self.patch = PatchEmbed(cfg.image_size, p, d)
        self.pos = nn.Parameter(torch.randn(1, self.patch.num_patches, d) * 0.02)
        self.latent_proj = nn.Linear(cfg.num_queries * d, d)
        self.blocks = nn.ModuleList(TransformerBlock(d, cfg.decoder_heads) for _ in range(cfg.decoder_depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, p * p * 3)

    def forward(self, x_t: Tensor, latent_tokens: Tensor) -> Tensor:
        """``x_t`` uint8 [B,3,H,W]; ``latent_tokens`` [B,Q,decoder_dim] (up-projected)."""
        x = self.patch(normalize_image(x_t)) + self.pos
        x = x + self.latent_proj(latent_tokens.flatten(1))[:, None]
        for blk in self.blocks:
            x = blk(x)
        return unpatchify(self.head(self.norm(x)), self.patch_size)


class LatentActions(NamedTuple):
    """What :meth:`LatentActionModel.encode` returns (a NamedTuple so ZeRO-3 can hook its tensors)."""

    continuous: Tensor
    """Pre-quantization tanh latent [B,Q,Dl] (LARA's alignment target)."""
    ids: Tensor
    """Code ids [B,Q]."""
    quantized: Tensor
    """Straight-through quantized latent [B,Q,Dl]."""
    vq_loss: Tensor
    """Codebook + beta * commitment loss (0-dim)."""
    metrics: dict[str, Tensor]
    """Quantizer metrics (perplexity, active codes, ...)."""


class LatentActionModel(nn.Module):
    """encode(x_t, x_tH) -> LatentActions; decode(x_t, quantized) -> image; forward(batch) -> (loss, metrics)."""

    def __init__(self, cfg: LamConfig, frame_encoder: FrameEncoder | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = frame_encoder or TinyViTEncoder(cfg.image_size, cfg.patch_size, cfg.encoder)
        self.mformer = MFormer(self.encoder.dim, self.encoder.num_tokens, cfg)
        self.down = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.Tanh(), nn.Linear(cfg.dim, cfg.latent_dim))
        self.quantizer = VectorQuantizer(
            cfg.quantizer.num_codes,
            cfg.latent_dim,
            beta=cfg.quantizer.beta,
            restart_window=cfg.quantizer.restart_window,
            dead_threshold=cfg.quantizer.dead_threshold,
            restart_noise=cfg.quantizer.restart_noise,
        )
        self.up = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.latent_dim), nn.Tanh(), nn.Linear(cfg.latent_dim, cfg.decoder_dim)
        )
        self.decoder = PixelDecoder(cfg)

    def encode(self, x_t: Tensor, x_tH: Tensor) -> LatentActions:
        """uint8 frames [B,3,H,W] -> latent actions."""
        b = x_t.shape[0]
        tokens = self.encoder(torch.cat([x_t, x_tH], dim=0))  # one encoder pass for both frames
        z = self.down(self.mformer(tokens[:b], tokens[b:]))
        q = self.quantizer(z)
        return LatentActions(z, q.ids, q.quantized, q.loss, q.metrics)

    def decode(self, x_t: Tensor, quantized: Tensor) -> Tensor:
        """Predicted x_{t+H} in [-1,1] float [B,3,H,W] (``(img + 1) * 127.5`` for uint8)."""
        return self.decoder(x_t, self.up(quantized))

    def forward(self, batch: dict[str, Any], return_latents: bool = False):  # type: ignore[no-untyped-def]
        """LAM loss = recon_weight * pixel MSE + vq loss; ``return_latents`` adds the LatentActions."""
        x_t, x_tH = batch["image_primary"], batch["image_future"]
        lat = self.encode(x_t, x_tH)
        recon = F.mse_loss(self.decode(x_t, lat.quantized).float(), normalize_image(x_tH))
        loss = self.cfg.recon_weight * recon + lat.vq_loss
        metrics: dict[str, Tensor] = {
            "loss/lam": loss.detach(),
            "loss/lam_recon": recon.detach(),
            "loss/vq": lat.vq_loss.detach(),
            "lam/perplexity": lat.metrics["perplexity"],
            "lam/active_codes": lat.metrics["active_codes"],
            "lam/commit": lat.metrics["vq/commit_loss"],
        }
        return (loss, metrics, lat) if return_latents else (loss, metrics)
