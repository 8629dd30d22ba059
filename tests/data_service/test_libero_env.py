"""The LIBERO adapter's protocol with a fake simulator (fast suite), and one real LIBERO smoke test
that runs where the ``libero`` extra and the scene assets are installed."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lavla.data_service.envs.libero_env import MAX_STEPS, SETTLE_STEPS, LiberoEnv, quat_to_axis_angle
from lavla.data_service.envs.sim_env import ClosedLoopEnv, rollout


class FakeTaskEnv:
    """Records what the adapter does; ``done`` once the gripper closed 3 times in a row (task 0 only)."""

    def __init__(self, task: int, size: int) -> None:
        self.task, self.size = task, size
        self.actions: list[np.ndarray] = []
        self.init: np.ndarray | None = None
        self.closed = 0

    def _obs(self) -> dict[str, np.ndarray]:
        img = np.zeros((self.size, self.size, 3), np.uint8)
        img[0, 0] = (255, 0, 0)  # top-left marker: must end up bottom-right
        return {"agentview_image": img, "robot0_eye_in_hand_image": img.copy(),
                "robot0_eef_pos": np.array([0.1, 0.2, 0.3]), "robot0_eef_quat": np.array([0.0, 0.0, np.sin(0.25), np.cos(0.25)]),
                "robot0_gripper_qpos": np.array([0.04, -0.04])}

    def reset(self) -> Any:
        self.actions, self.closed = [], 0
        return self._obs()

    def set_init_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        self.init = np.asarray(state)
        return self._obs()

    def step(self, action: np.ndarray):
        self.actions.append(np.asarray(action))
        self.closed = self.closed + 1 if action[6] > 0 else 0
        return self._obs(), 0.0, self.task == 0 and self.closed >= 3, {}

    def close(self) -> None:
        pass


class FakeBackend:
    def __init__(self, tasks: int = 2, inits: int = 3) -> None:
        self.n, self.k = tasks, inits
        self.envs: dict[int, FakeTaskEnv] = {}

    def num_tasks(self) -> int:
        return self.n

    def language(self, task: int) -> str:
        return f"task {task}"

    def init_states(self, task: int) -> np.ndarray:
        return np.arange(self.k, dtype=np.float64)[:, None] + 100 * task

    def make_env(self, task: int, camera_size: int) -> FakeTaskEnv:
        self.envs[task] = FakeTaskEnv(task, camera_size)
        return self.envs[task]


def test_episodes_walk_tasks_and_init_states_never_reusing_one() -> None:
    env = LiberoEnv("libero_goal", FakeBackend(tasks=2, inits=3), camera_size=8)
    assert isinstance(env, ClosedLoopEnv) and env.max_steps == MAX_STEPS["libero_goal"] == 300
    assert env.dataset_name == "libero_goal_no_noops"
    plans = [env.episode_plan(s) for s in range(6)]
    assert plans == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert env.episode_plan(6) == (0, 0)  # only after every init state of every task was used
    env.reset(3)
    assert env.backend.envs[1].init[0] == 101.0 and env.last_init == (1, 1)
    assert LiberoEnv("libero_10", FakeBackend(), tasks=[1]).episode_plan(4) == (1, 1)
    with pytest.raises(ValueError, match="unknown LIBERO suite"):
        LiberoEnv("libero_100", FakeBackend())
    with pytest.raises(ValueError, match="has tasks 0..1"):
        LiberoEnv("libero_goal", FakeBackend(), tasks=[5])


def test_reset_settles_observations_match_the_rlds_builds_and_actions_convert() -> None:
    backend = FakeBackend()
    env = LiberoEnv("libero_spatial", backend, camera_size=8)
    obs = env.reset(0)
    fake = backend.envs[0]
    assert len(fake.actions) == SETTLE_STEPS and all(a.tolist() == [0, 0, 0, 0, 0, 0, -1] for a in fake.actions)
    assert obs["image_primary"].shape == (3, 8, 8) and obs["image_primary"][:, 7, 7].tolist() == [255, 0, 0]
    assert obs["image_wrist"][:, 7, 7].tolist() == [255, 0, 0]  # both cameras rotated 180 degrees
    np.testing.assert_allclose(obs["proprio"][:3], [0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_allclose(obs["proprio"][3:6], [0.0, 0.0, 0.5], atol=1e-6)  # a 0.5 rad turn about z
    np.testing.assert_allclose(obs["proprio"][6:], [0.04, -0.04], rtol=1e-6)
    assert obs["language"] == "task 0"
    out = LiberoEnv.to_libero_action(np.array([2.0, -0.5, 0, 0, 0, 0.1, 0.9]))
    assert out.tolist() == pytest.approx([1.0, -0.5, 0, 0, 0, 0.1, -1.0])  # clipped; 1 = open -> -1
    assert LiberoEnv.to_libero_action(np.array([0, 0, 0, 0, 0, 0, 0.2]))[6] == 1.0  # closed -> +1
    np.testing.assert_allclose(quat_to_axis_angle(np.array([0, 0, 0, 1.0])), 0.0)


def test_rollout_counts_success_from_the_env_and_stops_at_the_limit(tmp_path: Path) -> None:
    pytest.importorskip("av")
    from lavla.data_service.envs.recording import RecordingEnv

    env = LiberoEnv("libero_goal", FakeBackend(), camera_size=8, max_steps=5)
    rec = RecordingEnv(env, tmp_path / "videos", episodes=2)
    close = lambda obs: np.array([[0, 0, 0, 0, 0, 0, 0.0]] * 2, np.float32)
    result = rollout(close, rec, episodes=4, seed=0)
    assert result["per_task"]["task 0"]["successes"] == 2 and result["per_task"]["task 1"]["successes"] == 0
    assert [r["steps"] for r in result["episode_results"]] == [3, 5, 3, 5]  # success at 3, the limit at 5
    assert sorted(Path(p).name for p in rec.written) == ["episode_0000_success.mp4", "episode_0001_failure.mp4"]


LIBERO_READY = importlib.util.find_spec("libero") is not None and bool(os.environ.get("LIBERO_ASSETS"))


@pytest.mark.skipif(not LIBERO_READY, reason="needs the libero extra and LIBERO_ASSETS (README: LIBERO)")
def test_real_libero_task_resets_steps_renders_and_reports_success() -> None:
    env = LiberoEnv("libero_goal", camera_size=128)
    obs = env.reset(0)
    assert obs["image_primary"].shape == (3, 128, 128) and obs["image_primary"].std() > 5
    assert obs["proprio"].shape == (8,) and obs["language"]
    obs, _, done, info = env.step(np.array([0, 0, 0, 0, 0, 0, 1.0], np.float32))
    assert not done and info["success"] is False and obs["image_wrist"].shape == (3, 128, 128)
    assert env.episode_plan(env.backend.num_tasks()) == (0, 1)  # the next visit of task 0 uses init state 1
    env.close()
