"""build_model: recipe config + data config -> the nn.Module the trainer wraps in one engine.

Each recipe registers its builder next to its code with ``@register_builder(ConfigClass)``; the
recipe modules are imported lazily here (listed in ``RECIPE_MODULES``) so importing the config
never pulls in torch model code it does not need.

``lavla.model`` holds nn.Modules only (no distributed code). ZeRO-3 rules every module follows: a
parameter is only read inside the forward of the module that owns it, and every submodule runs on
every step whatever the batch holds (mask, never skip).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch.nn as nn

from lavla.data_service.config import DataConfig
from lavla.model.config import ModelConfig

Builder = Callable[[Any, DataConfig], nn.Module]

BUILDERS: dict[type, Builder] = {}
"""Recipe config class -> builder, filled by ``register_builder``."""

RECIPE_MODULES = (
    "lavla.model.recipes.lara",
    "lavla.model.recipes.lam_pretrain",
    "lavla.model.recipes.pixels_to_tokens",
    "lavla.model.recipes.lapa",
    "lavla.model.recipes.action_tokenizer",
)
"""Modules whose import registers builders (missing optional ones are skipped)."""


def register_builder(config_cls: type) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        BUILDERS[config_cls] = fn
        return fn

    return deco


def require_equal(pairs: list[tuple[str, Any, str, Any]]) -> None:
    """Raise one error listing every (model field, value, data field, value) pair that differs."""
    bad = [f"model.{mf}={mv} != data.{df}={dv}" for mf, mv, df, dv in pairs if mv != dv]
    if bad:
        raise ValueError("model and data configs disagree: " + "; ".join(bad))


def _load_recipes() -> None:
    for name in RECIPE_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real missing dependency inside the module, not an absent recipe
                raise


def build_model(model_cfg: ModelConfig, data_cfg: DataConfig) -> nn.Module:
    """Validate the model against the data shapes and build the recipe module (fp32, CPU)."""
    _load_recipes()
    builder = next((BUILDERS[c] for c in type(model_cfg).__mro__ if c in BUILDERS), None)
    if builder is None:
        known = ", ".join(sorted(c.__name__ for c in BUILDERS))
        raise ValueError(f"no model builder for {type(model_cfg).__name__}; known: {known}")
    return builder(model_cfg, data_cfg)
