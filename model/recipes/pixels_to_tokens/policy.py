"""From Pixels to Tokens: five ways to use latent actions in a VLM + L1-regression VLA.

Prompt = [images, instruction, latent queries, action queries]. The L1 head reads the last
``head.num_blocks + 1`` backbone layers: the task tokens and, per layer, its query states.

- baseline:  N x ``action_queries_per_step`` action queries, action L1 only.
- la_align:  N action queries; their states at ``align_layer`` are projected (LN-Linear-GELU-Linear)
             and pulled to the step's latent embedding (mean over its Q codes): 1 - cos, weight 1.
- la_direct: S x Q latent queries decode ``<ACT_k>`` tokens added to the vocabulary (CE); each
             step's Q query states are attention-pooled over the code axis (the reference pools over
             the step axis by mistake) and join the action queries as head inputs.
- la_cond:   latent queries decoded first (CE); the head reads latent and action queries as they are.
- la_tok:    N latent queries decode the action tokenizer's per-step codes ``<LA_k>`` (CE); the
             head reads latent and action queries.

S = 1 latent step with an online LAM, S = N with offline labels. Samples without actions (human
video) contribute only latent losses; samples without labels only the action loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lavla.data_service.config import DataConfig
from lavla.data_service.schema import supervision_mask
from lavla.model.proprio import policy_proprio
from lavla.model.l1_head import L1RegressionHead, masked_l1
from lavla.model.latent_targets import LatentSource, LatentTargets, load_exported_weights
from lavla.model.vl_backbone import VLBackbone, VLMOutput, build_backbone, gather_positions
from lavla.model.recipe import Capabilities, Recipe
from lavla.model.recipes.pixels_to_tokens.config import FptConfig


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask``; 0 (still in the graph) when nothing is selected."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def token_ce(logits: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Masked cross-entropy and accuracy; logits [...,V], targets/mask [...]."""
    ce = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction="none").view_as(targets)
    acc = (logits.argmax(-1) == targets).float()
    return masked_mean(ce, mask), masked_mean(acc, mask).detach()


