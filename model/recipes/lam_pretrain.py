"""LAM pretraining recipe: the loss is the LAM's (pixel reconstruction of x_{t+H} + vq)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from model.config import LamPretrainConfig
from model.lam import LatentActionModel


class LamPretrainPolicy(nn.Module):
    """forward(batch) -> (loss, metrics); predict_latents(batch) -> code ids [B,Q]."""

    def __init__(self, cfg: LamPretrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lam = LatentActionModel(cfg.lam)

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        loss, metrics = self.lam(batch)
        return loss, {"loss/total": loss.detach(), **metrics}

    @torch.no_grad()
    def predict_latents(self, batch: dict[str, Any]) -> Tensor:
        """Latent action ids of (image_primary, image_future), e.g. for offline labelling."""
        _, _, lat = self.lam(batch, return_latents=True)
        return lat.ids
