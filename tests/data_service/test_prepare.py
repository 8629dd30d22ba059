"""``python -m lavla.data_service.video.prepare``: videos -> zarr frame cache, resumable, bad clips reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("zarr")

from lavla.data_service.video import prepare  # noqa: E402
from lavla.data_service.video.prepare import FAILED, prepare_cache  # noqa: E402
from lavla.data_service.video.codec import probe, read_all  # noqa: E402
from lavla.data_service.video.frame_cache import FrameCache, FrameCacheWriter, read_manifest  # noqa: E402

from .video_helpers import csv_dataset, frame_index, indexed_video, write_csv  # noqa: E402


def test_cli_builds_and_reruns(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path / "ds", [8, 11, 9], gop=30)
    out = tmp_path / "cache.zarr"
    cmd = [sys.executable, "-m", "lavla.data_service.video.prepare", "--videos", str(root), "--annotations",
           str(root / "train.csv"), "--out", str(out), "--size", "16"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "wrote 3 clips (28 frames" in first.stdout and "0 failed" in first.stdout
    assert "clip" in first.stderr  # the tqdm bar
    cache = FrameCache(out)
    assert cache.size == 16 and set(cache.clips) == {f"videos/clip{i}.mp4" for i in range(3)}
    clip = root / "videos" / "clip1.mp4"
    np.testing.assert_array_equal(cache.read_all("videos/clip1.mp4"), read_all(clip, 16, probe(clip)))
    assert [frame_index(f) for f in cache.read("videos/clip1.mp4", [10, 3])] == [10, 3]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "wrote 0 clips" in again.stdout and "skipped 3 already cached" in again.stdout


def test_resume_after_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = csv_dataset(tmp_path / "ds", [6, 7, 8, 9, 10])
    out = tmp_path / "cache.zarr"
    real = FrameCacheWriter.write_clip
    calls: list[str] = []

    def killed_during_third(self: FrameCacheWriter, key: str, frames, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(key)
        if len(calls) == 3:  # SIGINT while the third clip's frames are being written
            def partial():
                it = iter(frames)
                yield next(it)
                raise KeyboardInterrupt
            return real(self, key, partial(), *a, **k)
        return real(self, key, frames, *a, **k)

    monkeypatch.setattr(FrameCacheWriter, "write_clip", killed_during_third)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(root, root / "train.csv", out, size=16, progress=False)
    monkeypatch.undo()
    done = read_manifest(out)
    assert sorted(done) == ["videos/clip0.mp4", "videos/clip1.mp4"]
    shard_mtimes = {p: p.stat().st_mtime_ns for p in (out / "clips").rglob("c/*/0/0/0")}

    report = prepare_cache(root, root / "train.csv", out, size=16, progress=False)
    assert (report.skipped, report.written, report.failed) == (2, 3, [])
    for p, mtime in shard_mtimes.items():  # finished clips untouched; the half-written one redone
        key_done = any(done[k].name in str(p) for k in done)
        assert (p.stat().st_mtime_ns == mtime) == key_done
    cache = FrameCache(out)
    assert [cache.clips[f"videos/clip{i}.mp4"].num_frames for i in range(5)] == [6, 7, 8, 9, 10]
    assert [frame_index(f) for f in cache.read_all("videos/clip2.mp4")] == list(range(8))


def test_bad_clips_are_reported_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    indexed_video(root / "ok.mp4", 5)
    (root / "bad.mp4").write_bytes(b"junk" * 100)
    write_csv(root / "train.csv", [("ok.mp4", "a"), ("bad.mp4", "b"), ("gone.mp4", "c"), ("ok.mp4", "")])
    out = tmp_path / "cache.zarr"
    code = prepare.main(["--videos", str(root), "--annotations", str(root / "train.csv"), "--out", str(out),
                         "--size", "16", "--no-progress"])
    assert code == 1
    assert set(FrameCache(out).clips) == {"ok.mp4"}
    failed = [json.loads(line) for line in (out / FAILED).read_text().splitlines()]
    assert [f["key"] for f in failed] == ["ok.mp4", "bad.mp4", "gone.mp4"]
    assert "empty instruction" in failed[0]["error"] and "cannot open video" in failed[1]["error"]
    assert "file not found" in failed[2]["error"]


def test_missing_annotations_and_default_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = csv_dataset(tmp_path / "ds", [5])
    assert prepare.main(["--videos", str(root), "--annotations", str(root / "nope.csv"), "--no-progress"]) == 2
    assert "annotation file not found" in capsys.readouterr().err
    assert prepare.main(["--videos", str(root), "--annotations", str(root / "train.csv"), "--size", "16",
                         "--no-progress"]) == 0
    assert "videos/clip0.mp4" in FrameCache(root / "frames.zarr")  # where the video source looks


def test_parallel_workers(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path / "ds", [5, 6, 7])
    (root / "videos" / "clip1.mp4").write_bytes(b"junk")
    report = prepare_cache(root, root / "train.csv", tmp_path / "c.zarr", size=16, workers=2, progress=False)
    assert (report.written, len(report.failed)) == (2, 1) and "clip1" in report.failed[0]
    cache = FrameCache(tmp_path / "c.zarr")
    assert [frame_index(f) for f in cache.read_all("videos/clip2.mp4")] == list(range(7))
