"""Per-frame encoders of the LAMs: uint8 images ``[B,3,H,W]`` -> tokens ``[B, num_tokens, dim]``.

* :class:`TinyViTEncoder` -- patch embedding + learned positions + a few blocks; the CPU default.
* :class:`HFFrameEncoder` -- a frozen Hugging Face vision transformer loaded with
  ``from_pretrained(local_path)``: ViT, ViT-MAE (Moto/LARA), DINOv2 (UniVLA, optionally with
  registers). It resizes and normalizes the uint8 frames itself.

Tokens keep the model's prefix tokens (CLS, registers) first; ``num_prefix_tokens`` says how many,
so a LAM that wants patch tokens only (UniVLA) slices them off.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lavla.model.config import FrameEncoderConfig
from lavla.model.layers import PatchEmbed, TransformerBlock, normalize_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FrameEncoder(nn.Module, ABC):
    """uint8 images ``[B,3,H,W]`` -> tokens ``[B, num_tokens, dim]`` (normalizes internally)."""

    dim: int
    """Token width."""
    num_tokens: int
    """Tokens per frame, prefix tokens included."""
    num_prefix_tokens: int = 0
    """Leading non-patch tokens (CLS, registers)."""
    frozen: bool = False
    """Parameters never train (the owner may then run it without grad)."""

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


def _load_hf_vision_model(path: str) -> nn.Module:
    """The bare vision transformer saved at ``path`` (no pooler, no task head), in fp32."""
    from transformers import AutoConfig, AutoModel, ViTMAEModel, ViTModel

    opts: dict = {"dtype": torch.float32, "local_files_only": True}
    cfg = AutoConfig.from_pretrained(path, local_files_only=True)  # never reaches the Hub
    if cfg.model_type == "vit":
        return ViTModel.from_pretrained(path, add_pooling_layer=False, **opts)
    if cfg.model_type == "vit_mae":
        return ViTMAEModel.from_pretrained(path, mask_ratio=0.0, **opts)  # Moto: MAE, no masking
    return AutoModel.from_pretrained(path, **opts)  # dinov2, dinov2_with_registers, ...


def _normalization(path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Image mean/std from the saved image processor, ImageNet's when there is none (MAE, DINOv2)."""
    pre = Path(path) / "preprocessor_config.json"
    if pre.is_file():
        d = json.loads(pre.read_text())
        if "image_mean" in d and "image_std" in d:
            return tuple(d["image_mean"]), tuple(d["image_std"])
    return IMAGENET_MEAN, IMAGENET_STD


class HFFrameEncoder(FrameEncoder):
    """A frozen HF ViT / ViT-MAE / DINOv2 from a local directory; always in eval mode, never trained.

    Frames are resized (bilinear) to ``input_size`` (default: the model's ``config.image_size``)
    and normalized with the saved processor's mean/std. ViT-MAE runs with mask ratio 0 and an
    identity shuffle, so tokens stay in raster order.
    """

    def __init__(self, path: str, input_size: int = 0) -> None:
        super().__init__()
        self.model = _load_hf_vision_model(path)
        self.model.requires_grad_(False)
        self.model.eval()
        cfg = self.model.config
        self.model_type = cfg.model_type
        self.input_size = input_size or int(cfg.image_size)
        if self.input_size % cfg.patch_size:
            raise ValueError(f"{path}: input size {self.input_size} is not a multiple of patch size {cfg.patch_size}")
        self.num_patches = (self.input_size // cfg.patch_size) ** 2
        self.num_prefix_tokens = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
        self.dim, self.num_tokens, self.frozen = int(cfg.hidden_size), self.num_patches + self.num_prefix_tokens, True
        mean, std = _normalization(path)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._native = self.input_size == int(cfg.image_size)

    def train(self, mode: bool = True) -> "HFFrameEncoder":
        super().train(mode)
        self.model.eval()  # frozen: dropout stays off whatever the owner's mode
        return self

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            x = images.float() / 255.0
            if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
                x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
            x = ((x - self.mean) / self.std).to(next(self.model.parameters()).dtype)
            kwargs: dict[str, object] = {}
            if self.model_type == "vit_mae":
                b = x.shape[0]
                kwargs["noise"] = torch.arange(self.num_patches, device=x.device, dtype=torch.float32).expand(b, -1)
            elif self.model_type == "vit" and not self._native:
                kwargs["interpolate_pos_encoding"] = True
            out = self.model(pixel_values=x, **kwargs).last_hidden_state
        if out.shape[1] != self.num_tokens:
            raise RuntimeError(f"{self.model_type} returned {out.shape[1]} tokens, expected {self.num_tokens}")
        return out


def build_frame_encoder(image_size: int, patch_size: int, cfg: FrameEncoderConfig) -> FrameEncoder:
    """The encoder ``cfg.kind`` (``image_size``/``patch_size`` only shape the tiny one)."""
    if cfg.kind == "hf":
        return HFFrameEncoder(cfg.pretrained_path, cfg.input_size)
    return TinyViTEncoder(image_size, patch_size, cfg)
