from __future__ import annotations

import numpy as np
import torch

from . import v2

__all__ = ["ToTensor", "v2"]


class ToTensor:
    """HWC uint8 (PIL or array) -> CHW float in [0, 1], as torchvision's."""

    def __call__(self, pic) -> torch.Tensor:
        arr = np.asarray(pic)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
        return t.float().div(255) if t.dtype == torch.uint8 else t.float()
