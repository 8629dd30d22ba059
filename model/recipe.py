"""The recipe contract: what every model the trainer builds provides, and what it declares it can do.

A recipe is an ``nn.Module`` subclass of :class:`Recipe`. Training needs only ``forward(batch) ->
(loss, metrics)``. Everything else (evaluation, latent annotation, the LAM probe, rollouts, the
study, export) reads :attr:`Recipe.capabilities` and calls the matching method, instead of probing
for attributes: a method a recipe does not offer raises a clear error naming the recipe.

Configs and builders are registered together in ``lavla.model.registry`` (torch-free, so config
loading never imports model code); the batch shapes a recipe consumes are its config's
``input_spec()`` (``lavla.model.registry.InputSpec``), checked once against the data config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.nn as nn
from torch import Tensor


@dataclass(frozen=True)
class Capabilities:
    """What a recipe offers beyond ``forward``. Each flag names the methods it promises."""

    predicts_actions: bool = False
    """``predict_action(batch)`` returns a normalized action chunk [B,n,A] (n <= the data's chunk)
    that evaluation scores against ``batch["action"]``."""
    closed_loop: bool = False
    """``predict_action`` needs observations only (images, instruction, proprio), so the policy can be
    rolled out. False for a recipe that reconstructs the batch's own actions (the action tokenizer)."""
    has_lam: bool = False
    """``latent_action_model()`` returns a LAM (``encode``/``decode``) whose reconstruction, codebook
    use and probe evaluation reports."""
    latent_targets: bool = False
    """``predict_latents(batch)`` decodes latent token ids and ``latent_targets(batch)`` gives the ids
    and mask they are scored against (evaluation's ``latent/token_acc``)."""
    annotates: bool = False
    """``annotate(x_t, x_tH)`` labels uint8 frame pairs with latent actions and ``quantizer()`` is its
    codebook (``launcher.annotate_latents``, ``launcher.lam_probe``)."""
    logs_media: bool = False
    """``media(batch)`` returns images to log during training (``logging.media_every``)."""


class Recipe(nn.Module):
    """Base class of every recipe module. Subclasses set ``capabilities`` (a class attribute, or an
    instance attribute where the config decides) and implement the methods their flags promise."""

    capabilities: Capabilities = Capabilities()

    tokens_per_sample: float = 1.0
    """Tokens one sample counts as in the trainer's tokens/s (``trainer.throughput``)."""

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(batch) -> (loss, metrics)")

    def _missing(self, method: str, flag: str) -> NotImplementedError:
        return NotImplementedError(f"{type(self).__name__} does not offer {method} "
                                   f"(capabilities.{flag} is {getattr(self.capabilities, flag)})")

    def predict_action(self, batch: dict[str, Any], **kwargs: Any) -> Tensor:
        """Normalized action chunk [B,n,A]; padded dims (``action_dim_mask`` False) are 0."""
        raise self._missing("predict_action", "predicts_actions")

    def latent_action_model(self) -> nn.Module | None:
        """The LAM evaluation reads (``encode``/``decode``), or None."""
        return None

    def predict_latents(self, batch: dict[str, Any]) -> Tensor:
        """Decoded latent token ids [B,L]."""
        raise self._missing("predict_latents", "latent_targets")

    def latent_targets(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Target ids [B,L] int64 and mask [B,L] bool of what ``predict_latents`` decodes."""
        raise self._missing("latent_targets", "latent_targets")

    def annotate(self, x_t: Tensor, x_tH: Tensor) -> Any:
        """``LatentActions`` of uint8 frame pairs [B,3,H,W], in eval mode (no statistics updated)."""
        raise self._missing("annotate", "annotates")

    def quantizer(self) -> Any:
        """The codebook ``annotate`` draws its ids from (``num_codes``)."""
        raise self._missing("quantizer", "annotates")

    def media(self, batch: dict[str, Any], max_items: int = 4) -> dict[str, np.ndarray]:
        """Images to log, HxWx3 uint8 by name. Runs the model: every rank calls it under ZeRO-3."""
        raise self._missing("media", "logs_media")


def capabilities_of(module: nn.Module) -> Capabilities:
    """The capabilities of a built model; anything that is not a :class:`Recipe` is refused."""
    if not isinstance(module, Recipe):
        raise TypeError(f"{type(module).__name__} is not a lavla.model.recipe.Recipe: every recipe module "
                        "subclasses it and declares its capabilities")
    return module.capabilities
