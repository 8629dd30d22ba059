from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from lavla.data_service.errors import DataError
from lavla.data_service.datasets.registry import EMBODIMENTS, MIXTURES, get_spec, registered_names
from lavla.data_service.formats.rlds import RawEpisode
from lavla.data_service.datasets.standardize import (
    binarize_gripper,
    quat_to_euler,
    relative_to_absolute_gripper,
    standardize,
)

O = "steps/observation/"


def test_mixtures_match_openvla() -> None:
    soup = dict(MIXTURES["oxe_magic_soup"])
    assert len(soup) == 23
    assert soup["fractal20220817_data"] == 0.54087122203 and soup["kuka"] == 0.8341046294
    assert soup["bridge_orig"] == 1.0 and soup["nyu_franka_play_dataset_converted_externally_to_rlds"] == 3.0
    assert soup["language_table"] == 0.1 and soup["furniture_bench_dataset_converted_externally_to_rlds"] == 0.1
    assert "nyu_door_opening_surprising_effectiveness" not in soup and "bc_z" not in soup
    plus = dict(MIXTURES["oxe_magic_soup_plus"])
    assert len(plus) == 27 and plus["bc_z"] == 0.2 and plus["droid"] == 0.06 and plus["fmb_dataset"] == 1.0
    pm = dict(MIXTURES["oxe_magic_soup_plus_minus"])
    assert pm["fractal20220817_data"] == 1.0 and "language_table" not in pm and "droid" not in pm and len(pm) == 25
    assert [n for n, _ in MIXTURES["libero_4_task_suites"]] == [
        "libero_spatial_no_noops", "libero_object_no_noops", "libero_goal_no_noops", "libero_10_no_noops"]


def test_every_registered_spec_is_consistent() -> None:
    for mixture in MIXTURES.values():
        for name, weight in mixture:
            assert get_spec(name).name == name and weight > 0
    for name in registered_names():
        spec = get_spec(name)
        if spec.is_video:  # action-less human video (data_service.video.source): no action, no camera key
            assert spec.action_dim == 0 and spec.lam_stride >= 1 and spec.embodiment_id == EMBODIMENTS["human"]
            continue
        assert spec.action_dim == 7 and spec.action_absolute_mask[-1]
        assert 0 <= spec.embodiment_id < 32 and spec.lam_stride >= 1 and not spec.is_video
        assert spec.image_primary_key is not None
    assert get_spec("fractal20220817_data").lam_stride < get_spec("toto").lam_stride  # frequency-aware
    assert get_spec("droid").embodiment_id == get_spec("taco_play").embodiment_id == EMBODIMENTS["franka"]
    assert get_spec("berkeley_autolab_ur5").bgr_wrist and not get_spec("berkeley_autolab_ur5").bgr


def _raw(steps: dict[str, object], T: int, **meta: object) -> RawEpisode:
    img = [b"img"] * T
    return RawEpisode({f"{O}image": img, **steps}, dict(meta), T, Path("/data/shard-00000"), 0, 5)


def test_fractal_relative_gripper_and_parts() -> None:
    T = 5
    closedness = np.array([[0.0], [1.0], [0.0], [-1.0], [0.0]], np.float32)  # close at 1, open at 3
    raw = _raw({
        "steps/action/world_vector": np.ones((T, 3), np.float32),
        "steps/action/rotation_delta": np.full((T, 3), 2.0, np.float32),
        "steps/action/gripper_closedness_action": closedness,
        O + "base_pose_tool_reached": np.zeros((T, 7), np.float32),
        O + "gripper_closed": np.ones((T, 1), np.float32),
        O + "natural_language_instruction": [b"pick coke can"] * T,
    }, T)
    ep = standardize(raw, get_spec("fractal20220817_data"))
    np.testing.assert_array_equal(ep.action[:, 6], [1, 0, 0, 1, 1])
    np.testing.assert_array_equal(ep.action[:, :3], 1.0)
    assert ep.proprio.shape == (T, 8) and ep.language == "pick coke can"


def test_gripper_helpers() -> None:
    np.testing.assert_array_equal(relative_to_absolute_gripper(np.array([0, 0, -1, 0, 1.0])), [0, 0, 1, 1, 0])
    np.testing.assert_array_equal(relative_to_absolute_gripper(np.zeros(3)), [1, 1, 1])
    np.testing.assert_array_equal(binarize_gripper(np.array([1.0, 0.5, 0.02, 0.3, 0.99, 0.6])), [1, 0, 0, 1, 1, 1])
    q = np.array([[0, 0, np.sin(0.25), np.cos(0.25)], [np.sin(0.1), 0, 0, np.cos(0.1)]])
    np.testing.assert_allclose(quat_to_euler(q), [[0, 0, 0.5], [0.2, 0, 0]], atol=1e-6)


