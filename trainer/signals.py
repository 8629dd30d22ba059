"""Preemption signals: SLURM sends SIGUSR1 (``--signal=USR1@grace``) or SIGTERM before it kills a job.

The handler only sets a flag; the training loop checks it at step boundaries (collectively, so
every rank saves the same step) and exits cleanly after a checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class PreemptionFlag:
    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name = ""

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.signal_name = signal.Signals(signum).name
        log.warning("received %s: will checkpoint and exit at the end of this step", self.signal_name)
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()
