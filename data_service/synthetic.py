"""The synthetic world: a small rendered tabletop written as a real RLDS dataset.

A top-down camera looks at a table with 2-3 coloured blocks and a two-jaw gripper. The 7-D action
``(dx, dy, dz, droll, dpitch, dyaw, gripper)`` (gripper absolute, 1 = open) moves the gripper
visibly: x/y move it, z scales it and pulls its shadow away, yaw turns the jaws, roll/pitch tilt
the fingers off the wrist, the gripper value spreads or closes the jaws. A closed gripper near the
table grasps the block under it and carries it; a low gripper pushes blocks out of its way. A
scripted noisy policy carries out one instruction per episode ("pick up the red block", "push the
blue block left", "move the gripper to the top right", ...). A wrist camera renders the scene
around the gripper, rotating with it.

It is the quickstart's data and the test fixture, so it is deterministic per seed (every episode
has its own RNG stream) and small: the default build takes a few seconds.

The same episodes are also rendered as human-style video (a hand instead of the gripper, no
action labels): mp4 clips and an annotation CSV under ``DIR/synthetic_human_video`` for the video
source (:mod:`data_service.video`).

CLI: ``python -m lavla.data_service.synthetic --out DIR`` writes ``DIR/synthetic_world/1.0.0`` and
``DIR/synthetic_human_video`` (``--no-videos`` skips the latter).
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib.util
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lavla.data_service.config import SyntheticDataConfig
from lavla.data_service.rlds_writer import RLDSWriter, encode_image, rlds_step_features

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


# ---------------------------------------------------------------------------------------------
# World state and physics
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Rendering (signed distances -> anti-aliased coverage)
# ---------------------------------------------------------------------------------------------


class Canvas:
    """A camera image with the world coordinates of its pixel centres.

    The view is a square of half-width ``half`` around ``center``, rotated by ``angle``. Shapes
    are painted only inside their pixel bounding box (objects are small), which keeps a 64x64
    frame at well under a millisecond.
    """

    def __init__(self, center: np.ndarray, half: float, angle: float, size: int, *, top_table: bool = False,
                 img: np.ndarray | None = None) -> None:
        self.center, self.half, self.size = np.asarray(center, np.float32), float(half), size
        self.cos, self.sin = float(np.cos(angle)), float(np.sin(angle))
        self.pix = 2.0 * half / size
        coords = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0) * half
        u, v = np.meshgrid(coords, -coords)  # row 0 is the far (+v) edge
        self.gx = self.center[0] + self.cos * u - self.sin * v
        self.gy = self.center[1] + self.sin * u + self.cos * v
        if img is not None:  # paint over an existing image in this canvas' coordinates
            self.img = img
        else:
            self.img = _top_table(size).copy() if top_table else _table(self.gx, self.gy)

    def region(self, c: np.ndarray, radius: float) -> tuple[slice, slice] | None:
        """Pixel rows/cols that can be within ``radius`` of world point ``c`` (None if off-image)."""
        dx, dy = float(c[0]) - float(self.center[0]), float(c[1]) - float(self.center[1])
        u, v = self.cos * dx + self.sin * dy, -self.sin * dx + self.cos * dy
        col, row = (u / self.half + 1.0) / 2.0 * self.size, (-v / self.half + 1.0) / 2.0 * self.size
        r = radius / self.pix + 2.0
        r0, r1 = max(0, int(row - r)), min(self.size, int(row + r) + 1)
        c0, c1 = max(0, int(col - r)), min(self.size, int(col + r) + 1)
        return (slice(r0, r1), slice(c0, c1)) if r0 < r1 and c0 < c1 else None

    def box(self, c: np.ndarray, half: tuple[float, float], angle: float, color: np.ndarray, alpha: float = 1.0,
            soft: float = 1.0) -> None:
        reg = self.region(c, float(np.hypot(*half)) + soft * self.pix)
        if reg is None:
            return
        gx, gy = self.gx[reg], self.gy[reg]
        ca, sa = np.cos(angle), np.sin(angle)
        dx, dy = gx - c[0], gy - c[1]
        d = np.maximum(np.abs(ca * dx + sa * dy) - half[0], np.abs(-sa * dx + ca * dy) - half[1])
        self._paint(reg, np.clip(0.5 - d / (self.pix * soft), 0.0, 1.0), color, alpha)

    def disk(self, c: np.ndarray, r: float, color: np.ndarray, alpha: float = 1.0, soft: float = 1.0) -> None:
        reg = self.region(c, r + soft * self.pix)
        if reg is None:
            return
        d = np.hypot(self.gx[reg] - c[0], self.gy[reg] - c[1]) - r
        self._paint(reg, np.clip(0.5 - d / (self.pix * soft), 0.0, 1.0), color, alpha)

    def _paint(self, reg: tuple[slice, slice], cover: np.ndarray, color: np.ndarray, alpha: float) -> None:
        a = (cover * alpha)[..., None]
        patch = self.img[reg]
        patch += a * (color - patch)

    def to_uint8(self) -> np.ndarray:
        return (np.clip(self.img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _table(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    # Wood-like grain + a faint grid: gives the wrist view texture to see its own motion.
    grain = 0.04 * np.sin(9.0 * gx + 2.5 * np.sin(3.0 * gy)) + 0.025 * np.sin(23.0 * gy + 1.3)
    grid = 0.05 * ((np.abs(((gx + 1.0) * 2.5) % 1.0 - 0.5) < 0.03) | (np.abs(((gy + 1.0) * 2.5) % 1.0 - 0.5) < 0.03))
    shade = 1.0 + grain - grid
    edge = np.clip((np.maximum(np.abs(gx), np.abs(gy)) - 0.97) * 20.0, 0.0, 1.0)  # darker rim
    return (TABLE[None, None, :] * shade[..., None] * (1.0 - 0.35 * edge[..., None])).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _top_table(size: int) -> np.ndarray:
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    gx, gy = np.meshgrid(coords, -coords)
    return _table(gx, gy)


def _scale(z: float) -> float:
    """Apparent size of an object at height z (the camera looks down from above)."""
    return 1.0 + 0.7 * z


_BLACK = np.zeros(3, np.float32)


def _draw_blocks(cv: Canvas, world: World) -> None:
    for b in sorted(world.blocks, key=lambda b: b.z):
        s = BLOCK_HALF * _scale(b.z)
        if b.z > 0.01:  # lifted: a soft shadow on the table, offset with height
            cv.box(b.pos + np.array([0.15, -0.15]) * b.z, (BLOCK_HALF, BLOCK_HALF), b.angle, _BLACK, 0.35, soft=3.0)
        color = np.array(COLORS[b.color], np.float32)
        cv.box(b.pos, (s, s), b.angle, color)
        cv.box(b.pos, (s * 0.55, s * 0.55), b.angle, np.minimum(color * 1.25, 1.0), 0.6)


def _draw_gripper(cv: Canvas, world: World) -> None:
    x, y, z, roll, pitch, yaw = (float(v) for v in world.pose)
    s = _scale(z)
    wrist = np.array([x, y])
    cv.disk(wrist + np.array([0.15, -0.15]) * z, 0.13, _BLACK, 0.45 - 0.25 * z, soft=2.0 + 6.0 * z)
    tip = wrist + 0.25 * np.array([np.sin(pitch), -np.sin(roll)])  # tilting moves the fingers off the wrist
    across = np.array([np.cos(yaw), np.sin(yaw)])  # the jaws open along this axis
    spread = (0.045 + 0.10 * world.grip) * s
    for side in (-1.0, 1.0):
        cv.box(tip + side * spread * across, (0.03 * s, 0.09 * s), yaw, JAW)
    cv.box((wrist + tip) / 2, (spread + 0.035 * s, 0.03 * s), yaw, PALM)
    cv.disk(wrist, 0.05 * s, PALM * 0.8)


def render_top(world: World, size: int) -> np.ndarray:
    """The fixed top-down camera: uint8 [size, size, 3]."""
    cv = Canvas(np.zeros(2), 1.0, 0.0, size, top_table=True)
    _draw_blocks(cv, world)
    _draw_gripper(cv, world)
    return cv.to_uint8()


def _draw_hand(cv: Canvas, world: World) -> None:
    """A hand seen from above at the gripper's pose: forearm, palm, four fingers and a thumb that
    spread with the "gripper" opening (a grasp closes the fist), sized by height like the gripper."""
    x, y, z, roll, pitch, yaw = (float(v) for v in world.pose)
    s = _scale(z)
    wrist = np.array([x, y])
    cv.disk(wrist + np.array([0.15, -0.15]) * z, 0.15, _BLACK, 0.45 - 0.25 * z, soft=2.0 + 6.0 * z)
    across = np.array([np.cos(yaw), np.sin(yaw)])
    ahead = np.array([-np.sin(yaw), np.cos(yaw)]) + 0.6 * np.array([np.sin(pitch), -np.sin(roll)])
    cv.box(wrist - 0.2 * s * ahead, (0.055 * s, 0.16 * s), yaw, SLEEVE)  # forearm trails behind the palm
    palm = wrist + 0.03 * s * ahead
    cv.disk(palm, 0.075 * s, SKIN)
    spread = 0.35 + 0.65 * world.grip  # fingers fan out when open, curl in when closed
    reach = (0.06 + 0.07 * world.grip) * s
    for k in range(4):
        side = (k - 1.5) * 0.035 * s * (0.6 + spread)
        cv.box(palm + side * across + (0.07 * s + reach / 2) * ahead, (0.016 * s, reach / 2), yaw, SKIN * 0.92)
    cv.box(palm + (0.075 + 0.05 * spread) * s * across + 0.02 * s * ahead, (0.05 * s * spread + 0.012, 0.017 * s),
           yaw, SKIN * 0.88)


def render_human(world: World, size: int) -> np.ndarray:
    """The top camera with a human hand instead of the gripper: uint8 [size, size, 3]."""
    cv = Canvas(np.zeros(2), 1.0, 0.0, size, top_table=True)
    _draw_blocks(cv, world)
    _draw_hand(cv, world)
    return cv.to_uint8()


def render_wrist(world: World, size: int) -> np.ndarray:
    """The wrist camera: looks down around the gripper, rotating with its yaw, zooming out with z."""
    x, y, z, _, _, yaw = (float(v) for v in world.pose)
    half = 0.3 + 0.45 * z
    # The camera looks ahead of the fingers: the grasp point sits at (0, -0.5) in image units.
    ahead = 0.5 * half * np.array([-np.sin(yaw), np.cos(yaw)])
    cv = Canvas(np.array([x, y]) + ahead, half, yaw, size)
    _draw_blocks(cv, world)
    # The fingers sit at fixed places in the wrist image; only their spread changes.
    finger = Canvas(np.zeros(2), 1.0, 0.0, size, img=cv.img)
    spread = 0.42 + 0.38 * world.grip
    for side in (-1.0, 1.0):
        finger.box(np.array([side * spread, -0.6]), (0.09, 0.3), 0.0, JAW)
    return cv.to_uint8()


# ---------------------------------------------------------------------------------------------
# Tasks and the scripted policy
# ---------------------------------------------------------------------------------------------


@dataclass
class Waypoint:
    """A target the scripted policy moves to."""

    pos: np.ndarray
    """[x, y, z] target of the wrist."""
    grip: float
    """Commanded gripper (1 = open) while moving there."""
    yaw: float | None = None
    """Target yaw, or None to keep the current one."""
    hold: int = 0
    """Extra steps to stay once reached (e.g. to close the gripper)."""


@dataclass
class Goal:
    """What an instruction asks for, in structured form (``data_service.sim_env`` judges success on it)."""

    kind: str
    """``pick`` | ``place`` | ``push`` | ``move`` | ``rotate``."""
    block: str | None = None
    """Colour of the block the instruction names (pick, place, push)."""
    place: str | None = None
    """Key of ``PLACES`` (place, move)."""
    direction: str | None = None
    """Key of ``DIRECTIONS`` (push)."""
    turn: float = 0.0
    """Rotation sense (rotate): +1 counterclockwise (yaw increases), -1 clockwise."""


@dataclass
class Task:
    """An instruction and the waypoints that carry it out."""

    instruction: str
    """Natural-language instruction."""
    waypoints: list[Waypoint] = field(default_factory=list)
    """Waypoints in order."""
    goal: Goal | None = None
    """The instruction's meaning."""


