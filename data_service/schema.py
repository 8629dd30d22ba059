"""The one batch schema every source produces and every recipe consumes.

A batch is a ``dict[str, Any]`` holding one rank's micro batch (B samples). Images travel as
uint8 (4x less transport than float) and are normalized inside the model; actions and proprio
arrive already normalized by the dataset statistics.

==================  ==================  =====================================================
key                 dtype / shape       meaning
==================  ==================  =====================================================
sample_id           int64  [B]          global index in the sample plan (exact-resume checks)
image_primary       uint8  [B,3,H,W]    primary camera at step t
image_future        uint8  [B,3,H,W]    primary camera at step t+H (LAM target frame)
image_wrist         uint8  [B,3,H,W]    wrist camera at t (zeros where ``has_wrist`` is False)
has_wrist           bool   [B]          whether ``image_wrist`` holds a real image
proprio             float32 [B,P]       normalized proprio at t, zero-padded to P
proprio_dim_mask    bool   [B,P]        real (True) vs padded (False) proprio dims
action              float32 [B,N,A]     normalized action chunk a_t..a_{t+N-1}, padded to A
action_valid        bool   [B,N]        step inside the episode (False past its end)
action_dim_mask     bool   [B,A]        real (True) vs padded (False) action dims
has_action          bool   [B]          False for action-less sources (human video)
embodiment_id       int64  [B]          index into the embodiment-specific head weights
dataset_id          int64  [B]          index of the source dataset in the mixture
language            list[str] (len B)   natural-language instruction
latent_ids          int64  [B,N,Q]      LAM token ids of steps t..t+N-1 (index clamped to T-1)
latent_emb          float32 [B,N,Q,D]   the LAM embeddings stored with those ids
latent_valid        bool   [B,N]        step inside the episode (False past its end)
has_latent          bool   [B]          the store labels this dataset (False: zeros above)
==================  ==================  =====================================================

The four ``latent_*``/``has_latent`` keys are present only when ``data.latent_labels`` names a
latent-label store (``data_service.latents.store``, written by ``launcher/annotate_latents.py``);
Q and D are the store's tokens per step and embedding width. They are read for the same step
indices as the action chunk, from the sample's (dataset, episode, t) identity, for robot and
human-video datasets alike (a clip's episode is its index in the split). A dataset the store has
no labels for gets ``has_latent`` False, all-False ``latent_valid`` and zeros.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TENSOR_KEYS = (
    "sample_id",
    "image_primary",
    "image_future",
    "image_wrist",
    "has_wrist",
    "proprio",
    "proprio_dim_mask",
    "action",
    "action_valid",
    "action_dim_mask",
    "has_action",
    "embodiment_id",
    "dataset_id",
)
"""Keys holding torch tensors in every batch; ``language`` is the only non-tensor field."""

LIST_KEYS = ("language",)
"""Keys holding python lists of length B."""

LATENT_KEYS = ("latent_ids", "latent_emb", "latent_valid", "has_latent")
"""Tensor keys present only when ``data.latent_labels`` is set (see the table)."""

OPTIONAL_TENSOR_KEYS = LATENT_KEYS
"""Tensor keys a sample or batch may carry in addition to ``TENSOR_KEYS``."""


def tensor_keys(sample: Mapping[str, Any]) -> tuple[str, ...]:
    """The tensor keys of a sample or batch: ``TENSOR_KEYS`` plus the optional ones it holds."""
    return TENSOR_KEYS + tuple(k for k in OPTIONAL_TENSOR_KEYS if k in sample)


def supervision_mask(batch: Mapping[str, Any]) -> Any:
    """[B,N,A] bool tensor of the action entries a loss may use: real action dim AND step inside the
    episode AND sample has actions (human video has none)."""
    return (batch["action_dim_mask"].bool()[:, None, :] & batch["action_valid"].bool()[:, :, None]
            & batch["has_action"].bool()[:, None, None])
