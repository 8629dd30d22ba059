"""Tiny vision-language backbone stand-in: ``encode(batch) -> (tokens [B,T,D], mask [B,T])``.

Image patches (primary, and wrist when enabled) plus a byte-level embedding of the instruction,
through a few transformer layers. A Hugging Face Qwen3-VL wrapper replaces it behind the same
interface (``VLBackbone``: ``dim`` attribute, ``encode``/``forward`` on the batch dict).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from model.config import BackboneConfig
from model.layers import PatchEmbed, TransformerBlock, normalize_image


class VLBackbone(nn.Module, ABC):
    """Batch dict -> (tokens [B,T,dim], mask [B,T] bool, True = real token)."""

    dim: int

    def encode(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        # Through __call__ so ZeRO-3's forward hooks gather this module's own parameters.
        return self(batch)

    @abstractmethod
    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]: ...


def tokenize_bytes(texts: list[str], max_len: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """UTF-8 bytes + 1 (0 = padding), truncated/padded to ``max_len``; returns (ids [B,L], mask [B,L])."""
    ids = torch.zeros(len(texts), max_len, dtype=torch.long)
    for i, text in enumerate(texts):
        b = text.encode("utf-8")[:max_len]
        if b:
            ids[i, : len(b)] = torch.tensor(list(b), dtype=torch.long) + 1
    return ids.to(device), (ids != 0).to(device)


class TinyVLBackbone(VLBackbone):
    """Patch embedding + byte embedding + ``depth`` transformer layers."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg, self.dim = cfg, cfg.dim
        d = cfg.dim
        self.patch = PatchEmbed(cfg.image_size, cfg.patch_size, d)
        n_img = self.patch.num_patches
        self.num_views = 2 if cfg.use_wrist else 1
        self.image_pos = nn.Parameter(torch.randn(1, n_img, d) * 0.02)
        self.text_embed = nn.Embedding(257, d, padding_idx=0)
        self.text_pos = nn.Parameter(torch.randn(1, cfg.max_text_len, d) * 0.02)
        self.type_embed = nn.Embedding(3, d)  # 0 = primary, 1 = wrist, 2 = text
        self.blocks = nn.ModuleList(TransformerBlock(d, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d)
        if cfg.frozen:
            self.requires_grad_(False)

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        primary: Tensor = batch["image_primary"]
        b, dev = primary.shape[0], primary.device
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.frozen):
            views = [primary]
            masks = [torch.ones(b, self.patch.num_patches, dtype=torch.bool, device=dev)]
            if self.cfg.use_wrist:
                # Always encoded (fixed compute on every rank); masked out where there is no wrist camera.
                wrist = batch.get("image_wrist")
                has = batch.get("has_wrist")
                views.append(torch.zeros_like(primary) if wrist is None else wrist)
                has = torch.zeros(b, dtype=torch.bool, device=dev) if has is None or wrist is None else has.bool()
                masks.append(has[:, None].expand(-1, self.patch.num_patches))
            img = self.patch(normalize_image(torch.cat(views, dim=0))) + self.image_pos
            img = img.view(len(views), b, *img.shape[1:])
            type_ids = torch.arange(len(views) + 1, device=dev)
            types = self.type_embed(type_ids)
            img_tokens = [img[v] + types[v] for v in range(len(views))]
            ids, text_mask = tokenize_bytes(list(batch["language"]), self.cfg.max_text_len, dev)
            text = self.text_embed(ids) + self.text_pos + types[-1]
            x = torch.cat([*img_tokens, text], dim=1)
            mask = torch.cat([*masks, text_mask], dim=1)
            for blk in self.blocks:
                x = blk(x, mask=mask)
            return self.norm(x), mask