TASK_FAMILIES: dict[str, float] = {"pick": 0.3, "push": 0.25, "move": 0.15, "place": 0.2, "rotate": 0.1}
"""The task families and how often each is drawn (renormalized over the enabled ones)."""


@dataclass(frozen=True)
class WorldOptions:
    """What the generator draws and records beyond sizes and seed (``SyntheticDataConfig``'s
    ``tasks``/``tilt_wobble``/``idle_steps``); the closed-loop env takes the same options so it draws
    the scenes and tasks of the dataset it evaluates."""

    tasks: tuple[str, ...] = tuple(TASK_FAMILIES)
    """Enabled task families, a subset of ``TASK_FAMILIES``."""
    tilt_wobble: bool = False
    """Roll/pitch follow a slow random sinusoid whose phase no frame shows (the old default, kept for
    studies of unobservable label noise); off, the expert holds the wrist level."""
    idle_steps: int = 2
    """Steps recorded after the expert's last waypoint, holding still, before the episode ends;
    -1 records the drawn length whatever happens (the tail then holds still)."""

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASK_FAMILIES]
        if not self.tasks or unknown:
            raise ValueError(f"synthetic tasks must be a non-empty subset of {list(TASK_FAMILIES)}, got {list(self.tasks)}")
        if self.idle_steps < -1:
            raise ValueError(f"synthetic idle_steps must be >= -1, got {self.idle_steps}")

    @classmethod
    def from_config(cls, cfg: SyntheticDataConfig) -> WorldOptions:
        return cls(tuple(cfg.tasks), bool(cfg.tilt_wobble), int(cfg.idle_steps))


