"""build_model: recipe config + data config -> the Recipe module the trainer wraps in one engine.

The recipe's config names its builder (``lavla.model.registry``); the builder's module is imported
only here, so loading a config never pulls in torch model code it does not need.

``lavla.model`` holds nn.Modules only (no distributed code). ZeRO-3 rules every module follows: a
parameter is only read inside the forward of the module that owns it, and every submodule runs on
every step whatever the batch holds (mask, never skip).
"""

from __future__ import annotations

from lavla.data_service.config import DataConfig
from lavla.model.config import ModelConfig
from lavla.model.recipe import Recipe
from lavla.model.registry import entry_for


def build_model(model_cfg: ModelConfig, data_cfg: DataConfig) -> Recipe:
    """Check the data against the recipe's input spec and build the recipe module (fp32, CPU)."""
    entry = entry_for(model_cfg)
    model_cfg.input_spec().check(data_cfg)
    model = entry.build_fn()(model_cfg, data_cfg)
    if not isinstance(model, Recipe):
        raise TypeError(f"{entry.builder} built a {type(model).__name__}; a recipe's builder must return a "
                        "lavla.model.recipe.Recipe")
    return model
