"""What a restart cost: the old group's last step, the new group's first, and what was replayed.

Rank 0 keeps ``<run.dir>/heartbeat.json`` current after every optimizer step (step, wall time,
world size; one small atomic write). The next attempt of the job, at the same size after a crash
or at another size after an elastic resize, reads it before it trains and so knows:

* ``resize/old_world_size`` -> ``resize/new_world_size``;
* ``resize/steps_replayed``: steps the old group completed after the checkpoint resumed from;
* ``resize/downtime_s``: from the old group's last completed step to the new group's first;
* ``resize/seconds_lost``: from the old group's last completed step until the new group is past
  it again, less the one step of new work in that span (downtime plus replay).

The event goes into the metrics record of the step where the new group passes the old one (so to
metrics.jsonl and wandb), and to the log at the first step.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lavla.data_service.atomic import atomic_write_json

log = logging.getLogger(__name__)

HEARTBEAT_FILE = "heartbeat.json"


@dataclass(frozen=True)
class LastProgress:
    """The previous attempt's last completed step, as its heartbeat recorded it."""

    step: int
    """Optimizer steps it had completed."""
    time: float
    """Wall time (``time.time()``) when it completed that step."""
    world_size: int
    """Ranks it ran with."""


def read_last_progress(run_dir: Path) -> LastProgress | None:
    path = Path(run_dir) / HEARTBEAT_FILE
    try:
        raw = json.loads(path.read_text())
        return LastProgress(step=int(raw["step"]), time=float(raw["time"]), world_size=int(raw["world_size"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:  # a torn write cannot happen (atomic), a hand edit can
        log.warning("ignoring %s (%s): the restart's cost is not reported", path, e)
        return None


class Heartbeat:
    """Rank 0's record of the newest completed step (the other ranks hold a disabled one)."""

    def __init__(self, run_dir: Path, world_size: int, enabled: bool) -> None:
        self.path = Path(run_dir) / HEARTBEAT_FILE
        self.world_size, self.enabled = world_size, enabled

    def beat(self, step: int, now: float | None = None) -> None:
        if not self.enabled:
            return
        # Not durable: losing the newest beat in a power cut costs one step's report, not an fsync a step.
        atomic_write_json(self.path, {"step": step, "time": time.time() if now is None else now,
                                      "world_size": self.world_size}, durable=False)


class RestartReport:
    """The cost of the restart this attempt began with; fed every completed step."""

    def __init__(self, previous: LastProgress, resumed_step: int, world_size: int, announce: bool = True) -> None:
        self.previous, self.resumed_step, self.world_size = previous, resumed_step, world_size
        self.announce = announce
        """Log the restart at its first step (rank 0 only: one line per restart)."""
        self.steps_replayed = max(0, previous.step - resumed_step)
        self.first_step_time: float | None = None
        self.done = False

    @property
    def resized(self) -> bool:
        return self.previous.world_size != self.world_size

    def step_done(self, step: int, step_seconds: float, now: float | None = None) -> dict[str, Any] | None:
        """The event's metrics once this attempt has passed the previous one's last step, else None."""
        if self.done:
            return None
        now = time.time() if now is None else now
        if self.first_step_time is None:
            self.first_step_time = now
            if self.announce:
                log.warning("%s %d -> %d ranks from the step %d checkpoint, %d step(s) to replay; first step %.1f s "
                            "after the old group's last (step %d)", "resized" if self.resized else "restarted",
                            self.previous.world_size, self.world_size, self.resumed_step, self.steps_replayed,
                            now - self.previous.time, self.previous.step)
        if step <= self.previous.step:
            return None
        self.done = True
        return {
            "resize/time": now,
            "resize/old_world_size": self.previous.world_size,
            "resize/new_world_size": self.world_size,
            "resize/resumed_from_step": self.resumed_step,
            "resize/steps_replayed": self.steps_replayed,
            "resize/downtime_s": self.first_step_time - self.previous.time,
            "resize/seconds_lost": max(0.0, now - self.previous.time - step_seconds),
        }
