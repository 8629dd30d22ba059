"""Shared helpers for tests/model: tiny configs and random batches following data_service/schema.py."""

from __future__ import annotations

from typing import Any

import torch

from data_service.schema import LIST_KEYS, TENSOR_KEYS
from model.config import (
    BackboneConfig,
    FlowHeadConfig,
    FrameEncoderConfig,
    LamConfig,
    LaraConfig,
    QuantizerConfig,
)

IMAGE, PATCH, N, A, P, E = 32, 8, 4, 5, 6, 3


def random_batch(
    batch_size: int = 4,
    *,
    image_size: int = IMAGE,
    horizon: int = N,
    action_dim: int = A,
    proprio_dim: int = P,
    num_embodiments: int = E,
    has_action: list[bool] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """A batch dict with every key of the schema, random but valid (some padding and invalid steps)."""
    g = torch.Generator().manual_seed(seed)
    b = batch_size

    def img() -> torch.Tensor:
        return torch.randint(0, 256, (b, 3, image_size, image_size), generator=g, dtype=torch.uint8)

    real_a = torch.randint(1, action_dim + 1, (b,), generator=g)
    real_p = torch.randint(1, proprio_dim + 1, (b,), generator=g)
    action_dim_mask = torch.arange(action_dim)[None] < real_a[:, None]
    proprio_dim_mask = torch.arange(proprio_dim)[None] < real_p[:, None]
    ep_left = torch.randint(1, horizon + 1, (b,), generator=g)
    action_valid = torch.arange(horizon)[None] < ep_left[:, None]
    has = torch.tensor(has_action if has_action is not None else [i % 4 != 3 for i in range(b)])
    action = torch.randn(b, horizon, action_dim, generator=g) * action_dim_mask[:, None] * has[:, None, None]
    has_wrist = torch.rand(b, generator=g) > 0.5
    batch: dict[str, Any] = {
        "sample_id": torch.arange(b, dtype=torch.int64),
        "image_primary": img(),
        "image_future": img(),
        "image_wrist": img() * has_wrist[:, None, None, None],
        "has_wrist": has_wrist,
        "proprio": torch.randn(b, proprio_dim, generator=g) * proprio_dim_mask,
        "proprio_dim_mask": proprio_dim_mask,
        "action": action,
        "action_valid": action_valid,
        "action_dim_mask": action_dim_mask,
        "has_action": has,
        "embodiment_id": torch.randint(0, num_embodiments, (b,), generator=g),
        "dataset_id": torch.zeros(b, dtype=torch.int64),
        "language": [["pick up the red block", "push the cube left", "", "open the drawer"][i % 4] for i in range(b)],
    }
    assert set(batch) == set(TENSOR_KEYS) | set(LIST_KEYS)
    return batch


def tiny_lam_config(**kw: Any) -> LamConfig:
    base = dict(
        image_size=IMAGE,
        patch_size=PATCH,
        encoder=FrameEncoderConfig(dim=32, depth=1, heads=2),
        dim=32,
        depth=1,
        heads=2,
        num_queries=4,
        latent_dim=8,
        quantizer=QuantizerConfig(num_codes=16),
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=2,
    )
    base.update(kw)
    return LamConfig(**base)


def tiny_head_config(**kw: Any) -> FlowHeadConfig:
    base = dict(
        action_horizon=N, action_dim=A, proprio_dim=P, num_embodiments=E, hidden_dim=32, dim=32, depth=4, heads=2, output_dim=32
    )
    base.update(kw)
    return FlowHeadConfig(**base)


def tiny_lara_config(**kw: Any) -> LaraConfig:
    base = dict(
        backbone=BackboneConfig(image_size=IMAGE, patch_size=PATCH, dim=32, depth=1, heads=2, max_text_len=16),
        lam=tiny_lam_config(),
        head=tiny_head_config(),
    )
    base.update(kw)
    return LaraConfig(**base)

