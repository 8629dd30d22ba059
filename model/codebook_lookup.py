"""Nearest-code lookup used by every quantizer: the fused Triton kernel where it runs, else a PyTorch reference.

``nearest_code(z, codebook) -> (ids, quantized, sq_err)``
  z         float32 [N, D]  vectors to quantize
  codebook  float32 [K, D]
  ids       int64   [N]     argmin_k ||z - c_k||^2 (ties -> lowest index)
  quantized float32 [N, D]  codebook[ids] (quantizers re-gather from ``ids`` for gradients)
  sq_err    float32 [N]     ||z - codebook[ids]||^2, detached (metrics, dead-code restart)

Dispatch (:func:`lookup_backend`): ``kernels.codebook.nearest_code`` (fused, never materializes
N x K) for CUDA inputs, or on CPU when Triton's interpreter was enabled (``TRITON_INTERPRET=1``
before the kernel module was imported); :func:`nearest_code_reference` otherwise. The kernel module
is imported lazily so a CPU process never pays for importing Triton.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def nearest_code_reference(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """PyTorch reference: ||z||^2 - 2 z.c + ||c||^2, argmin over codes."""
    if z.dim() != 2 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"nearest_code expects z [N,D] and codebook [K,D], got {tuple(z.shape)} and {tuple(codebook.shape)}")
    with torch.no_grad():
        zd, cd = z.detach(), codebook.detach()
        dist = zd.pow(2).sum(1, keepdim=True) - 2.0 * zd @ cd.t() + cd.pow(2).sum(1)[None]
        sq_err, ids = dist.min(dim=1)
        sq_err = sq_err.clamp_min(0.0)  # the expansion can go slightly negative in fp32
    return ids, F.embedding(ids, codebook), sq_err


def _kernel_module() -> Any | None:
    """``kernels.codebook`` if Triton imports, else None (imported on first use only)."""
    try:
        from kernels import codebook as kernel
    except Exception:  # a broken/missing Triton install must not break CPU training
        return None
    return kernel if kernel.HAS_TRITON else None


def lookup_backend(z: Tensor, codebook: Tensor) -> str:
    """``"triton"`` or ``"reference"``: what :func:`nearest_code` uses for these inputs."""
    if not (z.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return "reference"  # no Triton import on plain CPU runs
    kernel = _kernel_module()
    if kernel is None:
        return "reference"
    return "triton" if kernel.resolve_backend(z, codebook) == "triton" else "reference"


def nearest_code(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest code per row of ``z`` through the fastest available backend (see module docstring)."""
    if lookup_backend(z, codebook) == "triton":
        kernel = _kernel_module()
        assert kernel is not None
        res = kernel.nearest_code(z, codebook, backend="triton")
        return res.ids, res.quantized, res.sq_err
    return nearest_code_reference(z, codebook)
