"""PyTorch reference of the nearest-code lookup (torch only: importing it never imports Triton).

The fused kernel's module (parity target, CPU fallback) and the quantizers' CPU path share this one
definition of the semantics: fp32 scores ``||e||^2 - 2 z.e``, ties to the lowest code index, and a
bounded ``rows x K`` working set instead of the full ``N x K`` matrix.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

#: Default bound on the number of fp32 score elements the chunked reference holds at once (64 MiB).
DEFAULT_MAX_BLOCK_ELEMS = 1 << 24

class NearestCode(NamedTuple):
    """Result of a nearest-code lookup (all tensors detached)."""

    ids: Tensor
    """int64 [N]: index of the nearest code (lowest index on ties)."""
    quantized: Tensor
    """[N, D] in the codebook's dtype: the gathered code rows."""
    sq_err: Tensor
    """fp32 [N]: ||z - quantized||^2 computed in fp32."""


def _check_inputs(z: Tensor, codebook: Tensor) -> None:
    if z.dim() != 2 or codebook.dim() != 2:
        raise ValueError(
            f"nearest_code expects z [N, D] and codebook [K, D]; got z {tuple(z.shape)}, "
            f"codebook {tuple(codebook.shape)} (flatten leading dims of z first)"
        )
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(f"dimension mismatch: z has D={z.shape[1]}, codebook has D={codebook.shape[1]}")
    if codebook.shape[0] == 0:
        raise ValueError("codebook is empty (K=0)")
    if z.device != codebook.device:
        raise ValueError(f"z is on {z.device} but codebook is on {codebook.device}")
    for name, t in (("z", z), ("codebook", codebook)):
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def codebook_sq_norms(codebook: Tensor) -> Tensor:
    """fp32 squared L2 norm of every code row, ``[K]``. Shared by all backends so scores agree."""
    with torch.no_grad():
        cb = codebook.detach().float()
        return (cb * cb).sum(dim=1)


def _empty_result(z: Tensor, codebook: Tensor) -> NearestCode:
    n, d = z.shape
    return NearestCode(
        torch.empty(n, dtype=torch.int64, device=z.device),
        torch.empty(n, d, dtype=codebook.dtype, device=z.device),
        torch.empty(n, dtype=torch.float32, device=z.device),
    )


def _gather_and_err(z: Tensor, codebook: Tensor, ids: Tensor) -> Tuple[Tensor, Tensor]:
    quantized = codebook.index_select(0, ids)
    diff = z.float() - quantized.float()
    return quantized, (diff * diff).sum(dim=1)


@torch.no_grad()
def nearest_code_reference(
    z: Tensor,
    codebook: Tensor,
    *,
    code_sq_norms: Optional[Tensor] = None,
    max_block_elems: int = DEFAULT_MAX_BLOCK_ELEMS,
) -> NearestCode:
    """Memory-lean fp32 reference: ``argmin_k (||e_k||^2 - 2 z.e_k)`` chunked over N.

    At most ``max(1, max_block_elems // K)`` rows are scored at once, so the working set is one
    bounded ``rows x K`` fp32 block (plus an fp32 copy of that chunk of z when z is not fp32), never
    the full ``N x K`` matrix. Ties resolve to the lowest code index.

    Args:
        z: ``[N, D]`` floating-point inputs.
        codebook: ``[K, D]`` floating-point codes.
        code_sq_norms: optional precomputed :func:`codebook_sq_norms` (fp32 ``[K]``).
        max_block_elems: bound on the score block size (elements).

    Returns:
        :class:`NearestCode` ``(ids int64 [N], quantized [N, D] codebook dtype, sq_err fp32 [N])``.
    """
    _check_inputs(z, codebook)
    z = z.detach()
    codebook = codebook.detach()
    n, _ = z.shape
    k = codebook.shape[0]
    if n == 0:
        return _empty_result(z, codebook)
    norms = codebook_sq_norms(codebook) if code_sq_norms is None else code_sq_norms.float()
    cb32 = codebook.float()
    cb32_t = cb32.t()
    rows = max(1, int(max_block_elems) // k)
    ids = torch.empty(n, dtype=torch.int64, device=z.device)
    for start in range(0, n, rows):
        zc = z[start : start + rows].float()
        # scores = ||e||^2 - 2 z.e (one bounded [rows, K] block); argmin keeps the first minimum.
        scores = torch.addmm(norms, zc, cb32_t, beta=1.0, alpha=-2.0)
        torch.argmin(scores, dim=1, out=ids[start : start + rows])
        del scores
    quantized, sq_err = _gather_and_err(z, codebook, ids)
    return NearestCode(ids, quantized, sq_err)
