"""Load a trained model from a run or checkpoint directory without DeepSpeed engines or ranks.

A checkpoint (``<run>/checkpoints/step_XXXXXXXX``, see ``trainer/checkpoint.py``) holds the resolved
``config.yaml`` and the engine's (possibly ZeRO-3-partitioned) state; DeepSpeed's
``zero_to_fp32`` consolidates the partitions into one fp32 state dict (parameters, frozen
parameters and persistent buffers such as codebook statistics) on CPU.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch.nn as nn

from trainer.checkpoint import is_complete, list_complete


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory: ``path`` itself, or the newest complete one of the run at ``path``."""
    p = Path(path)
    if is_complete(p):
        return p
    if (p / "checkpoints").is_dir():
        complete = list_complete(p / "checkpoints")
        if not complete:
            raise FileNotFoundError(f"{p}: the run has no complete checkpoint under checkpoints/")
        return complete[-1].path
    if p.is_dir() and (p / "config.yaml").is_file():
        raise FileNotFoundError(f"{p}: checkpoint is incomplete (no COMPLETE marker); it may have been cut off")
    raise FileNotFoundError(f"{p}: neither a run directory (with checkpoints/) nor a checkpoint directory")


def load_trained_model(path: str | Path) -> tuple[nn.Module, Any, Path]:
    """``(model in eval mode on CPU, resolved PretrainConfig, checkpoint dir)`` for a run or checkpoint dir."""
    with contextlib.redirect_stdout(sys.stderr):  # importing deepspeed logs its accelerator choice on stdout
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from model.factory import build_model
    from trainer.config_io import load_config

    ckpt = resolve_checkpoint(path)
    cfg = load_config(["--config", str(ckpt / "config.yaml")])
    model = build_model(cfg.model, cfg.data)
    with contextlib.redirect_stdout(sys.stderr):  # zero_to_fp32 reports progress on stdout; keep it for results
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{ckpt}: checkpoint does not match the model built from its config.yaml "
                           f"(missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]})")
    return model.eval(), cfg, ckpt