def _make_task(world: World, rng: np.random.Generator, tasks: tuple[str, ...] = tuple(TASK_FAMILIES)) -> Task:
    names = [b.color for b in world.blocks]
    weights = np.array([TASK_FAMILIES[t] for t in tasks])
    kind = str(rng.choice(list(tasks), p=weights / weights.sum())) if len(tasks) > 1 else tasks[0]
    hover = 0.45
    if kind in ("pick", "place"):
        i = int(rng.integers(len(names)))
        b = world.blocks[i]
        yaw = float(b.angle)  # align the jaws with the block: a target the frames show
        pts = [Waypoint(np.array([*b.pos, hover]), 1.0, yaw), Waypoint(np.array([*b.pos, 0.04]), 1.0),
               Waypoint(np.array([*b.pos, 0.04]), 0.0, hold=1)]
        if kind == "pick":
            up = np.array([*b.pos, 0.7])
            return Task(f"pick up the {names[i]} block", pts + [Waypoint(up, 0.0, hold=2)],
                        Goal("pick", block=names[i]))
        place = str(rng.choice(list(PLACES)))
        target = np.array(PLACES[place])
        return Task(f"put the {names[i]} block in the {place}" if place != "center" else f"put the {names[i]} block in the center",
                    pts + [Waypoint(np.array([*b.pos, 0.5]), 0.0), Waypoint(np.array([*target, 0.5]), 0.0),
                           Waypoint(np.array([*target, 0.06]), 0.0), Waypoint(np.array([*target, 0.06]), 1.0, hold=1),
                           Waypoint(np.array([*target, 0.5]), 1.0)], Goal("place", block=names[i], place=place))
    if kind == "push":
        i = int(rng.integers(len(names)))
        b = world.blocks[i]
        dname = str(rng.choice(list(DIRECTIONS)))
        d = np.array(DIRECTIONS[dname])
        start = np.clip(b.pos - d * 0.28, -0.9, 0.9)
        end = np.clip(b.pos + d * 0.35, -0.8, 0.8)
        yaw = 0.0 if dname in ("forward", "backward") else np.pi / 2
        return Task(f"push the {names[i]} block {dname}",
                    [Waypoint(np.array([*start, hover]), 0.0, yaw), Waypoint(np.array([*start, 0.05]), 0.0),
                     Waypoint(np.array([*end, 0.05]), 0.0), Waypoint(np.array([*end, 0.4]), 1.0)],
                    Goal("push", block=names[i], direction=dname))
    if kind == "move":
        place = str(rng.choice(list(PLACES)))
        # The instruction names neither a height nor a yaw: keep both (no unobservable targets).
        target = np.array([*PLACES[place], world.pose[2]])
        return Task(f"move the gripper to the {place}", [Waypoint(target, 1.0, None, hold=2)],
                    Goal("move", place=place))
    turn = float(rng.choice([-1.0, 1.0]))
    yaw0 = float(world.pose[5])
    words = "counterclockwise" if turn > 0 else "clockwise"
    return Task(f"rotate the gripper {words}",
                [Waypoint(world.pose[:3].copy(), 1.0, yaw0 + turn * 0.8), Waypoint(world.pose[:3].copy(), 0.0, yaw0 + turn * 1.6),
                 Waypoint(world.pose[:3].copy(), 1.0, yaw0 + turn * 2.4)], Goal("rotate", turn=turn))


