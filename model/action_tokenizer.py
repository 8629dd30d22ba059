"""LA-Tok action tokenizer (Pixels-to-Tokens): one discrete code per step of an action chunk.

Encoder, per chunk ``a`` [B,N,A] (normalized; padded dims and unsupervised steps zeroed):
per-step features ``[a_t, Re F(a)_t, Im F(a)_t]`` where F is the DFT over the chunk's N steps, per
dimension (``norm="ortho"`` so the features stay O(1) whatever N) -> Linear to ``dim`` + learned
step embedding -> kernel-3 Conv1d layers with dilations 1, 2, 4 (same length, residual GELU) ->
transformer encoder -> LayerNorm + Linear to ``code_dim`` + LayerNorm without gain: one latent h_t
per step, at the scale of the N(0, I)-initialised codebook. The latents go
through the vector quantizer (EMA by default) and a per-step MLP decodes each code to an action.

Training objective (``forward``), exactly:

1. ``h = enc(a)``; in training mode a Bernoulli(``mask_ratio``) mask m over (sample, step) zeroes
   the masked latents: ``h_in = where(m, 0, h)``.
2. ``q = VQ(h_in)`` (straight-through), ``recon = dec(q)``.
3. recon loss: MSE between ``recon`` and ``a`` over the supervised elements (``mask`` = real dim,
   valid step, sample has actions) at *unmasked* steps.
4. mask loss: re-encode the reconstruction, ``h_re = enc(recon)`` (padded dims / unsupervised steps
   zeroed as for the input), MSE between ``h_re`` and ``sg(h)`` at the masked supervised steps.
5. ``loss = recon_weight * recon + mask_weight * mask + vq_weight * VQ loss``.

Differences from the reference (``train_tokenizer`` in its action_tokenizer.py), on purpose:
its recon loss also covers the masked steps, whose per-step decoder input is the code nearest 0, so
that term is irreducible noise that drags one code's decoding toward the mean action; its mask-loss
target ``h`` is not detached, so the loss can also shrink by moving ``h`` rather than by making the
re-encoded reconstruction recover it. Residual convs, a step embedding and a final projection to
``code_dim`` with a gain-free LayerNorm are additions (the reference: plain ReLU convs, no positions,
latent = the transformer output of width 128, far smaller than its N(0, I) codes).
As in the reference, masked and padded steps still pass through the VQ (fixed shapes on every rank,
ZeRO-3 safe), so they count in the codebook statistics.

``tokenize`` (eval path, no masking, no codebook statistics updated) gives the ids the la_tok VLA
learns to predict.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lavla.model.recipes.action_tokenizer.config import ActionTokenizerConfig
from lavla.model.layers import TransformerBlock, eval_no_grad
from lavla.model.quantizer import Quantizer, build_quantizer


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the True elements of ``mask`` (broadcast to pred); 0 (with grad) if none."""
    mask = mask.bool().expand_as(pred)
    zero = torch.zeros((), dtype=pred.dtype, device=pred.device)
    d = torch.where(mask, pred, zero).float() - torch.where(mask, target.to(pred.dtype), zero).float()
    return d.pow(2).sum() / mask.sum().clamp_min(1).float()


def chunk_features(actions: Tensor) -> Tensor:
    """[B,N,A] -> [B,N,3A]: the actions, then the real and imaginary DFT over the N steps per dim."""
    spec = torch.fft.fft(actions.float(), dim=1, norm="ortho")
    return torch.cat([actions.float(), spec.real, spec.imag], dim=-1).to(actions.dtype)


class DilatedConvStack(nn.Module):
    """Kernel-3 Conv1d layers over time with the given dilations, same length, residual GELU."""

    def __init__(self, dim: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, 3, padding=d, dilation=d) for d in dilations)

    def forward(self, x: Tensor) -> Tensor:
        h = x.transpose(1, 2)  # [B,D,N]
        for conv in self.convs:
            h = h + F.gelu(conv(h))
        return h.transpose(1, 2)


