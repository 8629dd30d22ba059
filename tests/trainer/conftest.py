"""Puts this directory on sys.path so tests import their multi-process worker modules (``tp_*_workers``)
by bare name, which is how spawned processes find them again."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
