"""Raw RLDS episode -> :class:`StandardEpisode` (images, proprio, action, instruction).

The :class:`DatasetSpec` describes the action and proprio vectors as a list of *parts*,
concatenated per step:

* ``steps/observation/state``        a whole step key, flattened per step
* ``steps/observation/state[0:6]``   a slice of its last dim (Python semantics, negatives allowed)
* ``zeros:3`` / ``ones:1``           constant columns (padding, a fixed "open" gripper)
* ``zlib:<key>``                     per-step zlib-compressed float32 bytes (kuka's state)
* ``quat2euler:<key>[3:7]``          4 quaternion columns (x, y, z, w) -> roll, pitch, yaw

The last action dim is then made "absolute, 1 = open" per ``gripper_convention``; steps are
trimmed (``drop_first_steps``/``drop_last_steps``) and every value is validated: a NaN action,
an empty instruction or a missing key raises :class:`DataError` naming file, episode and field.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lavla.data_service.errors import DataError
from lavla.data_service.datasets.registry import DatasetSpec
from lavla.data_service.formats.rlds import RawEpisode


@dataclass
class StandardEpisode:
    """One episode in the standard layout every source produces."""

    image_primary: list[bytes]
    """Encoded (PNG/JPEG) primary camera frames, one per step."""
    image_wrist: list[bytes] | None
    """Encoded wrist camera frames, or None when the dataset has no wrist view."""
    proprio: np.ndarray
    """float32 [T, P] proprio (P may be 0)."""
    action: np.ndarray
    """float32 [T, A] action, gripper dim absolute with 1 = open."""
    language: str
    """The episode's instruction."""
    dataset: str
    """Registry name of the dataset."""
    episode: int
    """Episode index within the source's split."""
    file: str
    """File the episode was read from (for error messages)."""

    @property
    def length(self) -> int:
        return int(self.action.shape[0])


# -- parts ----------------------------------------------------------------------------------------

_PART = re.compile(r"^(?:(?P<fn>zlib|quat2euler|codepoints):)?(?P<key>[^\[\]]+?)(?:\[(?P<lo>-?\d*):(?P<hi>-?\d*)\])?$")


def _err(raw: RawEpisode, field: str, reason: str) -> DataError:
    return DataError(reason, file=raw.file, episode=raw.episode, field=field)


def check_finite(arr: np.ndarray, file: Path | str, episode: int, field: str) -> None:
    """DataError naming the first non-finite entry of ``arr`` (step, dim)."""
    bad = ~np.isfinite(arr)
    if bad.any():
        step, *dim = np.argwhere(bad)[0]
        kind = "NaN" if np.isnan(arr[tuple([step, *dim])]) else "inf"
        where = f"step {step}" + (f", dim {dim[0]}" if dim else "")
        raise DataError(f"contains {kind} (first at {where})", file=file, episode=episode, field=field)


def quat_to_euler(q: np.ndarray) -> np.ndarray:
    """Quaternions ``[..., (x, y, z, w)]`` -> roll, pitch, yaw (rotation about x, then y, then z)."""
    x, y, z, w = (q[..., i] for i in range(4))
    roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return np.stack([roll, pitch, yaw], axis=-1).astype(np.float32)


def _part(raw: RawEpisode, token: str) -> np.ndarray:
    """One part -> float32 [T, d]."""
    T = raw.length
    const = re.match(r"^(zeros|ones):(\d+)$", token)
    if const:
        return np.full((T, int(const.group(2))), 1.0 if const.group(1) == "ones" else 0.0, np.float32)
    m = _PART.match(token)
    if m is None:
        raise ValueError(f"bad standardization part {token!r}")
    key, fn = m.group("key"), m.group("fn")
    if key not in raw.steps:
        raise _err(raw, key, "missing feature key")
    value = raw.steps[key]
    if fn == "zlib":
        if not isinstance(value, list):
            raise _err(raw, key, "expected zlib-compressed bytes, found numbers")
        try:
            arr = np.stack([np.frombuffer(zlib.decompress(b), np.float32) for b in value]) if value else np.zeros((0, 1), np.float32)
        except (zlib.error, ValueError) as e:
            raise _err(raw, key, f"cannot decode zlib float32 per step: {e}") from e
    else:
        if isinstance(value, list):
            raise _err(raw, key, "holds bytes, expected numbers")
        arr = np.asarray(value, dtype=np.float32).reshape(T, -1)
    if m.group("lo") is not None:
        lo = int(m.group("lo")) if m.group("lo") else None
        hi = int(m.group("hi")) if m.group("hi") else None
        sliced = arr[:, lo:hi]
        if sliced.shape[1] == 0:
            raise _err(raw, key, f"wrong shape: slice [{m.group('lo')}:{m.group('hi')}] of {arr.shape[1]} dims is empty")
        arr = sliced
    if fn == "quat2euler":
        if arr.shape[1] != 4:
            raise _err(raw, key, f"wrong shape: quaternion part has {arr.shape[1]} dims, expected 4")
        arr = quat_to_euler(arr)
    check_finite(arr, raw.file, raw.episode, key)
    return arr


