"""Data service throughput and memory against a tf.data/TFDS pipeline built the OpenVLA way.

    python -m lavla.data_service.benchmarks.service_bench [--rlds PATH] [--episodes 256] [--seconds 10] [--workers 1,2]

Without ``--rlds`` it generates a synthetic world into a temp dir, so it runs standalone. Every
configuration runs in its own child process (TensorFlow never shares a process with torch, and
each measurement sees only its own process tree) and produces the same training samples from the
same RLDS files: primary frame t, future frame t+H and wrist frame t decoded and resized, the
normalized action chunk a_t..a_{t+N-1} and the normalized proprio.

* ``in-process``: ``data.num_workers=0`` (one decode thread in the trainer process).
* ``service xN``: the Ray service with N decoder actors, through ``pipeline.build_data`` exactly as
  the trainer uses it (the embedded local Ray instance is started and shut down by the child).
* ``tf.data``: the OpenVLA/dlimp recipe: TFDS ``as_dataset`` with shuffled, interleaved files and
  images left encoded, a per-trajectory map building the windows, ``unbatch``, a shuffle buffer
  of encoded frames (``--buffer``: OpenVLA's 256k, capped at one epoch), then decode + resize with
  ``num_parallel_calls=AUTOTUNE``, batch and prefetch, non-deterministic, 1 GiB RAM budget.

Reported per configuration, after a warm-up: samples/s (wall), samples per CPU-second of the
whole process tree (Ray's processes included) -- "per core", robust on a shared machine --,
CPU use, time to the first batch, and the peak RSS and PSS of the process tree over the whole run
(RSS double-counts memory shared between processes, e.g. Ray's object store; PSS does not).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Result:
    """One configuration's measurement."""

    name: str
    """Configuration (``in-process``, ``service x2``, ``tf.data``...)."""
    samples: int
    """Samples delivered in the timed window."""
    wall_s: float
    """Length of the timed window."""
    cpu_s: float
    """CPU seconds of the whole process tree in the timed window."""
    first_batch_s: float
    """From the start of the child to its first batch (start-up, buffer fill)."""
    peak_rss_mb: float
    """Peak summed RSS of the process tree over the whole run."""
    peak_pss_mb: float
    """Peak summed PSS of the process tree (shared pages split between their users)."""

    @property
    def per_s(self) -> float:
        return self.samples / self.wall_s

    @property
    def per_core_s(self) -> float:
        return self.samples / max(self.cpu_s, 1e-9)


# -- measuring a process tree -------------------------------------------------------------------


def _tree() -> list[Any]:
    import psutil

    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def tree_cpu_s() -> float:
    total = 0.0
    for p in _tree():
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except Exception:  # a process that exited between listing and reading
            pass
    return total


class PeakMemory(threading.Thread):
    """Samples the summed RSS and PSS of this process and all its descendants."""

    def __init__(self, every_s: float = 0.25) -> None:
        super().__init__(daemon=True, name="peak-memory")
        self.every_s, self.rss, self.pss = every_s, 0, 0
        self._halt = threading.Event()

    def sample(self) -> None:
        rss = pss = 0
        for p in _tree():
            try:
                m = p.memory_full_info()
                rss, pss = rss + m.rss, pss + m.pss
            except Exception:
                pass
        self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()


def measure(name: str, next_batch: Callable[[], int], seconds: float, t_start: float, warmup_batches: int,
            memory: PeakMemory) -> Result:
    """``next_batch() -> samples in it``: warm up, then count samples and tree CPU for ``seconds``."""
    next_batch()
    first = time.perf_counter() - t_start
    for _ in range(warmup_batches):
        next_batch()
    n, w0, c0 = 0, time.perf_counter(), tree_cpu_s()
    while time.perf_counter() - w0 < seconds:
        n += next_batch()
    wall, cpu = time.perf_counter() - w0, tree_cpu_s() - c0
    memory.sample()
    return Result(name, n, wall, cpu, first, memory.rss / 2**20, memory.pss / 2**20)