def _path_length(world: World, task: Task) -> float:
    pos, total = world.pose[:3].copy(), 0.0
    for wp in task.waypoints:
        total += float(np.abs(wp.pos - pos).max()) + 0.04 * wp.hold
        pos = wp.pos
    return total


def _wrap(a: float) -> float:
    return (a + np.pi) % (2 * np.pi) - np.pi


class ScriptedPolicy:
    """Proportional controller through the task's waypoints, with small exploration noise.

    The speed is set so the task fits ~75% of the episode. After the last waypoint the expert holds
    still (keeping its gripper state): that tail is as predictable as the task. With ``tilt_wobble``
    roll/pitch follow a slow random sinusoid (its phase is not in any frame, so those labels are
    noise to a policy); without it the wrist stays level and roll/pitch are exactly 0."""

    def __init__(self, world: World, task: Task, length: int, rng: np.random.Generator, *,
                 tilt_wobble: bool = False) -> None:
        self.task, self.rng = task, rng
        self.i, self.held_for = 0, 0
        self.vmax = float(np.clip(_path_length(world, task) / max(1.0, 0.75 * length), 0.06, 0.16))
        self.wobble = (rng.uniform(0.1, 0.3, 2), rng.uniform(0.15, 0.5, 2), rng.uniform(0, 2 * np.pi, 2)) if tilt_wobble else None
        self.t = 0

    @property
    def done(self) -> bool:
        """Every waypoint reached."""
        return self.i >= len(self.task.waypoints)

    def __call__(self, world: World) -> np.ndarray:
        rng, pose = self.rng, world.pose
        action = np.zeros(7, np.float32)
        if self.i < len(self.task.waypoints):
            wp = self.task.waypoints[self.i]
            err = wp.pos - pose[:3]
            action[:3] = np.clip(err, -self.vmax, self.vmax)
            if wp.yaw is not None:
                action[5] = np.clip(_wrap(wp.yaw - pose[5]), -0.3, 0.3)
            action[6] = wp.grip
            if np.abs(err).max() < 0.03 and (wp.yaw is None or abs(_wrap(wp.yaw - pose[5])) < 0.1):
                self.held_for += 1
                if self.held_for > wp.hold:
                    self.i, self.held_for = self.i + 1, 0
        else:  # done: hold still, keeping the final gripper state
            action[6] = self.task.waypoints[-1].grip if self.task.waypoints else 1.0
        if self.wobble is not None:
            amp, freq, phase = self.wobble
            target_tilt = amp * np.sin(freq * self.t + phase)
            action[3:5] = np.clip(target_tilt - pose[3:5], -0.12, 0.12)
            action[:6] += rng.normal(0.0, [0.008, 0.008, 0.006, 0.01, 0.01, 0.02]).astype(np.float32)
        else:  # level wrist: roll/pitch stay exactly 0, noise only where the frames show its effect
            action[[0, 1, 2, 5]] += rng.normal(0.0, [0.008, 0.008, 0.006, 0.02]).astype(np.float32)
        self.t += 1
        return action.astype(np.float32)


