"""LAM pretraining recipe: the loss is the LAM's own (reconstruction of x_{t+H} + quantizer loss).

One recipe serves the three LAM styles; the config type picks the model:
``lam`` (Moto/LARA, pixels), ``lam_lapa`` (LAPA LAQ, pixels, NSVQ), ``lam_univla`` (UniVLA, frozen
features). Besides ``forward`` it offers inference helpers that never touch codebook statistics
(``annotate``, ``predict_latents``) and ``media`` images for the trainer's logger.
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np
import torch.nn as nn
from torch import Tensor

from lavla.data_service.config import DataConfig
from lavla.model.config import LamConfig, LamPretrainConfig
from lavla.model.factory import register_builder, require_equal
from lavla.model.lam import LatentActionModel, LatentActions
from lavla.model.lam_config import LapaLamConfig, LapaLamPretrainConfig, UnivlaLamConfig, UnivlaLamPretrainConfig
from lavla.model.layers import eval_no_grad
from lavla.model.media import image_grid, to_uint8_image, usage_histogram_image
from lavla.model.quantizer import Quantizer

AnyLamConfig = Union[LamConfig, LapaLamConfig, UnivlaLamConfig]
AnyLamPretrainConfig = Union[LamPretrainConfig, LapaLamPretrainConfig, UnivlaLamPretrainConfig]


def build_lam(cfg: AnyLamConfig) -> nn.Module:
    """The LAM for a LAM config (Moto, LAPA or UniVLA style)."""
    if isinstance(cfg, LapaLamConfig):
        from lavla.model.lam_lapa import LapaLatentActionModel

        return LapaLatentActionModel(cfg)
    if isinstance(cfg, UnivlaLamConfig):
        from lavla.model.lam_univla import UnivlaLatentActionModel

        return UnivlaLatentActionModel(cfg)
    if isinstance(cfg, LamConfig):
        return LatentActionModel(cfg)
    raise TypeError(f"not a LAM config: {type(cfg).__name__}")


class LamPretrainPolicy(nn.Module):
    """forward(batch) -> (loss, metrics); annotate / predict_latents for labelling; media for logging."""

    def __init__(self, cfg: AnyLamPretrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lam = build_lam(cfg.lam)

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        loss, metrics = self.lam(batch)
        return loss, {"loss/total": loss.detach(), **metrics}

    def annotate(self, x_t: Tensor, x_tH: Tensor) -> LatentActions:
        """Latent actions of uint8 frame pairs in eval mode (no statistics updated). Collective under ZeRO-3."""
        with eval_no_grad(self):
            return self.lam.encode(x_t, x_tH)

    def predict_latents(self, batch: dict[str, Any]) -> Tensor:
        """Code ids [B,Q] of (image_primary, image_future)."""
        return self.annotate(batch["image_primary"], batch["image_future"]).ids

    def quantizer(self) -> Quantizer:
        q = self.lam.quantizer
        assert isinstance(q, Quantizer)
        return q

    def media(self, batch: dict[str, Any], max_items: int = 4) -> dict[str, np.ndarray]:
        """Images to log (HxWx3 uint8): per sample a row [x_t | x_{t+H} | prediction], and the code-usage
        histogram since the start (red = dead in the current restart window).

        Runs the model, so under ZeRO-3 every rank must call it (parameters are gathered collectively).
        """
        x_t, x_tH = batch["image_primary"][:max_items], batch["image_future"][:max_items]
        with eval_no_grad(self):
            lat = self.lam.encode(x_t, x_tH)
            pred = self.lam.preview(x_t, lat.quantized)
        rows = [[to_uint8_image(x_t[i]), to_uint8_image(x_tH[i]), to_uint8_image(pred[i])] for i in range(x_t.shape[0])]
        q = self.quantizer()
        return {
            "lam/reconstruction": image_grid(rows),
            "lam/code_usage": usage_histogram_image(q.usage_histogram(), alive=~q.dead_codes()),
        }


@register_builder(LamPretrainConfig)
@register_builder(LapaLamPretrainConfig)
@register_builder(UnivlaLamPretrainConfig)
def build_lam_pretrain(cfg: LamPretrainConfig | LapaLamPretrainConfig | UnivlaLamPretrainConfig, data: DataConfig) -> nn.Module:
    require_equal([("lam.image_size", cfg.lam.image_size, "image_size", data.image_size)])
    return LamPretrainPolicy(cfg)
