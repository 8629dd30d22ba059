"""Writing the synthetic world to disk: the RLDS dataset and the human-style videos of the same episodes, built once per parameter set."""

from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


from lavla.data_service.config import SyntheticDataConfig
from lavla.data_service.formats.rlds_writer import RLDSWriter, rlds_step_features
from lavla.data_service.synthetic.tasks import WorldOptions, episode_features, generate_episode, generate_human_episode
from lavla.data_service.synthetic.world import NAME, VERSION


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





HUMAN_NAME = "synthetic_human_video"
VIDEO_FPS = 10.0
"""Frame rate of the videos: one frame per control step of the 10 Hz world (registry control_hz)."""
VIDEO_GOP = 2
"""Keyframe interval: short GOPs keep (t, t+H) random access cheap (LeRobot's choice)."""


def human_instruction(instruction: str) -> str:
    """The robot instruction as said to a person."""
    return instruction.replace("the gripper", "your hand")


def _write_human_video(cfg: SyntheticDataConfig, out: Path) -> Path:
    from lavla.data_service.video.codec import write_video  # the [video] extra

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
