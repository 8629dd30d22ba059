"""LARA's config (``type: lara``): a trainable LAM and a flow-matching DiT head on a VL backbone,
aligned by cosine similarity. Defaults are tiny CPU sizes; LARA's sizes are in configs/lara.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field

from lavla.model.config import BackboneConfig, FlowHeadConfig, LamConfig, ModelConfig, _check, image_sizes_stated
from lavla.model.registry import InputSpec, register_recipe


@register_recipe("lara", builder="lavla.model.recipes.lara.policy:build_lara")
@dataclass
class LaraConfig(ModelConfig):
    """LARA: trainable LAM + flow-matching DiT head on a VL backbone, aligned by cosine."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """Vision-language backbone."""
    proprio_dropout: float = 0.0
    """Probability that a training sample's proprio is zeroed (``model.proprio``); 0 = off (LARA)."""
    lam: LamConfig = field(default_factory=LamConfig)
    """Latent action model supplying the alignment target."""
    head: FlowHeadConfig = field(default_factory=FlowHeadConfig)
    """Flow-matching action head."""
    vl_layer: int = -1
    """Backbone hidden state the head cross-attends to: index into [embeddings, layer 1, ..., layer L]
    (GR00T N1.5 / LARA: 12, the VLM truncated at layer 12; -1 = the last layer)."""
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

    def input_spec(self) -> InputSpec:
        return InputSpec(image_size=image_sizes_stated(self.backbone, self.lam),
                         action_horizon=(("head.action_horizon", self.head.action_horizon),),
                         action_dim=(("head.action_dim", self.head.action_dim),),
                         proprio_dim=(("head.proprio_dim", self.head.proprio_dim),))

    def __post_init__(self) -> None:
        _check(self.align_target in ("continuous", "quantized"), f"model.align_target must be 'continuous' or 'quantized', got {self.align_target!r}")
        n = self.head.depth + 1
        _check(-n <= self.align_layer < n, f"model.align_layer {self.align_layer} out of range for {n} DiT hidden states (head.depth={self.head.depth})")