class ActionEncoder(nn.Module):
    """[B,N,A] actions -> [B,N,code_dim] latents (one per step)."""

    def __init__(self, cfg: ActionTokenizerConfig) -> None:
        super().__init__()
        self.in_proj = nn.Linear(3 * cfg.action_dim, cfg.dim)
        self.step_embed = nn.Parameter(torch.randn(cfg.action_horizon, cfg.dim) * 0.02)
        self.convs = DilatedConvStack(cfg.dim, cfg.dilations)
        self.blocks = nn.ModuleList(TransformerBlock(cfg.dim, cfg.heads, mlp_ratio=cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.code_dim)
        # Latents normalised without a learned gain: they stay at the scale of the N(0, I)-initialised
        # codes (norm ~ sqrt(code_dim)). Unnormalised small latents all pick the smallest initial code.
        self.out_norm = nn.LayerNorm(cfg.code_dim, elementwise_affine=False)

    def forward(self, actions: Tensor) -> Tensor:
        h = self.in_proj(chunk_features(actions)) + self.step_embed.to(actions.dtype)
        h = self.convs(h)
        for block in self.blocks:
            h = block(h)
        return self.out_norm(self.out(self.norm(h)))


class ActionDecoder(nn.Module):
    """Per-step MLP code_dim -> hidden -> A."""

    def __init__(self, code_dim: int, hidden: int, action_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(code_dim, hidden)
        self.fc2 = nn.Linear(hidden, action_dim)

    def forward(self, z: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(z)))


class TokenizerOutput(NamedTuple):
    """Result of :meth:`ActionTokenizer.forward` (a NamedTuple: ZeRO-3 hooks its tensors)."""

    loss: Tensor
    """Weighted total (0-dim)."""
    recon_loss: Tensor
    """Reconstruction MSE over supervised elements at unmasked steps."""
    mask_loss: Tensor
    """Masked-latent MSE (0 in eval mode or when nothing was masked)."""
    vq_loss: Tensor
    """The quantizer's own loss (EMA: beta x commitment)."""
    ids: Tensor
    """Code id per step [B,N] (of the masked latents in training)."""
    recon: Tensor
    """Reconstructed actions [B,N,A]."""
    metrics: dict[str, Tensor]
    """The quantizer's detached metrics (perplexity, active_codes, quant_error, ...)."""


class ActionTokenizer(nn.Module):
    """forward(action, mask) -> TokenizerOutput; tokenize(action, mask) -> ids [B,N] int64."""

    def __init__(self, cfg: ActionTokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ActionEncoder(cfg)
        self.quantizer: Quantizer = build_quantizer(cfg.quantizer, cfg.code_dim)
        self.decoder = ActionDecoder(cfg.code_dim, cfg.decoder_hidden, cfg.action_dim)

    def _check(self, action: Tensor, mask: Tensor) -> None:
        n, a = self.cfg.action_horizon, self.cfg.action_dim
        if action.dim() != 3 or action.shape[1:] != (n, a):
            raise ValueError(f"the action tokenizer expects actions [B,{n},{a}], got {tuple(action.shape)}")
        if mask.shape != action.shape:
            raise ValueError(f"action mask {tuple(mask.shape)} must match actions {tuple(action.shape)}")

    def forward(self, action: Tensor, mask: Tensor) -> TokenizerOutput:
        """action [B,N,A] normalized; mask [B,N,A] bool = supervised elements (see module docstring)."""
        self._check(action, mask)
        cfg = self.cfg
        mask = mask.bool()
        zero = torch.zeros((), dtype=action.dtype, device=action.device)
        x = torch.where(mask, action, zero)
        h = self.encoder(x)
        b, n = h.shape[:2]
        if self.training and cfg.mask_ratio > 0:
            masked = torch.rand(b, n, device=h.device) < cfg.mask_ratio
        else:
            masked = torch.zeros(b, n, dtype=torch.bool, device=h.device)
        h_in = torch.where(masked[..., None], torch.zeros((), dtype=h.dtype, device=h.device), h)
        q = self.quantizer(h_in)
        recon = self.decoder(q.quantized)
        recon_loss = masked_mse(recon, action, mask & ~masked[..., None])

        # Masked-latent loss: the encoder, reading the reconstruction, must recover the latents that
        # were hidden from the VQ/decoder (target detached). Runs every step (ZeRO-3), weight 0 if none.
        h_re = self.encoder(torch.where(mask, recon, torch.zeros((), dtype=recon.dtype, device=recon.device)))
        target_steps = masked & mask.any(dim=-1)
        mask_loss = masked_mse(h_re, h.detach(), target_steps[..., None])

        vq_loss = q.loss.float()
        loss = cfg.recon_weight * recon_loss + cfg.mask_weight * mask_loss + cfg.vq_weight * vq_loss
        return TokenizerOutput(loss, recon_loss, mask_loss, vq_loss, q.ids, recon, q.metrics)

    def tokenize(self, action: Tensor, mask: Tensor) -> Tensor:
        """Code ids [B,N] int64 (no masking, codebook statistics untouched). Collective under ZeRO-3."""
        self._check(action, mask)
        with eval_no_grad(self):
            x = torch.where(mask.bool(), action, torch.zeros((), dtype=action.dtype, device=action.device))
            return self.quantizer(self.encoder(x)).ids.long()

    def reconstruct(self, action: Tensor, mask: Tensor) -> Tensor:
        """decode(quantize(encode(action))) [B,N,A] without masking or statistics updates."""
        self._check(action, mask)
        with eval_no_grad(self):
            x = torch.where(mask.bool(), action, torch.zeros((), dtype=action.dtype, device=action.device))
            return self.decoder(self.quantizer(self.encoder(x)).quantized)

    def decode_ids(self, ids: Tensor) -> Tensor:
        """Actions [B,N,A] of code ids [B,N]. Reads the codebook directly: fine for the EMA codebook
        (a buffer); a gradient-trained codebook (``st``/``nsvq``) is a partitioned parameter under ZeRO-3,
        so call this only on an unpartitioned model (e.g. a loaded export)."""
        with eval_no_grad(self):
            codes = F.embedding(ids.long(), self.quantizer.codes())
            if self.quantizer.proj_out is not None:
                codes = self.quantizer.proj_out(codes)
            return self.decoder(codes.to(next(self.decoder.parameters()).dtype))
