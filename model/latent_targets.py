"""Latent-action targets for the VLA recipes: online from a LAM inside the model, or offline from
the batch (``latent_ids`` / ``latent_emb`` read from the zarr label store by the data service).

Both give ``LatentTargets`` with S latent steps per sample: S = 1 online (the pair (x_t, x_{t+H})),
S = data.action_horizon offline (the label of every step of the action chunk, as Pixels-to-Tokens).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

from lavla.model.config import LatentTargetConfig

log = logging.getLogger(__name__)


class LatentTargets(NamedTuple):
    ids: Tensor
    """[B,S,Q] int64 code ids."""
    emb: Tensor
    """[B,S,Q,D] quantized code embeddings."""
    continuous: Tensor
    """[B,S,Q,D] pre-quantization latents (online LAM; equals ``emb`` offline)."""
    valid: Tensor
    """[B,S] bool: the sample has a label for that step."""
    lam_loss: Tensor
    """0-dim LAM loss (0 unless the online LAM trains)."""
    metrics: dict[str, Tensor]
    """LAM metrics (online) or label coverage (offline)."""


def load_exported_weights(module: nn.Module, export_dir: str | Path, src_prefix: str, what: str) -> int:
    """Copy ``src_prefix*`` tensors of an exported policy (``model.safetensors``) into ``module``.

    Every parameter and buffer of ``module`` must be found, with the same shape: a partial load
    would silently train from a half-random model. Returns the number of tensors loaded.
    """
    from lavla.model.policy_io import WEIGHTS_FILE, read_weights, verify_weights

    path = Path(export_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no exported policy at {export_dir} (expected {path}; "
                                "create one with python -m lavla.launcher.export_policy)")
    verify_weights(export_dir)
    # read_weights restores tied aliases (stored once) and JSON extra state, as load_policy does.
    tensors = {k[len(src_prefix):]: v for k, v in read_weights(export_dir).items() if k.startswith(src_prefix)}
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    wrong = sorted(k for k in own if k in tensors and isinstance(own[k], torch.Tensor)
                   and tensors[k].shape != own[k].shape)
    if missing or wrong:
        detail = (f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} " if missing else "") + \
                 (f"shape mismatch {[(k, tuple(tensors[k].shape), tuple(own[k].shape)) for k in wrong[:5]]}" if wrong else "")
        raise ValueError(f"{what}: {path} does not match the configured model under prefix {src_prefix!r}: {detail}")
    if any(getattr(p, "ds_numel", None) is not None and p.numel() == 0 for p in module.parameters()):
        raise ValueError(f"{what}: parameters are already ZeRO-partitioned (trainer.zero_init=true); "
                         "load initial weights with trainer.zero_init=false")
    module.load_state_dict({k: tensors[k] for k in own}, strict=True)
    return len(own)


class LatentSource(nn.Module):
    """forward(batch) -> LatentTargets, from the online LAM or the batch's offline labels."""

    def __init__(self, cfg: LatentTargetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lam: nn.Module | None = None
        if cfg.source == "online":
            from lavla.model.lam import build_lam

            self.lam = build_lam(cfg.lam)
            if cfg.lam_init:
                load_exported_weights(self.lam, cfg.lam_init, "lam.", "latent.lam_init")
            elif not cfg.lam_trainable:
                log.warning("latent.lam_init is empty: the frozen online LAM is randomly initialised, so its latent "
                            "targets carry no motion information (fine for smoke tests, not for pretraining)")
            if not cfg.lam_trainable:
                self.lam.requires_grad_(False)
                self.lam.eval()
        lam = cfg.lam
        self.codes_per_step = cfg.codes_per_step or lam.num_queries
        self.num_codes = cfg.num_codes or lam.quantizer.num_codes
        self.code_dim = cfg.code_dim or lam.latent_dim
        if self.lam is not None and (self.codes_per_step, self.num_codes, self.code_dim) != (
                lam.num_queries, lam.quantizer.num_codes, lam.latent_dim):
            raise ValueError("latent.codes_per_step/num_codes/code_dim must match the online LAM "
                             f"({lam.num_queries}/{lam.quantizer.num_codes}/{lam.latent_dim}) or be 0")

    def train(self, mode: bool = True) -> "LatentSource":
        super().train(mode)
        if self.lam is not None and not self.cfg.lam_trainable:
            self.lam.eval()  # a frozen LAM neither counts code usage nor moves EMA codebooks
        return self

    def steps(self, action_horizon: int) -> int:
        """S: latent steps per sample."""
        return 1 if self.cfg.source == "online" else action_horizon

    def forward(self, batch: dict[str, Any]) -> LatentTargets:
        if self.lam is None:
            return self._offline(batch)
        trainable = self.cfg.lam_trainable
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            lam_loss, metrics, lat = self.lam(batch, return_latents=True)
        if not trainable:  # its losses are not optimised: keep only the codebook-health metrics
            lam_loss = lam_loss.detach()
            metrics = {k: v for k, v in metrics.items() if not k.startswith("loss/")}
        b = lat.ids.shape[0]
        valid = torch.ones(b, 1, dtype=torch.bool, device=lat.ids.device)
        return LatentTargets(lat.ids[:, None].long(), lat.quantized[:, None], lat.continuous[:, None], valid,
                             lam_loss, {k: v.detach() for k, v in metrics.items()})

    def _offline(self, batch: dict[str, Any]) -> LatentTargets:
        missing = [k for k in ("latent_ids", "latent_emb", "latent_valid", "has_latent") if k not in batch]
        if missing:
            raise KeyError(f"latent.source=offline needs the batch keys {missing}: set data.latent_labels to the "
                           "label store written by python -m lavla.launcher.annotate_latents")
        ids, emb = batch["latent_ids"].long(), batch["latent_emb"].float()
        if ids.shape[-1] != self.codes_per_step or emb.shape[-1] != self.code_dim:
            raise ValueError(f"latent labels have {ids.shape[-1]} codes x {emb.shape[-1]}-d per step; the model "
                             f"expects latent.codes_per_step={self.codes_per_step}, latent.code_dim={self.code_dim}")
        valid = batch["latent_valid"].bool() & batch["has_latent"].bool()[:, None]
        zero = emb.sum() * 0.0
        return LatentTargets(ids, emb, emb, valid, zero, {"latent/label_coverage": valid.float().mean().detach()})
