"""Typed model configuration. ``type`` selects the recipe (draccus choice registry, as LeRobot).

Recipe configs register themselves here with ``@ModelConfig.register_subclass(name)`` so that
importing this module is enough for the config loader to know every recipe.

Defaults are the quickstart's tiny CPU sizes. Full-size reference values (Moto, GR00T N1.5 /
LARA) are given in the field docstrings and belong in the YAML recipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import draccus


@dataclass
class ModelConfig(draccus.ChoiceRegistry):
    """Base of every recipe config. Select a recipe with ``type: <name>`` in YAML or ``--model.type``."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass
class BackboneConfig:
    """Tiny vision-language backbone stand-in (a HF Qwen3-VL wrapper replaces it later)."""

    image_size: int = 64
    """Side of the square input images; must equal data.image_size."""
    patch_size: int = 8
    """Patch side of the image tokenizer."""
    dim: int = 64
    """Token width (full size: 2048, the Qwen3-VL / Eagle hidden size)."""
    depth: int = 2
    """Transformer layers over [image, wrist, text] tokens (full size: VLM truncated at layer 12)."""
    heads: int = 4
    """Attention heads."""
    max_text_len: int = 32
    """Instruction bytes kept (UTF-8, truncated/padded, masked)."""
    use_wrist: bool = True
    """Encode ``image_wrist`` too (always run; masked out where ``has_wrist`` is False)."""
    frozen: bool = False
    """Freeze the backbone (requires_grad=False, run without grad); the real VLM is frozen."""

    def __post_init__(self) -> None:
        _check(self.image_size % self.patch_size == 0, f"backbone.image_size {self.image_size} % patch_size {self.patch_size} != 0")
        _check(self.dim % self.heads == 0, f"backbone.dim {self.dim} not divisible by heads {self.heads}")


@dataclass
class FrameEncoderConfig:
    """Per-frame encoder of the LAM (tiny ViT here; a frozen HF ViT-MAE later)."""

    dim: int = 64
    """Token width (Moto: ViT-MAE-Large, 1024)."""
    depth: int = 1
    """Transformer layers after the patch embedding (0 = patch embedding only)."""
    heads: int = 4
    """Attention heads."""
    frozen: bool = False
    """Freeze the encoder (Moto/LARA freeze their pretrained MAE; a random tiny one should train)."""


@dataclass
class QuantizerConfig:
    """Straight-through VQ (Moto/LARA: 128 codes x 32-d, beta 0.25)."""

    num_codes: int = 128
    """Codebook size K."""
    beta: float = 0.25
    """Weight of the commitment term ||z - sg(q)||^2."""
    restart_window: int = 100
    """Training steps between dead-code restarts (trainer-driven; 0 disables)."""
    dead_threshold: float = 1.0
    """A code used fewer times than this within the window (summed over ranks) is dead."""
    restart_noise: float = 0.01
    """Jitter std (relative to the encoder outputs' std) added to restarted codes."""


@dataclass
class LamConfig:
    """Moto/LARA-style latent action model: frame encoder -> M-Former -> VQ -> pixel decoder."""

    image_size: int = 64
    """Side of the square input frames; must equal data.image_size (Moto: 224)."""
    patch_size: int = 8
    """Patch side for the frame encoder and the decoder (Moto decoder: 16)."""
    encoder: FrameEncoderConfig = field(default_factory=FrameEncoderConfig)
    """Frame encoder."""
    dim: int = 64
    """M-Former width (Moto: 768)."""
    depth: int = 2
    """M-Former layers (Moto: 4)."""
    heads: int = 4
    """M-Former attention heads (Moto: 12)."""
    num_queries: int = 8
    """Learnable latent-action queries Q (Moto/LARA: 8)."""
    latent_dim: int = 32
    """Per-query continuous latent Dl after the tanh down-projection (Moto/LARA: 32)."""
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    """Vector quantizer (code_dim = latent_dim)."""
    decoder_dim: int = 64
    """Pixel decoder width (Moto: 768)."""
    decoder_depth: int = 2
    """Pixel decoder layers (Moto: 12)."""
    decoder_heads: int = 4
    """Pixel decoder attention heads (Moto: 12)."""
    recon_weight: float = 1.0
    """Weight of the pixel MSE in the LAM loss (vq loss has weight 1, as in Moto)."""

    def __post_init__(self) -> None:
        _check(self.image_size % self.patch_size == 0, f"lam.image_size {self.image_size} % patch_size {self.patch_size} != 0")
        _check(self.dim % self.heads == 0, f"lam.dim {self.dim} not divisible by heads {self.heads}")
        _check(self.decoder_dim % self.decoder_heads == 0, f"lam.decoder_dim {self.decoder_dim} not divisible by decoder_heads")


