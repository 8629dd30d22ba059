from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from lavla.data_service.config import DataConfig
from lavla.data_service.decode import decode_image
from lavla.data_service.errors import DataError
from lavla.data_service.schema import TENSOR_KEYS
from lavla.data_service.sources import open_source
from lavla.data_service.datasets.standardize import StandardEpisode
from lavla.data_service.stats import Normalizer, compute_statistics
from lavla.data_service.sampling.windowing import action_chunk, make_sample, valid_timesteps

EXPECTED = {
    "sample_id": (np.int64, ()),
    "image_primary": (np.uint8, (3, 32, 32)),
    "image_future": (np.uint8, (3, 32, 32)),
    "image_wrist": (np.uint8, (3, 32, 32)),
    "has_wrist": (np.bool_, ()),
    "proprio": (np.float32, (8,)),
    "proprio_dim_mask": (np.bool_, (8,)),
    "action": (np.float32, (4, 7)),
    "action_valid": (np.bool_, (4,)),
    "action_dim_mask": (np.bool_, (7,)),
    "has_action": (np.bool_, ()),
    "embodiment_id": (np.int64, ()),
    "dataset_id": (np.int64, ()),
}


def _setup(data_cfg: DataConfig):
    src = open_source(data_cfg.datasets[0], data_cfg)
    norm = Normalizer(src.statistics(), data_cfg.normalization, src.spec.action_absolute_mask)
    return src, norm


def test_sample_matches_schema(data_cfg: DataConfig) -> None:
    src, norm = _setup(data_cfg)
    ep = src.read_episode(0)
    s = make_sample(ep, 2, src, norm, data_cfg)
    assert set(s) == set(TENSOR_KEYS) | {"language"}
    for key, (dtype, shape) in EXPECTED.items():
        arr = np.asarray(s[key])
        assert arr.dtype == dtype and arr.shape == shape, key
    assert isinstance(s["language"], str) and s["language"] == ep.language
    assert s["has_wrist"] and s["has_action"] and s["action_valid"].all()
    assert s["action_dim_mask"].all() and s["proprio_dim_mask"].all()
    np.testing.assert_allclose(s["action"], norm.normalize(ep.action[2:6]), atol=1e-6)
    np.testing.assert_allclose(s["proprio"], norm.normalize(ep.proprio[2], "proprio"), atol=1e-6)


def test_future_frame_is_t_plus_h_clamped(data_cfg: DataConfig) -> None:
    src, norm = _setup(data_cfg)
    ep = src.read_episode(1)
    T, H = ep.length, src.spec.lam_stride

    def frame(i: int) -> np.ndarray:
        return decode_image(ep.image_primary[i], 32)

    np.testing.assert_array_equal(make_sample(ep, 1, src, norm, data_cfg)["image_future"], frame(1 + H))
    np.testing.assert_array_equal(make_sample(ep, T - 1, src, norm, data_cfg)["image_future"], frame(T - 1))
    override = dataclasses.replace(data_cfg, lam_stride=1)
    np.testing.assert_array_equal(make_sample(ep, 0, src, norm, override)["image_future"], frame(1))


def test_action_chunk_past_the_end(data_cfg: DataConfig) -> None:
    src, norm = _setup(data_cfg)
    ep = src.read_episode(0)
    T = ep.length
    s = make_sample(ep, T - 2, src, norm, data_cfg)
    np.testing.assert_array_equal(s["action_valid"], [True, True, False, False])
    last = norm.normalize(ep.action[T - 1])
    np.testing.assert_array_equal(s["action"][2:, :6], 0.0)  # relative dims: 0
    np.testing.assert_array_equal(s["action"][2:, 6], last[6])  # absolute gripper: repeats the last action
    chunk, valid = action_chunk(np.arange(6, dtype=np.float32).reshape(3, 2), 1, 4, np.array([False, True]))
    np.testing.assert_array_equal(chunk, [[2, 3], [4, 5], [0, 5], [0, 5]])
    np.testing.assert_array_equal(valid, [True, True, False, False])


def test_valid_timesteps() -> None:
    clamp, drop = DataConfig(), DataConfig(future_out_of_range="drop")
    np.testing.assert_array_equal(valid_timesteps(5, 3, clamp), np.arange(5))
    np.testing.assert_array_equal(valid_timesteps(5, 3, drop), [0, 1])  # t + 3 <= 4
    assert len(valid_timesteps(3, 3, drop)) == 0
    assert valid_timesteps(5, 3, drop).dtype == np.int64


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_padding_bgr_and_missing_wrist(data_cfg: DataConfig) -> None:
    src, _ = _setup(data_cfg)
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    T = 3
    ep = StandardEpisode([_png(red)] * T, None, np.zeros((T, 3), np.float32),
                         np.tile(np.arange(7, dtype=np.float32), (T, 1)), "go", "synthetic_world", 0, "mem")
    rows = np.concatenate([np.zeros((1, 7)), np.ones((1, 7))]).astype(np.float32)
    stats = compute_statistics([(rows, np.zeros((2, 3), np.float32))], desc="t")
    norm = Normalizer(stats, "bounds", src.spec.action_absolute_mask)
    cfg = dataclasses.replace(data_cfg, max_action_dim=9, max_proprio_dim=5)
    s = make_sample(ep, 0, src, norm, cfg)
    assert s["action"].shape == (4, 9) and s["proprio"].shape == (5,)
    np.testing.assert_array_equal(s["action_dim_mask"], [True] * 7 + [False] * 2)
    np.testing.assert_array_equal(s["proprio_dim_mask"], [True] * 3 + [False] * 2)
    np.testing.assert_array_equal(s["action"][:, 7:], 0.0)
    assert not s["has_wrist"] and not s["image_wrist"].any()
    assert s["image_primary"][0].min() == 255 and s["image_primary"][2].max() == 0  # RGB kept
    bgr_src = type("S", (), {"spec": dataclasses.replace(src.spec, bgr=True)})()
    flipped = make_sample(ep, 0, bgr_src, norm, cfg)
    assert flipped["image_primary"][2].min() == 255 and flipped["image_primary"][0].max() == 0
    with pytest.raises(ValueError, match="max_action_dim"):
        make_sample(ep, 0, src, norm, dataclasses.replace(data_cfg, max_action_dim=6))
    with pytest.raises(IndexError):
        make_sample(ep, T, src, norm, cfg)


def test_corrupt_image_is_a_data_error(data_cfg: DataConfig) -> None:
    src, norm = _setup(data_cfg)
    ep = src.read_episode(0)
    ep.image_primary = [b"not an image"] * ep.length
    with pytest.raises(DataError, match="cannot decode image") as e:
        make_sample(ep, 0, src, norm, data_cfg)
    assert e.value.episode == 0 and e.value.field == "steps/observation/image"
