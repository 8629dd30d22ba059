"""FLOPs measured on a real training step, and peak device FLOP/s for MFU.

The 6N rule does not hold for a VLA: frozen towers cost a forward only (~2N per token, no weight
gradients), image and latent-action tokens are not text tokens, and attention over long visual
sequences adds FLOPs that N misses. So the trainer counts what one forward + backward actually
executes (``torch.utils.flop_counter.FlopCounterMode``: matmuls, convolutions, attention), once,
on its first micro step, and reuses that number. Recomputation by activation checkpointing is
subtracted: MFU uses model FLOPs, not executed FLOPs. The optimizer update is not counted.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from lavla.trainer.activation_checkpointing import count_recompute_flops

# Dense bf16 tensor-core peak per device. Order matters: the first substring found in
# ``torch.cuda.get_device_name()`` wins, so specific variants precede the family name.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM (reported as e.g. "NVIDIA H100 80GB HBM3")
    ("A100", 312e12),
)


def _register_cpu_attention_flops() -> None:
    """FlopCounterMode knows the CUDA SDPA kernels but not the CPU one, so CPU runs (tests, FLOP
    counts of full-size models without a GPU) would miss every attention's QK^T and AV."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is None or fwd in fc.flop_registry:
        return

    @fc.register_flop_formula(fwd, get_raw=True)
    def _forward(query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query.shape, key.shape, value.shape)

    if bwd is not None and bwd not in fc.flop_registry:
        @fc.register_flop_formula(bwd, get_raw=True)
        def _backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
            return fc.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


_register_cpu_attention_flops()


def peak_flops_for(device_name: str) -> float | None:
    """Peak bf16 dense FLOP/s of a GPU named like ``torch.cuda.get_device_name()``; None if unknown."""
    for key, peak in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def device_peak_flops(override_tflops: float = 0.0) -> tuple[str, float | None]:
    """(device name, peak FLOP/s or None). CPU runs have no meaningful peak, hence no MFU."""
    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    if override_tflops > 0:
        return name, override_tflops * 1e12
    return name, peak_flops_for(name)


@dataclass
class StepFlops:
    """FLOPs of one micro step (forward + backward) on one rank."""

    total: int
    """Model FLOPs (executed minus activation-checkpoint recomputation)."""
    recompute: int
    """FLOPs re-executed by activation checkpointing (not in ``total``)."""


@contextlib.contextmanager
def count_flops() -> Iterator[Callable[[], StepFlops]]:
    """Count FLOPs of the code inside; the yielded function returns them after the block."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    result: list[StepFlops] = []
    with count_recompute_flops() as recompute, counter:
        yield lambda: result[0]
    executed = int(counter.get_total_flops())
    result.append(StepFlops(total=executed - int(recompute[0]), recompute=int(recompute[0])))


def forward_flops_by_child(module: torch.nn.Module, run: Callable[[], object]) -> dict[str, int]:
    """Forward FLOPs of each direct child of ``module`` (by attribute name), plus ``other`` for what
    runs in ``module`` itself (losses, glue), while ``run()`` calls ``module`` (or a wrapper around
    it, such as a DeepSpeed engine) once. The forward runs with autograd on (FlopCounterMode's module
    tracker cannot hook a parameter passed as an argument under ``no_grad``); its graph is dropped.

    Forward only: FlopCounterMode credits a backward op to the module only for some modules (never
    to one whose output is a loss), while forward counts are inclusive along the module tree. A
    child reached only through a method (``lam.encode(x)`` runs ``lam``'s submodules but not
    ``lam`` itself) gets the sum of its outermost counted submodules."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run()
    counts = {k: int(sum(v.values())) for k, v in counter.get_flop_counts().items() if k != "Global"}
    children = [name for name, _ in module.named_children()]
    roots = {".".join(parts[:i]) for parts in (k.split(".") for k in counts)
             for i in range(1, len(parts)) if parts[i] in children}
    if not roots:
        return {}
    root = min(roots, key=lambda k: (k.count("."), k))  # the module's own path (under any wrapper)
    out: dict[str, int] = {}
    for child in children:
        base = f"{root}.{child}"
        under = [k for k in counts if k == base or k.startswith(base + ".")]
        outermost = [k for k in under if not any(k.startswith(j + ".") for j in under)]
        if sum(counts[k] for k in outermost):
            out[child] = sum(counts[k] for k in outermost)
    out["other"] = counts.get(root, 0) - sum(out.values())
    return out
