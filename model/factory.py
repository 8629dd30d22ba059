"""build_model: recipe config + data config -> the nn.Module the trainer wraps in one engine."""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from data_service.config import DataConfig
from model.config import LamPretrainConfig, LaraConfig, ModelConfig
from model.lam_config import LapaLamPretrainConfig, UnivlaLamPretrainConfig


def _require_equal(pairs: list[tuple[str, Any, str, Any]]) -> None:
    bad = [f"model.{mf}={mv} != data.{df}={dv}" for mf, mv, df, dv in pairs if mv != dv]
    if bad:
        raise ValueError("model and data configs disagree: " + "; ".join(bad))


def _lam_pairs(lam: Any, data: DataConfig) -> list[tuple[str, Any, str, Any]]:
    return [("lam.image_size", lam.image_size, "image_size", data.image_size)]


def _build_lara(cfg: LaraConfig, data: DataConfig) -> nn.Module:
    from model.recipes.lara import LaraPolicy

    _require_equal(
        [
            ("backbone.image_size", cfg.backbone.image_size, "image_size", data.image_size),
            *_lam_pairs(cfg.lam, data),
            ("head.action_horizon", cfg.head.action_horizon, "action_horizon", data.action_horizon),
            ("head.action_dim", cfg.head.action_dim, "max_action_dim", data.max_action_dim),
            ("head.proprio_dim", cfg.head.proprio_dim, "max_proprio_dim", data.max_proprio_dim),
        ]
    )
    return LaraPolicy(cfg)


def _build_lam(cfg: LamPretrainConfig | LapaLamPretrainConfig | UnivlaLamPretrainConfig, data: DataConfig) -> nn.Module:
    from model.recipes.lam_pretrain import LamPretrainPolicy

    _require_equal(_lam_pairs(cfg.lam, data))
    return LamPretrainPolicy(cfg)


BUILDERS: dict[type, Callable[[Any, DataConfig], nn.Module]] = {
    LaraConfig: _build_lara,
    LamPretrainConfig: _build_lam,
    LapaLamPretrainConfig: _build_lam,
    UnivlaLamPretrainConfig: _build_lam,
}
"""Recipe config class -> builder; later recipes (LAPA, Pixels-to-Tokens) register here."""


def build_model(model_cfg: ModelConfig, data_cfg: DataConfig) -> nn.Module:
    """Validate the model against the data shapes and build the recipe module (fp32, CPU)."""
    builder = BUILDERS.get(type(model_cfg))
    if builder is None:
        known = ", ".join(sorted(c.__name__ for c in BUILDERS))
        raise ValueError(f"no model builder for {type(model_cfg).__name__}; known: {known}")
    return builder(model_cfg, data_cfg)
