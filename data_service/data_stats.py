"""Data-side counters the trainer logs each window (``stats.pop()``).

The key set is fixed and identical for every client kind (in-process thread or Ray service), so
every rank returns the same keys every step: the trainer averages them over ranks with one
collective over a fixed-length list.
"""

from __future__ import annotations

import threading
import time

STAT_KEYS = (
    "data/samples",
    "data/samples_per_s",
    "data/skipped",
    "data/decode_s",
    "data/decode_ms_per_sample",
    "data/wait_s",
    "data/queue_depth",
    "data/requests_reissued",
)
"""Keys of :meth:`DataStats.pop`, always all present."""


class DataStats:
    """Thread-safe counters of one rank's data client, reset by :meth:`pop`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        self.samples = 0
        """Samples delivered to the trainer since the last pop."""
        self.skipped = 0
        """Bad samples replaced (``on_bad_sample: skip``) since the last pop."""
        self.decode_s = 0.0
        """Seconds spent reading + decoding this rank's samples (summed over workers)."""
        self.wait_s = 0.0
        """Seconds the trainer blocked in ``next_micro_batch``."""
        self.reissued = 0
        """Decode requests re-issued because their decoder died."""
        self._depth_sum = 0.0
        self._depth_n = 0

    def add(self, *, samples: int = 0, skipped: int = 0, decode_s: float = 0.0, wait_s: float = 0.0,
            reissued: int = 0) -> None:
        with self._lock:
            self.samples += samples
            self.skipped += skipped
            self.decode_s += decode_s
            self.wait_s += wait_s
            self.reissued += reissued

    def observe_depth(self, ready_batches: int) -> None:
        """Records how many micro batches were ready when the trainer asked for one."""
        with self._lock:
            self._depth_sum += ready_batches
            self._depth_n += 1

    def pop(self) -> dict[str, float]:
        with self._lock:
            now = time.perf_counter()
            elapsed = max(now - self._t0, 1e-9)
            out = {
                "data/samples": float(self.samples),
                "data/samples_per_s": self.samples / elapsed,
                "data/skipped": float(self.skipped),
                "data/decode_s": self.decode_s,
                "data/decode_ms_per_sample": 1e3 * self.decode_s / self.samples if self.samples else 0.0,
                "data/wait_s": self.wait_s,
                "data/queue_depth": self._depth_sum / self._depth_n if self._depth_n else 0.0,
                "data/requests_reissued": float(self.reissued),
            }
            self._t0 = now
            self.samples = self.skipped = self.reissued = self._depth_n = 0
            self.decode_s = self.wait_s = self._depth_sum = 0.0
        return out
