"""The synthetic world's state and physics: blocks, the gripper, what an action does."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np



NAME = "synthetic_world"
VERSION = "1.0.0"

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.16, 0.14),
    "green": (0.18, 0.68, 0.25),
    "blue": (0.18, 0.32, 0.88),
    "yellow": (0.92, 0.80, 0.16),
}
TABLE = np.array([0.78, 0.70, 0.57], np.float32)
JAW = np.array([0.20, 0.20, 0.24], np.float32)
PALM = np.array([0.55, 0.55, 0.60], np.float32)
SKIN = np.array([0.88, 0.67, 0.53], np.float32)
SLEEVE = np.array([0.25, 0.35, 0.55], np.float32)

BLOCK_HALF = 0.11  # world units; the table spans [-1, 1]^2
GRASP_Z = 0.12  # the gripper reaches blocks below this height
GRASP_RADIUS = 0.12
PUSH_RADIUS = 0.17
LIMITS = {"xy": 0.9, "z": (0.0, 1.0), "tilt": 0.45}
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "forward": (0.0, 1.0), "backward": (0.0, -1.0)}
PLACES = {"top right": (0.6, 0.6), "top left": (-0.6, 0.6), "bottom right": (0.6, -0.6),
          "bottom left": (-0.6, -0.6), "center": (0.0, 0.0)}






@dataclass
class Block:
    """One coloured cube."""

    color: str
    """Key of ``COLORS``."""
    pos: np.ndarray
    """[x, y] centre on the table (world units)."""
    z: float = 0.0
    """Height of the block's bottom (0 = on the table)."""
    angle: float = 0.0
    """Rotation about the vertical axis (radians)."""


@dataclass
class World:
    """Gripper pose + blocks; :meth:`step` applies one action."""

    pose: np.ndarray
    """[x, y, z, roll, pitch, yaw]."""
    grip: float
    """Jaw opening in [0, 1] (1 = open)."""
    blocks: list[Block]
    """The blocks on the table."""
    held: int | None = None
    """Index of the block in the gripper, if any."""

    def proprio(self) -> np.ndarray:
        """8-D POS_EULER proprio: xyz, rpy, pad, gripper."""
        return np.array([*self.pose, 0.0, self.grip], np.float32)

    def step(self, action: np.ndarray) -> None:
        p = self.pose
        p[:3] += action[:3]
        p[3:5] += action[3:5]
        p[5] = (p[5] + action[5] + np.pi) % (2 * np.pi) - np.pi
        p[:2] = np.clip(p[:2], -LIMITS["xy"], LIMITS["xy"])
        p[2] = np.clip(p[2], *LIMITS["z"])
        p[3:5] = np.clip(p[3:5], -LIMITS["tilt"], LIMITS["tilt"])
        closing = self.grip >= 0.5 and action[6] < 0.5
        self.grip = float(np.clip(action[6], 0.0, 1.0))

        if self.held is not None:
            b = self.blocks[self.held]
            if self.grip >= 0.5:  # release: the block drops onto the table
                b.z, self.held = 0.0, None
            else:
                b.pos, b.z, b.angle = p[:2].copy(), max(0.0, float(p[2]) - 0.04), float(p[5])
        elif closing and p[2] < GRASP_Z:  # only closing jaws grasp; a closed fist pushes
            near = [i for i, b in enumerate(self.blocks) if np.linalg.norm(b.pos - p[:2]) < GRASP_RADIUS]
            if near:
                self.held = min(near, key=lambda i: np.linalg.norm(self.blocks[i].pos - p[:2]))
        if p[2] < GRASP_Z and self.grip < 0.5:  # a low closed gripper pushes blocks (open jaws straddle them)
            for i, b in enumerate(self.blocks):
                if i == self.held:
                    continue
                d = b.pos - p[:2]
                dist = float(np.linalg.norm(d))
                if dist < PUSH_RADIUS:
                    direction = d / dist if dist > 1e-6 else np.array([1.0, 0.0])
                    b.pos = np.clip(p[:2] + direction * PUSH_RADIUS, -0.95, 0.95)
