"""Videos of closed-loop episodes: an env wrapper that writes the primary camera of the first episodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class RecordingEnv:
    """Wraps a ``ClosedLoopEnv``: keeps the primary camera of the first ``episodes`` episodes and
    writes each as ``<out_dir>/episode_<seed>_<success|failure>.mp4`` when it ends."""

    def __init__(self, env: Any, out_dir: Path, episodes: int, fps: float = 10.0) -> None:
        self.env, self.out_dir, self.left, self.fps = env, out_dir, episodes, fps
        self.frames: list[np.ndarray] = []
        self.seed = 0
        self.written: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def _keep(self, obs: dict[str, Any]) -> None:
        if self.left > 0:
            self.frames.append(np.asarray(obs["image_primary"]).transpose(1, 2, 0))

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        obs = self.env.reset(seed)
        self.seed, self.frames = int(seed or 0), []
        self._keep(obs)
        return obs

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        obs, reward, done, info = self.env.step(action)
        self._keep(obs)
        if done and self.left > 0:
            from lavla.data_service.video.codec import write_video

            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / f"episode_{self.seed:04d}_{'success' if info.get('success') else 'failure'}.mp4"
            h, w = self.frames[0].shape[:2]
            write_video(path, [f[: h - h % 2, : w - w % 2] for f in self.frames], self.fps)
            self.written.append(str(path))
            self.left -= 1
        return obs, reward, done, info