def _new_world(rng: np.random.Generator) -> World:
    n = int(rng.integers(2, 4))
    colors = rng.choice(list(COLORS), size=n, replace=False)
    blocks: list[Block] = []
    while len(blocks) < n:  # rejection-sample non-overlapping placements
        pos = rng.uniform(-0.6, 0.6, 2)
        if all(np.linalg.norm(pos - b.pos) > 0.3 for b in blocks):
            blocks.append(Block(str(colors[len(blocks)]), pos, 0.0, float(rng.uniform(-0.4, 0.4))))
    pose = np.array([*rng.uniform(-0.5, 0.5, 2), rng.uniform(0.3, 0.7), 0.0, 0.0, rng.uniform(-1.0, 1.0)])
    return World(pose, 1.0, blocks)


@dataclass
class SyntheticEpisode:
    """One generated episode, before encoding."""

    images: np.ndarray
    """uint8 [T, S, S, 3] top camera."""
    wrist_images: np.ndarray
    """uint8 [T, S, S, 3] wrist camera."""
    states: np.ndarray
    """float32 [T, 8] proprio."""
    actions: np.ndarray
    """float32 [T, 7] actions (action t moves state t to state t+1)."""
    instruction: str
    """The episode's instruction."""


def episode_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The RNG stream of episode ``index`` of ``split`` (``train``, ``val``; any other name shares
    a third stream, e.g. the closed-loop evaluation scenes of ``data_service.sim_env``)."""
    return np.random.default_rng([seed, {"train": 0, "val": 1}.get(split, 2), index])


def start_episode(rng: np.random.Generator, length: int, options: WorldOptions = WorldOptions()
                  ) -> tuple[int, World, Task, ScriptedPolicy]:
    """Draws an episode's length cap T (``length`` +-25%), its scene, its task (from
    ``options.tasks``) and the scripted policy that carries it out (in that order, from ``rng``,
    which the policy keeps for its noise)."""
    T = max(2, int(round(length * rng.uniform(0.75, 1.25))))
    world = _new_world(rng)
    task = _make_task(world, rng, options.tasks)
    return T, world, task, ScriptedPolicy(world, task, T, rng, tilt_wobble=options.tilt_wobble)


def _rollout(seed: int, split: str, index: int, length: int, options: WorldOptions = WorldOptions()
             ) -> tuple[Task, Iterator[tuple[World, np.ndarray]]]:
    """The episode's task and its steps: (world before the step, action taken), a pure function
    of the arguments (own RNG stream). Rendering draws no random numbers, so every view of an
    episode (robot cameras, human video) shows the same motion. The episode ends after the drawn
    length, or ``options.idle_steps`` steps after the expert finished, whichever comes first."""
    T, world, task, policy = start_episode(episode_rng(seed, split, index), length, options)

    def steps() -> Iterator[tuple[World, np.ndarray]]:
        idle = 0
        for _ in range(T):
            if policy.done and options.idle_steps >= 0:
                if idle >= options.idle_steps:
                    return
                idle += 1
            a = policy(world)
            yield world, a
            world.step(a)

    return task, steps()


def recorded_length(seed: int, split: str, index: int, length: int, options: WorldOptions = WorldOptions()) -> int:
    """Steps the generator records for episode ``index`` (the drawn cap, or fewer when the expert
    finishes early); simulated without rendering."""
    return sum(1 for _ in _rollout(seed, split, index, length, options)[1])


def generate_episode(seed: int, split: str, index: int, length: int, image_size: int,
                     options: WorldOptions = WorldOptions()) -> SyntheticEpisode:
    """Episode ``index`` of ``split``: a pure function of its arguments (own RNG stream)."""
    task, steps = _rollout(seed, split, index, length, options)
    imgs, wrists, states, actions = [], [], [], []
    for world, a in steps:
        imgs.append(render_top(world, image_size))
        wrists.append(render_wrist(world, image_size))
        states.append(world.proprio())
        actions.append(a)
    return SyntheticEpisode(np.stack(imgs), np.stack(wrists), np.stack(states), np.stack(actions), task.instruction)


def generate_human_episode(seed: int, split: str, index: int, length: int, image_size: int,
                           options: WorldOptions = WorldOptions()) -> tuple[np.ndarray, str]:
    """The same episode filmed as human video: uint8 [T, S, S, 3] top-view frames with a hand
    where the gripper was, and the instruction (no actions)."""
    task, steps = _rollout(seed, split, index, length, options)
    return np.stack([render_human(world, image_size) for world, _ in steps]), task.instruction


PRIMARY_ENCODING = "png"
"""How the dataset stores the top camera (lossless)."""
WRIST_ENCODING = "jpeg"
"""How the dataset stores the wrist camera (lossy, as many OXE datasets do)."""


def episode_features(ep: SyntheticEpisode, split: str, index: int) -> dict[str, object]:
    """Flat RLDS Example features of one episode."""
    T = len(ep.actions)
    last = np.arange(T) == T - 1
    return {
        "steps/observation/image": [encode_image(im, PRIMARY_ENCODING) for im in ep.images],
        "steps/observation/wrist_image": [encode_image(im, WRIST_ENCODING) for im in ep.wrist_images],
        "steps/observation/state": ep.states,
        "steps/action": ep.actions,
        "steps/discount": np.ones(T, np.float32),
        "steps/reward": last.astype(np.float32),
        "steps/is_first": np.arange(T) == 0,
        "steps/is_last": last,
        "steps/is_terminal": last,
        "steps/language_instruction": [ep.instruction] * T,
        "episode_metadata/file_path": f"{NAME}/{split}/episode_{index:05d}",
    }


# ---------------------------------------------------------------------------------------------
# Dataset build
# ---------------------------------------------------------------------------------------------


def _params(cfg: SyntheticDataConfig) -> dict[str, object]:
    return {"train_episodes": cfg.train_episodes, "val_episodes": cfg.val_episodes,
            "episode_length": cfg.episode_length, "image_size": cfg.image_size, "seed": cfg.seed,
            "tasks": list(cfg.tasks), "tilt_wobble": bool(cfg.tilt_wobble), "idle_steps": int(cfg.idle_steps)}


def _write(cfg: SyntheticDataConfig, data_dir: Path) -> Path:
    s = cfg.image_size
    writer = RLDSWriter(data_dir, NAME, VERSION,
                        rlds_step_features(image_shape=(s, s, 3), wrist_image_shape=(s, s, 3), action_dim=7, state_dim=8),
                        description="Synthetic tabletop world (latent-vla-pretrain): a gripper and coloured blocks "
                                    "seen from a top-down and a wrist camera, with scripted language-conditioned episodes.")
    for split, n in (("train", cfg.train_episodes), ("val", cfg.val_episodes)):
        if n <= 0:
            continue
        opts = WorldOptions.from_config(cfg)
        eps = (episode_features(generate_episode(cfg.seed, split, i, cfg.episode_length, s, opts), split, i) for i in range(n))
        writer.write_split(split, eps, n, num_shards=max(1, n // 32))
    out = writer.finish()
    with open(out / "synthetic_config.json", "w", encoding="utf-8") as f:
        json.dump(_params(cfg), f, indent=2, sort_keys=True)
    return out


def _build_once(target: Path, root: Path, params: dict[str, object], build: Callable[[Path], Path]) -> Path:
    """Builds ``target`` via ``build(tmp_dir) -> built dir`` unless it exists, atomically.

    The data is built in a private temp dir and renamed into place, so concurrent ranks never see
    a half-written dataset: the first rename wins, the others discard theirs. An existing build
    with different parameters is refused rather than silently reused."""
    if not (target / "synthetic_config.json").exists():
        tmp = root / f".tmp-{target.relative_to(root).parts[0]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            built = build(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(built, target)
            except OSError:
                if not (target / "synthetic_config.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        with open(target / "synthetic_config.json", encoding="utf-8") as f:
            existing = json.load(f)
    except (OSError, ValueError):
        existing = None
    if existing is not None and existing != params:
        raise ValueError(f"{target} was generated with {existing}, but the config asks for {params}; "
                         f"delete it or point data.synthetic.root elsewhere")
    return target


def generate_synthetic_world(cfg: SyntheticDataConfig, *, videos: bool = False) -> Path:
    """Writes (or reuses) ``<cfg.root>/synthetic_world/1.0.0``; returns that directory.

    ``videos``: also write the matching human-style videos (see
    :func:`generate_synthetic_human_video`; needs the ``[video]`` extra)."""
    root = Path(cfg.root)
    out = _build_once(root / NAME / VERSION, root, _params(cfg), lambda tmp: _write(cfg, tmp))
    if videos:
        generate_synthetic_human_video(cfg)
    return out


# ---------------------------------------------------------------------------------------------
# Human-style videos of the same episodes
# ---------------------------------------------------------------------------------------------

HUMAN_NAME = "synthetic_human_video"
VIDEO_FPS = 10.0
"""Frame rate of the videos: one frame per control step of the 10 Hz world (registry control_hz)."""
VIDEO_GOP = 2
"""Keyframe interval: short GOPs keep (t, t+H) random access cheap (LeRobot's choice)."""


def human_instruction(instruction: str) -> str:
    """The robot instruction as said to a person."""
    return instruction.replace("the gripper", "your hand")


def _write_human_video(cfg: SyntheticDataConfig, out: Path) -> Path:
    from lavla.data_service.video_io import write_video  # the [video] extra

    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", cfg.train_episodes), ("val", cfg.val_episodes)):
        if n <= 0:
            continue
        rows = []
        for i in range(n):
            frames, text = generate_human_episode(cfg.seed, split, i, cfg.episode_length, cfg.image_size,
                                                  WorldOptions.from_config(cfg))
            rel = f"videos/{split}_{i:05d}.mp4"
            write_video(out / rel, frames, VIDEO_FPS, gop=VIDEO_GOP)
            rows.append((rel, human_instruction(text)))
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "instruction"])
            w.writerows(rows)
    with open(out / "synthetic_config.json", "w", encoding="utf-8") as f:
        json.dump(_params(cfg), f, indent=2, sort_keys=True)
    return out


