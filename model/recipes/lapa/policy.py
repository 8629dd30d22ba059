"""LAPA on a VLM backbone: latent pretraining (stage 2) and action finetuning (stage 3).

Stage 2 (``lapa_latent``): S x Q placeholder queries; a separate latent-token head (LAPA's
``delta_head``: its own K-way output rather than vocabulary rows) predicts the LAM's codes; loss =
CE over labelled steps, plus (as LAPA: 0.99 / 0.01) ``text_loss_weight`` x the LM's next-token CE on
the prompt's text tokens, which keeps the backbone a language model. No robot actions are needed,
so human video trains it fully.

Stage 3 (``lapa_action``): ``action_horizon`` x A queries; a new head predicts a quantile bin per
action dimension (bins fitted per dimension on the training data, duplicates dropped, as LAPA's
``qcut``); loss = CE over real dims of valid steps of samples with actions. The backbone starts
from a stage-2 export (``init_from``). predict_action de-bins the argmax to bin centres.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from lavla.data_service.config import DataConfig
from lavla.data_service.schema import supervision_mask
from lavla.model.action_bins import QuantileActionBins
from lavla.model.latent_targets import LatentSource, load_exported_weights
from lavla.model.recipe import Capabilities, Recipe
from lavla.model.recipes.lapa.config import LapaConfig
from lavla.model.recipes.pixels_to_tokens.policy import token_ce
from lavla.model.vl_backbone import VLBackbone, build_backbone, gather_positions


class TokenHead(nn.Module):
    """LayerNorm + Linear from query states to a token vocabulary."""

    def __init__(self, dim: int, vocab: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, vocab)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.norm(x))


class LapaPolicy(Recipe):
    """The shared part of both stages: the backbone (optionally from an export) and a token head on
    placeholder queries. ``LapaLatentPolicy`` and ``LapaActionPolicy`` are the stages."""

    def __init__(self, cfg: LapaConfig, data: DataConfig, backbone: VLBackbone | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone or build_backbone(cfg.backbone)
        if hasattr(self.backbone, "horizon"):
            self.backbone.horizon = data.action_horizon  # the HF prompt names the chunk length
        if cfg.init_from:
            load_exported_weights(self.backbone, cfg.init_from, "backbone.", "model.init_from")

    def _query_logits(self, batch: dict[str, Any], text_ce: bool = False) -> tuple[Tensor, Tensor | None]:
        out = self.backbone.encode(batch, num_queries=self.num_queries, return_text_ce=text_ce)
        return self.head(gather_positions(out.hidden_states[-1], out.query_index)), out.text_ce


class LapaLatentPolicy(LapaPolicy):
    """Stage 2 (``lapa_latent``): S x Q queries predict the LAM's codes; no robot actions needed."""

    capabilities = Capabilities(latent_targets=True)

    def __init__(self, cfg: LapaConfig, data: DataConfig, backbone: VLBackbone | None = None) -> None:
        super().__init__(cfg, data, backbone)
        self.latent = LatentSource(cfg.latent)
        self.num_queries = self.latent.steps(data.action_horizon) * self.latent.codes_per_step
        self.head = TokenHead(self.backbone.dim, self.latent.num_codes)
        self.tokens_per_sample = float(self.num_queries)
        self.capabilities = Capabilities(latent_targets=True, has_lam=self.latent.lam is not None)

    def latent_action_model(self) -> nn.Module | None:
        return self.latent.lam

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        w = self.cfg.text_loss_weight
        logits, text_ce = self._query_logits(batch, text_ce=w > 0)
        lat = self.latent(batch)
        mask = lat.valid[:, :, None].expand_as(lat.ids).flatten(1)
        latent_ce, acc = token_ce(logits, lat.ids.flatten(1), mask)
        metrics = {"loss/latent_ce": latent_ce.detach(), "latent/acc": acc, **lat.metrics}
        ce = latent_ce
        if text_ce is not None:
            ce = (1.0 - w) * latent_ce + w * text_ce
            metrics["loss/text_ce"] = text_ce.detach()
        metrics["loss/total"] = ce.detach()
        return ce, metrics

    @torch.no_grad()
    def latent_targets(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """The LAM's code ids [B,S*Q] and their mask."""
        lat = self.latent(batch)
        return lat.ids.flatten(1).long(), lat.valid[:, :, None].expand_as(lat.ids).flatten(1)

    @torch.no_grad()
    def predict_latents(self, batch: dict[str, Any]) -> Tensor:
        """Predicted code ids [B,S*Q]."""
        return self._query_logits(batch)[0].argmax(-1)


class LapaActionPolicy(LapaPolicy):
    """Stage 3 (``lapa_action``): ``action_horizon`` x A queries, each predicting a quantile bin of its
    action dimension; predict_action de-bins the argmax to bin centres."""

    capabilities = Capabilities(predicts_actions=True, closed_loop=True)

    def __init__(self, cfg: LapaConfig, data: DataConfig, bins: QuantileActionBins | None = None,
                 backbone: VLBackbone | None = None) -> None:
        super().__init__(cfg, data, backbone)
        if bins is None:
            raise ValueError("lapa_action needs fitted action bins")
        self.horizon, self.action_dim = cfg.action_horizon, data.max_action_dim
        self.num_queries = self.horizon * self.action_dim
        self.bins = bins
        self.head = TokenHead(self.backbone.dim, cfg.num_bins)
        self.tokens_per_sample = float(self.num_queries)

    def _bin_logits(self, logits: Tensor) -> Tensor:
        """[B,n*A,bins] -> [B,n,A,bins] with each dimension's dropped (duplicate) bins masked out."""
        b = logits.shape[0]
        logits = logits.view(b, self.horizon, self.action_dim, -1).float()
        real = torch.arange(logits.shape[-1], device=logits.device) < self.bins.num_valid[:, None]  # [A,bins]
        return logits.masked_fill(~real, torch.finfo(logits.dtype).min)

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        logits, _ = self._query_logits(batch)
        n = self.horizon
        targets = self.bins.encode(batch["action"][:, :n])  # [B,n,A]
        mask = supervision_mask(batch)[:, :n]
        ce, acc = token_ce(self._bin_logits(logits), targets, mask)
        metrics = {"loss/action_ce": ce.detach(), "action/bin_acc": acc,
                   "action/supervised_frac": batch["has_action"].float().mean().detach(), "loss/total": ce.detach()}
        return ce, metrics

    @torch.no_grad()
    def predict_action(self, batch: dict[str, Any], **_: Any) -> Tensor:
        """Normalized actions [B,n,A] (bin centres); padded dims 0."""
        actions = self.bins.decode(self._bin_logits(self._query_logits(batch)[0]).argmax(-1))
        if "action_dim_mask" in batch:
            actions = actions * batch["action_dim_mask"].to(actions.dtype)[:, None, :]
        return actions


def load_or_fit_bins(cfg: LapaConfig, data: DataConfig) -> QuantileActionBins:
    """Bins from ``bins_path`` or fitted on ``bins_fit_samples`` training actions (deterministic)."""
    if cfg.bins_path:
        path = Path(cfg.bins_path)
        try:
            bins = QuantileActionBins.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"model.bins_path={path}: cannot read action bins ({e})") from e
    else:
        from lavla.data_service.action_quantiles import sample_actions

        actions, valid = sample_actions(data, max_samples=cfg.bins_fit_samples, seed=data.seed)
        bins = QuantileActionBins.fit(np.where(valid, actions, np.nan), cfg.num_bins)
    if bins.action_dim != data.max_action_dim or bins.num_bins != cfg.num_bins:
        raise ValueError(f"action bins have {bins.action_dim} dims x {bins.num_bins} bins; the model expects "
                         f"data.max_action_dim={data.max_action_dim} x model.num_bins={cfg.num_bins}")
    return bins


def build_lapa_action(cfg: LapaConfig, data: DataConfig) -> LapaActionPolicy:
    return LapaActionPolicy(cfg, data, load_or_fit_bins(cfg, data))
