"""Vision-language backbones behind one interface, and the tiny CPU stand-in.

``VLBackbone.forward(batch, num_queries, return_query_logits) -> VLMOutput``: the hidden states of
every layer over [images, instruction, Q placeholder queries], the positions of the queries, and
(on request) the LM logits at the queries. Recipes pick layers and positions from it: LARA's flow
head reads the full token sequence of one layer, the Pixels-to-Tokens heads read query states.
``model.hf_vlm.HFVLMBackbone`` wraps a transformers VLM (Qwen3-VL) behind the same face.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lavla.model.config import BackboneConfig
from lavla.model.instructions import InstructionIdCheck
from lavla.model.layers import PatchEmbed, TransformerBlock, normalize_image


class VLMOutput(NamedTuple):
    """What a backbone returns (a NamedTuple so ZeRO-3's output hooks see the tensors)."""

    hidden_states: tuple[Tensor, ...]
    """L+1 tensors [B,T,D]: the input embeddings, then the output of each of the L layers
    (the last one after the final norm, as in transformers)."""
    mask: Tensor
    """[B,T] bool, True = real token (False = padding or a missing wrist view)."""
    query_index: Tensor
    """[B,Q] int64 positions of the Q placeholder queries, in prompt order."""
    task_mask: Tensor
    """[B,T] bool: real image and text tokens (not queries, not padding)."""
    query_logits: Tensor | None
    """[B,Q,V] LM logits at the query positions when requested, else None."""
    text_ce: Tensor | None = None
    """Scalar next-token cross-entropy of the LM on the prompt's text tokens when requested (LAPA's
    0.01-weighted language loss), else None. Image tokens, queries and padding are never targets."""


class VLBackbone(nn.Module):
    """Base class: ``dim`` (token width), ``num_layers`` (L) and ``vocab_size`` attributes."""

    dim: int
    num_layers: int
    vocab_size: int

    def encode(self, batch: dict[str, Any], num_queries: int = 0, return_query_logits: bool = False,
               return_text_ce: bool = False) -> VLMOutput:
        # Through __call__ so ZeRO-3's forward hooks gather this module's own parameters.
        return self(batch, num_queries=num_queries, return_query_logits=return_query_logits,
                    return_text_ce=return_text_ce)

    def forward(self, batch: dict[str, Any], num_queries: int = 0, return_query_logits: bool = False,
                return_text_ce: bool = False) -> VLMOutput:
        raise NotImplementedError

    def add_tokens(self, tokens: list[str]) -> list[int]:
        """Extend the vocabulary (embeddings and LM head) with ``tokens``; returns their ids."""
        raise NotImplementedError

    def export_assets(self, out_dir: Path) -> dict[str, Any]:
        """Write what a policy export needs besides weights; returns ``model.*`` config overrides."""
        return {}


def gather_positions(x: Tensor, index: Tensor) -> Tensor:
    """x [B,T,D], index [B,Q] -> [B,Q,D]."""
    return torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[-1]))


def next_token_ce(hidden: Tensor, lm_head: nn.Module, ids: Tensor, is_target: Tensor) -> Tensor:
    """Mean CE of predicting ``ids[:, t]`` from ``hidden[:, t-1]`` over positions where ``is_target``.

    Logits are computed only at the positions that predict a target (never [B,T,V] for the whole
    sequence), in fp32. Returns 0 (with a graph) when no row has a target.
    """
    target = is_target[:, 1:]
    src = hidden[:, :-1][target]  # [N,D] states that predict a target
    logits = lm_head(src).float()
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, ids[:, 1:][target])


