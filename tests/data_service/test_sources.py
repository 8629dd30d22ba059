from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from lavla.data_service.config import DataConfig, DatasetEntry
from lavla.data_service.errors import DataError
from lavla.data_service.datasets.registry import DatasetSpec, get_spec, register
from lavla.data_service.formats.rlds import RLDSDataset
from lavla.data_service.sources import EpisodeSource, open_source


def test_open_source_synthetic(data_cfg: DataConfig, synthetic_dir: Path) -> None:
    src = open_source(data_cfg.datasets[0], data_cfg)
    assert isinstance(src, EpisodeSource)
    assert src.name == "synthetic_world" and src.spec is get_spec("synthetic_world")
    assert src.num_episodes == 6
    np.testing.assert_array_equal(src.episode_lengths, RLDSDataset(synthetic_dir).episode_lengths("train"))
    assert src.episode_lengths.dtype == np.int64
    ep = src.read_episode(2)
    assert ep.length == src.episode_lengths[2]
    assert ep.action.dtype == np.float32 and ep.action.shape == (ep.length, 7)
    assert ep.proprio.dtype == np.float32 and ep.proprio.shape == (ep.length, 8)
    assert len(ep.image_primary) == len(ep.image_wrist) == ep.length
    assert ep.language and ep.dataset == "synthetic_world" and ep.episode == 2
    assert ep.file.endswith("synthetic_world-train.tfrecord-00000-of-00001")
    assert set(np.unique(ep.action[:, 6])) <= {0.0, 1.0}


def test_fingerprint_tracks_split_and_standardization(data_cfg: DataConfig, synthetic_dir: Path) -> None:
    a = open_source(data_cfg.datasets[0], data_cfg)
    b = open_source(DatasetEntry(path=str(synthetic_dir), split="train[:50%]"), data_cfg)
    assert a.fingerprint == open_source(data_cfg.datasets[0], data_cfg).fingerprint
    assert a.fingerprint != b.fingerprint and b.num_episodes == 3
    register(dataclasses.replace(get_spec("synthetic_world"), name="synthetic_world_h1", lam_stride=1))
    c = open_source(DatasetEntry(name="synthetic_world_h1", path=str(synthetic_dir)), data_cfg)
    assert c.fingerprint != a.fingerprint


def test_open_source_errors(data_cfg: DataConfig, synthetic_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="synthetic_wrld.*Did you mean"):
        open_source(DatasetEntry(name="synthetic_wrld", path=str(synthetic_dir)), data_cfg)
    with pytest.raises(DataError, match="does not exist"):
        open_source(DatasetEntry(path=str(tmp_path / "nope")), data_cfg)
    with pytest.raises(DataError, match="unknown split"):
        open_source(DatasetEntry(path=str(synthetic_dir), split="test"), data_cfg)
    with pytest.raises(DataError, match="selects no episodes"):
        open_source(DatasetEntry(path=str(synthetic_dir), split="train[95%:]"), data_cfg)
    register(dataclasses.replace(get_spec("synthetic_world"), name="wrong_keys", image_primary_key="steps/observation/rgb"))
    with pytest.raises(DataError, match="primary image key"):
        open_source(DatasetEntry(name="wrong_keys", path=str(synthetic_dir)), data_cfg)


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="action_absolute_mask"):
        DatasetSpec(name="x", image_primary_key="k", action_absolute_mask=(True,))
    with pytest.raises(ValueError, match="already registered"):
        register(dataclasses.replace(get_spec("synthetic_world"), control_hz=99.0))


def test_hot_path_does_not_import_tensorflow() -> None:
    import subprocess
    import sys

    code = ("import sys, data_service.sources, data_service.sampling.windowing, data_service.synthetic, data_service.formats.rlds_writer; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
