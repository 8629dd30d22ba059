"""Reader throughput: our RLDS reader vs tf.data/TFDS, and the video source (PyAV vs zarr cache).

    python -m lavla.data_service.benchmarks.reader_bench [--rlds PATH] [--videos DIR ...] [--seconds N]

Without inputs it generates the synthetic world (200 episodes by default) and its human-style
videos into a temp dir, and builds their frame cache, so the command runs standalone.

Every reader runs single-threaded in a loop for ``--seconds``. Rates are reported per wall
second and per CPU second of the measuring process (all its threads), the latter being "per
core": it is what one decode worker delivers and is robust to a machine shared with other jobs.
The tf.data/TFDS reference (``tfds.builder_from_directory`` + ``tf.io.decode_image``, one
thread) runs in a child process, so TensorFlow never shares a process with torch.

Readers (``--only`` picks some):

* ``rlds``       ours: read an episode (TFRecord + Example parse) and decode every image to RGB
* ``tfds``       reference: the same episodes and decodes through tf.data
* ``video``      PyAV: whole clips (sequential decode) and random (t, t+H) pairs (seek + decode)
* ``cache``      the zarr frame cache: whole clips and random (t, t+H) pairs

``--service`` runs :mod:`data_service.benchmarks.service_bench` instead (whole-sample pipeline: the Ray data
service with 1 and 2 decoders vs tf.data built the OpenVLA way; its own flags follow).

The CLI is a flat set of flags so other modes (e.g. the Ray data service) can be added as more
``--only`` readers or flags; ``tfds-child`` is the internal subcommand the parent starts.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

READERS = ("rlds", "tfds", "video", "cache")


@dataclass
class Rate:
    """One reader's measurement."""

    reader: str
    """What was measured."""
    episodes: int
    """Episodes (or samples, for pair readers) completed."""
    frames: int
    """Frames decoded."""
    wall_s: float
    """Wall time of the loop."""
    cpu_s: float
    """CPU time of the process during the loop (all threads)."""
    unit: str = "episodes"
    """What ``episodes`` counts (``episodes`` or ``samples``)."""

    def per_core(self, n: int) -> float:
        return n / self.cpu_s if self.cpu_s > 0 else 0.0

    def per_wall(self, n: int) -> float:
        return n / self.wall_s if self.wall_s > 0 else 0.0


def measure(reader: str, step: Callable[[int], int], seconds: float, *, unit: str = "episodes",
            min_iters: int = 3) -> Rate:
    """Calls ``step(i) -> frames decoded`` for i = 0, 1, ... until ``seconds`` have passed."""
    step(0)  # warm-up: file handles, index caches, lazy imports
    i, frames = 0, 0
    w0, c0 = time.perf_counter(), time.process_time()
    while i < min_iters or time.perf_counter() - w0 < seconds:
        frames += step(i)
        i += 1
    return Rate(reader, i, frames, time.perf_counter() - w0, time.process_time() - c0, unit)


# -- our RLDS reader ---------------------------------------------------------------------------


