"""Step-time breakdown (data wait, forward, backward, optimizer) and peak memory.

Phases are wall-clock ``perf_counter`` spans around the engine calls. On CUDA those calls return
once kernels are queued, so without ``sync`` a phase measures launch time and the wait shows up
in whichever later call synchronizes; ``sync=True`` (``logging.sync_timing``, always on in
profiling runs) makes each phase exact at some cost in overlap.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections import defaultdict
from typing import Iterator

import torch

PHASES = ("data", "forward", "backward", "optimizer")
"""Timed phases of a step; the rest of the step (metrics, hooks, checkpoints) is ``other``."""


class StepTimer:
    """Seconds per phase, per step and summed over a logging window."""

    def __init__(self, sync: bool = False) -> None:
        self.sync = sync
        self._step: dict[str, float] = defaultdict(float)
        self._window: dict[str, float] = defaultdict(float)
        self._step_t0 = time.perf_counter()

    @property
    def sync(self) -> bool:
        return self._sync

    @sync.setter
    def sync(self, value: bool) -> None:
        self._sync = value and torch.cuda.is_available()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self._step[name] += time.perf_counter() - t0

    def end_step(self) -> dict[str, float]:
        """Close the current step: its seconds per phase, ``other`` and ``step`` (wall time since
        the previous ``end_step``)."""
        now = time.perf_counter()
        out = {p: self._step.get(p, 0.0) for p in PHASES}
        out["step"] = now - self._step_t0
        out["other"] = max(0.0, out["step"] - sum(out[p] for p in PHASES))
        for k, v in out.items():
            self._window[k] += v
        self._step.clear()
        self._step_t0 = now
        return out

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside (periodic evaluation, say) counts towards no step: neither the wall time
        of the step that follows nor, through it, samples/s."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._step_t0 += time.perf_counter() - t0

    def pop_window(self, steps: int) -> dict[str, float]:
        """Mean seconds per step of each phase since the last pop, as ``time/<phase>_s``."""
        n = max(1, steps)
        out = {f"time/{k}_s": self._window.get(k, 0.0) / n for k in (*PHASES, "other", "step")}
        out["time/window_s"] = self._window.get("step", 0.0)
        self._window.clear()
        return out


def peak_memory_gib(reset: bool = True) -> dict[str, float]:
    """Peak memory since the last reset: CUDA allocated/reserved, and the process's max RSS."""
    out: dict[str, float] = {}
    if torch.cuda.is_available():
        out["memory/max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["memory/max_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        if reset:
            torch.cuda.reset_peak_memory_stats()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS; never reset
    out["memory/max_rss_gib"] = rss / (2**30 if sys.platform == "darwin" else 2**20)
    return out
