"""Throughput numbers of a logging window: samples/s, tokens/s, TFLOP/s and MFU.

Tokens of a VLA are not text tokens. A model says what it counts by returning a ``tokens``
metric (tokens in the micro batch: e.g. image patches + instruction + action tokens) or by a
``tokens_per_sample`` attribute (a number, or a method returning one); otherwise a sample counts
as one token and ``tokens_per_s`` equals ``samples_per_s`` (the record says which with
``tokens_per_sample``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn


def tokens_per_sample(module: nn.Module, reduced: Mapping[str, float], micro_batch_size: int) -> float:
    if "tokens" in reduced:  # mean tokens per micro batch per rank
        return reduced["tokens"] / micro_batch_size
    attr = getattr(module, "tokens_per_sample", None)
    if attr is not None:
        return float(attr() if callable(attr) else attr)
    return 1.0


@dataclass
class ThroughputModel:
    """Constants of the run that turn step counts and seconds into rates."""

    global_batch_size: int
    world_size: int
    grad_accum: int
    flops_per_micro_step: int | None = None
    """Model FLOPs of one micro step (forward + backward) on one rank; None until measured."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device; None on CPU or unknown GPUs (no MFU)."""

    def rates(self, steps: int, seconds: float, tokens_per_sample: float) -> dict[str, Any]:
        seconds = max(seconds, 1e-12)
        samples_per_s = steps * self.global_batch_size / seconds
        out: dict[str, Any] = {
            "samples_per_s": samples_per_s,
            "tokens_per_s": samples_per_s * tokens_per_sample,
            "tokens_per_sample": tokens_per_sample,
            "tflops": None,
            "mfu": None,
        }
        if self.flops_per_micro_step is not None:
            per_device = self.flops_per_micro_step * self.grad_accum * steps / seconds
            out["flops_per_step"] = float(self.flops_per_micro_step * self.grad_accum * self.world_size)
            out["tflops"] = per_device / 1e12  # per device
            if self.peak_flops:
                out["mfu"] = per_device / self.peak_flops
        return out
