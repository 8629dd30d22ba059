"""Fault injection for the resilience tests (test-only; inert unless ``LAVLA_FAULTS`` is set).

``LAVLA_FAULTS`` is a comma-separated list of ``kind:step`` entries (steps are 1-based optimizer
steps, as logged):

* ``kill_in_save:N``  every rank SIGKILLs itself while saving step N, after its DeepSpeed and RNG
  files are written and before the checkpoint is marked complete;
* ``kill_at_step:N``  every rank SIGKILLs itself at the start of step N (mid-training);
* ``kill_in_upload:N`` every rank SIGKILLs itself while uploading staged checkpoint N, after its
  files are copied and before it reports its part (``checkpoint.staging_dir``);
* ``nan_at_step:N``   the float tensors of rank 0's first micro batch of step N become NaN
  (e.g. ``nan_at_step:3,nan_at_step:5``), to exercise the non-finite step skip;
* ``slow_steps:MS``   every step sleeps MS milliseconds first, so that a short test job lives long
  enough for nodes to leave and join it (the elastic tests).

Checked only at those points, so a run without the variable pays one dict lookup.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import torch

ENV = "LAVLA_FAULTS"


def _parse(spec: str) -> set[tuple[str, int]]:
    out = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, step = item.partition(":")
        if kind not in ("kill_in_save", "kill_at_step", "kill_in_upload", "nan_at_step", "slow_steps") \
                or not step.isdigit():
            raise ValueError(f"{ENV}: bad entry {item!r} (expected kill_in_save:N, kill_at_step:N, nan_at_step:N "
                             "or slow_steps:MS)")
        out.add((kind, int(step)))
    return out


def _active(kind: str, step: int) -> bool:
    spec = os.environ.get(ENV)
    return bool(spec) and (kind, step) in _parse(spec)


def maybe_kill(kind: str, step: int) -> None:
    """SIGKILL this process if ``kind:step`` is requested (no cleanup, no flush: a real crash)."""
    if _active(kind, step):
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_slow() -> None:
    """Sleep ``slow_steps:MS`` milliseconds if requested."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for kind, ms in _parse(spec):
        if kind == "slow_steps":
            time.sleep(ms / 1000)


def maybe_poison_batch(batch: dict[str, Any], step: int, rank: int, micro: int) -> dict[str, Any]:
    """NaN in every float tensor of rank 0's first micro batch of ``step`` if ``nan_at_step:step``."""
    if rank != 0 or micro != 0 or not _active("nan_at_step", step):
        return batch
    return {k: (torch.full_like(v, float("nan")) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for k, v in batch.items()}
