"""Typed model configuration. ``type`` selects the recipe (draccus choice registry, as LeRobot).

Recipe configs register themselves here with ``@ModelConfig.register_subclass(name)`` so that
importing this module is enough for the config loader to know every recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import draccus


@dataclass
class ModelConfig(draccus.ChoiceRegistry):
    """Base of every recipe config. Select a recipe with ``type: <name>`` in YAML or ``--model.type``."""
