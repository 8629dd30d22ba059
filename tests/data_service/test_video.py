"""Human video: PyAV decoding by frame index, the video source, samples, bad input, synthetic videos."""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from lavla.data_service.video import codec as video_io  # noqa: E402
from lavla.data_service.config import DataConfig, DatasetEntry, SyntheticDataConfig  # noqa: E402
from lavla.data_service.errors import DataError  # noqa: E402
from lavla.data_service.sampling.loader import collate  # noqa: E402
from lavla.data_service.datasets.registry import get_spec  # noqa: E402
from lavla.data_service.schema import LIST_KEYS, TENSOR_KEYS  # noqa: E402
from lavla.data_service.sources import open_source  # noqa: E402
from lavla.data_service.stats import DatasetStatistics, Normalizer  # noqa: E402
from lavla.data_service.video.source import VideoEpisode, VideoSource, make_video_sample  # noqa: E402
from lavla.data_service.video.codec import probe, read_all, read_frames  # noqa: E402
from lavla.data_service.sampling.windowing import make_sample as make_robot_sample  # noqa: E402

from .video_helpers import csv_dataset, frame_index, indexed_video, write_csv  # noqa: E402

NAME = "synthetic_human_video"  # registry: 10 Hz nominal, H = 3 frames (0.3 s)


def _cfg(root: Path, *, size: int = 16, **kw: object) -> DataConfig:
    return DataConfig(datasets=[DatasetEntry(name=NAME, path=str(root))], image_size=size, action_horizon=4, **kw)


def _indices(frames: np.ndarray) -> list[int]:
    return [frame_index(f) for f in frames]


# -- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kw", [("g2.mp4", dict(gop=2)), ("g30.mp4", dict(gop=30)),
                                     ("vp9.webm", dict(codec="libvpx-vp9", gop=10))])
def test_random_access_decodes_the_right_frames(tmp_path: Path, name: str, kw: dict) -> None:
    path = indexed_video(tmp_path / name, 64, **kw)
    info = probe(path)
    assert info.num_frames == 64 and info.fps == pytest.approx(10.0)
    want = [0, 63, 17, 5, 6, 17, 50]  # any order, repeats, and gaps wider than SEEK_GAP (a second seek)
    assert _indices(read_frames(path, want, 16, info)) == want
    assert _indices(read_all(path, 16, info)) == list(range(64))


def test_nonzero_start_pts(tmp_path: Path) -> None:
    path = indexed_video(tmp_path / "ego.mp4", 30, start_pts=25, gop=5)  # the stream starts at 2.5 s
    info = probe(path)
    assert info.start_pts > 0 and info.num_frames == 30
    assert _indices(read_frames(path, [0, 1, 12, 29], 16, info)) == [0, 1, 12, 29]
    assert _indices(read_all(path, 16, info))[:3] == [0, 1, 2]


def test_frames_are_square_centre_crops(tmp_path: Path) -> None:
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :16] = (250, 0, 0)
    wide[:, 16:48] = (0, 250, 0)
    wide[:, 48:] = (0, 0, 250)
    path = video_io.write_video(tmp_path / "wide.mp4", [wide] * 3, 10.0)
    (frame,) = read_frames(path, [1], 8, probe(path))
    assert frame.shape == (8, 8, 3)
    assert frame[..., 1].min() > 200 and frame[..., 0].max() < 40  # only the green middle survives


def test_unreadable_and_truncated_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    with pytest.raises(DataError, match="cannot open video") as e:
        probe(garbage, episode=3)
    assert e.value.file == str(garbage) and e.value.episode == 3 and e.value.field == "video"
    with pytest.raises(DataError, match="file not found"):
        probe(tmp_path / "missing.mp4")
    for faststart in (False, True):
        full = indexed_video(tmp_path / f"full{faststart}.mp4", 30, faststart=faststart).read_bytes()
        cut = tmp_path / f"cut{faststart}.mp4"
        cut.write_bytes(full[: int(len(full) * 0.6)])
        with pytest.raises(DataError, match="cannot open|truncated") as e:
            probe(cut)
        assert e.value.file == str(cut)


