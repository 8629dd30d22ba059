"""Action tokenizer (LA-Tok) recipe config: registers ``type: action_tokenizer``.

Pixels-to-Tokens' LA-Tok strategy first trains a VQ tokenizer over action chunks (one code per
step), then the VLM predicts those codes. Defaults are tiny CPU sizes; the reference values are in
brackets (``data_preprocess/action_based_lam/action_tokenizer.py``: width 128, 2 transformer
layers of 4 heads with a 256-wide FFN, EMA VQ 256 x 128, decay 0.99, decoder 128-256-A).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lavla.model.config import ModelConfig, QuantizerConfig, _check
from lavla.model.registry import InputSpec, register_recipe


@dataclass
class ActionTokenizerQuantizerConfig(QuantizerConfig):
    """QuantizerConfig with the action tokenizer's defaults (a subclass, not a default_factory, so a
    partial YAML ``quantizer:`` section keeps them)."""

    kind: str = "ema"
    """``ema`` (LA-Tok), ``st`` or ``nsvq``."""
    num_codes: int = 32
    """Codebook size K [256]."""
    beta: float = 0.25
    """Commitment weight inside the quantizer loss [0.25]."""
    ema_decay: float = 0.99
    """EMA decay of the codebook [0.99]."""
    restart_window: int = 100
    """Training forwards between dead-code restarts once past ``restart_schedule`` (busy clusters are
    split); 0 = none, as the reference, though codebook collapse is the most reported LAM failure."""
    restart_schedule: list[tuple[int, int]] = field(default_factory=lambda: [(200, 20)])
    """(until_step, window): restart every 20 forwards for the first 200 (the N(0, I) initial codes
    mostly sit far from the latents: without early restarts a short run uses 2-3 of them) [none]."""
    restart_from: str = "codes"
    """``codes`` (rank-identical splits; required by the EMA buffer codebook)."""


@register_recipe("action_tokenizer", builder="lavla.model.recipes.action_tokenizer.policy:build_action_tokenizer")
@dataclass
class ActionTokenizerConfig(ModelConfig):
    """LA-Tok action tokenizer: per-step [action, FFT re, FFT im] -> dilated convs -> transformer ->
    one latent per step -> VQ -> per-step MLP decoder; trained with reconstruction + masked-latent +
    quantizer losses (model/action_tokenizer.py)."""

    action_horizon: int = 8
    """N, steps per chunk (one code each); must equal data.action_horizon [LIBERO 8, ALOHA 25]."""
    action_dim: int = 7
    """A, padded action width; must equal data.max_action_dim [LIBERO 7, ALOHA 14]."""
    dim: int = 32
    """Encoder width (input projection, convs, transformer) [128]."""
    depth: int = 1
    """Transformer encoder layers [2]."""
    heads: int = 2
    """Attention heads [4]."""
    mlp_ratio: float = 2.0
    """Transformer FFN width / dim [2.0: 256 / 128]."""
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4])
    """Dilations of the kernel-3 Conv1d stack over time (same length out) [1, 2, 4]."""
    code_dim: int = 16
    """Per-step latent width = VQ code dim [128]."""
    decoder_hidden: int = 64
    """Hidden width of the per-step decoder MLP code_dim -> hidden -> A [256]."""
    quantizer: ActionTokenizerQuantizerConfig = field(default_factory=ActionTokenizerQuantizerConfig)
    """Vector quantizer of the per-step latents [EMA, 256 codes, beta 0.25, decay 0.99, no restarts]."""
    mask_ratio: float = 0.15
    """Share of timesteps whose latent is zeroed before the VQ in training (masked-latent loss) [0.15]."""
    recon_weight: float = 1.0
    """Weight of the reconstruction MSE [1.0]."""
    mask_weight: float = 1.0
    """Weight of the masked-latent MSE [1.0]."""
    vq_weight: float = 1.0
    """Weight of the quantizer's loss, which already carries beta (reference: 0.25 x commitment = this
    1.0 x the EMA quantizer's beta-weighted commitment)."""

    def input_spec(self) -> InputSpec:
        return InputSpec(action_horizon=(("action_horizon", self.action_horizon),),
                         action_dim=(("action_dim", self.action_dim),))

    def __post_init__(self) -> None:
        _check(self.action_horizon >= 1 and self.action_dim >= 1, "model.action_horizon and model.action_dim must be >= 1")
        _check(self.dim % self.heads == 0, f"model.dim {self.dim} not divisible by model.heads {self.heads}")
        _check(self.depth >= 0, f"model.depth must be >= 0, got {self.depth}")
        _check(all(d >= 1 for d in self.dilations), f"model.dilations must be >= 1, got {self.dilations}")
        _check(0.0 <= self.mask_ratio < 1.0, f"model.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        _check(self.code_dim >= 1 and self.decoder_hidden >= 1, "model.code_dim and model.decoder_hidden must be >= 1")