@dataclass
class FlowHeadConfig:
    """GR00T-style flow-matching DiT action head (N1.5 / LARA sizes in brackets)."""

    action_horizon: int = 8
    """N action tokens; must equal data.action_horizon [16]."""
    action_dim: int = 7
    """A, padded action width; must equal data.max_action_dim [32]."""
    proprio_dim: int = 8
    """P, padded proprio width; must equal data.max_proprio_dim [64]."""
    num_embodiments: int = 4
    """Rows of the per-embodiment encoder/decoder weights; embodiment_id < this [32]."""
    hidden_dim: int = 64
    """Hidden width of the embodiment-specific MLPs [1024]."""
    dim: int = 96
    """DiT width = heads x head_dim [1536 = 32 x 48]."""
    depth: int = 4
    """DiT blocks; even blocks cross-attend to VL tokens, odd blocks self-attend [16]."""
    heads: int = 4
    """DiT attention heads [32]."""
    output_dim: int = 64
    """DiT output width fed to the action decoder [1024]."""
    dropout: float = 0.0
    """Dropout in the DiT [0.2]."""
    num_inference_steps: int = 4
    """Euler steps in predict_action [4]."""
    noise_s: float = 0.999
    """s in tau = (s - Beta(alpha, 1)) / s."""
    time_beta_alpha: float = 1.5
    """alpha of the Beta(alpha, 1) time distribution [1.5]."""
    num_timestep_buckets: int = 1000
    """tau is bucketed as int(tau * buckets) for the timestep embedding [1000]."""

    def __post_init__(self) -> None:
        _check(self.dim % self.heads == 0, f"head.dim {self.dim} not divisible by heads {self.heads}")
        _check(self.depth >= 1, "head.depth must be >= 1")
        _check(0.0 < self.noise_s <= 1.0, f"head.noise_s must be in (0, 1], got {self.noise_s}")


@ModelConfig.register_subclass("lara")
@dataclass
class LaraConfig(ModelConfig):
    """LARA: trainable LAM + flow-matching DiT head on a VL backbone, aligned by cosine."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """Vision-language backbone."""
    lam: LamConfig = field(default_factory=LamConfig)
    """Latent action model supplying the alignment target."""
    head: FlowHeadConfig = field(default_factory=FlowHeadConfig)
    """Flow-matching action head."""
    align_layer: int = -3
    """Index into the DiT hidden states [input, block 1, ..., block L]; -3 = output of block L-2."""
    align_weight: float = 0.01
    """Weight of the alignment loss mean(1 - cos)."""
    lam_weight: float = 0.01
    """Weight of the LAM loss (recon + vq)."""
    lam_trainable: bool = True
    """Train the LAM jointly (alignment gradients reach it); False freezes it and detaches the target."""
    align_target: str = "continuous"
    """``continuous``: pre-quantization tanh latent (LARA); ``quantized``: straight-through codes."""

    def __post_init__(self) -> None:
        _check(self.align_target in ("continuous", "quantized"), f"model.align_target must be 'continuous' or 'quantized', got {self.align_target!r}")
        n = self.head.depth + 1
        _check(-n <= self.align_layer < n, f"model.align_layer {self.align_layer} out of range for {n} DiT hidden states (head.depth={self.head.depth})")


@ModelConfig.register_subclass("lam")
@dataclass
class LamPretrainConfig(ModelConfig):
    """LAM-only pretraining: reconstruct x_{t+H} from x_t and the quantized latent."""

    lam: LamConfig = field(default_factory=LamConfig)
    """Latent action model."""
