"""Tiny numpy renderers for logged images (HxWx3 uint8): image grids and code-usage histograms."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ALIVE = np.array([40, 90, 200], np.uint8)
DEAD = np.array([210, 50, 40], np.uint8)
BACKGROUND = np.array([245, 245, 245], np.uint8)


def to_uint8_image(img: Tensor) -> np.ndarray:
    """``[3,H,W]`` uint8, or float in [-1,1] -> ``[H,W,3]`` uint8."""
    if img.dtype != torch.uint8:
        img = ((img.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return img.permute(1, 2, 0).cpu().numpy()


def image_grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Equal-size ``[H,W,3]`` tiles in rows -> one image with ``pad`` white pixels between tiles."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) - pad, ncol * (w + pad) - pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            out[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = tile
    return out


def usage_histogram_image(counts: Tensor, alive: Tensor | None = None, height: int = 64, bar_width: int = 4) -> np.ndarray:
    """Bar chart of per-code counts (linear, max = full height); bars of dead codes in red."""
    c = counts.detach().float().cpu().numpy()
    k = len(c)
    live = np.ones(k, bool) if alive is None else alive.detach().cpu().numpy().astype(bool)
    out = np.empty((height, k * bar_width, 3), np.uint8)
    out[:] = BACKGROUND
    top = c.max() if c.size and c.max() > 0 else 1.0
    for i in range(k):
        bar = int(round((height - 1) * c[i] / top)) if c[i] > 0 else 0
        bar = max(bar, 1)  # a 1-pixel stub marks even unused codes
        out[height - bar :, i * bar_width : (i + 1) * bar_width - 1] = ALIVE if live[i] else DEAD
    return out
