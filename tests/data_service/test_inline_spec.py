"""Specs in YAML: a mixture entry's ``spec:`` mapping is validated with clear errors, reads the data
exactly as the same spec registered in Python would, and hashes into the fingerprint and statistics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import draccus
import numpy as np
import pytest

from lavla.data_service.config import DataConfig, DatasetEntry
from lavla.data_service.datasets.inline_spec import spec_for_entry, spec_from_mapping, spec_to_mapping
from lavla.data_service.datasets.registry import get_spec
from lavla.data_service.sources import open_source

SYN = get_spec("synthetic_world")


def test_round_trip_and_registry_equivalence(data_cfg: DataConfig, synthetic_dir: Path) -> None:
    mapping = spec_to_mapping(SYN)
    assert "name" not in mapping and isinstance(mapping["action_keys"], list)
    spec = spec_from_mapping("my_robot", mapping)
    assert spec == dataclasses.replace(SYN, name="my_robot")
    # the same facts inline read the same episodes as the registry entry
    reg = open_source(DatasetEntry(path=str(synthetic_dir)), data_cfg)
    own = open_source(DatasetEntry(name="my_robot", path=str(synthetic_dir), spec=mapping), data_cfg)
    assert own.spec.name == "my_robot" and own.num_episodes == reg.num_episodes
    a, b = reg.read_episode(1), own.read_episode(1)
    np.testing.assert_array_equal(a.action, b.action)
    np.testing.assert_array_equal(a.proprio, b.proprio)
    assert a.language == b.language
    np.testing.assert_allclose(own.statistics().action.mean, reg.statistics().action.mean)


def test_inline_spec_wins_over_the_registry_and_hashes_into_fingerprint_and_stats(data_cfg: DataConfig,
                                                                                  synthetic_dir: Path) -> None:
    mapping = spec_to_mapping(SYN)
    base = open_source(DatasetEntry(path=str(synthetic_dir), spec=mapping), data_cfg)
    assert base.spec == SYN and base.fingerprint == open_source(DatasetEntry(path=str(synthetic_dir)), data_cfg).fingerprint
    flipped = open_source(DatasetEntry(path=str(synthetic_dir), spec={**mapping, "gripper_convention": "close_1"}), data_cfg)
    assert flipped.spec.gripper_convention == "close_1" and flipped.fingerprint != base.fingerprint
    # a different spec is a different statistics cache entry: the gripper column flips
    g0, g1 = base.statistics().action.mean[6], flipped.statistics().action.mean[6]
    assert g1 == pytest.approx(1.0 - g0, abs=1e-5)


def test_lam_stride_follows_control_rate_unless_given() -> None:
    m = {"image_primary_key": "steps/observation/image"}
    assert spec_from_mapping("r", {**m, "control_hz": 15}).lam_stride == 9  # ~0.6 s
    assert spec_from_mapping("r", {**m, "control_hz": 15, "lam_stride": 4}).lam_stride == 4
    assert spec_from_mapping("r", m).lam_stride == SYN.__class__.__dataclass_fields__["lam_stride"].default


@pytest.mark.parametrize("fields, match", [
    ({"image_primary_key": "i", "gripper": "close_1"}, r"unknown spec field\(s\) 'gripper' \(did you mean 'gripper_convention'\?\)"),
    ({"image_primary_key": "i", "gripper_convention": "closed"}, "gripper_convention 'closed' is not one of"),
    ({"image_primary_key": "i", "proprio_layout": "xyz"}, "proprio_layout 'xyz' is not one of"),
    ({"image_primary_key": "i", "transform": "mine"}, "transform 'mine' is not one of"),
    ({"image_primary_key": "i", "action_keys": "steps/action"}, "'action_keys' must be a list"),
    ({"image_primary_key": "i", "action_absolute_mask": [False] * 6}, "action_absolute_mask has 6 dims, eef_pos has 7"),
    ({"image_primary_key": "i", "control_hz": 0}, "'control_hz' must be a positive number"),
    ({"image_primary_key": "i", "bgr": "yes"}, "'bgr' must be true or false"),
    ({"image_primary_key": "i", "lam_stride": 0}, "lam_stride must be >= 1"),
    ({"action_keys": ["steps/action"]}, "needs image_primary_key"),
    ({"image_primary_key": "i", "name": "other"}, "differs from the entry's name"),
])
def test_bad_inline_specs_name_the_entry_and_the_field(fields: dict, match: str) -> None:
    entry = DatasetEntry(name="my_robot", path="/nowhere", spec=fields)
    with pytest.raises(ValueError, match=match) as e:
        spec_for_entry(entry, 2)
    assert str(e.value).startswith("data.datasets[2] (my_robot): ")


def test_a_video_spec_needs_no_camera_key_and_yaml_decodes_into_entries() -> None:
    spec = spec_from_mapping("my_clips", {"is_video": True, "control_hz": 30.0, "language_key": None})
    assert spec.is_video and spec.lam_stride == 18
    cfg = draccus.decode(DataConfig, {"datasets": [
        {"name": "synthetic_world", "path": "a"},
        {"name": "my_robot", "path": "b", "spec": {"image_primary_key": "steps/observation/rgb", "control_hz": 5,
                                                   "action_absolute_mask": [False] * 6 + [True]}}]})
    specs = [spec_for_entry(e, i) for i, e in enumerate(cfg.datasets)]
    assert specs[0] is SYN and specs[1].image_primary_key == "steps/observation/rgb" and specs[1].lam_stride == 3
    # unknown names without a spec still fail with the registry's hint
    with pytest.raises(KeyError, match="unknown dataset 'my_robbot'"):
        spec_for_entry(DatasetEntry(name="my_robbot"))