def tokenize_bytes(texts: list[str], max_len: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """UTF-8 bytes + 1 (0 = padding), truncated/padded to ``max_len``; returns (ids [B,L], mask [B,L])."""
    ids = torch.zeros(len(texts), max_len, dtype=torch.long)
    for i, text in enumerate(texts):
        b = text.encode("utf-8")[:max_len]
        if b:
            ids[i, : len(b)] = torch.tensor(list(b), dtype=torch.long) + 1
    return ids.to(device), (ids != 0).to(device)


BYTE_VOCAB = 257
"""Tiny backbone vocabulary before added tokens: padding + 256 bytes."""
PLACEHOLDER_ID = 0
"""The tiny backbone's query placeholder reuses the padding row's id, embedded by its own parameter."""


class TinyVLBackbone(VLBackbone):
    """Patch embedding + byte embedding + ``depth`` transformer layers, then Q placeholder queries.

    Added tokens (``add_tokens``) get new rows in the token embedding and the LM head.
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg, self.dim, self.num_layers = cfg, cfg.dim, cfg.depth
        d = cfg.dim
        self.patch = PatchEmbed(cfg.image_size, cfg.patch_size, d)
        n_img = self.patch.num_patches
        self.num_views = 2 if cfg.use_wrist else 1
        self.image_pos = nn.Parameter(torch.randn(1, n_img, d) * 0.02)
        self.text_embed = nn.Embedding(BYTE_VOCAB, d, padding_idx=0)
        self.text_pos = nn.Parameter(torch.randn(1, cfg.max_text_len, d) * 0.02)
        self.type_embed = nn.Embedding(4, d)  # 0 = primary, 1 = wrist, 2 = text, 3 = query
        # Embeddings at the transformer-standard 0.02 scale: at nn.Embedding's N(0, 1) the constant
        # type and text rows outweighed the image patches ~30x, every query read the same average
        # and the query states varied across samples by < 1% of their norm.
        nn.init.normal_(self.type_embed.weight, std=0.02)
        with torch.no_grad():
            self.text_embed.weight[1:].normal_(0.0, 0.02)
        # One embedding per query position: with a shared one (and no positions on the queries)
        # every query of a sample computes the same state, so a head reading them sees one vector.
        self.query_embed = nn.Parameter(torch.randn(1, cfg.max_queries, d) * 0.02)
        self.instructions = InstructionIdCheck(cfg.max_text_len)
        self.blocks = nn.ModuleList(TransformerBlock(d, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d)
        # Untied: under ZeRO-3 the embedding's weight exists only inside the embedding's own forward.
        self.lm_head = nn.Linear(d, BYTE_VOCAB, bias=False)
        self.added_tokens: list[str] = []
        if cfg.frozen:
            self.requires_grad_(False)

    @property
    def vocab_size(self) -> int:  # type: ignore[override]
        return self.text_embed.num_embeddings

    def add_tokens(self, tokens: list[str]) -> list[int]:
        old = self.text_embed
        new = nn.Embedding(old.num_embeddings + len(tokens), self.dim, padding_idx=0)
        with torch.no_grad():
            new.weight[: old.num_embeddings] = old.weight
            new.weight[old.num_embeddings :].normal_(0.0, 0.02)
        new.weight.requires_grad_(old.weight.requires_grad)
        self.text_embed = new
        old_head = self.lm_head
        head = nn.Linear(self.dim, new.num_embeddings, bias=False)
        with torch.no_grad():
            head.weight[: old_head.out_features] = old_head.weight
            head.weight[old_head.out_features :].normal_(0.0, 0.02)
        head.weight.requires_grad_(old_head.weight.requires_grad)
        self.lm_head = head
        self.added_tokens += tokens
        return list(range(old.num_embeddings, new.num_embeddings))

    def forward(self, batch: dict[str, Any], num_queries: int = 0, return_query_logits: bool = False,
                return_text_ce: bool = False) -> VLMOutput:
        primary: Tensor = batch["image_primary"]
        b, dev = primary.shape[0], primary.device
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.frozen):
            views = [primary]
            masks = [torch.ones(b, self.patch.num_patches, dtype=torch.bool, device=dev)]
            if self.cfg.use_wrist:
                # Always encoded (fixed compute on every rank); masked out where there is no wrist camera.
                wrist = batch.get("image_wrist")
                has = batch.get("has_wrist")
                views.append(torch.zeros_like(primary) if wrist is None else wrist)
                has = torch.zeros(b, dtype=torch.bool, device=dev) if has is None or wrist is None else has.bool()
                masks.append(has[:, None].expand(-1, self.patch.num_patches))
            img = self.patch(normalize_image(torch.cat(views, dim=0))) + self.image_pos
            img = img.view(len(views), b, *img.shape[1:])
            types = self.type_embed(torch.arange(4, device=dev))
            img_tokens = [img[v] + types[v] for v in range(len(views))]
            self.instructions.check(batch["language"])
            ids, text_mask = tokenize_bytes(list(batch["language"]), self.cfg.max_text_len, dev)
            text = self.text_embed(ids) + self.text_pos + types[2]
            parts, part_masks = [*img_tokens, text], [*masks, text_mask]
            task_len = sum(p.shape[1] for p in parts)
            if num_queries:
                if num_queries > self.query_embed.shape[1]:
                    raise ValueError(f"{num_queries} queries asked of a backbone with backbone.max_queries="
                                     f"{self.query_embed.shape[1]}; raise it")
                parts.append((self.query_embed[:, :num_queries] + types[3]).expand(b, -1, -1))
                part_masks.append(torch.ones(b, num_queries, dtype=torch.bool, device=dev))
            x = torch.cat(parts, dim=1)
            mask = torch.cat(part_masks, dim=1)
            task_mask = mask.clone()
            task_mask[:, task_len:] = False
            hidden = [x]
            for i, blk in enumerate(self.blocks):
                x = blk(x, mask=mask)
                hidden.append(self.norm(x) if i == len(self.blocks) - 1 else x)
            query_index = torch.arange(task_len, task_len + num_queries, device=dev).expand(b, -1)
            logits = None
            if return_query_logits:
                logits = self.lm_head(gather_positions(hidden[-1], query_index))
            text_ce = None
            if return_text_ce:  # bytes after the first one, each predicted from the state before it
                start = task_len - ids.shape[1]
                states = hidden[-1][:, start : task_len]
                text_ce = next_token_ce(states, self.lm_head, ids, text_mask)
            return VLMOutput(tuple(hidden), mask, query_index, task_mask, logits, text_ce)


def build_backbone(cfg: BackboneConfig) -> VLBackbone:
    if cfg.kind == "hf":
        from lavla.model.hf_vlm import HFVLMBackbone

        return HFVLMBackbone(cfg.hf)
    return TinyVLBackbone(cfg)
