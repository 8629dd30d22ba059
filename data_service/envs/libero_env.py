"""LIBERO as a :class:`~lavla.data_service.envs.sim_env.ClosedLoopEnv` (the optional ``libero`` extra).

What the evaluation protocol fixes, and where evaluations in the field have gone wrong:

* **Episodes walk the init states.** Episode ``seed`` runs task ``seed % n_tasks`` (or the one
  ``tasks`` names) from init state ``(seed // n_tasks) % 50``: N episodes per task use N different
  init states, never the same one again (the lerobot#2375 bug).
* **Settle, then act.** After ``set_init_state`` the env runs :data:`SETTLE_STEPS` no-op steps
  (gripper open) so objects come to rest, as LeRobot and openpi do; they do not count as steps.
* **Limits per suite** (:data:`MAX_STEPS`, those of the OpenVLA/openpi evaluations).
* **Observations as the training data saw them.** OpenVLA's LIBERO RLDS builds (the registry's
  ``libero_*_no_noops``) store both cameras rotated by 180 degrees; the adapter rotates
  ``agentview_image`` and ``robot0_eye_in_hand_image`` the same way. Proprio is the datasets' 8-D
  state: end-effector position, axis-angle orientation and the two gripper joint positions.
* **Actions.** ``step`` takes the policy's action in the pipeline's units (``unnormalize_action``):
  6 end-effector deltas in LIBERO's own [-1, 1] controller units, and the gripper standardized to
  1 = open. LIBERO wants -1 = open, +1 = close; the gripper is binarized at 0.5, as OpenVLA's
  evaluation does.
* **Success** is the env's own ``done`` (the task's BDDL goal predicate).

The simulator sits behind :class:`LiberoBackend`, so the protocol is tested with a fake in the
fast suite; :class:`HfLiberoBackend` is the real one (``hf-libero``, ``robosuite`` 1.4, MuJoCo with
``MUJOCO_GL=egl``). Its init states are read from the installed ``hf-libero`` package (they are
pickled tensors; this loads only those package files, never a user path).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["MAX_STEPS", "SETTLE_STEPS", "SUITES", "HfLiberoBackend", "LiberoBackend", "LiberoEnv", "quat_to_axis_angle"]

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
"""Episode limits per suite (the longest demonstration of each suite plus a margin)."""
SETTLE_STEPS = 10
"""No-op steps after setting an init state, before the policy acts."""
CAMERA_SIZE = 256
"""Render size: that of the LIBERO RLDS builds the registry's specs read."""
NOOP = np.array([0, 0, 0, 0, 0, 0, -1], np.float32)
"""Zero motion, gripper open (LIBERO's convention)."""


class LiberoTaskEnv(Protocol):
    """The slice of LIBERO's ``OffScreenRenderEnv`` the adapter uses."""

    def reset(self) -> Any: ...

    def set_init_state(self, state: np.ndarray) -> dict[str, np.ndarray]: ...

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, dict[str, Any]]: ...

    def close(self) -> None: ...


class LiberoBackend(Protocol):
    """One suite of LIBERO: its tasks, their init states, and an env per task."""

    def num_tasks(self) -> int: ...

    def language(self, task: int) -> str: ...

    def init_states(self, task: int) -> np.ndarray: ...

    def make_env(self, task: int, camera_size: int) -> LiberoTaskEnv: ...


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """robosuite's (x, y, z, w) quaternion -> axis-angle (3,), as the LIBERO RLDS builds store it."""
    q = np.asarray(quat, np.float64)
    w = float(np.clip(q[3], -1.0, 1.0))
    den = np.sqrt(1.0 - w * w)
    if den < 1e-8:
        return np.zeros(3, np.float32)
    return (q[:3] * 2.0 * np.arccos(w) / den).astype(np.float32)