def concat_parts(raw: RawEpisode, parts: tuple[str, ...]) -> np.ndarray:
    """Concatenates parts into float32 [T, D] (D = 0 for no parts)."""
    if not parts:
        return np.zeros((raw.length, 0), np.float32)
    return np.concatenate([_part(raw, p) for p in parts], axis=1)


# -- gripper --------------------------------------------------------------------------------------


def binarize_gripper(g: np.ndarray, open_thresh: float = 0.95, close_thresh: float = 0.05) -> np.ndarray:
    """Continuous gripper (1 = open) -> {0, 1}: open above ``open_thresh``, closed below
    ``close_thresh``; values in between are the gripper on its way, so they take the state of the
    next decisive value (or of the last decisive value at the episode's end)."""
    out = np.empty(len(g), np.float32)
    decisive = np.flatnonzero((g > open_thresh) | (g < close_thresh))
    state = (1.0 if g[decisive[-1]] > open_thresh else 0.0) if decisive.size else (1.0 if g.size and g[-1] >= 0.5 else 0.0)
    for i in range(len(g) - 1, -1, -1):  # backwards: "in between" inherits where it is heading
        if g[i] > open_thresh:
            state = 1.0
        elif g[i] < close_thresh:
            state = 0.0
        out[i] = state
    return out


def relative_to_absolute_gripper(g: np.ndarray, thresh: float = 0.1) -> np.ndarray:
    """Relative gripper commands (+1 close, -1 open, ~0 hold; RT-1's ``gripper_closedness_action``)
    -> absolute state, 1 = open. The state before the first command is the opposite of that
    command (you only close an open gripper); with no command the gripper stays open."""
    cmd = np.where(g > thresh, -1.0, np.where(g < -thresh, 1.0, 0.0))  # -1 = close, +1 = open
    nz = np.flatnonzero(cmd)
    state = 1.0 if nz.size == 0 else -cmd[nz[0]]
    out = np.empty(len(g), np.float32)
    for i, c in enumerate(cmd):
        if c:
            state = c
        out[i] = state
    return out / 2.0 + 0.5


GRIPPER_CONVENTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "open_1": lambda g: g,
    "close_1": lambda g: 1.0 - g,
    "clip01": lambda g: np.clip(g, 0.0, 1.0),
    "clip01_invert": lambda g: 1.0 - np.clip(g, 0.0, 1.0),
    "binarize": binarize_gripper,
    "relative": relative_to_absolute_gripper,
}
"""Raw last action dim -> absolute gripper with 1 = open."""


def fix_gripper(action: np.ndarray, convention: str) -> np.ndarray:
    """Makes the last action dim absolute with 1 = open, per the dataset's convention."""
    if convention not in GRIPPER_CONVENTIONS:
        raise ValueError(f"unknown gripper convention {convention!r}; known: {sorted(GRIPPER_CONVENTIONS)}")
    if action.shape[1] == 0:
        return action
    out = action.copy()
    out[:, -1] = GRIPPER_CONVENTIONS[convention](action[:, -1])
    return out


# -- language / images ----------------------------------------------------------------------------


def instruction(raw: RawEpisode, key: str | None) -> str:
    """The episode's instruction: the first non-empty step instruction; DataError if none.

    ``codepoints:<key>`` reads instructions stored as zero-padded arrays of Unicode code points
    (language_table)."""
    if key is None:
        raise _err(raw, "language", "dataset has no instruction key (set DatasetSpec.language_key)")
    codepoints = key.startswith("codepoints:")
    key = key.removeprefix("codepoints:")
    if key not in raw.steps:
        raise _err(raw, key, "missing feature key")
    values = raw.steps[key]
    if codepoints:
        rows = np.asarray(values).reshape(raw.length, -1) if not isinstance(values, list) else []
        texts = ["".join(chr(int(c)) for c in row[: (list(row) + [0]).index(0)]) for row in rows]
    elif isinstance(values, list):
        texts = [v.decode("utf-8", errors="replace") for v in values]
    else:
        raise _err(raw, key, "instruction is not text")
    for text in texts:
        if text.strip():
            return text.strip()
    raise _err(raw, key, "empty language instruction")


