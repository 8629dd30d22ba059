"""The one attention entry point used by every transformer in the project.

``attention(q, k, v)`` takes ``[B, heads, T, Dh]`` tensors and dispatches to flash-attn-4
(``flash_attn.cute``, Hopper/Blackwell), flash-attn 2 (Ampere+) or PyTorch SDPA. Flash kernels
are only used where they are exact drop-ins: CUDA, fp16/bf16, no arbitrary mask. Everything else
(CPU, fp32, padding masks) goes to SDPA, which is also the reference the GPU paths are tested
against.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Backend = Literal["flash_attn_4", "flash_attn_2", "sdpa"]
BACKENDS: tuple[str, ...] = ("flash_attn_4", "flash_attn_2", "sdpa")

# Import results (including failures) are cached: a failed import costs milliseconds each time
# and some CUDA extensions print warnings on every attempt.
_IMPORT_CACHE: dict[str, Callable[..., object] | None] = {}
_forced: str | None = os.environ.get("LAVLA_ATTN_BACKEND") or None
_last_backend: str | None = None


def _load(backend: str) -> Callable[..., object] | None:
    """Return the flash kernel for ``backend`` or None when it cannot be imported (cached)."""
    if backend not in _IMPORT_CACHE:
        fn: Callable[..., object] | None
        try:
            if backend == "flash_attn_4":
                from flash_attn.cute import flash_attn_func as fn  # type: ignore[no-redef]
            elif backend == "flash_attn_2":
                from flash_attn import flash_attn_func as fn  # type: ignore[no-redef]
            else:
                fn = None
        except Exception:  # ImportError, but also CUDA/driver errors raised at import time
            fn = None
        _IMPORT_CACHE[backend] = fn
    return _IMPORT_CACHE[backend]


def available_backends() -> list[str]:
    """Backends importable in this process (SDPA always is)."""
    return [b for b in BACKENDS if b == "sdpa" or _load(b) is not None]


def set_attention_backend(backend: str | None) -> None:
    """Force a backend (``None`` restores automatic dispatch). Also settable via LAVLA_ATTN_BACKEND."""
    global _forced
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    _forced = backend


def last_backend() -> str | None:
    """The backend chosen by the most recent ``attention`` call (for logs and tests)."""
    return _last_backend


def select_backend(q: Tensor, *, mask: Tensor | None = None, dropout_p: float = 0.0) -> str:
    """Pick the backend for these inputs; a forced flash backend that cannot run raises."""
    flash_ok = (
        mask is None
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[-1] <= 256
        and q.shape[-1] % 8 == 0
    )
    if _forced is not None:
        if _forced != "sdpa" and (not flash_ok or _load(_forced) is None):
            raise RuntimeError(
                f"attention backend forced to {_forced!r} but it cannot run here "
                f"(installed={_load(_forced) is not None}, cuda={q.is_cuda}, dtype={q.dtype}, "
                f"mask={'yes' if mask is not None else 'no'})"
            )
        return _forced
    if not flash_ok:
        return "sdpa"
    major, _ = torch.cuda.get_device_capability(q.device)
    # FA4 has no dropout; it targets sm90/sm100.
    if major >= 9 and dropout_p == 0.0 and _load("flash_attn_4") is not None:
        return "flash_attn_4"
    if major >= 8 and _load("flash_attn_2") is not None:
        return "flash_attn_2"
    return "sdpa"


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
) -> Tensor:
    """Scaled dot-product attention on ``[B, heads, T, Dh]``; returns ``[B, heads, Tq, Dh]``.

    ``mask``: bool (True = attend) or additive float, broadcastable to ``[B, heads, Tq, Tk]``.
    Every query row must be allowed at least one key (an all-masked row is NaN under SDPA).
    ``causal`` assumes Tq == Tk (flash and SDPA align non-square causal masks differently).
    """
    global _last_backend
    backend = select_backend(q, mask=mask, dropout_p=dropout_p)
    _last_backend = backend
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
    fn = _load(backend)
    assert fn is not None
    # Flash kernels take [B, T, heads, Dh]; transposing keeps the last dim contiguous.
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    if backend == "flash_attn_4":
        out = fn(qt, kt, vt, causal=causal)
    else:
        out = fn(qt, kt, vt, dropout_p=dropout_p, causal=causal)
    if isinstance(out, tuple):  # FA4 returns (out, lse)
        out = out[0]
    return out.transpose(1, 2)


def reference_attention(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """Plain-math attention in fp32: the parity reference for every backend."""
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if causal:
        tq, tk = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    return (scores.softmax(-1) @ v.float()).to(q.dtype)
