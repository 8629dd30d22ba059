"""No silent waits: a context that says what a blocking call is waiting for while it waits."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

REPORT_EVERY_S = 30.0
"""Seconds between reports: a wait shorter than this prints nothing."""


@contextmanager
def report_while_waiting(what: str, every_s: float | None = None,
                         emit: Callable[[str], None] | None = None) -> Iterator[None]:
    """Run the body; every ``every_s`` seconds (``REPORT_EVERY_S``) it is still running, print
    ``waiting for <what> (<n> s so far)`` to stderr (or pass it to ``emit``).

    The report comes from a daemon thread, so it works around calls that block in C (a TCP
    rendezvous, a compiler, ``fcntl.flock``) and never keeps the process alive.
    """
    every_s = REPORT_EVERY_S if every_s is None else every_s
    out = emit or (lambda msg: print(msg, file=sys.stderr, flush=True))
    done = threading.Event()
    start = time.monotonic()

    def report() -> None:
        while not done.wait(every_s):
            out(f"waiting for {what} ({time.monotonic() - start:.0f} s so far)")

    thread = threading.Thread(target=report, name="report-while-waiting", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=1.0)
