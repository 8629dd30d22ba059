"""LA-Tok action tokenizer recipe: train the per-step action VQ (``type: action_tokenizer``).

``forward(batch) -> (loss, metrics)`` trains it on the batch's normalized action chunks
(model/action_tokenizer.py has the exact objective). ``tokenize(batch)`` gives the per-step code
ids the la_tok VLA is supervised with (``model.tokenizer_init`` of configs/la_tok.yaml points at
the export of such a run). Action-less samples (human video) and padded steps/dims are masked out
of the losses; every submodule still runs on every step (ZeRO-3).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lavla.data_service.config import DataConfig
from lavla.data_service.schema import supervision_mask
from lavla.model.action_tokenizer import ActionTokenizer
from lavla.model.recipe import Capabilities, Recipe
from lavla.model.recipes.action_tokenizer.config import ActionTokenizerConfig


action_mask = supervision_mask
"""[B,N,A] bool: the action entries the tokenizer is trained on (the schema's supervision mask)."""


class ActionTokenizerPolicy(Recipe):
    """forward(batch) -> (loss, metrics); tokenize(batch) -> ids [B,N]; reconstruct(batch) -> [B,N,A]."""

    # predict_action reconstructs the batch's own actions: scored offline, never rolled out.
    capabilities = Capabilities(predicts_actions=True)

    def __init__(self, cfg: ActionTokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = ActionTokenizer(cfg)
        self.num_codes = cfg.quantizer.num_codes
        """Codebook size: the la_tok VLA adds this many ``<LA_i>`` tokens."""
        self.tokens_per_sample = float(cfg.action_horizon)
        """One code per action step (the trainer's tokens/s)."""

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        mask = action_mask(batch)
        out = self.tokenizer(batch["action"], mask)
        m = out.metrics
        metrics: dict[str, Tensor] = {
            "loss/total": out.loss.detach(),
            "loss/recon": out.recon_loss.detach(),
            "loss/mask": out.mask_loss.detach(),
            "loss/vq": out.vq_loss.detach(),
            "vq/perplexity": m["perplexity"],
            "vq/active_codes": m["active_codes"],
            "vq/quant_error": m["quant_error"],
            "action/supervised_frac": batch["has_action"].float().mean().detach(),
        }
        return out.loss, metrics

    @torch.no_grad()
    def tokenize(self, batch: dict[str, Any]) -> Tensor:
        """Per-step code ids [B,N] int64 of ``batch["action"]`` (ids at unsupervised steps are
        meaningless: mask them with ``action_valid & has_action``)."""
        return self.tokenizer.tokenize(batch["action"], action_mask(batch))

    @torch.no_grad()
    def reconstruct(self, batch: dict[str, Any]) -> Tensor:
        """Decoded codes [B,N,A] (padded dims 0): what the tokens say about the actions."""
        mask = action_mask(batch)
        recon = self.tokenizer.reconstruct(batch["action"], mask)
        return recon * batch["action_dim_mask"].to(recon.dtype)[:, None, :]

    @torch.no_grad()
    def predict_action(self, batch: dict[str, Any], **_: Any) -> Tensor:
        """The recipe face's inference call: here the tokenizer's reconstruction of the batch's actions."""
        return self.reconstruct(batch)


def build_action_tokenizer(cfg: ActionTokenizerConfig, data: DataConfig) -> ActionTokenizerPolicy:
    return ActionTokenizerPolicy(cfg)
