"""Small JSON caches that live next to a dataset, or in a user cache dir when it is read-only.

Writes are atomic (temp file + ``os.replace``) so concurrent ranks building the same cache never
read a half-written file; the last writer wins and all writers produce the same content.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lavla.data_service.atomic import atomic_write_json


def user_cache_dir() -> Path:
    """``$LAVLA_CACHE_DIR``, else ``$XDG_CACHE_HOME/latent_vla``, else ``~/.cache/latent_vla``."""
    if os.environ.get("LAVLA_CACHE_DIR"):
        return Path(os.environ["LAVLA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "latent_vla"


def stable_hash(obj: Any) -> str:
    """Hex SHA-1 of the canonical JSON of ``obj`` (order-independent for dict keys)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def cache_candidates(dataset_dir: Path, filename: str) -> list[Path]:
    """Where a cache file for ``dataset_dir`` may live, in preference order."""
    key = hashlib.sha1(str(Path(dataset_dir).resolve()).encode("utf-8")).hexdigest()[:16]
    return [Path(dataset_dir) / filename, user_cache_dir() / "datasets" / key / filename]


def load_json_cache(candidates: list[Path], fingerprint: str) -> dict[str, Any] | None:
    """The first cached object whose ``fingerprint`` matches, else None (stale or unreadable is a miss)."""
    for path in candidates:
        try:
            with open(path, encoding="utf-8") as f:
                obj = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict) and obj.get("fingerprint") == fingerprint:
            return obj
    return None


def store_json_cache(candidates: list[Path], obj: dict[str, Any]) -> Path | None:
    """Writes ``obj`` to the first writable candidate; None if none is (the cache is an optimization)."""
    for path in candidates:
        try:
            atomic_write_json(path, obj)
            return path
        except OSError:
            continue
    return None
