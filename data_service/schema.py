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
==================  ==================  =====================================================
"""

from __future__ import annotations

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
"""Keys holding torch tensors; ``language`` is the only non-tensor field."""

LIST_KEYS = ("language",)
"""Keys holding python lists of length B."""
