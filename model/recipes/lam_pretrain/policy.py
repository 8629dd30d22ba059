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
from lavla.model.lam import LatentActions, build_lam
from lavla.model.layers import eval_no_grad
from lavla.model.media import image_grid, to_uint8_image, usage_histogram_image
from lavla.model.quantizer import Quantizer
from lavla.model.recipe import Capabilities, Recipe
from lavla.model.recipes.lam_pretrain.config import LamPretrainConfig, LapaLamPretrainConfig, UnivlaLamPretrainConfig

AnyLamPretrainConfig = Union[LamPretrainConfig, LapaLamPretrainConfig, UnivlaLamPretrainConfig]


class LamPretrainPolicy(Recipe):
    """forward(batch) -> (loss, metrics); annotate / predict_latents for labelling; media for logging."""

    capabilities = Capabilities(has_lam=True, annotates=True, logs_media=True)

    def __init__(self, cfg: AnyLamPretrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lam = build_lam(cfg.lam)

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        loss, metrics = self.lam(batch)
        return loss, {"loss/total": loss.detach(), **metrics}

    def latent_action_model(self) -> nn.Module:
        return self.lam

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


def build_lam_pretrain(cfg: AnyLamPretrainConfig, data: DataConfig) -> LamPretrainPolicy:
    return LamPretrainPolicy(cfg)
