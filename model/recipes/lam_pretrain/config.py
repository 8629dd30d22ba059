"""LAM pretraining configs: ``type: lam`` (Moto/LARA, pixels), ``lam_lapa`` (LAPA's LAQ, pixels,
NSVQ) and ``lam_univla`` (UniVLA, frozen features). The loss is the LAM's own."""

from __future__ import annotations

from dataclasses import dataclass, field

from lavla.model.config import LamConfig, ModelConfig
from lavla.model.lam_config import LapaLamConfig, UnivlaLamConfig
from lavla.model.registry import InputSpec, register_recipe


@register_recipe("lam", builder="lavla.model.recipes.lam_pretrain.policy:build_lam_pretrain")
@dataclass
class LamPretrainConfig(ModelConfig):
    """LAM-only pretraining: reconstruct x_{t+H} from x_t and the quantized latent."""

    lam: LamConfig = field(default_factory=LamConfig)
    """Latent action model."""

    def input_spec(self) -> InputSpec:
        return InputSpec(image_size=(("lam.image_size", self.lam.image_size),))


@register_recipe("lam_lapa", builder="lavla.model.recipes.lam_pretrain.policy:build_lam_pretrain")
@dataclass
class LapaLamPretrainConfig(ModelConfig):
    """LAPA LAQ pretraining: reconstruct x_{t+H} pixels from detached x_t tokens + NSVQ latent."""

    lam: LapaLamConfig = field(default_factory=LapaLamConfig)
    """Latent action model."""

    def input_spec(self) -> InputSpec:
        return InputSpec(image_size=(("lam.image_size", self.lam.image_size),))


@register_recipe("lam_univla", builder="lavla.model.recipes.lam_pretrain.policy:build_lam_pretrain")
@dataclass
class UnivlaLamPretrainConfig(ModelConfig):
    """UniVLA LAM pretraining: predict x_{t+H}'s frozen features from x_t's and the quantized latent."""

    lam: UnivlaLamConfig = field(default_factory=UnivlaLamConfig)
    """Latent action model."""

    def input_spec(self) -> InputSpec:
        return InputSpec(image_size=(("lam.image_size", self.lam.image_size),))
