"""The proprio a policy head sees: padding dims zeroed, and optionally whole vectors dropped in training.

A small policy that gets proprio learns the shortcut "act from where the arm is" and never learns to
look (measured on the synthetic world: all of the baseline's gain over the median predictor came
from proprio, and swapping images moved its actions by < 1%). Dropping the proprio of a fraction of
the training samples (zeros, as a robot without proprio would give) makes the images carry the task.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def policy_proprio(batch: dict[str, Any], *, dropout: float = 0.0, training: bool = False) -> Tensor:
    """``batch["proprio"]`` with dims outside ``proprio_dim_mask`` zeroed and, when ``training``,
    each sample's whole vector zeroed with probability ``dropout``."""
    proprio: Tensor = batch["proprio"]
    if "proprio_dim_mask" in batch:
        proprio = torch.where(batch["proprio_dim_mask"].bool(), proprio, torch.zeros_like(proprio))
    if training and dropout > 0.0:
        keep = torch.rand(proprio.shape[0], 1, device=proprio.device) >= dropout
        proprio = torch.where(keep, proprio, torch.zeros_like(proprio))
    return proprio
