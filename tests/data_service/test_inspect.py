"""``lavla-data inspect``: recognizes RLDS build dirs, video folders and LeRobot roots, infers a spec
that reads the data as the registry's hand-written one does, lists what it assumed, and writes a
config that trains unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lavla.data_service.cli import main as lavla_data
from lavla.data_service.config import SyntheticDataConfig
from lavla.data_service.errors import DataError
from lavla.data_service.datasets.inline_spec import spec_from_mapping
from lavla.data_service.datasets.inspect_dataset import guess_cameras, inspect_path
from lavla.data_service.datasets.registry import get_spec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lerobot"


def test_guess_cameras_prefers_third_person_and_names_the_rest() -> None:
    keys = ["steps/observation/wrist_image", "steps/observation/image", "steps/observation/depth_cam"]
    primary, wrist, notes = guess_cameras(keys)
    assert (primary, wrist) == ("steps/observation/image", "steps/observation/wrist_image")
    assert notes and "depth_cam" in notes[0]
    assert guess_cameras(["obs/agentview_rgb", "obs/eye_in_hand_rgb"])[:2] == ("obs/agentview_rgb", "obs/eye_in_hand_rgb")
    primary, wrist, notes = guess_cameras(["obs/hand_camera"])
    assert primary == "obs/hand_camera" and wrist is None and "only wrist-like" in notes[0]


def test_rlds_inference_matches_the_registry_spec(synthetic_dir: Path) -> None:
    found = inspect_path(synthetic_dir)
    assert found.kind == "rlds" and found.name == "synthetic_world" and found.trainable
    reg = get_spec("synthetic_world")
    spec = spec_from_mapping("synthetic_world", found.spec)
    for f in ("image_primary_key", "image_wrist_key", "proprio_keys", "action_keys", "action_layout",
              "action_absolute_mask", "language_key", "gripper_convention", "proprio_layout"):
        assert getattr(spec, f) == getattr(reg, f), f
    assert found.summary["splits"] == {"train": 6, "val": 2} and found.summary["action_dim"] == 7
    assert found.summary["gripper_dim_values"]["min"] == 0.0 and found.summary["gripper_dim_values"]["max"] == 1.0
    said = " ".join(found.notes)
    assert "control rate" in said and "RGB assumed" in said and "which end is open" in said
    # overrides win over guesses; the fps sets the stride
    found = inspect_path(synthetic_dir, fps=5, name="mine", primary="steps/observation/wrist_image", wrist="")
    assert found.name == "mine" and found.spec["image_wrist_key"] is None and found.spec["lam_stride"] == 3
    assert found.spec["image_primary_key"] == "steps/observation/wrist_image"


def test_video_folder_and_lerobot_root_are_recognized(tmp_path: Path) -> None:
    pytest.importorskip("av")
    from lavla.data_service.synthetic import generate_synthetic_human_video

    videos = generate_synthetic_human_video(SyntheticDataConfig(root=str(tmp_path), train_episodes=2, val_episodes=1,
                                                                episode_length=8, image_size=32))
    found = inspect_path(videos)
    assert found.kind == "video" and found.spec["is_video"] and found.summary["fps"] == pytest.approx(10.0)
    assert spec_from_mapping(found.name, found.spec).lam_stride == 6
    found = inspect_path(FIXTURES / "v3.0")
    assert found.kind == "lerobot_v3.0" and found.trainable and found.name == "lerobot"
    assert (found.spec["image_primary_key"], found.spec["image_wrist_key"]) == ("observation.images.front",
                                                                                "observation.images.wrist")
    assert found.spec["action_keys"] == ["action"] and found.spec["proprio_keys"] == ["observation.state"]
    assert found.spec["language_key"] == "task" and found.spec["control_hz"] == 10.0
    assert found.summary["episodes"] == 3 and found.summary["action_dim"] == 7


def test_unrecognized_paths_say_what_was_expected(tmp_path: Path, synthetic_dir: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        inspect_path(tmp_path / "missing")
    with pytest.raises(DataError, match=r"TFDS build dirs below it: .*1\.0\.0"):
        inspect_path(synthetic_dir.parent.parent)
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"")
    with pytest.raises(DataError, match="needs an annotation file"):
        inspect_path(tmp_path / "clips")


def test_cli_prints_the_entry_and_writes_a_recipe_config(tmp_path: Path, synthetic_dir: Path, capsys) -> None:
    out = tmp_path / "mine.yaml"
    assert lavla_data(["inspect", str(synthetic_dir), "--name", "my_robot", "--fps", "10", "--recipe", "baseline",
                       "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "name: my_robot" in printed and "image_primary_key: steps/observation/image" in printed
    assert "not inferred (defaults taken)" in printed and f"wrote {out}" in printed
    cfg = yaml.safe_load(out.read_text())
    assert cfg["model"]["type"] == "baseline" and cfg["data"]["synthetic"]["enabled"] is False
    (entry,) = cfg["data"]["datasets"]
    assert entry["name"] == "my_robot" and entry["path"] == str(synthetic_dir) and entry["spec"]["control_hz"] == 10.0
    assert lavla_data(["inspect", str(tmp_path / "nope")]) == 2
    assert lavla_data(["inspect", str(synthetic_dir), "--recipe", "no_such_recipe"]) == 2
    assert "unknown recipe 'no_such_recipe'" in capsys.readouterr().err


def test_a_wider_dataset_widens_the_recipe_where_it_states_the_width() -> None:
    """An end-effector 6-D-rotation dataset (10-D actions) with 12-D proprio: the written config raises
    the baseline's head widths (the data side takes them from there) and builds; a LAM recipe, which
    states no action width, gets it on the data side."""
    import yaml as _yaml

    from lavla.data_service.cli import recipe_config
    from lavla.model.factory import build_model
    from lavla.trainer.config_io import load_config

    entry = {"name": "my_robot", "path": "/data/my_robot/1.0.0", "split": "train", "spec": {"action_layout": "eef_r6"}}
    cfg, notes = recipe_config("baseline", entry, {"action_dim": 10, "proprio_dim": 12}, "my_robot")
    assert cfg["model"]["head"]["action_dim"] == 10 and cfg["model"]["head"]["proprio_dim"] == 12
    assert "max_action_dim" not in cfg["data"] and "model.head.action_dim raised to 10" in notes
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "my_robot.yaml"
        path.write_text(_yaml.safe_dump(cfg))
        loaded = load_config(["--config", str(path)])
    assert (loaded.data.max_action_dim, loaded.data.max_proprio_dim) == (10, 12)
    build_model(loaded.model, loaded.data)
    lam, lam_notes = recipe_config("lam_pretrain", entry, {"action_dim": 10, "proprio_dim": 12}, "my_robot")
    assert lam["data"]["max_action_dim"] == 10 and lam["data"]["max_proprio_dim"] == 12
    assert "data.max_action_dim raised to 10" in lam_notes
