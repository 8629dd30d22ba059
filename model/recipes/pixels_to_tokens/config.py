"""Pixels-to-Tokens configs: the five strategies ``baseline``, ``la_align``, ``la_direct``, ``la_cond``
and ``la_tok`` on a VLM backbone with the L1 regression head.

Defaults are tiny CPU sizes on the tiny backbone; the reference values (Qwen3-VL-2B + LoRA, see
../shared/anchors/models.md) are in the docstrings and the YAML comments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from lavla.model.config import BackboneConfig, LatentTargetConfig, ModelConfig, _check, image_sizes_stated
from lavla.model.head_config import L1HeadConfig
from lavla.model.registry import InputSpec, register_recipe

FPT_STRATEGIES = ("baseline", "la_align", "la_direct", "la_cond", "la_tok")


@dataclass
class FptConfig(ModelConfig):
    """Pixels-to-Tokens: a VLM with placeholder queries + the L1 regression action head.

    Prompt: [images, instruction, latent queries (S*Q, S*1 for la_tok), action queries]; the head reads
    the last ``head.num_blocks + 1`` VLM hidden states at the task tokens and its query states.
    """

    lam_latents: ClassVar[bool] = False
    """The strategy's targets are LAM latents (``latent``: an online LAM or the offline label store)."""

    strategy: str = "baseline"
    """One of baseline, la_align, la_direct, la_cond, la_tok (set by the registered subclass)."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """VLM backbone (FPT: Qwen3-VL-2B-Instruct, frozen + LoRA r=64 alpha=16, all linear layers)."""
    head: L1HeadConfig = field(default_factory=L1HeadConfig)
    """L1 regression action head (FPT: 11 blocks, width 2048)."""
    latent: LatentTargetConfig = field(default_factory=LatentTargetConfig)
    """Latent targets (not used by baseline)."""
    proprio_dropout: float = 0.0
    """Probability that a training sample's proprio is zeroed (``model.proprio``): against the "act
    from proprio, ignore the images" shortcut of small policies. 0 = off (the papers' setting)."""
    action_queries_per_step: int = 1
    """Action queries per action step (FPT baseline: 5, i.e. 40 queries for 8 steps; la_align: 1)."""
    align_layer: int = -1
    """la_align: backbone hidden state aligned, index into [embeddings, layer 1..L] (FPT: 18 of 28)."""
    align_hidden: int = 64
    """la_align: hidden width of the LayerNorm-Linear-GELU-Linear projector (FPT: 256)."""
    align_target: str = "quantized"
    """la_align: ``quantized`` code embeddings averaged over the step's Q codes (FPT) or ``continuous``
    pre-quantization latents (online LAM only; LARA's choice)."""
    align_weight: float = 1.0
    """la_align: weight of mean(1 - cos) (FPT: 1.0)."""
    token_loss_weight: float = 1.0
    """la_direct / la_cond / la_tok: weight of the latent-token cross-entropy (FPT default 1.0;
    unused, never read, for baseline and la_align: no crash as in the reference)."""
    latent_logits: str = "latent"
    """la_direct / la_cond / la_tok: ``latent`` = softmax over the added latent tokens only;
    ``full`` = over the whole vocabulary (the reference's HF LM loss)."""
    tokenizer_init: str = ""
    """la_tok: export directory of the trained action tokenizer (``type: action_tokenizer``)."""
    tokenizer_codes: int = 0
    """la_tok: codebook size of the action tokenizer; 0 = read from its export."""

    def input_spec(self) -> InputSpec:
        latent = self.lam_latents
        online = latent and self.latent.source == "online"
        return InputSpec(
            image_size=image_sizes_stated(self.backbone, self.latent.lam if online else None, "latent.lam"),
            action_horizon=(("head.action_horizon", self.head.action_horizon),),
            action_dim=(("head.action_dim", self.head.action_dim),),
            proprio_dim=(("head.proprio_dim", self.head.proprio_dim),),
            latent_labels="model.latent.source=offline" if latent and not online else "")

    def __post_init__(self) -> None:
        _check(self.strategy in FPT_STRATEGIES, f"model.strategy must be one of {FPT_STRATEGIES}, got {self.strategy!r}")
        _check(self.action_queries_per_step >= 1, "model.action_queries_per_step must be >= 1")
        _check(self.align_target in ("quantized", "continuous"), f"model.align_target must be quantized or continuous, got {self.align_target!r}")
        _check(self.latent_logits in ("latent", "full"), f"model.latent_logits must be latent or full, got {self.latent_logits!r}")
        _check(not (self.align_target == "continuous" and self.latent.source == "offline"),
               "model.align_target=continuous needs latent.source=online (the label store holds quantized codes)")


@register_recipe("baseline", builder="lavla.model.recipes.pixels_to_tokens.policy:BaselinePolicy")
@dataclass
class BaselineConfig(FptConfig):
    """Pixels-to-Tokens baseline: VLM + L1 head, no latent supervision."""

    strategy: str = "baseline"
    """Fixed."""
    action_queries_per_step: int = 5
    """FPT: 41 placeholders, the last 40 = 8 steps x 5 feed the head."""


@register_recipe("la_align", builder="lavla.model.recipes.pixels_to_tokens.policy:LaAlignPolicy")
@dataclass
class LaAlignConfig(FptConfig):
    """LA-Align: cosine between projected VLM query states and the LAM's latent embeddings."""

    lam_latents: ClassVar[bool] = True

    strategy: str = "la_align"
    """Fixed."""


@register_recipe("la_direct", builder="lavla.model.recipes.pixels_to_tokens.policy:LaDirectPolicy")
@dataclass
class LaDirectConfig(FptConfig):
    """LA-Direct: latent tokens added to the vocabulary and decoded at the latent queries (CE)."""

    lam_latents: ClassVar[bool] = True

    strategy: str = "la_direct"
    """Fixed."""


@register_recipe("la_cond", builder="lavla.model.recipes.pixels_to_tokens.policy:LaCondPolicy")
@dataclass
class LaCondConfig(FptConfig):
    """LA-Cond: latent tokens decoded first (CE); the head reads latent and action queries together."""

    lam_latents: ClassVar[bool] = True

    strategy: str = "la_cond"
    """Fixed."""


@register_recipe("la_tok", builder="lavla.model.recipes.pixels_to_tokens.policy:LaTokPolicy")
@dataclass
class LaTokConfig(FptConfig):
    """LA-Tok: the VLM predicts the action tokenizer's per-step codes (CE) besides regressing actions."""

    strategy: str = "la_tok"
    """Fixed."""
