from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lavla.data_service.config import SyntheticDataConfig
from lavla.data_service.formats.rlds import RLDSDataset
from lavla.data_service.synthetic import (
    World,
    WorldOptions,
    _rollout,
    episode_rng,
    generate_episode,
    generate_synthetic_world,
    render_top,
    render_wrist,
    start_episode,
)

from .conftest import TINY

SMALL = dict(train_episodes=3, val_episodes=1, episode_length=8, image_size=16, seed=3)


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if not p.name.startswith(".")}


def test_layout_and_metadata(synthetic_dir: Path) -> None:
    assert synthetic_dir.parts[-2:] == ("synthetic_world", "1.0.0")
    info = json.loads((synthetic_dir / "dataset_info.json").read_text())
    assert info["name"] == "synthetic_world" and info["version"] == "1.0.0"
    assert [(s["name"], s["shardLengths"]) for s in info["splits"]] == [("train", ["6"]), ("val", ["2"])]
    assert (synthetic_dir / "synthetic_world-train.tfrecord-00000-of-00001").exists()
    ds = RLDSDataset(synthetic_dir)
    assert ds.features["steps/observation/image"].shape == (32, 32, 3)
    assert ds.features["steps/observation/wrist_image"].encoding == "jpeg"
    lengths = ds.episode_lengths("train")
    assert lengths.min() >= 0.75 * TINY["episode_length"] - 1 and lengths.max() <= 1.25 * TINY["episode_length"] + 1
    assert len(set(lengths.tolist())) > 1  # lengths vary: windowing edge cases get exercised


def test_deterministic_and_reused(tmp_path: Path) -> None:
    a = generate_synthetic_world(SyntheticDataConfig(root=str(tmp_path / "a"), **SMALL))
    b = generate_synthetic_world(SyntheticDataConfig(root=str(tmp_path / "b"), **SMALL))
    assert _files(a) == _files(b)
    mtime = (a / "dataset_info.json").stat().st_mtime_ns
    assert generate_synthetic_world(SyntheticDataConfig(root=str(tmp_path / "a"), **SMALL)) == a
    assert (a / "dataset_info.json").stat().st_mtime_ns == mtime
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".tmp")]
    with pytest.raises(ValueError, match="was generated with"):
        generate_synthetic_world(SyntheticDataConfig(root=str(tmp_path / "a"), **{**SMALL, "seed": 4}))
    c = generate_synthetic_world(SyntheticDataConfig(root=str(tmp_path / "c"), **{**SMALL, "seed": 4}))
    assert _files(c) != _files(a)


def test_actions_drive_the_state() -> None:
    ep = generate_episode(0, "train", 5, 30, 32)
    T = len(ep.actions)
    assert ep.states.shape == (T, 8) and ep.actions.shape == (T, 7) and ep.images.shape == (T, 32, 32, 3)
    # Unclipped steps: the next state's xyz is the current one plus the action's deltas.
    delta = ep.states[1:, :3] - ep.states[:-1, :3]
    free = (np.abs(ep.states[1:, :2]) < 0.89).all(1) & (ep.states[1:, 2] > 0.001) & (ep.states[1:, 2] < 0.999)
    np.testing.assert_allclose(delta[free], ep.actions[:-1][free, :3], atol=1e-5)
    np.testing.assert_array_equal(ep.states[1:, 7], ep.actions[:-1, 6])  # the gripper follows its command
    assert set(np.unique(ep.actions[:, 6])) <= {0.0, 1.0}
    assert (ep.actions[:, [0, 1, 2, 5]].std(0) > 1e-3).all()  # translation and yaw vary
    np.testing.assert_array_equal(ep.actions[:, 3:5], 0.0)  # level wrist: no unobservable roll/pitch wobble
    wobbly = generate_episode(0, "train", 5, 30, 32, WorldOptions(tilt_wobble=True))
    assert (wobbly.actions[:, 3:5].std(0) > 1e-3).all()  # the old world is still there on request


