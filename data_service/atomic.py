"""One atomic file write for the whole project: readers see the old file or the new one, never a
half-written one, and a crash leaves no temporary file behind.

The bytes go to a unique temporary file in the target's directory (same filesystem, so the final
``os.replace`` is atomic; unique, so concurrent writers never share one), are flushed and, unless
the caller opts out, fsynced before the rename; the directory is fsynced after it so the rename
itself survives a power cut. It lives in data_service, the lowest layer, so every layer can use it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, data: str | bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically, creating its directory.

    ``durable=False`` skips both fsyncs: for files rewritten every step (the heartbeat) where losing
    the newest version in a power cut costs nothing, and an fsync per step would cost time.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = None, durable: bool = True) -> None:
    """:func:`atomic_write` of ``json.dumps(obj)``."""
    atomic_write(path, json.dumps(obj, indent=indent), durable=durable)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories; the file itself is synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
