"""Let megatron-core's tensor-parallel code run on CPU (gloo), for tests and for laptops.

megatron-core 0.16 assumes CUDA in a few places outside the math: it allocates communication
buffers on ``torch.cuda.current_device()``, keeps its dropout RNG streams in CUDA generators, and
synchronizes CUDA before barriers. On a CPU-only torch each of those raises "Torch not compiled
with CUDA enabled". :func:`install` patches exactly those calls to their CPU meaning; it is a no-op
where CUDA exists, so a GPU run never sees it. Idempotent.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

_installed = False


def _cpu_device() -> torch.device:
    return torch.device("cpu")


def install() -> bool:
    """Patch megatron-core's CUDA calls for CPU. Returns True if patches were applied."""
    global _installed
    if torch.cuda.is_available():
        return False
    if _installed:
        return True
    from megatron.core.tensor_parallel import random as mp_random

    # Buffers for all-gather / reduce-scatter (sequence parallel, gathered linears) and attention
    # masks are allocated with device=torch.cuda.current_device(): on CPU that device is the CPU.
    torch.cuda.current_device = _cpu_device  # type: ignore[assignment]
    # Megatron synchronizes CUDA before its group barriers; there is nothing to wait for on CPU.
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    # The RNG tracker (dropout inside TP regions, recompute) saves and restores "CUDA" generator
    # states; on CPU the stream to fork is the CPU default generator.
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()  # type: ignore[assignment]
    torch.cuda.manual_seed = lambda seed: torch.manual_seed(seed)  # type: ignore[assignment]
    mp_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mp_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    _installed = True
    log.info("megatron-core CPU shim installed (no CUDA): buffers, RNG streams and syncs on CPU")
    return True