def test_frames_past_a_truncated_stream_are_an_error(tmp_path: Path) -> None:
    path = indexed_video(tmp_path / "v.mp4", 10)
    info = probe(path)
    lying = video_io.VideoInfo(20, info.fps, info.start_pts, info.time_base, info.width, info.height)
    with pytest.raises(DataError, match="frame 15") as e:
        read_frames(path, [15], 16, lying, episode=2)
    assert e.value.episode == 2
    with pytest.raises(DataError, match="truncated: decoded 10 of 20"):
        read_all(path, 16, lying)


# -- the source ----------------------------------------------------------------------------------


def test_source_from_csv_and_sample_schema(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path / "ds", [12, 20, 9])
    cfg = _cfg(root)
    src = open_source(cfg.datasets[0], cfg)
    assert isinstance(src, VideoSource) and src.num_episodes == 3
    assert src.episode_lengths.tolist() == [12, 20, 9]
    stats = src.statistics()
    assert (stats.num_transitions, stats.num_trajectories, stats.action.dim, stats.proprio.dim) == (41, 3, 0, 0)
    stats = DatasetStatistics.from_dict(json.loads(json.dumps(stats.to_dict())))  # survives a checkpoint
    norm = Normalizer(stats, cfg.normalization, src.spec.action_absolute_mask)
    ep = src.read_episode(1)
    assert isinstance(ep, VideoEpisode) and ep.stride == 3 and ep.language == "do thing 1"
    s = src.make_sample(ep, 4, src, norm, cfg)  # the reader's per-source seam
    assert set(s) == set(TENSOR_KEYS) | set(LIST_KEYS)
    assert frame_index(s["image_primary"]) == 4 and frame_index(s["image_future"]) == 7
    assert s["image_primary"].shape == s["image_wrist"].shape == (3, 16, 16) and s["image_primary"].dtype == np.uint8
    assert not s["has_action"] and not s["has_wrist"] and not s["image_wrist"].any()
    assert s["action"].shape == (4, 7) and not s["action"].any() and not s["action_valid"].any()
    assert not s["action_dim_mask"].any() and not s["proprio_dim_mask"].any() and not s["proprio"].any()
    assert s["embodiment_id"] == get_spec(NAME).embodiment_id
    end = make_video_sample(ep, 18, src, norm, cfg)  # t + H past the end: clamped to T - 1
    assert frame_index(end["image_future"]) == 19
    with pytest.raises(IndexError):
        make_video_sample(ep, 20, src, norm, cfg)


def test_video_and_robot_samples_collate_together(tmp_path: Path, data_cfg: DataConfig) -> None:
    robot = open_source(data_cfg.datasets[0], data_cfg)
    root = csv_dataset(tmp_path / "ds", [8])
    cfg = _cfg(root, size=data_cfg.image_size)
    vid = open_source(cfg.datasets[0], cfg)
    samples = []
    for src in (robot, vid):  # as SampleReader picks: the source's own make_sample, else windowing's
        make = getattr(src, "make_sample", None) or make_robot_sample
        norm = Normalizer(src.statistics(), cfg.normalization, src.spec.action_absolute_mask)
        samples.append(make(src.read_episode(0), 0, src, norm, cfg))
    assert samples[0]["has_action"] and not samples[1]["has_action"]
    batch = collate(samples)
    assert batch["has_action"].tolist() == [True, False] and batch["image_future"].shape == (2, 3, 32, 32)
    with pytest.raises(TypeError, match="VideoSource.make_sample"):
        make_robot_sample(vid.read_episode(0), 0, vid, None, cfg)  # the robot path cannot read clips
    again = pickle.loads(pickle.dumps(vid))  # sources travel to Ray decoder actors
    assert frame_index(again.make_sample(again.read_episode(0), 2, again, None, cfg)["image_future"]) == 5