def _images(raw: RawEpisode, key: str | None) -> list[bytes] | None:
    if key is None:
        return None
    if key not in raw.steps:
        raise _err(raw, key, "missing feature key")
    value = raw.steps[key]
    # encoded frames (RLDS), or a frame reader that yields decoded arrays (LeRobot video)
    if isinstance(value, np.ndarray) or not isinstance(value, Sequence):
        raise _err(raw, key, "image key holds numbers, expected encoded images")
    return value  # type: ignore[return-value]


# -- transforms -----------------------------------------------------------------------------------


def default_transform(raw: RawEpisode, spec: DatasetSpec) -> StandardEpisode:
    """Concatenate the parts, fix the gripper, take the first instruction (see module doc)."""
    action = fix_gripper(concat_parts(raw, spec.action_keys), spec.gripper_convention)
    proprio = concat_parts(raw, spec.proprio_keys)
    primary = _images(raw, spec.image_primary_key)
    if primary is None:
        raise _err(raw, "image_primary", "dataset has no primary image key")
    return StandardEpisode(primary, _images(raw, spec.image_wrist_key), proprio, action,
                           instruction(raw, spec.language_key), spec.name, raw.episode, str(raw.file))


def relabel_from_state_transform(raw: RawEpisode, spec: DatasetSpec) -> StandardEpisode:
    """Bridge: the movement dims become the reached proprio change ``s[t+1] - s[t]`` (first 6
    proprio dims); the last step has no successor and must be trimmed (``drop_last_steps=1``)."""
    ep = default_transform(raw, spec)
    if ep.length >= 2:
        ep.action[:-1, :6] = ep.proprio[1:, :6] - ep.proprio[:-1, :6]
    return ep


TRANSFORMS: dict[str, Callable[[RawEpisode, DatasetSpec], StandardEpisode]] = {
    "default": default_transform,
    "relabel_from_state": relabel_from_state_transform,
}
"""Standardization functions by name (``DatasetSpec.transform``)."""


def standardize(raw: RawEpisode, spec: DatasetSpec) -> StandardEpisode:
    """Applies the spec's transform, trims steps, then validates the result."""
    if spec.transform not in TRANSFORMS:
        raise ValueError(f"{spec.name}: unknown transform {spec.transform!r}")
    ep = TRANSFORMS[spec.transform](raw, spec)
    lo, hi = spec.drop_first_steps, ep.length - spec.drop_last_steps
    if lo or spec.drop_last_steps:
        keep = slice(lo, max(lo, hi))
        ep.image_primary = ep.image_primary[keep]
        ep.image_wrist = None if ep.image_wrist is None else ep.image_wrist[keep]
        ep.proprio, ep.action = ep.proprio[keep], ep.action[keep]
    validate(ep, spec)
    return ep


def validate(ep: StandardEpisode, spec: DatasetSpec) -> None:
    """Shape/finiteness checks on a standardized episode (DataError naming file/episode/field)."""
    T = ep.length

    def err(field: str, reason: str) -> DataError:
        return DataError(reason, file=ep.file, episode=ep.episode, field=field)

    if T == 0:
        raise err("steps", "episode has no steps (after trimming)")
    if ep.action.ndim != 2 or ep.action.shape[1] != spec.action_dim:
        raise err("action", f"wrong shape {ep.action.shape}: {spec.name} actions have {spec.action_dim} dims ({spec.action_layout})")
    if ep.proprio.ndim != 2 or ep.proprio.shape[0] != T:
        raise err("proprio", f"wrong shape {ep.proprio.shape}, expected ({T}, P)")
    check_finite(ep.action, ep.file, ep.episode, "action")
    check_finite(ep.proprio, ep.file, ep.episode, "proprio")
    if len(ep.image_primary) != T:
        raise err(spec.image_primary_key or "image_primary", f"{len(ep.image_primary)} frames for {T} steps")
    if ep.image_wrist is not None and len(ep.image_wrist) != T:
        raise err(spec.image_wrist_key or "image_wrist", f"{len(ep.image_wrist)} frames for {T} steps")
    if not ep.language.strip():
        raise err(spec.language_key or "language", "empty language instruction")
