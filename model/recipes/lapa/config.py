"""LAPA configs on a VLM backbone: ``lapa_latent`` (stage 2, latent pretraining) and ``lapa_action``
(stage 3, action finetuning on quantile-bin tokens). Defaults are tiny CPU sizes."""

from __future__ import annotations

from dataclasses import dataclass, field

from lavla.model.config import BackboneConfig, LatentTargetConfig, ModelConfig, _check, image_sizes_stated
from lavla.model.registry import InputSpec, register_recipe


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

    def input_spec(self) -> InputSpec:
        latent = self.stage == "latent"
        online = latent and self.latent.source == "online"
        return InputSpec(
            image_size=image_sizes_stated(self.backbone, self.latent.lam if online else None, "latent.lam"),
            action_horizon_at_most=(("action_horizon", self.action_horizon),) if not latent else (),
            latent_labels="model.latent.source=offline" if latent and not online else "")

    def __post_init__(self) -> None:
        _check(self.stage in ("latent", "action"), f"model.stage must be latent or action, got {self.stage!r}")
        _check(self.num_bins >= 2, "model.num_bins must be >= 2")
        _check(self.action_horizon >= 1, "model.action_horizon must be >= 1")
        _check(0.0 <= self.text_loss_weight < 1.0, f"model.text_loss_weight must be in [0, 1), got {self.text_loss_weight}")
        _check(self.stage == "latent" or self.text_loss_weight == 0.0,
               "model.text_loss_weight applies to lapa_latent only (LAPA's action finetuning uses action CE alone)")


@register_recipe("lapa_latent", builder="lavla.model.recipes.lapa.policy:LapaLatentPolicy")
@dataclass
class LapaLatentConfig(LapaConfig):
    """LAPA stage 2, latent pretraining: the VLM predicts the LAM's tokens, no robot actions needed."""

    stage: str = "latent"
    """Fixed."""
    text_loss_weight: float = 0.01
    """w in (1 - w) * latent CE + w * text CE (LAPA: 0.99 / 0.01)."""


@register_recipe("lapa_action", builder="lavla.model.recipes.lapa.policy:build_lapa_action")
@dataclass
class LapaActionConfig(LapaConfig):
    """LAPA stage 3, action finetuning: a new head predicts per-dimension quantile-bin action tokens."""

    stage: str = "action"
    """Fixed."""
