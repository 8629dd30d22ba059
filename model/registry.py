"""One registry of recipes: the config class, its ``type:`` name and its builder, registered together.

A recipe lives in one folder, ``lavla/model/recipes/<name>/``: ``config.py`` (torch-free) declares
the config class with ``@register_recipe("<type>", builder="<module>:<callable>")``, and the
builder's module holds the :class:`lavla.model.recipe.Recipe`. Every ``recipes/*/config.py`` is
imported when ``lavla.model.config`` is, so a new folder is all the config loader needs; the builder
module (torch) is imported only when a model is built. Folders outside the installed package (your
own recipes, without a fork) are found through ``LAVLA_RECIPE_PATH``: directories, separated by
``os.pathsep``, whose sub-folders are recipe folders; they import as ``lavla.model.recipes.<name>``.

The config's ``input_spec()`` says which batch shapes the model consumes (``InputSpec``); the
factory checks it against the data config once, for every recipe.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

Stated = tuple[tuple[str, int], ...]
"""(model field, value) pairs that state one shape: every one must equal the data's."""

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class InputSpec:
    """The batch a recipe consumes, as stated by its config. The data config must produce it."""

    image_size: Stated = ()
    """Model fields fixing the image side (``data.image_size``)."""
    action_horizon: Stated = ()
    """Model fields fixing the action chunk length (``data.action_horizon``)."""
    action_dim: Stated = ()
    """Model fields fixing the padded action width (``data.max_action_dim``)."""
    proprio_dim: Stated = ()
    """Model fields fixing the padded proprio width (``data.max_proprio_dim``)."""
    action_horizon_at_most: Stated = ()
    """Model fields that read the first n steps of the chunk (n <= ``data.action_horizon``)."""
    latent_labels: str = ""
    """Non-empty when the model reads offline latent labels (``data.latent_labels``): what needs them."""

    def check(self, data: Any) -> None:
        """Raise one ValueError listing every disagreement with the data config ``data``."""
        bad = []
        for shapes, field in ((self.image_size, "image_size"), (self.action_horizon, "action_horizon"),
                              (self.action_dim, "max_action_dim"), (self.proprio_dim, "max_proprio_dim")):
            have = getattr(data, field)
            bad += [f"model.{name}={value} != data.{field}={have}" for name, value in shapes if value != have]
        bad += [f"model.{name}={value} > data.action_horizon={data.action_horizon}"
                for name, value in self.action_horizon_at_most if value > data.action_horizon]
        if self.latent_labels and not data.latent_labels:
            bad.append(f"{self.latent_labels} needs data.latent_labels (the label store of its targets)")
        if bad:
            raise ValueError("model and data configs disagree: " + "; ".join(bad))


@dataclass(frozen=True)
class RecipeEntry:
    name: str
    """The ``type:`` of the model config."""
    config_cls: type
    builder: str
    """``module:function`` building the model from (model config, data config)."""

    def build_fn(self) -> Callable[[Any, Any], Any]:
        module, _, fn = self.builder.partition(":")
        return getattr(importlib.import_module(module), fn)


RECIPES: dict[str, RecipeEntry] = {}
"""``type:`` name -> entry, in registration order."""


def register_recipe(name: str, builder: str) -> Callable[[T], T]:
    """Class decorator for a recipe config: registers ``type: name`` with the config loader (draccus)
    and the builder (``"module:function"``) with the factory, in one place."""
    from lavla.model.config import ModelConfig

    def deco(cls: T) -> T:
        if name in RECIPES and RECIPES[name].config_cls is not cls:
            raise ValueError(f"recipe {name!r} registered twice ({RECIPES[name].config_cls.__name__}, {cls.__name__})")
        ModelConfig.register_subclass(name)(cls)
        RECIPES[name] = RecipeEntry(name, cls, builder)
        return cls

    return deco


def entry_for(config: Any) -> RecipeEntry:
    """The registry entry of a model config instance (its class or nearest registered base)."""
    by_cls = {e.config_cls: e for e in RECIPES.values()}
    for cls in type(config).__mro__:
        if cls in by_cls:
            return by_cls[cls]
    raise ValueError(f"no recipe registered for {type(config).__name__}; known: {', '.join(sorted(RECIPES))}")


RECIPE_PATH_ENV = "LAVLA_RECIPE_PATH"
"""Environment variable: extra directories of recipe folders (``os.pathsep``-separated)."""


def discover_recipes() -> None:
    """Import ``lavla.model.recipes.<folder>.config`` for every recipe folder, the installed ones and
    those under ``LAVLA_RECIPE_PATH`` (registers them). Idempotent."""
    import lavla.model.recipes as pkg

    for entry in filter(None, os.environ.get(RECIPE_PATH_ENV, "").split(os.pathsep)):
        d = Path(entry).resolve()
        if not d.is_dir():
            raise FileNotFoundError(f"{RECIPE_PATH_ENV}: {entry} is not a directory of recipe folders")
        if str(d) not in pkg.__path__:
            pkg.__path__.append(str(d))
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.ispkg:
            if not (Path(info.module_finder.path) / info.name / "config.py").is_file():  # type: ignore[union-attr]
                raise FileNotFoundError(f"recipe folder {Path(info.module_finder.path) / info.name} has no config.py")  # type: ignore[union-attr]
            importlib.import_module(f"{pkg.__name__}.{info.name}.config")
