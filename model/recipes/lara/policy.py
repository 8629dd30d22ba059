"""LARA: joint LAM + flow-matching DiT action head, aligned by cosine similarity.

total = flow MSE (samples with actions) + align_weight * mean(1 - cos(proj(h), z))
        + lam_weight * LAM loss (recon + vq)
where h is the DiT hidden state at ``align_layer`` (default -3 = output of block L-2) at the last
action token and z the LAM's continuous latent of (x_t, x_{t+H}) flattened to Q*Dl. The target is
not detached when the LAM trains, so alignment gradients also shape the LAM ("reciprocal").
Every submodule runs on every step whatever the batch holds (ZeRO-3: no rank-divergent control flow).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lavla.data_service.config import DataConfig
from lavla.data_service.schema import supervision_mask
from lavla.model.recipe import Capabilities, Recipe
from lavla.model.recipes.lara.config import LaraConfig
from lavla.model.flow_head import FlowMatchingHead
from lavla.model.lam import LatentActionModel
from lavla.model.proprio import policy_proprio
from lavla.model.vl_backbone import VLBackbone, build_backbone


class LaraPolicy(Recipe):
    """forward(batch) -> (loss, metrics); predict_action(batch) -> actions [B,N,A]."""

    capabilities = Capabilities(predicts_actions=True, closed_loop=True, has_lam=True)

    def __init__(self, cfg: LaraConfig, backbone: VLBackbone | None = None, lam: LatentActionModel | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone or build_backbone(cfg.backbone)
        self.lam = lam or LatentActionModel(cfg.lam)
        self.head = FlowMatchingHead(cfg.head, self.backbone.dim)
        self.align_proj = nn.Linear(cfg.head.dim, cfg.lam.num_queries * cfg.lam.latent_dim)
        if not cfg.lam_trainable:
            self.lam.requires_grad_(False)
            self.lam.eval()

    def train(self, mode: bool = True) -> "LaraPolicy":
        super().train(mode)
        if not self.cfg.lam_trainable:
            self.lam.eval()  # a frozen LAM keeps its codebook statistics and eval behaviour
        return self

    def latent_action_model(self) -> nn.Module:
        return self.lam

    def vl_tokens(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """The backbone's tokens at ``vl_layer`` (GR00T: the VLM truncated at layer 12) and their mask."""
        out = self.backbone.encode(batch)
        return out.hidden_states[self.cfg.vl_layer], out.mask

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        vl, vl_mask = self.vl_tokens(batch)
        proprio = policy_proprio(batch, dropout=self.cfg.proprio_dropout, training=self.training)
        flow = self.head.loss(vl, vl_mask, proprio, batch["embodiment_id"], batch["action"], supervision_mask(batch))

        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.lam_trainable):
            lam_loss, lam_metrics, lat = self.lam(batch, return_latents=True)
        target = (lat.continuous if cfg.align_target == "continuous" else lat.quantized).flatten(1)
        if not cfg.lam_trainable:
            target = target.detach()

        # Latents exist for every sample (action-less ones too): the alignment averages over all.
        pred = self.align_proj(flow.hidden_states[cfg.align_layer][:, -1])
        cos = F.cosine_similarity(pred.float(), target.float(), dim=-1)
        align = (1.0 - cos).mean()

        total = flow.loss + cfg.align_weight * align + cfg.lam_weight * lam_loss
        metrics: dict[str, Tensor] = {
            "loss/total": total.detach(),
            "loss/flow": flow.loss.detach(),
            "loss/align": align.detach(),
            "align/cos": cos.mean().detach(),
            "flow/supervised_frac": batch["has_action"].float().mean().detach(),
            **lam_metrics,
        }
        return total, metrics

    @torch.no_grad()
    def predict_action(self, batch: dict[str, Any], num_steps: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Normalized action chunk [B,N,A]; padded dims (``action_dim_mask`` False, if given) are 0."""
        vl, vl_mask = self.vl_tokens(batch)
        proprio = policy_proprio(batch)
        actions = self.head.sample(vl, vl_mask, proprio, batch["embodiment_id"], num_steps=num_steps, generator=generator)
        if "action_dim_mask" in batch:
            actions = actions * batch["action_dim_mask"].to(actions.dtype)[:, None, :]
        return actions


def build_lara(cfg: LaraConfig, data: DataConfig) -> LaraPolicy:
    return LaraPolicy(cfg)
