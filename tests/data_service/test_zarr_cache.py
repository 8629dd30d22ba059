"""The zarr v3 frame cache: layout, round trip, fast shard reader vs zarr, resume markers, errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

from lavla.data_service.errors import DataError  # noqa: E402
from lavla.data_service.video.frame_cache import MANIFEST, FrameCache, FrameCacheWriter, _ShardClip, _ZarrClip, read_manifest  # noqa: E402


def _frames(T: int, S: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (T, S, S, 3), dtype=np.uint8)


def _shard_files(cache: Path, name: str) -> list[Path]:
    return sorted(p for p in (cache / name / "c").rglob("*") if p.is_file())


def test_round_trip_one_shard_per_clip(tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    clips = {"a/b c.mp4": _frames(7), "123": _frames(30, seed=1)}
    with FrameCacheWriter(out, 8) as w:
        for key, f in clips.items():
            w.write_clip(key, iter(f), len(f), 12.0, source=f"/videos/{key}")
    assert len(_shard_files(out, w.completed["123"].name)) == 1  # the whole clip is one file
    cache = FrameCache(out)
    assert cache.size == 8 and set(cache.clips) == set(clips) and "123" in cache and "x" not in cache
    for key, f in clips.items():
        np.testing.assert_array_equal(cache.read_all(key), f)
        np.testing.assert_array_equal(cache.read(key, [5, 0, 5]), f[[5, 0, 5]])
        assert cache.clips[key].fps == 12.0 and cache.clips[key].num_frames == len(f)
    # The arrays are plain zarr v3: zarr itself reads what the fast path reads.
    arr = zarr.open_array(str(out / cache.clips["123"].name), mode="r")
    assert arr.metadata.zarr_format == 3 and arr.shape == (30, 8, 8, 3) and arr.attrs["key"] == "123"
    np.testing.assert_array_equal(arr[:], clips["123"])
    assert isinstance(cache._reader("123", None), _ShardClip)
    again = pickle.loads(pickle.dumps(cache))
    np.testing.assert_array_equal(again.read("123", [29]), clips["123"][[29]])


def test_long_clips_span_several_shards(tmp_path: Path) -> None:
    f = _frames(25)
    with FrameCacheWriter(tmp_path / "c.zarr", 8, shard_frames=10) as w:
        clip = w.write_clip("long", iter(f), 25, 30.0)
    assert len(_shard_files(tmp_path / "c.zarr", clip.name)) == 3
    cache = FrameCache(tmp_path / "c.zarr")
    np.testing.assert_array_equal(cache.read_all("long"), f)
    np.testing.assert_array_equal(cache.read("long", [24, 9, 10, 0]), f[[24, 9, 10, 0]])
    z = _ZarrClip(zarr.open_array(str(tmp_path / "c.zarr" / clip.name), mode="r"))
    np.testing.assert_array_equal(z.read(np.array([24, 9])), f[[24, 9]])


def test_other_layouts_fall_back_to_zarr(tmp_path: Path) -> None:
    f = _frames(6)
    with FrameCacheWriter(tmp_path / "c.zarr", 8) as w:
        clip = w.write_clip("k", iter(f), 6, 10.0)
    # Rewrite the array unsharded with another codec: still readable, through zarr.
    zarr.create_array(str(tmp_path / "c.zarr" / clip.name), data=f, chunks=(2, 8, 8, 3), overwrite=True)
    cache = FrameCache(tmp_path / "c.zarr")
    assert isinstance(cache._reader("k", None), _ZarrClip)
    np.testing.assert_array_equal(cache.read("k", [4, 1]), f[[4, 1]])


def test_interrupted_clip_is_not_recorded(tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"

    def dies(f: np.ndarray, after: int):
        yield from f[:after]
        raise KeyboardInterrupt  # the process is killed mid-clip

    with FrameCacheWriter(out, 8, shard_frames=4) as w:
        w.write_clip("done", iter(_frames(5)), 5, 10.0)
        with pytest.raises(KeyboardInterrupt):
            w.write_clip("half", dies(_frames(10), 6), 10, 10.0)  # one of its shards reached the disk
    assert set(read_manifest(out)) == {"done"}
    assert "half" not in FrameCache(out)
    with FrameCacheWriter(out, 8, shard_frames=4) as w:  # resume: rewrite it whole
        assert set(w.completed) == {"done"}
        w.write_clip("half", iter(_frames(10, seed=2)), 10, 10.0)
    np.testing.assert_array_equal(FrameCache(out).read_all("half"), _frames(10, seed=2))


def test_torn_manifest_line_is_ignored(tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    with FrameCacheWriter(out, 8) as w:
        w.write_clip("a", iter(_frames(3)), 3, 10.0)
    with open(out / MANIFEST, "a") as f:
        f.write('{"key": "b", "name": "clips/b')  # crash mid-append
    assert set(read_manifest(out)) == {"a"}


def test_writer_errors(tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    w = FrameCacheWriter(out, 8)
    with pytest.raises(DataError, match="another process is writing"):
        FrameCacheWriter(out, 8)
    with pytest.raises(DataError, match="truncated: decoded 3 of 5 frames") as e:
        w.write_clip("short", iter(_frames(3)), 5, 10.0, source="/v/short.mp4")
    assert e.value.file == "/v/short.mp4" and e.value.field == "video"
    with pytest.raises(DataError, match="frame 0 has shape"):
        w.write_clip("wrong", iter(_frames(3, S=4)), 3, 10.0)
    w.close()
    assert read_manifest(out) == {}
    with pytest.raises(DataError, match="holds 8px frames, asked for 16px"):
        FrameCacheWriter(out, 16)


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="frame cache not found"):
        FrameCache(tmp_path / "none.zarr")
    (tmp_path / "g.zarr").mkdir()
    (tmp_path / "g.zarr" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    with pytest.raises(DataError, match="not a frame cache"):
        FrameCache(tmp_path / "g.zarr")
    out = tmp_path / "c.zarr"
    with FrameCacheWriter(out, 8) as w:
        clip = w.write_clip("k", iter(_frames(4)), 4, 10.0)
    cache = FrameCache(out)
    with pytest.raises(DataError, match="'missing' is not in the frame cache") as e:
        cache.read("missing", [0], episode=7)
    assert e.value.episode == 7
    with pytest.raises(DataError, match="outside the cached clip's 4 frames"):
        cache.read("k", [4])
    (shard,) = _shard_files(out, clip.name)
    shard.write_bytes(shard.read_bytes()[:-3])  # a damaged shard index
    with pytest.raises(DataError, match="corrupt") as e:
        FrameCache(out).read("k", [0])
    assert clip.name in str(e.value.file)
