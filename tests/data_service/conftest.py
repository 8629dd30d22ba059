"""Shared fixtures: a tiny synthetic RLDS dataset (built once per session) and a tiny-dataset factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lavla.data_service.config import DataConfig, DatasetEntry, SyntheticDataConfig
from lavla.data_service.formats.rlds_writer import RLDSWriter, encode_image, rlds_step_features
from lavla.data_service.synthetic import generate_synthetic_world

TINY = dict(train_episodes=6, val_episodes=2, episode_length=12, image_size=32, seed=0)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the real user cache dir from tests."""
    monkeypatch.setenv("LAVLA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "user_cache"))


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/synthetic_world/1.0.0``: 6 train + 2 val episodes of ~12 steps at 32x32."""
    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_world(SyntheticDataConfig(enabled=True, root=str(root), **TINY))


@pytest.fixture
def data_cfg(synthetic_dir: Path) -> DataConfig:
    return DataConfig(datasets=[DatasetEntry(path=str(synthetic_dir))], image_size=32, action_horizon=4)


def tiny_episode(T: int, *, seed: int = 0, size: int = 8, instruction: str = "do the thing") -> dict[str, object]:
    """Flat features of one small valid episode (synthetic_world layout)."""
    rng = np.random.default_rng(seed)
    last = np.arange(T) == T - 1
    return {
        "steps/observation/image": [encode_image(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(T)],
        "steps/observation/wrist_image": [encode_image(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "jpeg")
                                          for _ in range(T)],
        "steps/observation/state": rng.normal(size=(T, 8)).astype(np.float32),
        "steps/action": np.concatenate([rng.normal(size=(T, 6)), rng.integers(0, 2, (T, 1))], 1).astype(np.float32),
        "steps/discount": np.ones(T, np.float32),
        "steps/reward": last.astype(np.float32),
        "steps/is_first": np.arange(T) == 0,
        "steps/is_last": last,
        "steps/is_terminal": last,
        "steps/language_instruction": [instruction] * T,
        "episode_metadata/file_path": f"ep{seed}",
    }


TinyFactory = Callable[..., Path]


@pytest.fixture
def make_tiny(tmp_path: Path) -> TinyFactory:
    """``make_tiny(episodes=[...], name=..., num_shards=1) -> version dir`` of a train-only dataset."""

    def make(episodes: list[dict[str, object]] | None = None, *, name: str = "synthetic_world",
             num_shards: int = 1, size: int = 8) -> Path:
        eps = episodes if episodes is not None else [tiny_episode(4 + i, seed=i, size=size) for i in range(3)]
        w = RLDSWriter(tmp_path / "data", name, "1.0.0",
                       rlds_step_features(image_shape=(size, size, 3), wrist_image_shape=(size, size, 3),
                                          action_dim=7, state_dim=8))
        w.write_split("train", eps, len(eps), num_shards=num_shards)
        return w.finish()

    return make
