"""Configs of the VLA recipes on a VLM backbone: Pixels-to-Tokens (``baseline``, ``la_align``,
``la_direct``, ``la_cond``, ``la_tok``) and LAPA (``lapa_latent``, ``lapa_action``).

Defaults are tiny CPU sizes on the tiny backbone; the reference values (Qwen3-VL-2B + LoRA for
Pixels-to-Tokens, see ../shared/anchors/models.md) are in the docstrings and the YAML comments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lavla.model.config import BackboneConfig, LamConfig, ModelConfig, _check
from lavla.model.head_config import L1HeadConfig

FPT_STRATEGIES = ("baseline", "la_align", "la_direct", "la_cond", "la_tok")


@dataclass
class LatentTargetConfig:
    """Where the latent-action targets come from."""

    source: str = "online"
    """``online``: a LAM inside the model encodes (x_t, x_{t+H}) every step: one latent step per sample,
    human video included; ``offline``: the batch's ``latent_ids`` / ``latent_emb`` read from the
    zarr label store at ``data.latent_labels`` (one latent step per action step, as Pixels-to-Tokens)."""
    lam: LamConfig = field(default_factory=LamConfig)
    """The online LAM (must match the checkpoint in ``lam_init``)."""
    lam_init: str = ""
    """Export directory of a trained LAM (``python -m lavla.launcher.export_policy`` of a ``type: lam`` run)
    whose ``lam.*`` weights initialise the online LAM; empty = random init (tests only)."""
    lam_trainable: bool = False
    """Train the online LAM with the policy (Pixels-to-Tokens and LAPA keep it frozen)."""
    lam_weight: float = 0.0
    """Weight of the LAM's own loss when it trains."""
    codes_per_step: int = 0
    """Q, latent tokens per step; 0 = the online LAM's ``num_queries`` (UniVLA/FPT: 4, Moto: 8)."""
    num_codes: int = 0
    """K, codebook size; 0 = the online LAM's ``quantizer.num_codes`` (FPT: 16, LAPA: 8)."""
    code_dim: int = 0
    """D of the latent embedding (alignment target); 0 = the online LAM's ``latent_dim`` (FPT: 128)."""

    def __post_init__(self) -> None:
        _check(self.source in ("online", "offline"), f"latent.source must be online or offline, got {self.source!r}")


@dataclass
class FptConfig(ModelConfig):
    """Pixels-to-Tokens: a VLM with placeholder queries + the L1 regression action head.

    Prompt: [images, instruction, latent queries (S*Q, S*1 for la_tok), action queries]; the head reads
    the last ``head.num_blocks + 1`` VLM hidden states at the task tokens and its query states.
    """

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

    def __post_init__(self) -> None:
        _check(self.strategy in FPT_STRATEGIES, f"model.strategy must be one of {FPT_STRATEGIES}, got {self.strategy!r}")
        _check(self.action_queries_per_step >= 1, "model.action_queries_per_step must be >= 1")
        _check(self.align_target in ("quantized", "continuous"), f"model.align_target must be quantized or continuous, got {self.align_target!r}")
        _check(self.latent_logits in ("latent", "full"), f"model.latent_logits must be latent or full, got {self.latent_logits!r}")
        _check(not (self.align_target == "continuous" and self.latent.source == "offline"),
               "model.align_target=continuous needs latent.source=online (the label store holds quantized codes)")


@ModelConfig.register_subclass("baseline")
@dataclass
class BaselineConfig(FptConfig):
    """Pixels-to-Tokens baseline: VLM + L1 head, no latent supervision."""

    strategy: str = "baseline"
    """Fixed."""
    action_queries_per_step: int = 5
    """FPT: 41 placeholders, the last 40 = 8 steps x 5 feed the head."""


@ModelConfig.register_subclass("la_align")
@dataclass
class LaAlignConfig(FptConfig):
    """LA-Align: cosine between projected VLM query states and the LAM's latent embeddings."""

    strategy: str = "la_align"
    """Fixed."""


@ModelConfig.register_subclass("la_direct")
@dataclass
class LaDirectConfig(FptConfig):
    """LA-Direct: latent tokens added to the vocabulary and decoded at the latent queries (CE)."""

    strategy: str = "la_direct"
    """Fixed."""


@ModelConfig.register_subclass("la_cond")
@dataclass
class LaCondConfig(FptConfig):
    """LA-Cond: latent tokens decoded first (CE); the head reads latent and action queries together."""

    strategy: str = "la_cond"
    """Fixed."""


@ModelConfig.register_subclass("la_tok")
@dataclass
class LaTokConfig(FptConfig):
    """LA-Tok: the VLM predicts the action tokenizer's per-step codes (CE) besides regressing actions."""

    strategy: str = "la_tok"
    """Fixed."""


@dataclass
class LapaConfig(ModelConfig):
    """LAPA on a VLM backbone with placeholder queries."""

    stage: str = "latent"
    """``latent`` (stage 2: CE on the LAM's tokens) or ``action`` (stage 3: CE on quantile-bin action tokens)."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """VLM backbone (LAPA: LWM-7B; here any backbone behind the common interface)."""
    latent: LatentTargetConfig = field(default_factory=LatentTargetConfig)
    """Latent targets (stage 2; LAPA: LAQ with 4 tokens from 8 codes)."""
    init_from: str = ""
    """Export directory whose ``backbone.*`` weights initialise this model (stage 3 from stage 2)."""
    action_horizon: int = 1
    """Steps of the chunk predicted as tokens in stage 3 (LAPA: 1 step x 7 tokens); <= data.action_horizon."""
    num_bins: int = 256
    """Stage 3: quantile bins per action dimension (LAPA: 256, duplicates dropped)."""
    bins_path: str = ""
    """Stage 3: bins JSON from ``python -m lavla.launcher.fit_action_bins``; empty = fit at build time from the data."""
    bins_fit_samples: int = 20000
    """Stage 3: action samples read to fit the bins when ``bins_path`` is empty."""
    text_loss_weight: float = 0.0
    """Stage 2: w in (1 - w) * latent CE + w * next-token CE on the prompt's text, which keeps the VLM a
    language model (LAPA: 0.01). Stage 3 trains on action CE only, as LAPA does."""

    def __post_init__(self) -> None:
        _check(self.stage in ("latent", "action"), f"model.stage must be latent or action, got {self.stage!r}")
        _check(self.num_bins >= 2, "model.num_bins must be >= 2")
        _check(self.action_horizon >= 1, "model.action_horizon must be >= 1")
        _check(0.0 <= self.text_loss_weight < 1.0, f"model.text_loss_weight must be in [0, 1), got {self.text_loss_weight}")
        _check(self.stage == "latent" or self.text_loss_weight == 0.0,
               "model.text_loss_weight applies to lapa_latent only (LAPA's action finetuning uses action CE alone)")


@ModelConfig.register_subclass("lapa_latent")
@dataclass
class LapaLatentConfig(LapaConfig):
    """LAPA stage 2, latent pretraining: the VLM predicts the LAM's tokens, no robot actions needed."""

    stage: str = "latent"
    """Fixed."""
    text_loss_weight: float = 0.01
    """w in (1 - w) * latent CE + w * text CE (LAPA: 0.99 / 0.01)."""


@ModelConfig.register_subclass("lapa_action")
@dataclass
class LapaActionConfig(LapaConfig):
    """LAPA stage 3, action finetuning: a new head predicts per-dimension quantile-bin action tokens."""

    stage: str = "action"
    """Fixed."""