class CodeAxisPooling(nn.Module):
    """[B,S,Q,H] -> [B,S,H]: a learned query attends over each step's Q code states."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        scores = (self.norm(x) * self.query).sum(-1) / x.shape[-1] ** 0.5  # [B,S,Q]
        return (scores.softmax(dim=-1)[..., None] * x).sum(dim=-2)


class AlignProjector(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear (FPT: 2048 -> 256 -> 128)."""

    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PixelsToTokensPolicy(Recipe):
    """The shared model: prompt, backbone, L1 head and action loss. Each strategy is a subclass that
    adds its latent pieces through the hooks below; this base alone is no strategy (``BaselinePolicy`` is).

    forward(batch) -> (loss, metrics); predict_action(batch) -> [B,N,A]; predict_latents(batch) -> ids.
    """

    decodes_latent_tokens = False
    """The strategy decodes latent tokens from its latent queries (cross-entropy, ``predict_latents``)."""

    def __init__(self, cfg: FptConfig, data: DataConfig, backbone: VLBackbone | None = None,
                 tokenizer: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.horizon, self.action_dim = data.action_horizon, data.max_action_dim
        self.backbone = backbone or build_backbone(cfg.backbone)
        if hasattr(self.backbone, "horizon"):
            self.backbone.horizon = self.horizon  # the HF prompt names the chunk length
        dim = self.backbone.dim

        self.latent: LatentSource | None = self._latent_source(cfg)
        self.tokenizer: nn.Module | None = None
        self.latent_steps = self.latent.steps(self.horizon) if self.latent is not None else 0
        self.num_latent_queries, num_codes, prefix = self._latent_vocabulary(cfg, tokenizer)
        self.num_action_queries = self.horizon * cfg.action_queries_per_step
        # New vocabulary rows for the latent tokens (kept in the state dict: a buffer, not a python list).
        ids = self.backbone.add_tokens([f"<{prefix}_{i}>" for i in range(num_codes)]) if num_codes else []
        self.register_buffer("latent_token_ids", torch.tensor(ids, dtype=torch.long), persistent=True)

        self.pool: CodeAxisPooling | None = None
        self.align_proj: AlignProjector | None = None
        self._strategy_modules(cfg, dim)
        self.head = L1RegressionHead(cfg.head, dim, self.num_action_queries, num_latent_queries=self._head_latent_queries())
        self.num_head_layers = cfg.head.num_blocks + 1
        if self.num_head_layers > self.backbone.num_layers + 1:
            raise ValueError(f"model.head.num_blocks={cfg.head.num_blocks} reads {self.num_head_layers} backbone hidden "
                             f"states but the backbone has {self.backbone.num_layers + 1}")
        self.capabilities = Capabilities(predicts_actions=True, closed_loop=True,
                                         has_lam=self.latent_action_model() is not None,
                                         latent_targets=self.decodes_latent_tokens)

    # -- what a strategy adds (hooks; called in this order by __init__) ----------------------------
    def _latent_source(self, cfg: FptConfig) -> LatentSource | None:
        """The LAM / label store the strategy's latent targets come from."""
        return None

    def _latent_vocabulary(self, cfg: FptConfig, tokenizer: nn.Module | None) -> tuple[int, int, str]:
        """(latent queries in the prompt, latent tokens added to the vocabulary, their name prefix)."""
        return 0, 0, ""

    def _strategy_modules(self, cfg: FptConfig, dim: int) -> None:
        """Create the strategy's own modules (before the head: the parameter order is the init order)."""

    def _head_latent_queries(self) -> int:
        """Latent query states the L1 head reads besides the action queries."""
        return 0

    def _strategy_loss(self, out: VLMOutput, batch: dict[str, Any], lat: LatentTargets | None,
                       total: Tensor, metrics: dict[str, Tensor]) -> Tensor:
        """Add the strategy's loss terms to ``total`` (and their metrics); the baseline adds none."""
        return total

    def latent_action_model(self) -> nn.Module | None:
        return self.latent.lam if self.latent is not None else None

    # -- shared pieces -------------------------------------------------------------------------
    def _encode(self, batch: dict[str, Any], logits: bool) -> VLMOutput:
        return self.backbone.encode(batch, num_queries=self.num_latent_queries + self.num_action_queries,
                                    return_query_logits=logits)

    def _head_queries(self, out: VLMOutput) -> tuple[list[Tensor], list[Tensor]]:
        """Per head layer: (layer states, head query states [B,Qh,H])."""
        layers = list(out.hidden_states[-self.num_head_layers:])
        nl = self.num_latent_queries
        queries = []
        for h in layers:
            q = gather_positions(h, out.query_index)
            latent_q, action_q = q[:, :nl], q[:, nl:]
            if self.pool is not None:
                b = q.shape[0]
                latent_q = self.pool(latent_q.reshape(b, self.latent_steps, -1, q.shape[-1]))
            queries.append(torch.cat([latent_q, action_q], dim=1))
        return layers, queries

    def _actions(self, out: VLMOutput, batch: dict[str, Any]) -> Tensor:
        layers, queries = self._head_queries(out)
        proprio = policy_proprio(batch, dropout=self.cfg.proprio_dropout, training=self.training)
        return self.head(layers, out.task_mask, queries, proprio)

    # -- training ------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        lat = self.latent(batch) if self.latent is not None else None
        out = self._encode(batch, logits=self.decodes_latent_tokens)
        pred = self._actions(out, batch)
        action_loss = masked_l1(pred, batch["action"], supervision_mask(batch))
        metrics: dict[str, Tensor] = {"loss/action_l1": action_loss.detach(),
                                      "action/supervised_frac": batch["has_action"].float().mean().detach()}
        total = self._strategy_loss(out, batch, lat, action_loss, metrics)
        if lat is not None:
            if self.cfg.latent.lam_trainable:
                total = total + self.cfg.latent.lam_weight * lat.lam_loss
                metrics["loss/lam"] = lat.lam_loss.detach()
            metrics.update(lat.metrics)
        metrics["loss/total"] = total.detach()
        return total, metrics

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_action(self, batch: dict[str, Any], **_: Any) -> Tensor:
        """Normalized action chunk [B,N,A]; padded dims (``action_dim_mask`` False, if given) are 0."""
        out = self._encode(batch, logits=False)
        actions = self._actions(out, batch)
        if "action_dim_mask" in batch:
            actions = actions * batch["action_dim_mask"].to(actions.dtype)[:, None, :]
        return actions


class BaselinePolicy(PixelsToTokensPolicy):
    """``baseline``: N x ``action_queries_per_step`` action queries, action L1 only."""


class _OnlineOrOfflineLatents(PixelsToTokensPolicy):
    """Strategies whose targets are LAM latents (online LAM or offline label store)."""

    def _latent_source(self, cfg: FptConfig) -> LatentSource | None:
        return LatentSource(cfg.latent)


class LaAlignPolicy(_OnlineOrOfflineLatents):
    """``la_align``: the action queries' states at ``align_layer`` are projected and pulled to the
    step's latent embedding (mean over its Q codes): 1 - cos."""

    def _strategy_modules(self, cfg: FptConfig, dim: int) -> None:
        assert self.latent is not None
        self.align_proj = AlignProjector(dim, cfg.align_hidden, self.latent.code_dim)

    def _strategy_loss(self, out: VLMOutput, batch: dict[str, Any], lat: LatentTargets | None,
                       total: Tensor, metrics: dict[str, Tensor]) -> Tensor:
        align, cos = self._align_loss(out, lat)
        metrics.update({"loss/align": align.detach(), "align/cos": cos})
        return total + self.cfg.align_weight * align

    def _align_loss(self, out: VLMOutput, lat: LatentTargets | None) -> tuple[Tensor, Tensor]:
        """1 - cos(proj(query states at align_layer), the step's latent embedding averaged over its codes)."""
        assert lat is not None and self.align_proj is not None
        h = gather_positions(out.hidden_states[self.cfg.align_layer], out.query_index[:, self.num_latent_queries:])
        b, n = h.shape[0], self.horizon
        h = h.view(b, n, self.cfg.action_queries_per_step, -1)[:, :, -1]  # the last query of each step
        target = (lat.continuous if self.cfg.align_target == "continuous" else lat.emb).mean(dim=2)  # [B,S,D]
        valid = lat.valid
        if target.shape[1] == 1:  # one online latent for the whole chunk: every step aligns to it
            target, valid = target.expand(-1, n, -1), valid.expand(-1, n)
        cos = F.cosine_similarity(self.align_proj(h).float(), target.float(), dim=-1)  # [B,N]
        return masked_mean(1.0 - cos, valid), masked_mean(cos, valid).detach()


class _LatentTokenDecoding(PixelsToTokensPolicy):
    """Strategies that decode latent tokens from latent queries (cross-entropy, weight ``token_loss_weight``)."""

    decodes_latent_tokens = True

    def _latent_logits(self, out: VLMOutput) -> Tensor:
        logits = out.query_logits[:, : self.num_latent_queries]
        return logits[..., self.latent_token_ids] if self.cfg.latent_logits == "latent" else logits

    def _latent_targets(self, batch: dict[str, Any], lat: LatentTargets | None) -> tuple[Tensor, Tensor]:
        """Token targets [B,Ql] (index into the latent vocabulary) and their mask."""
        assert lat is not None
        ids = lat.ids.flatten(1)  # [B,S*Q], step-major as the queries
        mask = lat.valid[:, :, None].expand_as(lat.ids).flatten(1)
        return ids, mask

    def _strategy_loss(self, out: VLMOutput, batch: dict[str, Any], lat: LatentTargets | None,
                       total: Tensor, metrics: dict[str, Tensor]) -> Tensor:
        targets, mask = self._latent_targets(batch, lat)
        logits = self._latent_logits(out)
        if self.cfg.latent_logits == "full":
            targets = self.latent_token_ids[targets]
        ce, acc = token_ce(logits, targets, mask)
        metrics.update({"loss/latent_ce": ce.detach(), "latent/acc": acc})
        return total + self.cfg.token_loss_weight * ce

    @torch.no_grad()
    def latent_targets(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        return self._latent_targets(batch, self.latent(batch) if self.latent is not None else None)

    @torch.no_grad()
    def predict_latents(self, batch: dict[str, Any]) -> Tensor:
        """Decoded latent token ids [B,Ql] (index into the latent vocabulary: codes or tokenizer ids)."""
        logits = self._encode(batch, logits=True).query_logits[:, : self.num_latent_queries][..., self.latent_token_ids]
        return logits.argmax(-1)


class _LamTokenDecoding(_LatentTokenDecoding, _OnlineOrOfflineLatents):
    """S x Q latent queries decode the LAM's codes as ``<ACT_k>`` tokens."""

    def _latent_vocabulary(self, cfg: FptConfig, tokenizer: nn.Module | None) -> tuple[int, int, str]:
        assert self.latent is not None
        return self.latent_steps * self.latent.codes_per_step, self.latent.num_codes, "ACT"


class LaDirectPolicy(_LamTokenDecoding):
    """``la_direct``: each step's Q latent query states are attention-pooled over the code axis (the
    reference pools over the step axis by mistake) and join the action queries as head inputs."""

    def _strategy_modules(self, cfg: FptConfig, dim: int) -> None:
        self.pool = CodeAxisPooling(dim)

    def _head_latent_queries(self) -> int:
        return self.latent_steps


class LaCondPolicy(_LamTokenDecoding):
    """``la_cond``: latent tokens decoded first; the head reads latent and action queries as they are."""

    def _head_latent_queries(self) -> int:
        return self.num_latent_queries


class LaTokPolicy(_LatentTokenDecoding):
    """``la_tok``: N latent queries decode the frozen action tokenizer's per-step codes ``<LA_k>``; the
    head reads latent and action queries."""

    def _latent_vocabulary(self, cfg: FptConfig, tokenizer: nn.Module | None) -> tuple[int, int, str]:
        self.tokenizer, num_codes = self._load_tokenizer(cfg, tokenizer)
        return self.horizon, num_codes, "LA"

    def _head_latent_queries(self) -> int:
        return self.num_latent_queries

    @staticmethod
    def _load_tokenizer(cfg: FptConfig, tok: nn.Module | None) -> tuple[nn.Module, int]:
        if tok is None and not cfg.tokenizer_init:
            raise ValueError("la_tok needs model.tokenizer_init: the export directory of an action tokenizer trained "
                             "with configs/action_tokenizer.yaml (python -m lavla.launcher.export_policy)")
        from lavla.model.policy_io import load_policy

        if tok is None:
            tok = load_policy(cfg.tokenizer_init).module
        if not hasattr(tok, "tokenize"):
            raise ValueError(f"model.tokenizer_init={cfg.tokenizer_init} is a {type(tok).__name__}, not an action tokenizer")
        tok.requires_grad_(False)
        tok.eval()
        num_codes = cfg.tokenizer_codes or int(tok.num_codes)
        return tok, num_codes

    def train(self, mode: bool = True) -> "LaTokPolicy":
        super().train(mode)
        if self.tokenizer is not None:
            self.tokenizer.eval()  # frozen: its EMA codebook must not move
        return self

    def _latent_targets(self, batch: dict[str, Any], lat: LatentTargets | None) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            ids = self.tokenizer.tokenize(batch)  # [B,N]
        mask = batch["action_valid"].bool() & batch["has_action"].bool()[:, None]
        return ids.long(), mask


__all__ = ["BaselinePolicy", "LaAlignPolicy", "LaCondPolicy", "LaDirectPolicy", "LaTokPolicy", "PixelsToTokensPolicy",
           "load_exported_weights"]