class LiberoEnv:
    """One LIBERO suite as a ``ClosedLoopEnv`` (module doc has the protocol)."""

    image_encodings: Mapping[str, str] = {"image_primary": "jpeg", "image_wrist": "jpeg"}

    def __init__(self, suite: str, backend: LiberoBackend | None = None, *, tasks: Sequence[int] | None = None,
                 max_steps: int | None = None, camera_size: int = CAMERA_SIZE, dataset_name: str | None = None) -> None:
        if suite not in SUITES:
            raise ValueError(f"unknown LIBERO suite {suite!r}; known: {', '.join(SUITES)}")
        self.suite = suite
        self.backend = backend if backend is not None else HfLiberoBackend(suite)
        n = self.backend.num_tasks()
        self.tasks = list(range(n)) if tasks is None else [int(t) for t in tasks]
        bad = [t for t in self.tasks if not 0 <= t < n]
        if bad or not self.tasks:
            raise ValueError(f"{suite} has tasks 0..{n - 1}; asked for {list(tasks or [])}")
        self.max_steps = int(max_steps or MAX_STEPS[suite])
        self.camera_size = camera_size
        # the registry's RLDS build of this suite: its statistics and embodiment (libero_90 has none)
        self.dataset_name = dataset_name or f"{suite}_no_noops"
        self._envs: dict[int, LiberoTaskEnv] = {}
        self._env: LiberoTaskEnv | None = None
        self._task = -1
        self._steps = 0
        self._success = False
        self.last_init: tuple[int, int] | None = None

    def episode_plan(self, seed: int) -> tuple[int, int]:
        """(task, init state index) of episode ``seed``."""
        task = self.tasks[seed % len(self.tasks)]
        n_init = len(self.backend.init_states(task))
        return task, (seed // len(self.tasks)) % n_init

    def _observation(self, raw: Mapping[str, np.ndarray]) -> dict[str, Any]:
        def image(key: str) -> np.ndarray:
            img = np.asarray(raw[key])[::-1, ::-1]  # rotated 180 degrees, as the RLDS builds store it
            return np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.uint8)

        proprio = np.concatenate([np.asarray(raw["robot0_eef_pos"], np.float32),
                                  quat_to_axis_angle(raw["robot0_eef_quat"]),
                                  np.asarray(raw["robot0_gripper_qpos"], np.float32)[:2]])
        return {"image_primary": image("agentview_image"), "image_wrist": image("robot0_eye_in_hand_image"),
                "proprio": proprio.astype(np.float32), "language": self.backend.language(self._task)}

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        task, init = self.episode_plan(int(seed or 0))
        if task not in self._envs:
            self._envs[task] = self.backend.make_env(task, self.camera_size)
        self._env, self._task = self._envs[task], task
        self._env.reset()
        raw = self._env.set_init_state(self.backend.init_states(task)[init])
        for _ in range(SETTLE_STEPS):
            raw, _, _, _ = self._env.step(NOOP.copy())
        self._steps, self._success, self.last_init = 0, False, (task, init)
        return self._observation(raw)

    @staticmethod
    def to_libero_action(action: np.ndarray) -> np.ndarray:
        """Pipeline units (gripper 1 = open) -> LIBERO's (gripper -1 = open, +1 = close, binarized)."""
        a = np.asarray(action, np.float32).reshape(-1)
        if a.shape[0] < 7:
            raise ValueError(f"LIBERO takes 7-D actions, got {a.shape[0]} dims")
        out = a[:7].copy()
        out[:6] = np.clip(out[:6], -1.0, 1.0)
        out[6] = -1.0 if a[6] >= 0.5 else 1.0
        return out

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        if self._env is None:
            raise RuntimeError("reset() before step()")
        raw, reward, done, info = self._env.step(self.to_libero_action(action))
        self._steps += 1
        self._success = self._success or bool(done)
        finished = self._success or self._steps >= self.max_steps
        return (self._observation(raw), float(reward), finished,
                {**dict(info or {}), "success": self._success, "task": self.backend.language(self._task)})

    def success(self) -> bool:
        return self._success

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


class HfLiberoBackend:
    """The real LIBERO (``hf-libero``): BDDL files and init states from the package, assets from
    ``LIBERO_ASSETS`` (or the package's ``assets`` folder). Writes a LIBERO config file so its import
    never prompts on stdin (``LIBERO_CONFIG_PATH``)."""

    def __init__(self, suite: str, assets: str | None = None) -> None:
        self.suite = suite
        os.environ.setdefault("MUJOCO_GL", "egl")
        self._configure(assets or os.environ.get("LIBERO_ASSETS"))
        try:
            import libero.libero as libero_pkg
            from libero.libero import benchmark
        except ImportError as e:
            raise ImportError("LIBERO evaluation needs the libero extra (hf-libero, robosuite 1.4, bddl, mujoco); "
                              "see the README's LIBERO section") from e
        folder = assets or os.environ.get("LIBERO_ASSETS")
        if folder:
            if not (Path(folder) / "scenes").is_dir():
                raise FileNotFoundError(f"LIBERO_ASSETS={folder} holds no scenes/ folder (the LIBERO asset tree)")
            # hf-libero looks in its package folder, then downloads from the Hub (no network here):
            # its resolver returns this cached path first.
            libero_pkg._assets_path_cache = str(folder)
        self._suite = benchmark.get_benchmark_dict()[suite]()
        self._init_cache: dict[int, np.ndarray] = {}

    @staticmethod
    def _configure(assets: str | None) -> None:
        if os.environ.get("LIBERO_CONFIG_PATH") and (Path(os.environ["LIBERO_CONFIG_PATH"]) / "config.yaml").is_file():
            return
        import importlib.util

        spec = importlib.util.find_spec("libero")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("hf-libero is not installed (the libero extra)")
        pkg = Path(next(iter(spec.submodule_search_locations))) / "libero"
        cfg_dir = Path(tempfile.mkdtemp(prefix="lavla-libero-"))
        entries = {"benchmark_root": pkg, "bddl_files": pkg / "bddl_files", "init_states": pkg / "init_files",
                   "datasets": cfg_dir / "datasets", "assets": Path(assets) if assets else pkg / "assets"}
        (cfg_dir / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in entries.items()))
        os.environ["LIBERO_CONFIG_PATH"] = str(cfg_dir)

    def num_tasks(self) -> int:
        return int(self._suite.n_tasks)

    def language(self, task: int) -> str:
        return str(self._suite.get_task(task).language)

    def init_states(self, task: int) -> np.ndarray:
        if task not in self._init_cache:
            states = self._suite.get_task_init_states(task)  # package files (see the module doc)
            self._init_cache[task] = np.asarray(states)
        return self._init_cache[task]

    def make_env(self, task: int, camera_size: int) -> LiberoTaskEnv:
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

        t = self._suite.get_task(task)
        bddl = Path(get_libero_path("bddl_files")) / t.problem_folder / t.bddl_file
        env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=camera_size, camera_widths=camera_size)
        env.seed(0)
        return env
