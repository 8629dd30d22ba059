"""Nearest-code lookup for vector quantization: a PyTorch reference and a fused Triton kernel.

The operation: for every row ``z[n]`` find the code ``codebook[k]`` at the smallest squared
Euclidean distance, gather it, and report the squared error::

    ids[n]       = argmin_k ||z[n] - codebook[k]||^2      (int64)
    quantized[n] = codebook[ids[n]]                          (dtype of the codebook, exact copy)
    sq_err[n]    = ||z[n] - quantized[n]||^2                 (fp32)

Semantics shared by every backend in this module:

* **Scores.** Distances are ranked by ``score_k = ||e_k||^2 - 2 z.e_k`` computed in fp32; ``||z||^2``
  is constant per row and dropped. ``||e_k||^2`` is computed once per call in fp32.
* **Ties resolve to the lowest code index** (``torch.argmin`` semantics): duplicate codes, or any
  codes with bit-identical scores, map to the smallest ``k``.
* **Precision.** The reference upcasts z and the codebook to fp32. The Triton kernel feeds ``tl.dot``
  the inputs in their promoted dtype (bf16/fp16 use tensor cores with fp32 accumulation; fp32 is
  computed in IEEE fp32 unless ``allow_tf32=True``). For fp32 inputs the indices agree with the
  reference except where two scores differ by less than the rounding of a D-term dot product;
  with bf16/fp16 inputs validate by *index agreement rate*, not bitwise equality.
  ``sq_err`` is always recomputed from z and the gathered code in fp32 (no ``||z||^2 + score``
  cancellation).
* **Outputs are not differentiable** (computed under ``torch.no_grad``). For training use
  :func:`quantize_straight_through`.
* NaNs in the inputs give unspecified indices (the reference follows ``torch.argmin``).

Backends: :func:`nearest_code_reference` (chunked over N, bounded N x K working block),
:func:`nearest_code_naive` (``torch.cdist`` + argmin + gather; the benchmark baseline, materializes
N x K), and :func:`nearest_code_triton` (the fused kernel; never materializes N x K).
:func:`nearest_code` dispatches: Triton when ``z`` is on CUDA, or when ``TRITON_INTERPRET=1`` is set
and Triton imports (the interpreter runs the same kernel on CPU tensors); otherwise the reference.

``TRITON_INTERPRET`` is read by Triton when this module is imported (``triton.jit`` picks the
interpreted or compiled flavour at decoration time, for this kernel and for Triton's own
``tl.zeros``/``tl.min`` helpers alike), so set it before importing: changing it later has no effect
(see :data:`KERNEL_INTERPRETED`).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from lavla.kernels.codebook_reference import (  # noqa: F401  (one definition of the semantics, re-exported)
    DEFAULT_MAX_BLOCK_ELEMS,
    NearestCode,
    _check_inputs,
    _empty_result,
    _gather_and_err,
    codebook_sq_norms,
    nearest_code_reference,
)

try:  # Triton is an optional dependency (the ``gpu`` extra); CPU installs may lack it.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = [
    "HAS_TRITON",
    "KERNEL_INTERPRETED",
    "MAX_TRITON_DIM",
    "NearestCode",
    "STEOutput",
    "codebook_sq_norms",
    "nearest_code",
    "nearest_code_naive",
    "nearest_code_reference",
    "nearest_code_triton",
    "quantize_straight_through",
    "resolve_backend",
    "triton_launch_count",
]

#: Largest feature dimension the fused kernel handles (the z tile of BLOCK_N x next_pow2(D) stays
#: on chip for the whole codebook sweep). Larger D falls back to the reference (same semantics).
MAX_TRITON_DIM = 512

# Fixed block sizes used under TRITON_INTERPRET=1 (small: the interpreter runs tiles in numpy).
_INTERPRET_BLOCK_N = 16
_INTERPRET_BLOCK_K = 16

_launches = 0


def triton_launch_count() -> int:
    """Number of fused-kernel launches in this process (lets tests assert the kernel really ran)."""
    return _launches


def _interpret_enabled() -> bool:
    """Whether the kernel runs in Triton's interpreter (fixed when this module was imported)."""
    return KERNEL_INTERPRETED


