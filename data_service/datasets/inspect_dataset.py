"""What a dataset on disk is and the inline spec that reads it: the engine of ``lavla-data inspect``.

:func:`inspect_path` recognizes a TFDS/RLDS build directory (``dataset_info.json`` + ``features.json``),
a folder of video clips with an annotation file (CSV ``path,instruction`` or SSv2 JSON), or a LeRobot
v2.1/v3.0 root (``meta/info.json``, read by ``data_service.formats.lerobot``). It infers a
:class:`~lavla.data_service.datasets.dataset_spec.DatasetSpec` as a YAML mapping (see
``data_service.datasets.inline_spec``): cameras (primary vs wrist from their names), state and action keys and
dims, the language key, the control rate and the LAM stride from it. What the files cannot tell (the
gripper's sign, BGR storage, the action layout of an unusual robot) is listed with the safe default
taken, and with what the data shows where it shows something (e.g. the range of the gripper dim).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lavla.data_service.datasets.dataset_spec import lam_stride_for
from lavla.data_service.errors import DataError

__all__ = ["Inspection", "guess_cameras", "inspect_path"]

DEFAULT_HZ = 10.0
"""Control rate assumed when nothing records it (the OXE median)."""
WRIST_WORDS = ("wrist", "hand", "gripper", "eye_in_hand", "ego")
PRIMARY_WORDS = ("agentview", "front", "exterior", "third", "main", "static", "top", "image", "rgb", "cam")
STATE_WORDS = ("state", "proprio", "eef", "ee_pos", "joint", "qpos", "robot")
LANGUAGE_WORDS = ("language_instruction", "instruction", "language", "task", "prompt")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov")
SAMPLE_EPISODES = 5


@dataclass
class Inspection:
    """What :func:`inspect_path` found."""

    kind: str
    """``rlds`` | ``video`` | ``lerobot_v2.1`` | ``lerobot_v3.0``."""
    path: Path
    """The directory a mixture entry points at."""
    name: str
    """Suggested dataset name (the TFDS name, or the folder's)."""
    spec: dict[str, Any] | None
    """Inferred inline spec (``DatasetEntry.spec``); None where the project cannot read the kind yet."""
    summary: dict[str, Any] = field(default_factory=dict)
    """Splits, episodes, steps, image shapes: what the user can check against what they expect."""
    notes: list[str] = field(default_factory=list)
    """What could not be inferred, with the default taken."""

    @property
    def trainable(self) -> bool:
        return self.spec is not None

    def entry(self, split: str = "train", weight: float = 1.0) -> dict[str, Any]:
        """The ``data.datasets`` entry, ready for YAML."""
        out: dict[str, Any] = {"name": self.name, "path": str(self.path), "split": split, "weight": weight}
        if self.spec is not None:
            out["spec"] = self.spec
        return out


# -- name heuristics --------------------------------------------------------------------------


def _leaf(key: str) -> str:
    return key.rsplit("/", 1)[-1].lower()


def guess_cameras(keys: list[str]) -> tuple[str | None, str | None, list[str]]:
    """``(primary, wrist, notes)`` among image keys, from their names. A wrist word wins over a
    primary word; among primaries the earliest word of :data:`PRIMARY_WORDS` wins."""
    notes: list[str] = []
    wrist = [k for k in keys if any(w in _leaf(k) for w in WRIST_WORDS)]
    rest = [k for k in keys if k not in wrist]

    def rank(k: str) -> int:
        return next((i for i, w in enumerate(PRIMARY_WORDS) if w in _leaf(k)), len(PRIMARY_WORDS))

    primary = min(rest, key=lambda k: (rank(k), k)) if rest else None
    if primary is None and wrist:
        primary, wrist = wrist[0], wrist[1:]
        notes.append(f"only wrist-like cameras: {primary} used as the primary camera (set image_primary_key)")
    w = wrist[0] if wrist else None
    others = [k for k in keys if k not in (primary, w)]
    if others:
        notes.append(f"cameras not used: {', '.join(others)} (set image_primary_key / image_wrist_key to choose)")
    return primary, w, notes


def _pick(keys: list[str], words: tuple[str, ...]) -> str | None:
    for w in words:
        hits = sorted(k for k in keys if w in _leaf(k))
        if hits:
            return hits[0]
    return None


# -- RLDS -------------------------------------------------------------------------------------


def _inspect_rlds(path: Path, fps: float | None) -> Inspection:
    from lavla.data_service.formats.rlds import RLDSDataset

    ds = RLDSDataset(path)
    feats = ds.step_features
    images = sorted(k for k, f in feats.items() if f.kind == "image"
                    or (f.dtype == "uint8" and len(f.shape) == 3 and f.shape[-1] == 3))
    notes: list[str] = []
    primary, wrist, cam_notes = guess_cameras(images)
    notes += cam_notes
    if primary is None:
        raise DataError("no image feature among the steps: a robot dataset needs a camera", file=path / "features.json")
    numeric = {k: f for k, f in feats.items() if f.kind in ("tensor", "scalar") and f.dtype.startswith(("float", "int"))
               and f.dtype != "bool"}
    action = "steps/action" if "steps/action" in numeric else _pick([k for k in numeric if "action" in k], ("action",))
    if action is None:
        raise DataError("no action feature among the steps (expected steps/action)", file=path / "features.json")
    adim = int(np.prod(numeric[action].shape)) if numeric[action].shape else 1
    obs_numeric = [k for k in numeric if k.startswith("steps/observation/")]
    state = _pick(obs_numeric, STATE_WORDS)
    texts = [k for k, f in feats.items() if f.kind == "text" or f.dtype == "string"]
    language = _pick(texts, LANGUAGE_WORDS)

    spec: dict[str, Any] = {"image_primary_key": primary, "image_wrist_key": wrist}
    _action_fields(spec, action, adim, notes)
    if state is not None:
        sdim = int(np.prod(feats[state].shape)) if feats[state].shape else 1
        spec["proprio_keys"] = [state]
        spec["proprio_layout"] = "pos_euler" if sdim == 8 else ("joint" if "joint" in _leaf(state) or "qpos" in _leaf(state) else "none")
        summary_proprio = sdim
        if sdim != 8:
            notes.append(f"proprio {state} has {sdim} dims (layout {spec['proprio_layout']!r}, informational)")
    else:
        summary_proprio = 0
        spec["proprio_keys"] = []
        spec["proprio_layout"] = "none"
        notes.append("no state feature found: no proprio (set proprio_keys)")
    spec["language_key"] = language
    if language is None:
        notes.append("no instruction feature found: samples get an empty instruction (set language_key)")
    hz = fps if fps else DEFAULT_HZ
    if not fps:
        notes.append(f"control rate not recorded in TFDS metadata: assumed {DEFAULT_HZ:g} Hz (set control_hz; "
                     "lam_stride follows it)")
    spec["control_hz"] = float(hz)
    spec["lam_stride"] = lam_stride_for(hz)

    summary: dict[str, Any] = {"tfds_name": ds.name, "version": ds.version,
                               "splits": {s: ds.num_episodes(s) for s in ds.splits},
                               "images": {k: list(feats[k].shape) for k in images}, "action_dim": adim,
                               "proprio_dim": summary_proprio}
    grip = _gripper_evidence(ds, action, adim)
    summary["gripper_dim_values"] = grip
    spec["gripper_convention"] = _gripper_guess(grip, notes)
    spec["bgr"] = False
    spec["bgr_wrist"] = False
    notes.append("colour order not recorded: RGB assumed (set bgr / bgr_wrist for BGR cameras)")
    return Inspection("rlds", path, ds.name, spec, summary, notes)


def _gripper_evidence(ds: Any, action: str, adim: int) -> dict[str, Any]:
    """Range and distinct values of the last action dim over a few episodes."""
    split = ds.splits[0]
    vals = []
    for i in range(min(SAMPLE_EPISODES, ds.num_episodes(split))):
        raw = ds.read_episode(split, i)
        a = np.asarray(raw.steps[action], np.float64).reshape(raw.length, -1)
        vals.append(a[:, adim - 1])  # the gripper: the last dim (see _action_fields)
    v = np.concatenate(vals) if vals else np.zeros(0)
    if v.size == 0:
        return {"episodes": 0}
    distinct = np.unique(np.round(v, 4))
    return {"episodes": len(vals), "min": float(v.min()), "max": float(v.max()),
            "distinct": [float(x) for x in distinct[:6]] + (["..."] if len(distinct) > 6 else [])}


def _gripper_guess(g: dict[str, Any], notes: list[str]) -> str:
    if not g.get("episodes"):
        notes.append("no episodes to look at: gripper_convention open_1 (1 = open) assumed")
        return "open_1"
    lo, hi = g["min"], g["max"]
    if lo < -0.01:
        notes.append(f"the gripper dim ranges over [{lo:.3g}, {hi:.3g}]: signed values suggest relative "
                     "(+1 close / -1 open) commands or [-1, 1] targets; open_1 kept, set gripper_convention "
                     "(relative, clip01, clip01_invert)")
        return "open_1"
    if hi > 1.01:
        notes.append(f"the gripper dim exceeds 1 (max {hi:.3g}): a width? open_1 kept; rescale before training")
        return "open_1"
    notes.append(f"the gripper dim lies in [{lo:.3g}, {hi:.3g}]; which end is open is not recorded: open_1 "
                 "(1 = open) assumed, use close_1 if 1 means closed")
    return "open_1"


# -- video folders ----------------------------------------------------------------------------


def _inspect_video(path: Path, fps: float | None) -> Inspection:
    from lavla.data_service.video.annotations import find_split_file, load_annotations

    splits = {}
    for split in ("train", "val", "validation", "test"):
        f = find_split_file(path, split)
        if f is not None and f not in splits.values():
            splits[split] = f
    if not splits:
        raise DataError("a folder of videos needs an annotation file (train.csv with path,instruction, or an "
                        "SSv2 JSON)", file=path)
    clips = load_annotations(next(iter(splits.values())), path)
    if not clips:
        raise DataError("the annotation file lists no clips", file=next(iter(splits.values())))
    notes: list[str] = []
    rate = fps
    try:
        from lavla.data_service.video.codec import probe

        info = probe(clips[0].path)
        summary_fps = float(info.fps)
        rate = rate or summary_fps
    except (ImportError, DataError, OSError) as e:  # PyAV missing or an unreadable first clip: say so, go on
        summary_fps = None
        notes.append(f"could not probe {clips[0].path} ({e}); frame rate unknown")
    if not rate:
        rate = DEFAULT_HZ
        notes.append(f"frame rate assumed {DEFAULT_HZ:g} fps (set control_hz)")
    spec = {"is_video": True, "image_primary_key": None, "action_keys": [], "control_hz": float(rate),
            "lam_stride": lam_stride_for(rate), "language_key": None}
    notes.append("human video: no actions or proprio; trains latent objectives only (has_action false)")
    summary = {"annotations": {s: str(f) for s, f in splits.items()}, "clips_in_first_split": len(clips),
               "fps": summary_fps}
    return Inspection("video", path, re.sub(r"\W+", "_", path.name).strip("_").lower() or "my_videos", spec, summary, notes)


# -- LeRobot ----------------------------------------------------------------------------------


def _inspect_lerobot(path: Path, fps: float | None) -> Inspection:
    from lavla.data_service.formats.lerobot import TASK_KEY, read_lerobot_info

    info = read_lerobot_info(path)
    version = str(info.get("codebase_version", "?"))
    kind = f"lerobot_{version}"
    feats = info.get("features", {})
    cams = sorted(k for k, f in feats.items() if f.get("dtype") in ("video", "image"))
    primary, wrist, notes = guess_cameras(cams)
    if primary is None:
        raise DataError("no camera among the LeRobot features (dtype video or image)", file=path / "meta" / "info.json")
    numeric = {k: f for k, f in feats.items() if str(f.get("dtype", "")).startswith(("float", "int"))
               and k not in ("timestamp", "frame_index", "episode_index", "index", "task_index")}
    if "action" not in numeric:
        raise DataError("no action feature", file=path / "meta" / "info.json", field="action")
    adim = int(np.prod(numeric["action"].get("shape") or [1]))
    state = "observation.state" if "observation.state" in numeric else _pick(list(numeric), STATE_WORDS)
    sdim = int(np.prod(numeric[state].get("shape") or [1])) if state else 0
    spec: dict[str, Any] = {"image_primary_key": primary, "image_wrist_key": wrist}
    _action_fields(spec, "action", adim, notes)
    spec["proprio_keys"] = [state] if state else []
    spec["proprio_layout"] = ("pos_euler" if sdim == 8 else "joint" if sdim else "none")
    if state and sdim != 8:
        notes.append(f"proprio {state} has {sdim} dims (layout {spec['proprio_layout']!r}, informational)")
    spec["language_key"] = TASK_KEY
    hz = float(fps or info["fps"])
    spec["control_hz"] = hz
    spec["lam_stride"] = lam_stride_for(hz)
    names = numeric["action"].get("names")
    notes.append(f"action names {names}: the last dim is taken as the gripper" if names else
                 "action dims have no names: the last dim is taken as the gripper")
    spec["gripper_convention"] = "open_1"
    notes.append("which end of the gripper dim is open is not recorded: open_1 (1 = open) assumed, use close_1 if "
                 "1 means closed")
    spec["bgr"], spec["bgr_wrist"] = False, False
    summary = {"codebase_version": version, "fps": info.get("fps"), "episodes": info.get("total_episodes"),
               "frames": info.get("total_frames"), "splits": info.get("splits"), "cameras": cams,
               "action_dim": adim, "proprio_dim": sdim}
    folder = path.parent.name if re.fullmatch(r"v\d+(\.\d+)*", path.name) else path.name  # .../name/v3.0
    return Inspection(kind, path, re.sub(r"\W+", "_", folder).strip("_").lower() or "my_lerobot", spec, summary, notes)


def _action_fields(spec: dict[str, Any], action: str, adim: int, notes: list[str]) -> None:
    """``action_keys``/``action_layout``/``action_absolute_mask`` for an action of ``adim`` dims."""
    if adim == 10:
        spec["action_keys"], spec["action_layout"] = [action], "eef_r6"
        spec["action_absolute_mask"] = [False] * 9 + [True]
        return
    spec["action_layout"] = "eef_pos"
    spec["action_absolute_mask"] = [False] * 6 + [True]
    if adim == 7:
        spec["action_keys"] = [action]
    elif adim > 7:
        spec["action_keys"] = [f"{action}[0:6]", f"{action}[{adim - 1}:{adim}]"]
        notes.append(f"{action} has {adim} dims: the spec takes dims 0-5 as xyz/rpy deltas and the last as the "
                     "gripper; rewrite action_keys to match your layout")
    else:
        spec["action_keys"] = [f"{action}[0:{adim - 1}]", f"zeros:{7 - adim}", f"{action}[{adim - 1}:{adim}]"]
        notes.append(f"{action} has {adim} dims: padded to eef_pos (7) with zeros before the gripper (last dim); "
                     "rewrite action_keys if that is not your layout (e.g. joint-space actions)")
    notes.append("action layout assumed: deltas of position/rotation, last dim the gripper (relative dims normalized, "
                 "the gripper kept absolute); if your actions are absolute poses, convert them first")


# -- entry point ------------------------------------------------------------------------------


def inspect_path(path: str | Path, *, fps: float | None = None, name: str | None = None,
                 primary: str | None = None, wrist: str | None = None) -> Inspection:
    """Recognize the dataset at ``path`` and infer its inline spec; ``fps``/``name``/``primary``/``wrist``
    override what would be guessed."""
    p = Path(path).expanduser().absolute()
    if not p.is_dir():
        raise DataError("not a directory (point at a TFDS build dir, a LeRobot root or a folder of videos)", file=p)
    if (p / "meta" / "info.json").is_file():
        out = _inspect_lerobot(p, fps)
    elif (p / "dataset_info.json").is_file() and (p / "features.json").is_file():
        out = _inspect_rlds(p, fps)
    else:
        # a TFDS data_dir or dataset dir above the build: name the build dirs instead of guessing
        builds = sorted(x.parent for x in p.glob("*/*/dataset_info.json")) + sorted(x.parent for x in p.glob("*/dataset_info.json"))
        if builds or not any(next(p.rglob(f"*{s}"), None) for s in VIDEO_SUFFIXES):
            hint = f" (TFDS build dirs below it: {', '.join(str(b) for b in builds[:3])})" if builds else ""
            raise DataError("not a TFDS/RLDS build dir (dataset_info.json + features.json), a LeRobot root "
                            f"(meta/info.json) or a folder of videos{hint}", file=p)
        out = _inspect_video(p, fps)
    if name:
        out.name = name
    if out.spec is not None and not out.spec.get("is_video"):
        if primary:
            out.spec["image_primary_key"] = primary
        if wrist is not None:
            out.spec["image_wrist_key"] = wrist or None
    return out
