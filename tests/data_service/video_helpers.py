"""Tiny videos whose pixels encode their frame index, so tests can assert which frame was decoded."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from lavla.data_service.video.codec import write_video


def index_frame(i: int, h: int = 32, w: int = 32) -> np.ndarray:
    """A flat colour encoding ``i`` in [0, 64): R and G carry its base-8 digits in steps of 32,
    far apart enough to survive lossy encoding and resizing."""
    if not 0 <= i < 64:
        raise ValueError("index_frame encodes 0..63")
    return np.broadcast_to(np.array([32 * (i % 8) + 16, 32 * (i // 8) + 16, 128], np.uint8), (h, w, 3)).copy()


def frame_index(img: np.ndarray) -> int:
    """Inverse of :func:`index_frame` for an HWC or CHW frame (mean colour of its centre)."""
    a = np.asarray(img, np.float64)
    if a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    h, w = a.shape[:2]
    r, g = a[h // 4: 3 * h // 4, w // 4: 3 * w // 4, :2].reshape(-1, 2).mean(0)
    return int(round((r - 16) / 32)) + 8 * int(round((g - 16) / 32))


def indexed_video(path: Path, n: int, *, fps: float = 10.0, h: int = 32, w: int = 32, **kw: object) -> Path:
    """A video of ``n`` frames 0..n-1 (``kw``: codec, gop, start_pts, faststart, crf)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, (index_frame(i, h, w) for i in range(n)), fps, **kw)  # type: ignore[arg-type]


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f)
        wr.writerow(["path", "instruction"])
        wr.writerows(rows)
    return path


def csv_dataset(root: Path, lengths: list[int], *, fps: float = 10.0, split: str = "train", **kw: object) -> Path:
    """``root/videos/clip<i>.mp4`` with ``lengths[i]`` indexed frames + ``root/<split>.csv``."""
    rows = []
    for i, n in enumerate(lengths):
        rel = f"videos/clip{i}.mp4"
        indexed_video(root / rel, n, fps=fps, **kw)
        rows.append((rel, f"do thing {i}"))
    write_csv(root / f"{split}.csv", rows)
    return root
