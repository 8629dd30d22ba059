"""Shared helpers for tests/model: tiny configs and random batches following data_service/schema.py."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from lavla.data_service.schema import LIST_KEYS, TENSOR_KEYS
from lavla.model.config import BackboneConfig, FlowHeadConfig, FrameEncoderConfig, LamConfig, QuantizerConfig
from lavla.model.recipes.lara.config import LaraConfig
from lavla.model.lam_config import LapaLamConfig, UnivlaLamConfig

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



def tiny_lapa_config(**kw: Any) -> LapaLamConfig:
    base = dict(image_size=IMAGE, patch_size=PATCH, dim=32, heads=2, spatial_depth=1, temporal_depth=1, latent_dim=8,
                action_grid=2, decoder_depth=1)
    base.update(kw)
    return LapaLamConfig(**base)


def tiny_univla_config(**kw: Any) -> UnivlaLamConfig:
    base = dict(image_size=IMAGE, patch_size=PATCH, encoder=FrameEncoderConfig(dim=32, depth=1, heads=2, frozen=True),
                dim=32, heads=2, depth=1, num_queries=4, latent_dim=8, quantizer=QuantizerConfig(num_codes=16), decoder_depth=1)
    base.update(kw)
    return UnivlaLamConfig(**base)


def save_tiny_hf_vision_model(path: Path, kind: str = "vit", *, image_size: int = IMAGE, patch_size: int = PATCH,
                              processor_mean: tuple[float, float, float] | None = None) -> Path:
    """A tiny random ViT / DINOv2 / ViT-MAE saved with save_pretrained (what from_pretrained(local dir) loads)."""
    import transformers as tf

    common = dict(image_size=image_size, patch_size=patch_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    if kind == "vit":
        model = tf.ViTModel(tf.ViTConfig(intermediate_size=64, **common), add_pooling_layer=False)
    elif kind == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(mlp_ratio=2, **common))
    elif kind == "vit_mae":
        model = tf.ViTMAEModel(tf.ViTMAEConfig(intermediate_size=64, mask_ratio=0.75, **common))
    else:
        raise ValueError(kind)
    model.save_pretrained(path)
    if processor_mean is not None:
        (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": list(processor_mean), "image_std": [0.5] * 3}))
    return path


@contextmanager
def zero3_emulation(module: torch.nn.Module) -> Iterator[None]:
    """Parameters are empty except while their owning module's forward runs (as under ZeRO-3)."""
    saved, hooks = {}, []
    for mod in module.modules():
        own = list(mod.named_parameters(recurse=False))
        if not own:
            continue
        for _, p in own:
            saved[p] = p.data
            p.data = torch.empty(0)

        def pre(m, _args, own=own):  # type: ignore[no-untyped-def]
            for _, p in own:
                p.data = saved[p]

        def post(m, _args, _out, own=own):  # type: ignore[no-untyped-def]
            for _, p in own:
                p.data = torch.empty(0)

        hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for p, d in saved.items():
            p.data = d
