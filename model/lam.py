"""Moto/LARA-style latent action model (LAM).

  x_t, x_{t+H} --FrameEncoder--> tokens --M-Former(queries | cond | SEP | target)--> Q query states
  --down (Linear, tanh, Linear; Moto's resampler)--> continuous latent [B,Q,Dl] --quantizer--> quantized
  --up--> pixel decoder conditioned on x_t --> x_{t+H}

Moto's choices are config values (``mformer_target: frame``, ``decoder: vit`` with the latent added
to every x_t patch embedding, ``decoder_residual: false``, a straight-through quantizer). The CPU
defaults differ where a tiny model otherwise never starts using its latent: the M-Former reads
(target - cond) tokens, a conv decoder predicts the change from x_t, the quantizer is NSVQ.

The LAM module owns no parameters directly; every parameter lives in a submodule called through
``__call__`` so ZeRO-3 gathers it (``encode``/``decode`` are plain methods and stay safe).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from lavla.model.config import LamConfig
from lavla.model.frame_encoder import FrameEncoder, TinyViTEncoder, build_frame_encoder
from lavla.model.lam_config import LapaLamConfig, UnivlaLamConfig
from lavla.model.layers import PatchEmbed, TransformerBlock, normalize_image, unpatchify
from lavla.model.quantizer import build_quantizer

__all__ = ["FrameEncoder", "TinyViTEncoder", "LatentActions", "LatentActionModel", "MFormer", "PixelDecoder", "ConvPixelDecoder", "lam_metrics"]


class MFormer(nn.Module):
    """Learnable queries reading [queries, cond tokens, SEP, target tokens]; returns query states.

    Token types: 0 = query, 1 = condition frame (+SEP), 2 = target frame. Moto's legacy code gave
    both frames type 0, leaving only positions to tell them apart. With ``mformer_target:
    difference`` the target stream is (target - cond) tokens: the same information, but static
    content cancels, so at initialization the queries' outputs already vary with the motion
    (with raw frames they are dominated by appearance and a tiny LAM never starts using them).
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
        # Same scale as the other embeddings: a unit-variance type embedding swamps the (small)
        # input-dependent part of the query states at init, and the latent starts out constant.
        nn.init.normal_(self.type_emb.weight, std=0.02)
        self.difference = cfg.mformer_target == "difference"
        self.register_buffer(
            "type_ids",
            torch.tensor([0] * q + [1] * (num_tokens + 1) + [2] * num_tokens, dtype=torch.long),
            persistent=False,
        )
        self.blocks = nn.ModuleList(TransformerBlock(d, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d)

    def forward(self, cond: Tensor, target: Tensor) -> Tensor:
        b = cond.shape[0]
        if self.difference:
            target = target - cond
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
        self.residual = cfg.decoder_residual

    def forward(self, x_t: Tensor, latent_tokens: Tensor) -> Tensor:
        """``x_t`` uint8 [B,3,H,W]; ``latent_tokens`` [B,Q,decoder_dim] (up-projected)."""
        img = normalize_image(x_t)
        x = self.patch(img) + self.pos
        x = x + self.latent_proj(latent_tokens.flatten(1))[:, None]
        for blk in self.blocks:
            x = blk(x)
        out = unpatchify(self.head(self.norm(x)), self.patch_size)
        return img + out if self.residual else out


class ConvPixelDecoder(nn.Module):
    """Predicts x_{t+H} (in [-1,1]) with 3x3 convolutions at pixel resolution, conditioned on the
    latent (``decoder_conditioning``: a per-channel bias after the first conv, or FiLM after every
    conv). Weights are shared across positions, so "move what is here by the latent" is learned once
    for the whole image: a tiny CPU LAM learns to use its latent in a few hundred steps, where a tiny
    ViT decoder (a linear head from a 32-d token to 192 pixels) learned to ignore it. Receptive
    field: 2 * (decoder_depth + 2) + 1 pixels."""

    def __init__(self, cfg: LamConfig) -> None:
        super().__init__()
        c, depth = cfg.decoder_dim, cfg.decoder_depth
        self.film = cfg.decoder_conditioning == "film"
        # film: (scale, shift) for the input conv and each body conv; bias: one shift.
        n_cond = 2 * c * (depth + 1) if self.film else c
        self.latent_proj = nn.Linear(cfg.num_queries * c, n_cond)
        self.inp = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.Sequential(*[m for _ in range(depth) for m in (nn.GELU(), nn.Conv2d(c, c, 3, padding=1))])
        self.out = nn.Sequential(nn.GELU(), nn.Conv2d(c, 3, 3, padding=1))
        self.residual = cfg.decoder_residual

    def forward(self, x_t: Tensor, latent_tokens: Tensor) -> Tensor:
        """``x_t`` uint8 [B,3,H,W]; ``latent_tokens`` [B,Q,decoder_dim] (up-projected)."""
        img = normalize_image(x_t)
        cond = self.latent_proj(latent_tokens.flatten(1))[:, :, None, None]
        if not self.film:
            h = self.body(self.inp(img) + cond)
        else:
            scale_shift = cond.chunk(2 * (len(self.body) // 2 + 1), dim=1)
            h = self.inp(img) * (1 + scale_shift[0]) + scale_shift[1]
            for i in range(len(self.body) // 2):  # (GELU, conv) pairs, each conv output modulated
                h = self.body[2 * i + 1](self.body[2 * i](h))
                h = h * (1 + scale_shift[2 * i + 2]) + scale_shift[2 * i + 3]
        out = self.out(h)
        return img + out if self.residual else out


class LatentActions(NamedTuple):
    """What every LAM's ``encode`` returns (a NamedTuple so ZeRO-3 can hook its tensors)."""

    continuous: Tensor
    """Pre-quantization latent [B,Q,Dl] (Moto: tanh resampler output, LARA's alignment target)."""
    ids: Tensor
    """Code ids [B,Q]."""
    quantized: Tensor
    """Quantized latent [B,Q,Dl] (straight-through / noise-substituted in training)."""
    vq_loss: Tensor
    """Quantizer loss (0-dim)."""
    metrics: dict[str, Tensor]
    """Quantizer metrics (perplexity, active codes, ...)."""


CHANGE_THRESHOLD = 2.0 / 255.0 * 4
"""A pixel "changes" when some channel moves by more than 4 grey levels (in [-1,1] units): above
JPEG/resize noise, below any real edge crossing."""


def reconstruction_loss(pred: Tensor, target: Tensor, cond: Tensor, motion_weight: float = 0.0) -> Tensor:
    """Pixel MSE of ``pred`` against ``target`` ([-1,1] float [B,3,H,W]); with ``motion_weight`` > 0
    the pixels where ``target`` differs from ``cond`` weigh ``1 + motion_weight``."""
    err = (pred.float() - target.float()).pow(2)
    if motion_weight <= 0.0:
        return err.mean()
    changed = ((target.float() - cond.float()).abs().amax(dim=1, keepdim=True) > CHANGE_THRESHOLD).float()
    weight = 1.0 + motion_weight * changed
    return (err * weight).sum() / (weight.sum() * err.shape[1])


def lam_metrics(loss: Tensor, recon: Tensor, lat: LatentActions) -> dict[str, Tensor]:
    """The metrics every LAM logs: total, reconstruction, quantizer loss and codebook health."""
    return {
        "loss/lam": loss.detach(),
        "loss/lam_recon": recon.detach(),
        "loss/vq": lat.vq_loss.detach(),
        "lam/perplexity": lat.metrics["perplexity"],
        "lam/active_codes": lat.metrics["active_codes"],
        "lam/quant_error": lat.metrics["quant_error"],
    }


class LatentActionModel(nn.Module):
    """Moto/LARA LAM. encode(x_t, x_tH) -> LatentActions; decode(x_t, quantized) -> image; forward(batch) -> (loss, metrics)."""

    def __init__(self, cfg: LamConfig, frame_encoder: FrameEncoder | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = frame_encoder or build_frame_encoder(cfg.image_size, cfg.patch_size, cfg.encoder)
        self.mformer = MFormer(self.encoder.dim, self.encoder.num_tokens, cfg)
        self.down = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.Tanh(), nn.Linear(cfg.dim, cfg.latent_dim))
        self.quantizer = build_quantizer(cfg.quantizer, cfg.latent_dim)
        self.up = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.latent_dim), nn.Tanh(), nn.Linear(cfg.latent_dim, cfg.decoder_dim)
        )
        self.decoder = ConvPixelDecoder(cfg) if cfg.decoder == "conv" else PixelDecoder(cfg)

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

    def preview(self, x_t: Tensor, quantized: Tensor) -> Tensor:
        """Image-space view of the prediction for logging: the decoded frame, [-1,1]."""
        return self.decode(x_t, quantized)

    def forward(self, batch: dict[str, Any], return_latents: bool = False):  # type: ignore[no-untyped-def]
        """LAM loss = recon_weight * pixel MSE + vq loss; ``return_latents`` adds the LatentActions."""
        x_t, x_tH = batch["image_primary"], batch["image_future"]
        lat = self.encode(x_t, x_tH)
        recon = reconstruction_loss(self.decode(x_t, lat.quantized), normalize_image(x_tH), normalize_image(x_t),
                                    self.cfg.motion_weight)
        loss = self.cfg.recon_weight * recon + lat.vq_loss
        metrics = lam_metrics(loss, recon, lat)
        return (loss, metrics, lat) if return_latents else (loss, metrics)


AnyLamConfig = Union[LamConfig, LapaLamConfig, UnivlaLamConfig]


def build_lam(cfg: AnyLamConfig) -> nn.Module:
    """The LAM for a LAM config (Moto, LAPA or UniVLA style)."""
    if isinstance(cfg, LapaLamConfig):
        from lavla.model.lam_lapa import LapaLatentActionModel

        return LapaLatentActionModel(cfg)
    if isinstance(cfg, UnivlaLamConfig):
        from lavla.model.lam_univla import UnivlaLatentActionModel

        return UnivlaLatentActionModel(cfg)
    if isinstance(cfg, LamConfig):
        return LatentActionModel(cfg)
    raise TypeError(f"not a LAM config: {type(cfg).__name__}")
