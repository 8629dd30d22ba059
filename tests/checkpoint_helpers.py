"""Reading trainer checkpoints in tests."""

from __future__ import annotations

from pathlib import Path

import torch


def fp32_params(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """The full fp32 parameters of a ZeRO checkpoint directory (buffers left out), on CPU."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    buffers = torch.load(next(ckpt_dir.glob("*model_states.pt")), weights_only=False)["buffer_names"]
    sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name)
    return {k: v for k, v in sd.items() if k not in buffers}