def test_stride_follows_each_clips_fps(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    indexed_video(root / "slow.mp4", 20, fps=10.0)
    indexed_video(root / "fast.mp4", 40, fps=20.0)
    write_csv(root / "train.csv", [("slow.mp4", "a"), ("fast.mp4", "b")])
    cfg = _cfg(root)
    src = open_source(cfg.datasets[0], cfg)
    slow, fast = src.read_episode(0), src.read_episode(1)
    assert (slow.stride, fast.stride) == (3, 6)  # 0.3 s at 10 and 20 fps
    s = make_video_sample(fast, 10, src, None, cfg)
    assert frame_index(s["image_future"]) == 16
    override = _cfg(root, lam_stride=2)
    assert open_source(override.datasets[0], override).read_episode(1).stride == 2


def test_ssv2_json_annotations(tmp_path: Path) -> None:
    root = tmp_path / "ssv2"
    for vid in ("101", "102"):
        indexed_video(root / "20bn-something-something-v2" / f"{vid}.webm", 15, fps=12.0, codec="libvpx-vp9", gop=6)
    (root / "labels").mkdir()
    (root / "labels" / "train.json").write_text(json.dumps([
        {"id": "101", "label": "pushing a cup from left to right", "template": "Pushing [something] from left to right"},
        {"id": "102", "template": "Dropping [something] onto [something]", "placeholders": ["a pen", "a box"]},
    ]))
    cfg = DataConfig(datasets=[DatasetEntry(name="ssv2", path=str(root))], image_size=16)
    src = open_source(cfg.datasets[0], cfg)
    assert [src.read_episode(i).language for i in range(2)] == ["pushing a cup from left to right",
                                                               "Dropping something onto something"]
    ep = src.read_episode(0)
    assert ep.stride == 7  # ssv2: 7 frames at its 12 fps
    s = make_video_sample(ep, 2, src, None, cfg)
    assert (frame_index(s["image_primary"]), frame_index(s["image_future"])) == (2, 9)


def test_split_slicing_and_explicit_annotations(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path / "ds", [5, 6, 7, 8])
    write_csv(root / "val.csv", [("videos/clip0.mp4", "v0")])
    cfg = _cfg(root)
    entry = DatasetEntry(name=NAME, path=str(root), split="train[1:3]+val")
    src = VideoSource(entry, get_spec(NAME), cfg)
    assert src.episode_lengths.tolist() == [6, 7, 5] and src.read_episode(2).language == "v0"
    write_csv(tmp_path / "elsewhere.csv", [(str(root / f"videos/clip{i}.mp4"), f"x{i}") for i in range(4)])
    explicit = VideoSource(DatasetEntry(name=NAME, path=str(root), split="train[:50%]"), get_spec(NAME), cfg,
                           annotations=tmp_path / "elsewhere.csv")  # absolute paths in the CSV
    assert explicit.episode_lengths.tolist() == [5, 6] and explicit.read_episode(1).language == "x1"
    assert explicit.fingerprint != VideoSource(DatasetEntry(name=NAME, path=str(root)), get_spec(NAME), cfg).fingerprint


# -- bad input -----------------------------------------------------------------------------------


def test_missing_annotation_file(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path / "ds", [6])
    cfg = _cfg(root)
    with pytest.raises(DataError, match="annotation file for split 'val' not found") as e:
        VideoSource(DatasetEntry(name=NAME, path=str(root), split="val"), get_spec(NAME), cfg)
    assert e.value.file == str(root)
    with pytest.raises(DataError, match="annotation file not found"):
        VideoSource(cfg.datasets[0], get_spec(NAME), cfg, annotations=root / "nope.csv")
    (root / "train.csv").write_text("file,text\nvideos/clip0.mp4,x\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['path', 'instruction'\]"):
        open_source(cfg.datasets[0], cfg)


def _bad_dataset(root: Path) -> Path:
    """Clips: 0 fine, 1 no instruction, 2 missing file, 3 garbage bytes, 4 truncated, 5 too short (< H+1)."""
    indexed_video(root / "ok.mp4", 10)
    (root / "garbage.mp4").write_bytes(b"\x00junk" * 500)
    full = indexed_video(root / "full.mp4", 30).read_bytes()
    (root / "cut.mp4").write_bytes(full[: len(full) // 2])
    indexed_video(root / "short.mp4", 3)
    return write_csv(root / "train.csv", [("ok.mp4", "fine"), ("ok.mp4", ""), ("gone.mp4", "x"),
                                          ("garbage.mp4", "x"), ("cut.mp4", "x"), ("short.mp4", "x")])


def test_bad_clips_are_errors_naming_file_episode_field(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _bad_dataset(root)
    cfg = _cfg(root)
    with pytest.raises(DataError) as e:
        open_source(cfg.datasets[0], cfg)
    msg = str(e.value)
    assert "train.csv" in msg and "episode 1" in msg and "'instruction'" in msg and "4 more bad clips" in msg
    # Each problem, one at a time (the first bad clip is the one reported).
    expect = {2: ("gone.mp4", "video file not found"), 3: ("garbage.mp4", "cannot open video"),
              4: ("cut.mp4", "cannot open video|truncated"), 5: ("short.mp4", "3 frames, fewer than the 4")}
    for i, (name, reason) in expect.items():
        write_csv(root / "train.csv", [("ok.mp4", "fine"), (name, "x")])
        with pytest.raises(DataError, match=reason) as e:
            open_source(cfg.datasets[0], cfg)
        assert e.value.file == str(root / name) and e.value.episode == 1 and e.value.field == "video", i


def test_bad_clips_are_skipped_with_on_bad_sample_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "ds"
    _bad_dataset(root)
    cfg = _cfg(root, on_bad_sample="skip")
    with caplog.at_level(logging.WARNING):
        src = open_source(cfg.datasets[0], cfg)
    assert "5 of 6 clips are unusable" in caplog.text
    assert src.episode_lengths.tolist() == [10, 0, 0, 0, 0, 0]  # the plan never draws length-0 episodes
    assert src.statistics().num_trajectories == 1
    with pytest.raises(DataError, match="fewer than"):
        src.read_episode(5)


def test_decode_failure_at_sample_time(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path / "ds", [12])
    cfg = _cfg(root)
    src = VideoSource(cfg.datasets[0], get_spec(NAME), cfg, episode_memory_bytes=0)
    ep = src.read_episode(0)
    (root / "videos" / "clip0.mp4").write_bytes(b"overwritten")  # the file goes bad after opening
    with pytest.raises(DataError, match="cannot open video") as e:
        make_video_sample(ep, 0, src, None, cfg)
    assert (e.value.episode, e.value.field) == (0, "video")


def test_probe_results_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = csv_dataset(tmp_path / "ds", [6, 7])
    cfg = _cfg(root)
    first = open_source(cfg.datasets[0], cfg)
    monkeypatch.setattr("lavla.data_service.video.source.probe", lambda *a, **k: pytest.fail("probed again"))
    second = open_source(cfg.datasets[0], cfg)
    assert second.fingerprint == first.fingerprint and second.episode_lengths.tolist() == [6, 7]


# -- frame cache + memory policy ----------------------------------------------------------------


def test_source_reads_the_frame_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lavla.data_service.video.prepare import prepare_cache

    root = csv_dataset(tmp_path / "ds", [12, 25], gop=30)
    prepare_cache(root, root / "train.csv", root / "frames.zarr", size=16, progress=False)
    cfg = _cfg(root)
    direct = VideoSource(cfg.datasets[0], get_spec(NAME), cfg, use_frame_cache=False)
    for memory in (0, 1 << 20):  # per-sample chunk reads, and whole clips kept with the episode
        cached = VideoSource(cfg.datasets[0], get_spec(NAME), cfg, episode_memory_bytes=memory)
        assert cached.cache is not None and cached.fingerprint == direct.fingerprint
        monkeypatch.setattr("lavla.data_service.video.source.read_frames", lambda *a, **k: pytest.fail("decoded the video"))
        monkeypatch.setattr("lavla.data_service.video.source.read_all", lambda *a, **k: pytest.fail("decoded the video"))
        ep = cached.read_episode(1)
        got = ep.frames.read([0, 24, 7])
        assert _indices(got) == [0, 24, 7]
        monkeypatch.undo()
        np.testing.assert_array_equal(got, direct.read_episode(1).frames.read([0, 24, 7]))
        episode = pickle.loads(pickle.dumps(ep))  # crosses to decode workers
        assert _indices(episode.frames.read([3])) == [3]
    # A bigger model size than the cache holds: the videos are decoded instead.
    bigger = _cfg(root, size=32)
    assert VideoSource(bigger.datasets[0], get_spec(NAME), bigger).cache is None


def test_short_clips_are_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = csv_dataset(tmp_path / "ds", [12])
    cfg = _cfg(root)
    ep = VideoSource(cfg.datasets[0], get_spec(NAME), cfg).read_episode(0)
    calls = []
    real = video_io.read_all
    monkeypatch.setattr("lavla.data_service.video.source.read_all", lambda *a, **k: calls.append(1) or real(*a, **k))
    for t in range(9):
        assert _indices(ep.frames.read([t, t + 3])) == [t, t + 3]
    assert len(calls) == 1


# -- synthetic human videos ---------------------------------------------------------------------


SMALL = dict(train_episodes=3, val_episodes=1, episode_length=8, image_size=16, seed=3)


def test_synthetic_human_videos(tmp_path: Path) -> None:
    from lavla.data_service.synthetic import generate_human_episode, generate_synthetic_world

    a = generate_synthetic_world(SyntheticDataConfig(root=str(tmp_path / "a"), **SMALL), videos=True)
    generate_synthetic_world(SyntheticDataConfig(root=str(tmp_path / "b"), **SMALL), videos=True)
    assert a.parts[-2:] == ("synthetic_world", "1.0.0")  # the API still returns the RLDS dir
    va, vb = tmp_path / "a" / NAME, tmp_path / "b" / NAME
    files = sorted(p.relative_to(va) for p in va.rglob("*") if p.is_file())
    assert [str(f) for f in files] == ["synthetic_config.json", "train.csv", "val.csv", "videos/train_00000.mp4",
                                       "videos/train_00001.mp4", "videos/train_00002.mp4", "videos/val_00000.mp4"]
    assert all((va / f).read_bytes() == (vb / f).read_bytes() for f in files)  # deterministic
    cfg = DataConfig(datasets=[DatasetEntry(name=NAME, path=str(va), split="train+val")], image_size=16)
    src = open_source(cfg.datasets[0], cfg)
    frames, text = generate_human_episode(3, "train", 1, 8, 16)
    ep = src.read_episode(1)
    assert ep.length == len(frames) and ep.language == text.replace("the gripper", "your hand")
    decoded = ep.frames.read(np.arange(ep.length)).astype(int)
    assert np.abs(decoded - frames).mean() < 8  # lossy, but the same pictures
    assert np.abs(decoded[1:] - decoded[:-1]).mean() > 0.1  # and they move


def test_synthetic_cli_writes_videos_by_default(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "lavla.data_service.synthetic", "--out", str(tmp_path), "--train-episodes", "2",
            "--val-episodes", "0", "--episode-length", "6", "--image-size", "16"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "synthetic_world/1.0.0" in out and NAME in out
    assert (tmp_path / NAME / "videos" / "train_00001.mp4").exists()
    assert not (tmp_path / NAME / "val.csv").exists()
    other = tmp_path / "other"
    subprocess.run(args[:4] + [str(other), *args[5:], "--no-videos"], check=True, capture_output=True, timeout=120)
    assert [p.name for p in other.iterdir()] == ["synthetic_world"]


def test_robot_and_video_mixture_through_the_data_client(tmp_path: Path, synthetic_dir: Path) -> None:
    """The whole data side (pipeline.build_data) with a video dataset in the mixture."""
    from lavla.data_service.pipeline import build_data
    from lavla.data_service.synthetic import generate_synthetic_human_video

    videos = generate_synthetic_human_video(SyntheticDataConfig(root=str(tmp_path), train_episodes=4, val_episodes=0,
                                                                episode_length=12, image_size=32, seed=0))
    cfg = DataConfig(datasets=[DatasetEntry(path=str(synthetic_dir)), DatasetEntry(name=NAME, path=str(videos))],
                     image_size=32, action_horizon=4, plan_block_size=16, episode_group=2)
    bundle = build_data(cfg, rank=0, world_size=1, micro_batch_size=8, grad_accum=1, is_local_leader=True,
                        barrier=lambda: None)
    try:
        batches = [bundle.client.next_micro_batch() for _ in range(3)]
    finally:
        bundle.client.close()
    has_action = torch.cat([b["has_action"] for b in batches])
    dataset_id = torch.cat([b["dataset_id"] for b in batches])
    assert has_action.any() and not has_action.all()
    assert (has_action == (dataset_id == 0)).all()  # robot samples carry actions, clips never do
    action = torch.cat([b["action"] for b in batches])
    dim_mask = torch.cat([b["action_dim_mask"] for b in batches])
    assert not action[~has_action].any() and not dim_mask[~has_action].any() and dim_mask[has_action].all()
    assert bundle.normalization_stats()[NAME]["action"]["mean"] == []
