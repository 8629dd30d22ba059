"""Where a benchmark figure came from: commit, date and command, also on a machine without git.

A GPU machine often gets a copy of the working tree without ``.git``; the launching side then
passes the commit in ``BENCH_COMMIT`` (``bench/gpu_suite.sh`` documents this).
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(module: str, argv: list[str] | None = None) -> dict[str, Any]:
    """``git_commit`` (``BENCH_COMMIT`` wins over git), ``git_dirty`` (None when unknown), UTC ``date``
    and the ``command`` that reproduces the figure (``python -m MODULE ARGS``)."""
    commit = os.environ.get("BENCH_COMMIT") or _git("rev-parse", "HEAD")
    status = None if os.environ.get("BENCH_COMMIT") else _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)]),
    }
