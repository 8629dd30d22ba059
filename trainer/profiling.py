"""``--profile.steps=a:b``: a torch.profiler trace of steps a..b and a throughput report.

Output under ``<run.dir>/profile/``:

* ``trace_rank<r>.json.gz``   chrome trace (open in https://ui.perfetto.dev or chrome://tracing);
* ``throughput.md``           step-time breakdown, throughput, FLOPs/MFU, memory, top operators;
* ``step_breakdown.png``      stacked bars of data wait / forward / backward / optimizer / other per step.

The profiler is started at the beginning of step a and stopped after step b (no schedule):
profiling a handful of consecutive steps is the use case, and the steps before a are warm-up.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from lavla.trainer.config import ProfileConfig

log = logging.getLogger(__name__)


class StepProfiler:
    """Drives torch.profiler over a window of steps and writes the trace and report when it closes."""

    def __init__(self, cfg: ProfileConfig, run_dir: Path, rank: int) -> None:
        self.window = cfg.window()
        self.cfg = cfg
        self.out_dir = run_dir / "profile"
        self.rank = rank
        self.traced = cfg.all_ranks or rank == 0
        self._prof: Any = None
        self.steps: list[dict[str, float]] = []
        """Per-step phase seconds of the profiled steps (filled by the trainer)."""
        self.done = False

    @property
    def enabled(self) -> bool:
        return self.window is not None

    def active(self, step: int) -> bool:
        """True if ``step`` (1-based) is inside the profiled window."""
        return self.window is not None and self.window[0] <= step <= self.window[1]

    def step_started(self, step: int) -> None:
        if self.window is None or step != self.window[0] or self._prof is not None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.traced:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self._prof = profile(activities=activities, record_shapes=self.cfg.record_shapes,
                                 profile_memory=self.cfg.profile_memory, with_stack=self.cfg.with_stack)
            self._prof.__enter__()
        log.info("profiling steps %d..%d", *self.window)

    def step_finished(self, step: int, phases: dict[str, float]) -> bool:
        """Record a finished step; returns True when this step closed the window (write the report)."""
        if not self.active(step):
            return False
        self.steps.append({"index": float(step), **phases})
        if step != self.window[1]:  # type: ignore[index]
            return False
        self.stop()
        return True

    def stop(self) -> None:
        """Stop and export the trace (also used when a run ends inside the window)."""
        if self._prof is None:
            return
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        trace = self.out_dir / f"trace_rank{self.rank}.json.gz"
        prof.export_chrome_trace(str(trace))
        self.top_ops = _top_ops_table(prof)
        self.done = True
        log.info("profiler trace written to %s", trace)

    top_ops: str = ""


def _top_ops_table(prof: Any, rows: int = 15) -> str:
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    try:
        return prof.key_averages().table(sort_by=sort, row_limit=rows)
    except Exception:  # the table is a convenience; the trace is the artefact
        log.warning("could not summarize the profiler trace", exc_info=True)
        return ""
