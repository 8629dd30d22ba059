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

from torch import Tensor

from lavla.kernels.codebook_reference import nearest_code_reference as _reference


def nearest_code_reference(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """PyTorch reference (``kernels.codebook_reference``: chunked, never the full N x K matrix)."""
    ids, quantized, sq_err = _reference(z, codebook)
    return ids, quantized, sq_err


def _kernel_module() -> Any | None:
    """``kernels.codebook`` if Triton imports, else None (imported on first use only)."""
    try:
        from lavla.kernels import codebook as kernel
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