# -- the configurations (run inside children) ---------------------------------------------------


def _data_cfg(a: argparse.Namespace, workers: int) -> Any:
    from lavla.data_service.config import DataConfig, DatasetEntry

    return DataConfig(datasets=[DatasetEntry(path=a.rlds, split=a.split)], image_size=a.size,
                      action_horizon=a.horizon, num_workers=workers, prefetch_batches=a.prefetch)


def run_ours(a: argparse.Namespace, workers: int, t_start: float, memory: PeakMemory) -> Result:
    from lavla.data_service.pipeline import build_data

    bundle = build_data(_data_cfg(a, workers), rank=0, world_size=1, micro_batch_size=a.batch, grad_accum=1,
                        is_local_leader=True, barrier=lambda: None)
    client = bundle.client

    def step() -> int:
        batch = client.next_micro_batch()
        return int(batch["sample_id"].shape[0])

    name = f"service x{workers}" if workers else "in-process (num_workers=0)"
    try:
        return measure(name, step, a.seconds, t_start, a.warmup, memory)
    finally:
        client.close()


def run_tfdata(a: argparse.Namespace, t_start: float, memory: PeakMemory) -> Result:
    """The reference: TensorFlow is imported here only (a child process)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tensorflow_datasets as tfds

    stats = json.loads(Path(a.stats).read_text())
    H, N, size = stats["lam_stride"], a.horizon, a.size
    lo_a, hi_a = np.asarray(stats["action"]["q01"], np.float32), np.asarray(stats["action"]["q99"], np.float32)
    lo_p, hi_p = np.asarray(stats["proprio"]["q01"], np.float32), np.asarray(stats["proprio"]["q99"], np.float32)
    absolute = tf.constant(stats["absolute_mask"])

    def normalize(x: Any, lo: np.ndarray, hi: np.ndarray) -> Any:
        y = tf.clip_by_value(2.0 * (x - lo) / (hi - lo + 1e-8) - 1.0, -1.0, 1.0)
        return tf.where(tf.constant(lo == hi), 0.0, y)

    def traj_map(ep: dict[str, Any]) -> dict[str, Any]:
        steps = ep["steps"]
        image, wrist = steps["observation"]["image"], steps["observation"]["wrist_image"]
        action = tf.cast(steps["action"], tf.float32)
        T = tf.shape(action)[0]
        t = tf.range(T)
        idx = t[:, None] + tf.range(N)[None, :]
        valid = idx < T
        norm = tf.where(absolute, action, normalize(action, lo_a, hi_a))
        chunk = tf.gather(norm, tf.minimum(idx, T - 1))
        chunk = tf.where(valid[..., None], chunk, tf.where(absolute, chunk, 0.0))  # past the end: rel 0, abs last
        return {"image_primary": image, "image_future": tf.gather(image, tf.minimum(t + H, T - 1)),
                "image_wrist": wrist, "action": chunk, "action_valid": valid,
                "proprio": normalize(tf.cast(steps["observation"]["state"], tf.float32), lo_p, hi_p),
                "language": tf.repeat(steps["language_instruction"][:1], T)}

    def decode(image: Any) -> Any:
        img = tf.io.decode_image(image, channels=3, expand_animations=False)
        img = tf.image.resize(img, [size, size], method="bilinear", antialias=True)
        return tf.transpose(tf.cast(tf.round(img), tf.uint8), [2, 0, 1])

    def frame_map(f: dict[str, Any]) -> dict[str, Any]:
        return {**f, **{k: decode(f[k]) for k in ("image_primary", "image_future", "image_wrist")}}

    builder = tfds.builder_from_directory(a.rlds)
    read = tfds.ReadConfig(shuffle_seed=0, interleave_cycle_length=16, num_parallel_calls_for_interleave_files=16)
    ds = builder.as_dataset(split=a.split, shuffle_files=True, decoders={"steps": tfds.decode.SkipDecoding()},
                            read_config=read)
    opts = tf.data.Options()
    opts.deterministic = False  # dlimp's setting
    opts.autotune.ram_budget = 2**30  # OpenVLA: with_ram_budget(1)
    ds = (ds.repeat().map(traj_map, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
          .shuffle(a.buffer).map(frame_map, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(a.batch).prefetch(tf.data.AUTOTUNE).with_options(opts))
    it = ds.as_numpy_iterator()

    def step() -> int:
        return int(next(it)["action"].shape[0])

    return measure(f"tf.data (OpenVLA recipe, buffer {a.buffer})", step, a.seconds, t_start, a.warmup, memory)


def child(argv: list[str]) -> int:
    t_start = time.perf_counter()
    p = _parser()
    p.add_argument("--mode", required=True)
    p.add_argument("--stats", default="")
    a = p.parse_args(argv)
    memory = PeakMemory()
    memory.start()
    try:
        if a.mode == "tfdata":
            r = run_tfdata(a, t_start, memory)
        else:
            r = run_ours(a, int(a.mode), t_start, memory)
    finally:
        memory.stop()
    r = dataclasses.replace(r, peak_rss_mb=memory.rss / 2**20, peak_pss_mb=memory.pss / 2**20)
    print("RESULT " + json.dumps(asdict(r)), flush=True)
    return 0


# -- parent ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lavla.data_service.benchmarks.service_bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rlds", help="TFDS version dir of an RLDS dataset (default: a generated synthetic world)")
    p.add_argument("--split", default="train")
    p.add_argument("--episodes", type=int, default=256, help="episodes of the generated world (default 256)")
    p.add_argument("--episode-length", type=int, default=40, help="steps per generated episode (default 40)")
    p.add_argument("--source-size", type=int, default=96, help="stored frame size of the generated world (default 96)")
    p.add_argument("--size", type=int, default=64, help="image size delivered to the model (default 64)")
    p.add_argument("--horizon", type=int, default=8, help="action chunk length N (default 8)")
    p.add_argument("--batch", type=int, default=32, help="samples per batch (default 32)")
    p.add_argument("--prefetch", type=int, default=4, help="service: micro batches in flight (default 4)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed window per configuration (default 10)")
    p.add_argument("--warmup", type=int, default=5, help="batches consumed before timing (default 5)")
    p.add_argument("--workers", default="1,2", help="decoder counts of the service (default 1,2)")
    p.add_argument("--buffer", type=int, default=0,
                   help="tf.data shuffle buffer; 0 (default): OpenVLA's 256000 capped at one epoch of windows, "
                        "since the buffer fills with repeats of a small dataset (GBs of encoded frames)")
    p.add_argument("--skip", default="", help="comma-separated: inprocess, tfdata")
    p.add_argument("--json", help="also write the results here")
    return p


def _run_child(a: argparse.Namespace, mode: str, stats: str, env: dict[str, str]) -> Result | str:
    args = [sys.executable, "-m", "lavla.data_service.benchmarks.service_bench", "child", "--mode", mode, "--stats", stats,
            "--rlds", a.rlds, "--split", a.split, "--size", str(a.size), "--horizon", str(a.horizon),
            "--batch", str(a.batch), "--prefetch", str(a.prefetch), "--seconds", str(a.seconds),
            "--warmup", str(a.warmup), "--buffer", str(a.buffer)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900 + 4 * a.seconds)
    lines = [ln[len("RESULT "):] for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-4:]
        return f"{mode} failed ({proc.returncode}): " + " | ".join(tail)
    return Result(**json.loads(lines[-1]))


def _prepare(a: argparse.Namespace, tmp: Path) -> str:
    """Generates the world if needed, computes its statistics (cached for the children) and
    writes what the tf.data reference needs to normalize like we do."""
    from lavla.data_service.config import SyntheticDataConfig
    from lavla.data_service.sources import open_source
    from lavla.data_service.synthetic import generate_synthetic_world

    if not a.rlds:
        t0 = time.perf_counter()
        cfg = SyntheticDataConfig(enabled=True, root=str(tmp / "world"), train_episodes=a.episodes, val_episodes=0,
                                  episode_length=a.episode_length, image_size=a.source_size)
        a.rlds = str(generate_synthetic_world(cfg))
        print(f"generated {a.episodes} synthetic episodes ({a.source_size}px) in {time.perf_counter() - t0:.1f} s")
    dcfg = _data_cfg(a, 0)
    src = open_source(dcfg.datasets[0], dcfg)
    st = src.statistics()
    H = dcfg.lam_stride if dcfg.lam_stride > 0 else src.spec.lam_stride
    path = tmp / "stats.json"
    path.write_text(json.dumps({**st.to_dict(), "lam_stride": int(H),
                                "absolute_mask": [bool(x) for x in src.spec.action_absolute_mask]}, default=_jsonable))
    windows = int(src.episode_lengths.sum())
    if a.buffer <= 0:
        a.buffer = min(256_000, windows)
    print(f"dataset {a.rlds}: {src.num_episodes} episodes, {windows} windows; batch {a.batch}, image {a.size}px, "
          f"{a.seconds:g} s timed per configuration; cpu cores visible: {os.cpu_count()}\n")
    return str(path)


def _jsonable(x: Any) -> Any:
    return x.tolist() if isinstance(x, np.ndarray) else str(x)


def format_table(results: list[Result]) -> str:
    head = (f"{'configuration':44s} {'samples/s':>9s} {'smp/core-s':>10s} {'cpu/wall':>8s} {'1st batch':>9s} "
            f"{'peak RSS':>9s} {'peak PSS':>9s}")
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(f"{r.name:44s} {r.per_s:9.1f} {r.per_core_s:10.1f} {r.cpu_s / r.wall_s:8.2f} "
                    f"{r.first_batch_s:8.1f}s {r.peak_rss_mb:7.0f}MB {r.peak_pss_mb:7.0f}MB")
    return "\n".join(rows)


def ratio_lines(results: list[Result], ref: Result) -> list[str]:
    return [f"{r.name} / tf.data: {r.per_core_s / ref.per_core_s:.2f}x samples per core-second, "
            f"{r.per_s / ref.per_s:.2f}x samples/s, {r.peak_rss_mb / ref.peak_rss_mb:.2f}x peak RSS, "
            f"{r.peak_pss_mb / ref.peak_pss_mb:.2f}x peak PSS" for r in results if r is not ref]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["child"]:
        return child(argv[1:])
    a = _parser().parse_args(argv)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    with tempfile.TemporaryDirectory(prefix="lavla-service-bench-") as tmp:
        # A private cache dir: statistics and episode indexes are built once here, read by children.
        env = {**os.environ, "LAVLA_CACHE_DIR": str(Path(tmp) / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2",
               "CUDA_VISIBLE_DEVICES": ""}
        os.environ["LAVLA_CACHE_DIR"] = env["LAVLA_CACHE_DIR"]
        stats = _prepare(a, Path(tmp))
        modes = ([] if "inprocess" in skip else ["0"]) + [w.strip() for w in a.workers.split(",") if w.strip()]
        if "tfdata" not in skip:
            modes.append("tfdata")
        results: list[Result] = []
        notes: list[str] = []
        for mode in modes:
            got = _run_child(a, mode, stats, env)
            if isinstance(got, Result):
                results.append(got)
                print(f"  {got.name}: {got.per_s:.1f} samples/s", flush=True)
            else:
                notes.append(got)
        print("\n" + format_table(results))
        ref = next((r for r in results if r.name.startswith("tf.data")), None)
        if ref is not None:
            print("\n" + "\n".join(ratio_lines(results, ref)))
        for n in notes:
            print(f"note: {n}")
        if a.json:
            Path(a.json).write_text(json.dumps([asdict(r) for r in results], indent=2), encoding="utf-8")
    return 0 if not notes else 1


if __name__ == "__main__":
    sys.exit(main())