def test_episodes_end_when_the_task_is_done() -> None:
    """The recorded episode stops ``idle_steps`` still steps after the expert's last waypoint, so no
    label is post-task drift; -1 keeps the drawn length with a still tail."""
    for i in range(12):
        _, steps = _rollout(0, "train", i, 30, WorldOptions(idle_steps=2))
        n = sum(1 for _ in steps)
        full = len(generate_episode(0, "train", i, 30, 8, WorldOptions(idle_steps=-1)).actions)
        assert 2 <= n <= full
        short = generate_episode(0, "train", i, 30, 8)
        assert len(short.actions) == n
        if n < full:  # finished early: the last two labels hold still, gripper kept
            np.testing.assert_allclose(short.actions[-2:, :3], 0.0, atol=0.05)
            tail = generate_episode(0, "train", i, 30, 8, WorldOptions(idle_steps=-1)).actions[n:]
            assert np.abs(tail[:, :3]).max() < 0.05 and (tail[:, 6] == short.actions[-1, 6]).all()


def test_task_families_are_selectable() -> None:
    for tasks in (("move",), ("rotate", "push")):
        kinds = {_rollout(0, "train", i, 20, WorldOptions(tasks=tasks))[0].goal.kind for i in range(20)}
        assert kinds == set(tasks)
    with pytest.raises(ValueError, match="subset"):
        WorldOptions(tasks=("fly",))
    with pytest.raises(ValueError, match="subset"):
        WorldOptions(tasks=())


def test_instruction_targets_are_observable() -> None:
    """move names no height or yaw, so the expert keeps both; pick/place align the jaws with the
    block's visible rotation instead of a random yaw."""
    for i in range(10):
        task, _ = _rollout(0, "train", i, 20, WorldOptions(tasks=("move",)))
        assert task.waypoints[0].yaw is None
    for i in range(10):
        _, world, task, _ = start_episode(episode_rng(0, "train", i), 20, WorldOptions(tasks=("pick",)))
        block = next(b for b in world.blocks if b.color == task.goal.block)
        assert task.waypoints[0].yaw == pytest.approx(block.angle)


def test_every_action_dim_is_visible() -> None:
    rng = np.random.default_rng(0)
    base = World(np.array([0.0, 0.0, 0.4, 0.0, 0.0, 0.3]), 1.0, [])
    top0, wrist0 = render_top(base, 64), render_wrist(base, 64)
    for dim in range(7):
        w = World(base.pose.copy(), 1.0, [])
        a = np.zeros(7, np.float32)
        a[6] = 1.0
        if dim < 6:
            a[dim] = 0.15 * rng.choice([-1, 1])
        else:
            a[6] = 0.0
        w.step(a)
        diff = np.abs(render_top(w, 64).astype(int) - top0).sum() + np.abs(render_wrist(w, 64).astype(int) - wrist0).sum()
        assert diff > 500, f"action dim {dim} does not change the images"


def test_instructions_are_diverse() -> None:
    words = {generate_episode(1, "train", i, 10, 8).instruction.split()[0] for i in range(40)}
    assert words >= {"pick", "push", "move", "put", "rotate"}


def test_cli(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "lavla.data_service.synthetic", "--out", str(tmp_path), "--train-episodes", "2",
                          "--val-episodes", "1", "--episode-length", "6", "--image-size", "16"],
                         capture_output=True, text=True, timeout=120, check=True)
    assert "synthetic_world/1.0.0" in out.stdout
    assert RLDSDataset(tmp_path / "synthetic_world" / "1.0.0").num_episodes("val") == 1


def _build(root: str) -> str:
    return str(generate_synthetic_world(SyntheticDataConfig(root=root, **SMALL)))


def test_concurrent_builders_agree(tmp_path: Path) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        outs = pool.map(_build, [str(tmp_path)] * 2)
    assert outs[0] == outs[1]
    assert RLDSDataset(outs[0]).num_episodes("train") == 3
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic_world"]  # no temp dirs left behind


def test_cli_world_options(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "lavla.data_service.synthetic", "--out", str(tmp_path), "--train-episodes", "2",
                    "--val-episodes", "0", "--episode-length", "6", "--image-size", "8", "--tasks", "move,rotate",
                    "--no-videos"], capture_output=True, text=True, timeout=120, check=True)
    params = json.loads((tmp_path / "synthetic_world" / "1.0.0" / "synthetic_config.json").read_text())
    assert params["tasks"] == ["move", "rotate"] and params["tilt_wobble"] is False and params["idle_steps"] == 2
    bad = subprocess.run([sys.executable, "-m", "lavla.data_service.synthetic", "--out", str(tmp_path / "x"),
                          "--tasks", "juggle"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "juggle" in bad.stderr
