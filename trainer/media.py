"""Images a model wants logged: ``model.media(batch) -> {name: HxWx3 uint8}`` -> PNGs (+ wandb).

The trainer calls ``media`` on every rank, because under ZeRO-3 running the model gathers
parameters collectively; only rank 0 writes files.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from lavla.model.recipe import Recipe

log = logging.getLogger(__name__)


def has_media(module: nn.Module) -> bool:
    return isinstance(module, Recipe) and module.capabilities.logs_media


def collect_media(module: nn.Module, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """Run ``module.media(batch)`` without gradients and validate what comes back."""
    was_training = module.training
    try:
        with torch.no_grad():
            images = module.media(batch)  # type: ignore[operator]
    finally:
        module.train(was_training)
    out = {}
    for name, img in dict(images).items():
        arr = np.asarray(img)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise ValueError(f"{type(module).__name__}.media()['{name}'] must be HxWx(1|3|4) uint8, "
                             f"got {arr.dtype} {arr.shape}")
        out[name] = arr
    return out


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "image"


def write_pngs(media_dir: Path, step: int, images: Mapping[str, np.ndarray]) -> list[Path]:
    """``<media_dir>/<name>_step<step>.png`` for each image ('/' in names becomes '_')."""
    from PIL import Image

    media_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, arr in images.items():
        path = media_dir / f"{_file_stem(name)}_step{step:08d}.png"
        Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(path)
        paths.append(path)
    return paths
