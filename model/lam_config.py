"""Typed configs of the LAPA- and UniVLA-style latent action models.

The Moto/LARA LAM (``LamConfig``) lives in ``model.config``; the pretraining recipes of all three
(``type: lam``, ``lam_lapa``, ``lam_univla``) in ``model/recipes/lam_pretrain/``. Defaults are tiny
CPU sizes; reference values are in brackets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lavla.model.config import FrameEncoderConfig, QuantizerConfig, _check

# Variant defaults are subclasses rather than default_factory functions: draccus builds a nested
# section given in YAML from its annotated class, so a partial section keeps these defaults.


@dataclass
class LapaQuantizerConfig(QuantizerConfig):
    """QuantizerConfig with LAPA's defaults: NSVQ, 8 codes, unused codes replaced by jittered copies of
    used ones every 10 steps until 100, every 100 until 1000, every 500 until 5000, then never."""

    kind: str = "nsvq"
    """``st``, ``ema`` or ``nsvq``."""
    num_codes: int = 8
    """Codebook size K [8]."""
    restart_window: int = 0
    """Restart interval after the schedule (0: none, as LAPA)."""
    restart_schedule: list[tuple[int, int]] = field(default_factory=lambda: [(100, 10), (1000, 100), (5000, 500)])
    """(until_step, window) pairs of LAPA's replacement schedule."""
    restart_noise: float = 0.1
    """Jitter of the copies relative to the donor cluster's spread."""
    restart_from: str = "codes"
    """LAPA replaces unused codes with jittered copies of used ones."""


@dataclass
class FrozenFrameEncoderConfig(FrameEncoderConfig):
    """FrameEncoderConfig that defaults to frozen (UniVLA's features are the regression target)."""

    frozen: bool = True
    """Freeze the tiny encoder (must stay True for the UniVLA LAM)."""


@dataclass
class LapaLamConfig:
    """LAPA's LAQ: spatial then causal temporal transformer over both frames' patches, NSVQ on the
    frame-difference latent, cross-attention decoder on the detached x_t tokens, pixel MSE only."""

    image_size: int = 64
    """Side of the square input frames; must equal data.image_size [256]."""
    patch_size: int = 8
    """Patch side of the pixel patch embedding (LayerNorm -> Linear -> LayerNorm) [32]."""
    dim: int = 64
    """Transformer width [1024]."""
    heads: int = 4
    """Attention heads [16]."""
    spatial_depth: int = 2
    """Spatial transformer layers (within a frame) [8]."""
    temporal_depth: int = 1
    """Causal temporal transformer layers (per patch position, across the two frames) [8]."""
    latent_dim: int = 16
    """Channels of the per-frame action map and code dimension [32]."""
    action_grid: int = 2
    """The action map is pooled to action_grid x action_grid tokens [2 -> 4 tokens]."""
    quantizer: LapaQuantizerConfig = field(default_factory=LapaQuantizerConfig)
    """Quantizer of the frame-difference latent [nsvq, 8 codes x 32, scheduled replacement]."""
    decoder_depth: int = 2
    """Decoder layers (self-attention over x_t tokens + cross-attention to the action tokens) [8]."""

    def __post_init__(self) -> None:
        _check(self.image_size % self.patch_size == 0, f"lam.image_size {self.image_size} % patch_size {self.patch_size} != 0")
        _check(self.dim % self.heads == 0, f"lam.dim {self.dim} not divisible by heads {self.heads}")
        _check(1 <= self.action_grid <= self.image_size // self.patch_size,
               f"lam.action_grid must be in [1, {self.image_size // self.patch_size}], got {self.action_grid}")


@dataclass
class UnivlaLamConfig:
    """UniVLA's LAM: action queries + frozen DINOv2 patch features of both frames through a
    spatio-temporal transformer; queries of x_{t+H} -> VQ; a spatial decoder predicts the
    future frame's features from x_t's. Loss = feature MSE + codebook + beta * commitment."""

    image_size: int = 64
    """Side of the input frames; must equal data.image_size [224]."""
    patch_size: int = 8
    """Patch side of the tiny encoder (an HF encoder brings its own) [DINOv2: 14]."""
    encoder: FrozenFrameEncoderConfig = field(default_factory=FrozenFrameEncoderConfig)
    """Frozen feature encoder [kind: hf, DINOv2 ViT-B/14-reg, input_size 224]; the CPU default is a
    frozen random tiny encoder."""
    dim: int = 64
    """Transformer width [768]."""
    heads: int = 4
    """Attention heads [12]."""
    depth: int = 2
    """Spatio-temporal encoder blocks (spatial attn -> causal temporal attn -> MLP) [12]."""
    num_queries: int = 4
    """Action queries prefixed to each frame; those of x_{t+H} become the tokens [4]."""
    latent_dim: int = 16
    """Code dimension [128]."""
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    """Quantizer [st, 16 codes x 128, beta 0.25, restart at epoch ends]."""
    decoder_depth: int = 2
    """Spatial decoder blocks over [action tokens, x_t features] [12]."""

    def __post_init__(self) -> None:
        _check(self.dim % self.heads == 0, f"lam.dim {self.dim} not divisible by heads {self.heads}")
        _check(self.encoder.kind == "hf" or self.encoder.frozen,
               "lam.encoder must be frozen for the UniVLA LAM (its features are the regression target)")
        _check(self.encoder.kind == "hf" or self.image_size % self.patch_size == 0,
               f"lam.image_size {self.image_size} % patch_size {self.patch_size} != 0")
