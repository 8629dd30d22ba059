"""Build a zarr v3 frame cache from a video dataset (resumable).

    python -m lavla.data_service.video.prepare --videos DIR --annotations FILE [--out CACHE.zarr] [--size 64]

Every annotated clip is decoded sequentially once (no seeks), resized/cropped to ``size`` and
written as one shard (see :mod:`data_service.video.frame_cache`). Clips already recorded in the cache's
manifest are skipped, so an interrupted run picks up where it stopped; a clip that was being
written when it stopped is redone. Unreadable clips are reported (and listed in
``failed.jsonl``) but do not stop the run; they are retried on the next one. ``--workers N``
decodes N clips in parallel processes (the writer stays in this process).

The video source uses the cache automatically when it is ``<dataset dir>/frames.zarr`` (the
default ``--out``).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lavla.data_service.errors import DataError
from lavla.data_service.video.annotations import Clip, load_annotations
from lavla.data_service.video.codec import VideoInfo, iter_frames, probe, read_all
from lavla.data_service.video.frame_cache import FrameCacheWriter

FAILED = "failed.jsonl"


@dataclass
class PrepareReport:
    """What a run did."""

    written: int = 0
    """Clips decoded and stored by this run."""
    skipped: int = 0
    """Clips already complete in the cache."""
    failed: list[str] = field(default_factory=list)
    """``<clip key>: <error>`` for clips that could not be decoded."""
    frames: int = 0
    """Frames written by this run."""
    seconds: float = 0.0
    """Wall time of the run."""


def _decode(path: Path, size: int, episode: int) -> tuple[VideoInfo, np.ndarray]:
    """Worker side: the whole clip in memory (shipped back to the writer)."""
    info = probe(path, episode=episode)
    return info, read_all(path, size, info, episode=episode)


def _stream(path: Path, size: int, episode: int) -> tuple[VideoInfo, Iterable[np.ndarray]]:
    """In-process: frames stream into the writer one shard at a time (long clips stay bounded)."""
    return probe(path, episode=episode), iter_frames(path, size, episode=episode)


Job = Callable[[], tuple[VideoInfo, Iterable[np.ndarray]]]


def _jobs(clips: list[tuple[int, Clip]], size: int, workers: int) -> Iterator[tuple[int, Clip, Job]]:
    """(index, clip, job) in clip order; a job returns (info, frames) or raises DataError. With
    ``workers > 1`` clips are decoded ahead in parallel processes (bounded look-ahead)."""
    if workers <= 1:
        for i, c in clips:
            yield i, c, functools.partial(_stream, c.path, size, i)
        return
    # spawn: zarr runs an event-loop thread in this process, which a fork would copy mid-state.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[tuple[int, Clip, Future]] = deque()
        it = iter(clips)
        while True:
            while len(pending) < 2 * workers and (nxt := next(it, None)) is not None:
                pending.append((nxt[0], nxt[1], pool.submit(_decode, nxt[1].path, size, nxt[0])))
            if not pending:
                return
            i, c, fut = pending.popleft()
            yield i, c, fut.result


def prepare_cache(videos: str | Path, annotations: str | Path, out: str | Path, *, size: int = 64, workers: int = 1,
                  limit: int | None = None, progress: bool = True) -> PrepareReport:
    """Converts the annotated clips under ``videos`` into the frame cache ``out`` (resumable)."""
    t0 = time.perf_counter()
    clips = load_annotations(annotations, videos)
    if limit is not None:
        clips = clips[:limit]
    report = PrepareReport()
    failures: list[dict[str, str]] = []
    with FrameCacheWriter(out, size) as writer:
        todo = []
        for i, c in enumerate(clips):
            if c.error is not None:
                report.failed.append(f"{c.key}: row {c.row}: {c.error}")
                failures.append({"key": c.key, "error": f"row {c.row}: {c.error}"})
            elif c.key in writer.completed:
                report.skipped += 1
            else:
                todo.append((i, c))
        bar = tqdm(total=len(clips), initial=len(clips) - len(todo), unit="clip", desc=f"frames {Path(out).name}",
                   disable=not progress, dynamic_ncols=True)
        try:
            for _, c, job in _jobs(todo, size, workers):
                try:
                    info, frames = job()
                    writer.write_clip(c.key, frames, info.num_frames, info.fps, source=str(c.path))
                except DataError as e:  # the clip stays unrecorded: a rerun retries it
                    report.failed.append(f"{c.key}: {e}")
                    failures.append({"key": c.key, "error": str(e)})
                else:
                    report.written += 1
                    report.frames += info.num_frames
                bar.update(1)
                bar.set_postfix(failed=len(report.failed), refresh=False)
        finally:
            bar.close()
            _write_failures(Path(out), failures)
    report.seconds = time.perf_counter() - t0
    return report


def _write_failures(out: Path, failures: list[dict[str, str]]) -> None:
    path = out / FAILED
    if not failures:
        path.unlink(missing_ok=True)
        return
    path.write_text("".join(json.dumps(f, sort_keys=True) + "\n" for f in failures), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lavla.data_service.video.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", required=True, help="directory the annotation paths/ids are relative to")
    p.add_argument("--annotations", required=True, help="SSv2 JSON (id/label/template) or CSV with path,instruction")
    p.add_argument("--out", help="cache to create or resume (default: VIDEOS/frames.zarr, found by the video source)")
    p.add_argument("--size", type=int, default=64, help="side of the stored square frames (default 64)")
    p.add_argument("--workers", type=int, default=1, help="decode processes (default 1)")
    p.add_argument("--limit", type=int, help="only the first N clips (smoke runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    out = Path(a.out) if a.out else Path(a.videos) / "frames.zarr"
    try:
        r = prepare_cache(a.videos, a.annotations, out, size=a.size, workers=a.workers, limit=a.limit,
                          progress=not a.no_progress)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rate = r.frames / r.seconds if r.seconds > 0 else 0.0
    print(f"{out}: wrote {r.written} clips ({r.frames} frames, {rate:.0f} frames/s), skipped {r.skipped} already "
          f"cached, {len(r.failed)} failed ({r.seconds:.1f} s)")
    for line in r.failed[:10]:
        print(f"  failed: {line}")
    if len(r.failed) > 10:
        print(f"  ... {len(r.failed) - 10} more in {out / FAILED}")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
