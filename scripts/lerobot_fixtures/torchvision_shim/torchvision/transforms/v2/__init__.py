from __future__ import annotations

import torch

from . import functional

__all__ = ["Compose", "Identity", "Transform", "functional"]


class Transform(torch.nn.Module):
    def forward(self, *inputs):
        return inputs[0] if len(inputs) == 1 else inputs


class Identity(Transform):
    pass


class Compose(Transform):
    def __init__(self, transforms) -> None:
        super().__init__()
        self.transforms = list(transforms)

    def forward(self, x):
        for t in self.transforms:
            x = t(x)
        return x