def _decode_rgb(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:  # like tf.io.decode_image: full size, no resize
        return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


def image_keys(path: Path) -> list[str]:
    from lavla.data_service.formats.rlds import RLDSDataset

    return sorted(k for k, f in RLDSDataset(path).step_features.items() if f.kind == "image")


def bench_rlds(path: Path, split: str, seconds: float) -> Rate:
    from lavla.data_service.formats.rlds import RLDSDataset

    ds = RLDSDataset(path)
    n = ds.num_episodes(split)
    keys = image_keys(path)

    def step(i: int) -> int:
        ep = ds.read_episode(split, i % n)
        frames = 0
        for k in keys:
            for b in ep.steps[k]:  # type: ignore[union-attr]
                _decode_rgb(b)
                frames += 1
        return frames

    return measure("rlds: ours (TF-free reader + OpenCV decode)", step, seconds)


# -- tf.data / TFDS reference (child process) -----------------------------------------------------


def tfds_child(path: Path, split: str, seconds: float) -> Rate:
    """Runs inside the child: TensorFlow is imported here only."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    keys = [k.split("/") for k in image_keys(path)]
    builder = tfds.builder_from_directory(str(path))
    opts = tf.data.Options()
    opts.threading.private_threadpool_size = 1
    opts.deterministic = True

    def decode(ep: dict) -> dict:
        out = {}
        for parts in keys:  # e.g. steps/observation/image
            node = ep
            for p in parts:
                node = node[p]
            out["/".join(parts)] = tf.map_fn(lambda b: tf.io.decode_image(b, channels=3, expand_animations=False),
                                             node, fn_output_signature=tf.uint8)
        return out

    ds = (builder.as_dataset(split=split, decoders={"steps": tfds.decode.SkipDecoding()}, shuffle_files=False)
          .map(decode, num_parallel_calls=None).repeat().with_options(opts))
    it = iter(ds)

    def step(_: int) -> int:
        ep = next(it)
        return int(sum(int(v.shape[0]) for v in ep.values()))

    return measure("rlds: tf.data + TFDS reference", step, seconds)


def run_tfds_child(path: Path, split: str, seconds: float) -> Rate | str:
    """The reference measured in a child process; a reason string when it cannot run."""
    cmd = [sys.executable, "-m", "lavla.data_service.benchmarks.reader_bench", "tfds-child", "--rlds", str(path), "--split", split,
           "--seconds", str(seconds)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600 + 4 * seconds)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return "tf.data reference failed: " + " | ".join(tail)
    return Rate(**json.loads(lines[-1]))


# -- video ---------------------------------------------------------------------------------------


def _video_source(root: Path, spec_name: str, size: int, *, use_cache: bool) -> object:
    from lavla.data_service.config import DataConfig, DatasetEntry
    from lavla.data_service.datasets.registry import get_spec
    from lavla.data_service.video.source import VideoSource

    cfg = DataConfig(datasets=[DatasetEntry(name=spec_name, path=str(root))], image_size=size,
                     on_bad_sample="skip")
    cache = root / "frames.zarr"
    return VideoSource(cfg.datasets[0], get_spec(spec_name), cfg,
                       frame_cache=cache if (cache / "zarr.json").exists() else None,
                       use_frame_cache=use_cache, episode_memory_bytes=0)  # per-sample reads: measure the backend, not the memo


def bench_video(root: Path, spec_name: str, size: int, seconds: float, *, use_cache: bool) -> list[Rate]:
    from lavla.data_service.video.codec import read_all

    src = _video_source(root, spec_name, size, use_cache=use_cache)
    usable = np.flatnonzero(src.episode_lengths > 0)  # type: ignore[attr-defined]
    if usable.size == 0:
        return []
    eps = [src.read_episode(int(i)) for i in usable]  # type: ignore[attr-defined]
    backend = "zarr cache" if use_cache else "PyAV"
    if use_cache and any(ep.frames.cache is None for ep in eps):
        return []

    def whole(i: int) -> int:
        ep = eps[i % len(eps)]
        if use_cache:
            frames = ep.frames.cache.read_all(ep.key)
        else:
            frames = read_all(ep.frames.path, size, ep.frames.info)
        return int(frames.shape[0])

    rng = np.random.default_rng(0)
    picks = [(int(e), int(rng.integers(eps[e].length))) for e in rng.integers(len(eps), size=4096)]

    def pair(i: int) -> int:
        e, t = picks[i % len(picks)]
        ep = eps[e]
        ep.frames.read([t, min(t + ep.stride, ep.length - 1)])
        return 2

    return [measure(f"video {root.name}: {backend}, whole clips", whole, seconds),
            measure(f"video {root.name}: {backend}, random (t, t+H) pairs", pair, seconds, unit="samples")]


# -- inputs --------------------------------------------------------------------------------------


def generate_inputs(out: Path, episodes: int, size: int, *, cache: bool) -> tuple[Path, Path]:
    from lavla.data_service.config import SyntheticDataConfig
    from lavla.data_service.video.prepare import prepare_cache
    from lavla.data_service.synthetic import generate_synthetic_human_video, generate_synthetic_world

    cfg = SyntheticDataConfig(enabled=True, root=str(out), train_episodes=episodes, val_episodes=0, image_size=size)
    t0 = time.perf_counter()
    rlds = generate_synthetic_world(cfg)
    videos = generate_synthetic_human_video(cfg)
    print(f"generated {episodes} synthetic episodes ({size}px) and their videos in {time.perf_counter() - t0:.1f} s")
    if cache:
        r = prepare_cache(videos, videos / "train.csv", videos / "frames.zarr", size=size, progress=False)
        print(f"built the frame cache: {r.written} clips, {r.frames} frames in {r.seconds:.1f} s "
              f"({r.frames / max(r.seconds, 1e-9):.0f} frames/s incl. decode)")
    return rlds, videos


# -- report --------------------------------------------------------------------------------------


def format_table(rates: list[Rate]) -> str:
    width = max([58] + [len(r.reader) for r in rates])
    head = (f"{'reader':{width}s} {'ep|smp/s':>9s} {'frames/s':>9s} {'ep|smp/core-s':>13s} {'frames/core-s':>13s} "
            f"{'cpu/wall':>8s}")
    rows = [head, "-" * len(head)]
    for r in rates:
        rows.append(f"{r.reader:{width}s} {r.per_wall(r.episodes):9.1f} {r.per_wall(r.frames):9.0f} "
                    f"{r.per_core(r.episodes):13.1f} {r.per_core(r.frames):13.0f} {r.cpu_s / max(r.wall_s, 1e-9):8.2f}")
    return "\n".join(rows)


def ratio_line(ours: Rate, ref: Rate) -> str:
    ep = ours.per_core(ours.episodes) / max(ref.per_core(ref.episodes), 1e-12)
    fr = ours.per_core(ours.frames) / max(ref.per_core(ref.frames), 1e-12)
    wall = ours.per_wall(ours.frames) / max(ref.per_wall(ref.frames), 1e-12)
    return (f"ours / tf.data (same run): {ep:.2f}x episodes per core-second, {fr:.2f}x frames per core-second, "
            f"{wall:.2f}x frames per wall-second")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--service" in argv:  # the Ray data service vs a tf.data pipeline: data_service.benchmarks.service_bench
        from lavla.data_service.benchmarks.service_bench import main as service_main

        return service_main([x for x in argv if x != "--service"])
    if argv[:1] == ["tfds-child"]:
        p = argparse.ArgumentParser(prog="python -m lavla.data_service.benchmarks.reader_bench tfds-child")
        p.add_argument("--rlds", required=True)
        p.add_argument("--split", default="train")
        p.add_argument("--seconds", type=float, default=5.0)
        a = p.parse_args(argv[1:])
        print(json.dumps(asdict(tfds_child(Path(a.rlds), a.split, a.seconds))))
        return 0
    p = argparse.ArgumentParser(prog="python -m lavla.data_service.benchmarks.reader_bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rlds", help="TFDS version dir of an RLDS dataset (default: a generated synthetic world)")
    p.add_argument("--split", default="train", help="RLDS split (default train)")
    p.add_argument("--videos", nargs="*", default=None,
                   help="video dataset dirs (annotations + clips, optional frames.zarr; default: generated)")
    p.add_argument("--video-spec", default="synthetic_human_video", help="registry name for --videos (sets H)")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per reader (default 5)")
    p.add_argument("--episodes", type=int, default=200, help="episodes of the generated world (default 200)")
    p.add_argument("--size", type=int, default=64, help="image/frame size of generated data and video reads")
    p.add_argument("--only", default=",".join(READERS), help=f"comma-separated subset of {','.join(READERS)}")
    p.add_argument("--json", help="also write the measurements here")
    a = p.parse_args(argv)
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    if only - set(READERS):
        p.error(f"--only: unknown reader(s) {sorted(only - set(READERS))}; known: {', '.join(READERS)}")

    with tempfile.TemporaryDirectory(prefix="lavla-bench-") as tmp:
        rlds = Path(a.rlds) if a.rlds else None
        videos = [Path(v) for v in a.videos] if a.videos else []
        if rlds is None and not videos:
            rlds, generated = generate_inputs(Path(tmp), a.episodes, a.size, cache="cache" in only)
            videos = [generated]
        print(f"cpu cores visible: {os.cpu_count()}; every reader single-threaded, {a.seconds:g} s each\n")
        rates: list[Rate] = []
        notes: list[str] = []
        ours = ref = None
        if rlds is not None and "rlds" in only:
            ours = bench_rlds(rlds, a.split, a.seconds)
            rates.append(ours)
        if rlds is not None and "tfds" in only:
            got = run_tfds_child(rlds, a.split, a.seconds)
            if isinstance(got, Rate):
                ref = got
                rates.append(ref)
            else:
                notes.append(got)
        for v in videos:
            if "video" in only:
                rates += bench_video(v, a.video_spec, a.size, a.seconds, use_cache=False)
            if "cache" in only:
                got_cache = bench_video(v, a.video_spec, a.size, a.seconds, use_cache=True)
                rates += got_cache
                if not got_cache:
                    notes.append(f"{v}: no complete frames.zarr (build it with python -m lavla.data_service.video.prepare)")
        print(format_table(rates))
        if ours is not None and ref is not None:
            print("\n" + ratio_line(ours, ref))
        for n in notes:
            print(f"note: {n}")
        if a.json:
            Path(a.json).write_text(json.dumps([asdict(r) for r in rates], indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