def test_kuka_zlib_state() -> None:
    T = 3
    pose = np.arange(T * 7, dtype=np.float32).reshape(T, 7)
    raw = _raw({
        "steps/action/world_vector": np.zeros((T, 3), np.float32),
        "steps/action/rotation_delta": np.zeros((T, 3), np.float32),
        "steps/action/gripper_closedness_action": np.zeros((T, 1), np.float32),
        O + "clip_function_input/base_pose_tool_reached": [zlib.compress(r.tobytes()) for r in pose],
        O + "gripper_closed": [zlib.compress(np.float32(1).tobytes())] * T,
        O + "natural_language_instruction": [b"grasp"] * T,
    }, T)
    ep = standardize(raw, get_spec("kuka"))
    np.testing.assert_array_equal(ep.proprio[:, :7], pose)
    np.testing.assert_array_equal(ep.proprio[:, 7], 1.0)
    raw.steps[O + "gripper_closed"] = [b"not zlib"] * T
    with pytest.raises(DataError, match="zlib") as e:
        standardize(raw, get_spec("kuka"))
    assert e.value.field == O + "gripper_closed" and e.value.episode == 5


def test_bridge_relabel_and_trim() -> None:
    T = 6
    state = np.cumsum(np.ones((T, 7), np.float32), 0)
    state[:, 6] = 1.0
    action = np.zeros((T, 7), np.float32)
    action[:, 6] = [1.0, 1.0, 0.5, 0.01, 0.0, 1.0]
    raw = _raw({O + "image_0": [bytes([i]) for i in range(T)], O + "state": state, "steps/action": action,
                "steps/language_instruction": [b"put the spoon in the pot"] * T}, T)
    ep = standardize(raw, get_spec("bridge_orig"))
    assert ep.length == T - 2  # first (all-zero) step and last (no successor) step dropped
    assert ep.image_primary == [bytes([i]) for i in range(1, T - 1)]
    np.testing.assert_array_equal(ep.action[:, :6], 1.0)  # s[t+1] - s[t]
    np.testing.assert_array_equal(ep.action[:, 6], [1, 0, 0, 0])  # binarized: 0.5 heads to closed
    np.testing.assert_array_equal(ep.proprio[:, 6], 0.0)  # pad
    np.testing.assert_array_equal(ep.proprio[:, 7], 1.0)


def test_language_table_codepoints_and_constants() -> None:
    T = 2
    text = "push the red star"
    codes = np.zeros((T, 512), np.int32)
    codes[:, : len(text)] = [ord(c) for c in text]
    raw = _raw({O + "rgb": [b"x"] * T, "steps/action": np.full((T, 2), 0.5, np.float32),
                O + "effector_translation": np.ones((T, 2), np.float32), O + "instruction": codes}, T)
    ep = standardize(raw, get_spec("language_table"))
    assert ep.language == text
    np.testing.assert_array_equal(ep.action[0], [0.5, 0.5, 0, 0, 0, 0, 1])
    assert ep.proprio.shape == (T, 8)


def test_libero_and_fanuc() -> None:
    T = 3
    action = np.zeros((T, 7), np.float32)
    action[:, 6] = [-1.0, 1.0, 0.3]
    raw = _raw({O + "wrist_image": [b"w"] * T, O + "state": np.zeros((T, 8), np.float32), "steps/action": action,
                "steps/language_instruction": [b"open the drawer"] * T}, T)
    ep = standardize(raw, get_spec("libero_goal_no_noops"))
    np.testing.assert_allclose(ep.action[:, 6], [1.0, 0.0, 0.7], atol=1e-6)
    assert ep.image_wrist == [b"w"] * T and ep.proprio.shape == (T, 8)
    state = np.zeros((T, 7), np.float32)
    state[:, 6] = [0, 1, 1]
    raw = _raw({O + "wrist_image": [b"w"] * T, O + "state": state, "steps/action": np.zeros((T, 6), np.float32),
                "steps/language_instruction": [b"pick"] * T}, T)
    ep = standardize(raw, get_spec("berkeley_fanuc_manipulation"))
    np.testing.assert_array_equal(ep.action[:, 6], [1, 0, 0])


def test_missing_key_and_bad_slice_are_located() -> None:
    T = 2
    raw = _raw({O + "wrist_image": [b"w"] * T, "steps/action": np.zeros((T, 7), np.float32),
                "steps/language_instruction": [b"x"] * T}, T)
    with pytest.raises(DataError, match="missing feature key") as e:
        standardize(raw, get_spec("libero_10_no_noops"))
    assert (e.value.field, e.value.episode, e.value.file) == (O + "state", 5, "/data/shard-00000")
    raw.steps[O + "state"] = np.zeros((T, 0), np.float32)
    with pytest.raises(DataError, match="wrong shape: slice") as e:
        standardize(raw, get_spec("libero_10_no_noops"))
    assert e.value.field == O + "state"
