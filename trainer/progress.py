"""A tqdm progress bar on rank 0 that log lines print above instead of through."""

from __future__ import annotations

import logging
import sys
from typing import Any


class _TqdmHandler(logging.Handler):
    """Routes log records through ``tqdm.write`` so they do not clobber the bar."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


class ProgressBar:
    """Steps done / total with the latest loss; a no-op off rank 0 or when stderr is not a terminal."""

    def __init__(self, enabled: bool, total: int, initial: int) -> None:
        self._bar = None
        self._handlers: list[tuple[logging.Handler, logging.Handler]] = []
        if not (enabled and sys.stderr.isatty()):
            return
        from tqdm import tqdm

        self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                         file=sys.stderr, leave=True)
        root = logging.getLogger()
        for h in list(root.handlers):
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stderr, sys.stdout):
                repl = _TqdmHandler(h.stream)
                repl.setFormatter(h.formatter)
                repl.setLevel(h.level)
                root.removeHandler(h)
                root.addHandler(repl)
                self._handlers.append((h, repl))

    def update(self, loss: float | None = None) -> None:
        if self._bar is None:
            return
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is None:
            return
        self._bar.close()
        root = logging.getLogger()
        for original, repl in self._handlers:
            root.removeHandler(repl)
            root.addHandler(original)
        self._bar = None