def generate_synthetic_human_video(cfg: SyntheticDataConfig) -> Path:
    """Writes (or reuses) ``<cfg.root>/synthetic_human_video``: ``videos/<split>_<i>.mp4`` (libx264,
    GOP 2, 10 fps) of the same episodes as the RLDS dataset, seen by the top camera with a hand
    instead of the gripper and no action labels, plus ``train.csv``/``val.csv`` (path,instruction).
    Returns the directory (a ``DatasetEntry(name="synthetic_human_video", path=...)``)."""
    root = Path(cfg.root)
    return _build_once(root / HUMAN_NAME, root, _params(cfg), lambda tmp: _write_human_video(cfg, tmp))


def main(argv: list[str] | None = None) -> int:
    d = SyntheticDataConfig()
    p = argparse.ArgumentParser(prog="python -m lavla.data_service.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="TFDS data_dir; the dataset goes to OUT/synthetic_world/1.0.0")
    p.add_argument("--train-episodes", type=int, default=d.train_episodes)
    p.add_argument("--val-episodes", type=int, default=d.val_episodes)
    p.add_argument("--episode-length", type=int, default=d.episode_length)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--tasks", default=",".join(d.tasks), help="comma-separated task families (" + ", ".join(TASK_FAMILIES) + ")")
    p.add_argument("--tilt-wobble", action="store_true", help="unobservable roll/pitch wobble in the labels (old world)")
    p.add_argument("--idle-steps", type=int, default=d.idle_steps, help="still steps after the task (-1: full length)")
    p.add_argument("--no-videos", action="store_true", help=f"skip the human-style videos (OUT/{HUMAN_NAME})")
    a = p.parse_args(argv)
    cfg = SyntheticDataConfig(enabled=True, root=a.out, train_episodes=a.train_episodes, val_episodes=a.val_episodes,
                              episode_length=a.episode_length, image_size=a.image_size, seed=a.seed,
                              tasks=[t.strip() for t in a.tasks.split(",") if t.strip()], tilt_wobble=a.tilt_wobble,
                              idle_steps=a.idle_steps)
    try:
        WorldOptions.from_config(cfg)
    except ValueError as e:
        p.error(str(e))
    t0 = time.perf_counter()
    out = generate_synthetic_world(cfg)
    print(f"{out} ({time.perf_counter() - t0:.1f} s)")
    if not a.no_videos:
        if importlib.util.find_spec("av") is None:
            print("videos skipped: PyAV is not installed (pip install 'latent-vla-pretrain[video]')")
        else:
            t0 = time.perf_counter()
            print(f"{generate_synthetic_human_video(cfg)} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
