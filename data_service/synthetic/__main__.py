"""``python -m lavla.data_service.synthetic --out DIR``: write the synthetic world (and its videos)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time


from lavla.data_service.config import SyntheticDataConfig
from lavla.data_service.synthetic.tasks import TASK_FAMILIES, WorldOptions
from lavla.data_service.synthetic.writers import HUMAN_NAME, generate_synthetic_human_video, generate_synthetic_world


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