@torch.no_grad()
def nearest_code_naive(z: Tensor, codebook: Tensor) -> NearestCode:
    """Baseline: ``torch.cdist`` (full ``N x K`` fp32 distance matrix) + argmin + gather.

    Same output contract as :func:`nearest_code_reference`; kept as the benchmark baseline because
    it is what most VQ code does. Its ranking comes from ``sqrt`` of cdist's own distance formula,
    so near-ties may resolve differently from the reference.
    """
    _check_inputs(z, codebook)
    z = z.detach()
    codebook = codebook.detach()
    if z.shape[0] == 0:
        return _empty_result(z, codebook)
    dist = torch.cdist(z.float(), codebook.float())
    ids = dist.argmin(dim=1)
    del dist
    quantized, sq_err = _gather_and_err(z, codebook, ids)
    return NearestCode(ids, quantized, sq_err)


# --------------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _nearest_code_kernel(
        z_ptr,
        cb_ptr,
        cb_norm_ptr,
        ids_ptr,
        q_ptr,
        err_ptr,
        N,
        K,
        D,
        stride_zn,
        stride_zd,
        stride_cn,
        stride_cd,
        stride_qn,
        stride_qd,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
        DOT_DTYPE: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
    ):
        """One program = BLOCK_N rows of z; streams the codebook in BLOCK_K tiles.

        Keeps a running (min score, argmin) per row -- the N x K score matrix is never stored --
        then gathers the winning code rows and writes ids, quantized and fp32 sq_err.
        """
        pid = tl.program_id(0)
        rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        row_mask = rows < N
        col_mask = cols < D
        zd_mask = row_mask[:, None] & col_mask[None, :]

        # The z block is loaded once and stays in registers for the whole codebook sweep.
        z = tl.load(z_ptr + rows[:, None] * stride_zn + cols[None, :] * stride_zd, mask=zd_mask, other=0.0)
        z_dot = z.to(DOT_DTYPE)

        best = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_N], dtype=tl.int32)
        offs_k = tl.arange(0, BLOCK_K)
        for k0 in range(0, K, BLOCK_K):
            codes = k0 + offs_k
            k_mask = codes < K
            # [BLOCK_D, BLOCK_K] view of the code tile (the transpose is in the addressing).
            e_t = tl.load(
                cb_ptr + codes[None, :].to(tl.int64) * stride_cn + cols[:, None] * stride_cd,
                mask=col_mask[:, None] & k_mask[None, :],
                other=0.0,
            )
            dots = tl.dot(z_dot, e_t.to(DOT_DTYPE), input_precision=INPUT_PRECISION, out_dtype=tl.float32)
            e_norm = tl.load(cb_norm_ptr + codes, mask=k_mask, other=0.0)
            scores = e_norm[None, :] - 2.0 * dots
            scores = tl.where(k_mask[None, :], scores, float("inf"))
            tile_min = tl.min(scores, axis=1)
            # Lowest index attaining the tile minimum (ties inside a tile -> lowest index).
            cand = tl.where(scores == tile_min[:, None], codes[None, :], 2147483647)
            tile_arg = tl.min(cand, axis=1)
            # Strict '<': an equal score in a later tile never replaces an earlier (lower) index.
            better = tile_min < best
            best = tl.where(better, tile_min, best)
            best_idx = tl.where(better, tile_arg, best_idx)

        # Gather the winning code rows (exact copy, codebook dtype) and the fp32 squared error.
        q = tl.load(
            cb_ptr + best_idx[:, None].to(tl.int64) * stride_cn + cols[None, :] * stride_cd,
            mask=zd_mask,
            other=0.0,
        )
        tl.store(q_ptr + rows[:, None] * stride_qn + cols[None, :] * stride_qd, q, mask=zd_mask)
        diff = z.to(tl.float32) - q.to(tl.float32)
        err = tl.sum(diff * diff, axis=1)
        tl.store(err_ptr + rows, err, mask=row_mask)
        tl.store(ids_ptr + rows, best_idx.to(tl.int64), mask=row_mask)

    def _next_pow2(x: int) -> int:
        return 1 << max(0, int(x) - 1).bit_length()

    # Small autotune space. BLOCK_N trades codebook re-reads (each program re-streams the whole
    # codebook from L2, so bigger is better) against registers/SMEM (the z tile is BLOCK_N x BLOCK_D).
    # Tiny codebooks (K <= 16) only keep the BLOCK_K=16 entries; large D keeps the small tiles.
    _AUTOTUNE_CONFIGS = [
        triton.Config({"BLOCK_N": 128, "BLOCK_K": 16}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_N": 256, "BLOCK_K": 16}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_N": 32, "BLOCK_K": 16}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_N": 512, "BLOCK_K": 16}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 128, "BLOCK_K": 32}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_N": 256, "BLOCK_K": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_N": 128, "BLOCK_K": 128}, num_warps=8, num_stages=3),
    ]

    # Register budget for the z tile (elements of BLOCK_N x BLOCK_D held per program).
    _MAX_Z_TILE_ELEMS = 256 * 128
    _smem_limit_cache: dict = {}

    def _smem_limit() -> int:
        """Opt-in shared memory per block of the current GPU (bytes); 160 KiB when unknown."""
        try:
            dev = torch.cuda.current_device()
        except Exception:
            return 160 * 1024
        if dev not in _smem_limit_cache:
            try:
                props = triton.runtime.driver.active.utils.get_device_properties(dev)
                _smem_limit_cache[dev] = int(props["max_shared_mem"])
            except Exception:
                _smem_limit_cache[dev] = 160 * 1024
        return _smem_limit_cache[dev]

    def _smem_estimate(block_n: int, block_k: int, block_d: int, stages: int, elt: int) -> int:
        # Fitted to Triton 3.9 sm_90 builds of this kernel: the z tile is staged once, the codebook
        # tile is multi-buffered (stages - 1 copies).
        return elt * (block_n * block_d + block_d * block_k * max(1, stages - 1))

    def _prune_configs(configs, named_args, **kwargs):
        k = int(named_args["K"])
        block_d = int(kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 16)))
        dot_dtype = kwargs.get("DOT_DTYPE", named_args.get("DOT_DTYPE"))
        elt = max(2, getattr(dot_dtype, "primitive_bitwidth", 32) // 8)
        k_cap = max(16, _next_pow2(k))
        smem = _smem_limit()

        def fits(c):
            bn, bk = c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
            return (
                bk <= k_cap
                and bn * block_d <= _MAX_Z_TILE_ELEMS
                and _smem_estimate(bn, bk, block_d, c.num_stages, elt) <= smem
            )

        kept = [c for c in configs if fits(c)]
        if not kept:  # always leave one: the smallest tile
            kept = [min(configs, key=lambda c: (c.kwargs["BLOCK_N"] * block_d, c.kwargs["BLOCK_K"]))]
        return kept

    _nearest_code_kernel_autotuned = triton.autotune(
        configs=_AUTOTUNE_CONFIGS,
        key=["K", "D"],
        prune_configs_by={"early_config_prune": _prune_configs},
    )(_nearest_code_kernel)

    def _get_kernel(interpret: bool):
        """The launchable kernel: the plain (interpreted) kernel or the autotuned compiled one."""
        return _nearest_code_kernel if interpret else _nearest_code_kernel_autotuned

    _TL_DTYPES = {
        torch.float32: tl.float32,
        torch.float16: tl.float16,
        torch.bfloat16: tl.bfloat16,
    }


def _is_interpreted_kernel() -> bool:
    if not HAS_TRITON:
        return False
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except Exception:  # pragma: no cover - Triton layout changed
        return False
    return isinstance(_nearest_code_kernel, InterpretedFunction)


#: True when Triton was imported with ``TRITON_INTERPRET=1``: the kernel then runs in Triton's numpy
#: interpreter (CPU or CUDA tensors). Fixed at import time.
KERNEL_INTERPRETED: bool = _is_interpreted_kernel()


@torch.no_grad()
def nearest_code_triton(
    z: Tensor,
    codebook: Tensor,
    *,
    code_sq_norms: Optional[Tensor] = None,
    allow_tf32: bool = False,
) -> NearestCode:
    """Fused Triton nearest-code lookup (see module docstring for semantics).

    The dot products run in ``torch.promote_types(z.dtype, codebook.dtype)`` with fp32 accumulation;
    fp32 dots are IEEE fp32 unless ``allow_tf32``. Block sizes are autotuned on CUDA (keyed on K, D)
    and fixed small under the interpreter.

    Args:
        z: ``[N, D]`` float32/float16/bfloat16 (any strides).
        codebook: ``[K, D]`` float32/float16/bfloat16 (any strides), same device as z.
        code_sq_norms: optional precomputed fp32 ``[K]`` code norms (:func:`codebook_sq_norms`).
        allow_tf32: let fp32 dots use TF32 tensor cores (faster, loses exact fp32 agreement).

    Raises:
        RuntimeError: Triton is not installed, or z is on CPU without the interpreter, or D exceeds
            :data:`MAX_TRITON_DIM`.
    """
    global _launches
    if not HAS_TRITON:
        raise RuntimeError("nearest_code_triton needs Triton (pip install triton)")
    _check_inputs(z, codebook)
    interpret = _interpret_enabled()
    if not interpret and not z.is_cuda:
        raise RuntimeError(
            "the compiled Triton kernel needs CUDA tensors; for CPU export TRITON_INTERPRET=1 before "
            "importing kernels.codebook"
        )
    n, d = z.shape
    k = codebook.shape[0]
    if d > MAX_TRITON_DIM:
        raise RuntimeError(f"D={d} exceeds MAX_TRITON_DIM={MAX_TRITON_DIM}; use nearest_code_reference")
    dot_dtype = torch.promote_types(z.dtype, codebook.dtype)
    if dot_dtype not in _TL_DTYPES:
        raise TypeError(f"unsupported dtypes z={z.dtype} codebook={codebook.dtype} (need fp32/fp16/bf16)")
    z = z.detach()
    codebook = codebook.detach()
    if n == 0:
        return _empty_result(z, codebook)
    norms = codebook_sq_norms(codebook) if code_sq_norms is None else code_sq_norms
    norms = norms.detach().to(device=z.device, dtype=torch.float32).contiguous()
    if norms.shape != (k,):
        raise ValueError(f"code_sq_norms must have shape ({k},), got {tuple(norms.shape)}")

    ids = torch.empty(n, dtype=torch.int64, device=z.device)
    quantized = torch.empty(n, d, dtype=codebook.dtype, device=z.device)
    sq_err = torch.empty(n, dtype=torch.float32, device=z.device)
    block_d = max(16, _next_pow2(d))
    # input_precision only matters for fp32 operands; bf16/fp16 dots get the compiler default.
    if dot_dtype == torch.float32:
        precision = "tf32" if allow_tf32 else "ieee"
    else:
        precision = "tf32"
    args = (
        z, codebook, norms, ids, quantized, sq_err, n, k, d,
        z.stride(0), z.stride(1), codebook.stride(0), codebook.stride(1),
        quantized.stride(0), quantized.stride(1),
    )  # fmt: skip
    kernel = _get_kernel(interpret)
    if interpret:
        # Triton's interpreter stores bf16 as uint16 and tl.dot multiplies the bit patterns
        # (triton-lang/triton#11584, "not supported yet"): upcast bf16 dot operands to fp32 there.
        # The values are exact in fp32, so this only changes accumulation order vs the GPU path.
        interp_dot = tl.float32 if dot_dtype == torch.bfloat16 else _TL_DTYPES[dot_dtype]
        grid = (triton.cdiv(n, _INTERPRET_BLOCK_N),)
        kernel[grid](
            *args,
            BLOCK_N=_INTERPRET_BLOCK_N,
            BLOCK_K=_INTERPRET_BLOCK_K,
            BLOCK_D=block_d,
            DOT_DTYPE=interp_dot,
            INPUT_PRECISION=precision,
        )
    else:
        with torch.cuda.device(z.device):
            grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
            kernel[grid](
                *args,
                BLOCK_D=block_d,
                DOT_DTYPE=_TL_DTYPES[dot_dtype],
                INPUT_PRECISION=precision,
                # Explicit (silences Triton 3.9's default-change warning). Fusion is harmless here:
                # ||e||^2 - 2 z.e is exact under FMA because the factor 2 is a power of two.
                enable_fp_fusion=True,
            )
    _launches += 1
    return NearestCode(ids, quantized, sq_err)


def resolve_backend(z: Tensor, codebook: Optional[Tensor] = None) -> str:
    """Which backend :func:`nearest_code` would use for these inputs: ``"triton"`` or ``"reference"``."""
    if not HAS_TRITON:
        return "reference"
    if codebook is not None and torch.promote_types(z.dtype, codebook.dtype) not in _TL_DTYPES:
        return "reference"
    if z.dim() == 2 and z.shape[1] > MAX_TRITON_DIM:
        return "reference"
    if z.is_cuda or _interpret_enabled():
        return "triton"
    return "reference"


def nearest_code(
    z: Tensor,
    codebook: Tensor,
    *,
    code_sq_norms: Optional[Tensor] = None,
    backend: str = "auto",
) -> NearestCode:
    """Nearest code for every row of ``z``: ``(ids int64 [N], quantized [N, D], sq_err fp32 [N])``.

    ``backend="auto"`` uses the fused Triton kernel for CUDA tensors (or under ``TRITON_INTERPRET=1``
    when Triton imports) and the chunked fp32 reference otherwise; ``"triton"`` / ``"reference"`` /
    ``"naive"`` force one. Ties resolve to the lowest code index. Outputs are detached.
    """
    if backend == "auto":
        backend = resolve_backend(z, codebook)
    if backend == "triton":
        return nearest_code_triton(z, codebook, code_sq_norms=code_sq_norms)
    if backend == "reference":
        return nearest_code_reference(z, codebook, code_sq_norms=code_sq_norms)
    if backend == "naive":
        return nearest_code_naive(z, codebook)
    raise ValueError(f"unknown backend {backend!r}; expected auto, triton, reference or naive")


# --------------------------------------------------------------------------------------------
# Straight-through estimator
# --------------------------------------------------------------------------------------------


class STEOutput(NamedTuple):
    """Result of :func:`quantize_straight_through`."""

    quantized: Tensor
    """Forward value = gathered codes (shape of z, dtype promote(z, codebook)); backward = identity to z."""
    ids: Tensor
    """int64, shape ``z.shape[:-1]``."""
    loss: Tensor
    """fp32 scalar ``codebook_loss + beta * commitment_loss``."""
    codebook_loss: Tensor
    """fp32 scalar ``mean((q - sg[z])^2)``: trains the codebook only."""
    commitment_loss: Tensor
    """fp32 scalar ``mean((z - sg[q])^2)``: trains the encoder only (unweighted)."""


class _StraightThroughVQ(torch.autograd.Function):
    """Forward: nearest-code lookup. Backward: straight-through to z, index_add onto code rows.

    Outputs ``(out, ids, codebook_loss, commitment_loss)``. Both losses equal ``mean((z - q)^2)``
    in value; their gradients differ (stop-gradient on opposite sides). ``q`` is not saved: it is
    re-gathered from ``ids`` in backward, so saved memory is z + ids.
    """

    @staticmethod
    def forward(ctx, z: Tensor, codebook: Tensor, backend: str):
        res = nearest_code(z, codebook, backend=backend)
        numel = z.numel()
        mse = res.sq_err.sum() / max(numel, 1)
        out_dtype = torch.promote_types(z.dtype, codebook.dtype)
        out = res.quantized.to(out_dtype)
        ctx.save_for_backward(z, codebook, res.ids)
        ctx.mark_non_differentiable(res.ids)
        return out, res.ids, mse, mse.clone()

    @staticmethod
    def backward(ctx, g_out, _g_ids, g_cb_loss, g_commit):
        z, codebook, ids = ctx.saved_tensors
        numel = max(z.numel(), 1)
        grad_z = grad_cb = None
        need_z, need_cb = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if need_z or need_cb:
            q32 = codebook.detach().index_select(0, ids).float()
            diff = q32 - z.detach().float()  # q - z, fp32 [N, D]
        if need_z:
            gz = g_out.float() if g_out is not None else torch.zeros_like(diff)
            if g_commit is not None:
                gz = gz - (2.0 / numel) * g_commit.float() * diff  # + beta * 2 (z - q) / numel
            grad_z = gz.to(z.dtype)
        if need_cb:
            grad_cb32 = torch.zeros(codebook.shape, dtype=torch.float32, device=codebook.device)
            if g_cb_loss is not None:
                grad_cb32.index_add_(0, ids, (2.0 / numel) * g_cb_loss.float() * diff)
            grad_cb = grad_cb32.to(codebook.dtype)
        return grad_z, grad_cb, None


def quantize_straight_through(
    z: Tensor,
    codebook: Tensor,
    beta: float = 0.25,
    *,
    backend: str = "auto",
) -> STEOutput:
    """VQ-VAE quantization with the straight-through estimator, without an N x K one-hot.

    Forward value of ``quantized`` equals ``z + (q - z).detach()`` (it is exactly ``q``, without the
    rounding of that expression). Gradients:

    * ``dL/dz = dL/dquantized + beta * 2 (z - q) / z.numel() * dL/dloss`` (commitment term),
    * ``dL/dcodebook[k] = sum_{n: ids[n]=k} 2 (q_n - z_n) / z.numel() * dL/dloss`` (codebook term),
      scattered with ``index_add_``.

    Args:
        z: ``[..., D]`` encoder outputs; leading dims are flattened for the lookup.
        codebook: ``[K, D]`` codes (a parameter for the gradient-trained codebook; for EMA codebooks
            pass a buffer and use only ``commitment_loss``).
        beta: commitment weight in ``loss``.
        backend: forwarded to :func:`nearest_code`.

    Returns:
        :class:`STEOutput` ``(quantized, ids, loss, codebook_loss, commitment_loss)``. The two terms
        are returned separately so other weightings compose from them (e.g. taming/Moto
        ``legacy=True``: ``commitment_loss + beta * codebook_loss``).
    """
    if z.dim() < 1 or z.shape[-1] != codebook.shape[-1]:
        raise ValueError(f"z must be [..., D] with D={codebook.shape[-1]}, got {tuple(z.shape)}")
    lead = z.shape[:-1]
    out, ids, cb_loss, commit = _StraightThroughVQ.apply(z.reshape(-1, z.shape[-1]), codebook, backend)
    loss = cb_loss + beta * commit
    return STEOutput(out.reshape(*lead, z.shape[-1]), ids.reshape(lead), loss, cb_loss, commit)
