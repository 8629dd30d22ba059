"""Nearest-code lookup: the PyTorch reference behind the signature a Triton kernel will implement.

``nearest_code(z, codebook) -> (ids, quantized, sq_err)``
  z         float32 [N, D]  vectors to quantize
  codebook  float32 [K, D]
  ids       int64   [N]     argmin_k ||z - c_k||^2 (ties -> lowest index)
  quantized float32 [N, D]  codebook[ids]; differentiable w.r.t. ``codebook`` (not w.r.t. z)
  sq_err    float32 [N]     ||z - codebook[ids]||^2, detached (metrics, dead-code restart)

A fused kernel only needs to produce ``ids`` (and sq_err); ``quantized`` is an embedding gather so
the codebook gradient comes from autograd either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nearest_code(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """PyTorch reference: ||z||^2 - 2 z.c + ||c||^2, argmin over codes."""
    if z.dim() != 2 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"nearest_code expects z [N,D] and codebook [K,D], got {tuple(z.shape)} and {tuple(codebook.shape)}")
    with torch.no_grad():
        zd, cd = z.detach(), codebook.detach()
        dist = zd.pow(2).sum(1, keepdim=True) - 2.0 * zd @ cd.t() + cd.pow(2).sum(1)[None]
        sq_err, ids = dist.min(dim=1)
        sq_err = sq_err.clamp_min(0.0)  # the expansion can go slightly negative in fp32
    return ids, F.embedding(ids, codebook), sq_err
