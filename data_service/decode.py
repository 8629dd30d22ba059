"""Encoded frame -> uint8 CHW array at the model's resolution (Pillow; no TensorFlow)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_service.errors import DataError


def decode_image(data: bytes, size: int, *, bgr: bool = False, file: str | None = None,
                 episode: int | None = None, field: str | None = None) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 ``[3, size, size]`` RGB.

    ``bgr``: the dataset stored BGR; channels are flipped so every source delivers RGB. Resizing
    uses bilinear filtering with Pillow's antialiasing (a box-like prefilter when shrinking).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot decode image ({len(data)} bytes): {e}", file=file, episode=episode, field=field) from e
    if bgr:
        arr = arr[:, :, ::-1]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
