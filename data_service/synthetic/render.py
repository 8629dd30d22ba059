"""Rendering the synthetic world: top, wrist and human-style cameras (signed distances -> anti-aliased coverage)."""

from __future__ import annotations

import functools

import numpy as np

from lavla.data_service.synthetic.world import BLOCK_HALF, COLORS, JAW, PALM, SKIN, SLEEVE, TABLE, World


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
