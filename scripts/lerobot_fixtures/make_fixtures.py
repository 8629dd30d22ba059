"""Writes the tiny LeRobot datasets under ``tests/fixtures/lerobot/`` with LeRobot's own writer.

Run it inside a LeRobot venv (never the project's: LeRobot pins an older torch), once per format:

    bash scripts/lerobot_fixtures/setup_venv.sh 0.4.4 /tmp/lr044     # LeRobot v3.0 datasets
    /tmp/lr044/bin/python scripts/lerobot_fixtures/make_fixtures.py --out tests/fixtures/lerobot/v3.0
    bash scripts/lerobot_fixtures/setup_venv.sh 0.3.2 /tmp/lr032     # LeRobot v2.1 datasets
    /tmp/lr032/bin/python scripts/lerobot_fixtures/make_fixtures.py --out tests/fixtures/lerobot/v2.1

The content is deterministic (numpy only): 3 episodes of 12, 9 and 15 frames at 10 fps, two 32x32
cameras (a coloured square moving over a gradient, so a codec keeps it recognisable), an 8-D state,
a 7-D action whose last dim is a 0/1 gripper, and two task strings. Besides the dataset it writes
``expected.npz``: the exact arrays and frames that went in, and ``lerobot_read.npz``: what LeRobot's
own reader gives back for every frame, so the project's tests compare against both without LeRobot.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "torchvision_shim"))  # LeRobot imports torchvision at module level

LENGTHS = (12, 9, 15)
TASKS = ("push the red square to the right", "lift the blue square")
FPS = 10
SIZE = 32
CAMERAS = ("observation.images.front", "observation.images.wrist")


def frame(ep: int, t: int, cam: int) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    img = np.stack([xx * 6 + 20 * cam, yy * 6, np.full_like(xx, 90 + 40 * ep)], -1).astype(np.float32)
    x0 = 4 + (2 * t + 3 * ep) % (SIZE - 12)
    y0 = 6 + 5 * cam + ep
    img[y0:y0 + 8, x0:x0 + 8] = (230, 40 + 60 * cam, 40)
    return np.clip(img, 0, 255).astype(np.uint8)


def episode(ep: int) -> dict[str, np.ndarray]:
    n = LENGTHS[ep]
    t = np.arange(n, dtype=np.float32)
    state = np.stack([np.sin(0.3 * t + ep + k) for k in range(8)], 1).astype(np.float32)
    action = np.stack([np.cos(0.2 * t + ep + k) * 0.1 for k in range(6)], 1).astype(np.float32)
    grip = (t >= n // 2).astype(np.float32)[:, None]
    return {"state": state, "action": np.concatenate([action, grip], 1),
            **{cam: np.stack([frame(ep, i, c) for i in range(n)]) for c, cam in enumerate(CAMERAS)}}


def features() -> dict:
    cam = {"dtype": "video", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channels"]}
    return {"observation.state": {"dtype": "float32", "shape": (8,), "names": [f"s{i}" for i in range(8)]},
            "action": {"dtype": "float32", "shape": (7,), "names": ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]},
            **{c: dict(cam) for c in CAMERAS}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--vcodec", default=None, help="video codec (default: LeRobot's default for its version)")
    a = p.parse_args()
    import lerobot

    try:  # 0.4.x
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except ImportError:  # 0.3.x
        from lerobot.common.datasets.lerobot_dataset import LeRobotDataset
    out = Path(a.out).absolute()
    if out.exists():
        shutil.rmtree(out)
    kw = {"vcodec": a.vcodec} if a.vcodec else {}
    ds = LeRobotDataset.create(repo_id="lavla/fixture", fps=FPS, features=features(), root=out, robot_type="synthetic",
                               use_videos=True, **kw)
    expected: dict[str, np.ndarray] = {}
    for e in range(len(LENGTHS)):
        data, task = episode(e), TASKS[e % 2]
        for t in range(LENGTHS[e]):
            fr = {"observation.state": data["state"][t], "action": data["action"][t],
                  **{c: data[c][t] for c in CAMERAS}}
            try:
                ds.add_frame({**fr, "task": task})
            except (TypeError, ValueError):  # 0.3.x takes the task as an argument
                ds.add_frame(fr, task=task)
        ds.save_episode()
        for k, v in data.items():
            expected[f"ep{e}/{k}"] = v
    if hasattr(ds, "finalize"):
        ds.finalize()
    expected["lengths"] = np.array(LENGTHS)
    np.savez_compressed(out / "expected.npz", **expected)

    # What LeRobot's own reader returns, frame by frame (pyav backend through the shim).
    back = LeRobotDataset("lavla/fixture", root=out, video_backend="pyav")
    read: dict[str, list] = {"episode_index": [], "frame_index": [], "task": [], "state": [], "action": [],
                             **{c: [] for c in CAMERAS}}
    for i in range(len(back)):
        item = back[i]
        read["episode_index"].append(int(item["episode_index"]))
        read["frame_index"].append(int(item["frame_index"]))
        read["task"].append(item["task"])
        read["state"].append(item["observation.state"].numpy())
        read["action"].append(item["action"].numpy())
        for c in CAMERAS:
            read[c].append((item[c].numpy() * 255).round().astype(np.uint8))
    np.savez_compressed(out / "lerobot_read.npz", **{k: np.array(v) for k, v in read.items()})
    (out / "written_by.json").write_text(json.dumps({"lerobot": lerobot.__version__, "script": "scripts/lerobot_fixtures/make_fixtures.py"}))
    print(f"{out}: {len(back)} frames, {back.num_episodes} episodes (lerobot {lerobot.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
