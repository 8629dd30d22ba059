"""Human video as an episode source: a directory of clips + an annotation file, decoded with PyAV.

One clip is one episode with ``has_action`` False: the samples carry the LAM pair (x_t, x_{t+H})
and the instruction; actions and proprio are zeros with all-False masks, and the statistics are
zero-dimensional (the Normalizer accepts them and does nothing). ``windowing.make_sample``
assumes actions, so the source assembles its own samples (``VideoSource.make_sample``, which
``SampleReader`` prefers when a source defines it). Importing this module registers the
``video`` opener of ``sources.open_source``.

H is set per clip from its frame rate: the registry's stride at the dataset's nominal rate,
``spec.lam_stride / spec.control_hz`` seconds (about 0.6 s), times the clip's fps; the
``data.lam_stride`` override (frames) wins when set. A clip needs at least H + 1 frames.

Frames come from the zarr frame cache (``python -m lavla.data_service.video.prepare``) when one is given and
holds the clip, else straight from the video. Short clips are read whole on first use and kept
with the episode (the sample plan draws all windows of an episode group close together); long
ones are read per sample: two chunk reads from the cache, or a keyframe seek in the video.

Where things are (``DatasetEntry.path`` = the dataset directory):

* annotations: ``<path>/<split>.json|csv`` (also ``labels/<split>.json`` as SSv2 ships it, or a
  single ``annotations.csv|json`` for ``train``); split expressions slice them like TFDS
  (``train[:95%]``). ``DatasetEntry.annotations`` (when the config has it) names a file instead.
* frame cache: ``DatasetEntry.frame_cache`` (when the config has it), else ``<path>/frames.zarr``
  if it exists.

Bad input (missing annotation file or field, missing/unreadable/truncated video, clip shorter
than H+1) raises DataError naming file, episode and field; with ``on_bad_sample: skip`` the clip
gets no samples instead (length 0), with one warning summarizing how many.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from lavla.data_service.cache import cache_candidates, load_json_cache, stable_hash, store_json_cache
from lavla.data_service.config import DataConfig, DatasetEntry
from lavla.data_service.errors import DataError
from lavla.data_service.datasets.registry import DatasetSpec
from lavla.data_service.sources import EpisodeSource, register_opener
from lavla.data_service.formats.splits import resolve_split
from lavla.data_service.datasets.standardize import StandardEpisode
from lavla.data_service.stats import ArrayStats, DatasetStatistics, Normalizer
from lavla.data_service.video.annotations import KNOWN_SPLITS, Clip, file_digest, find_split_file, load_annotations, split_names
from lavla.data_service.video.codec import VideoInfo, probe, read_all, read_frames
from lavla.data_service.sampling.windowing import Sample
from lavla.data_service.video.frame_cache import FrameCache

log = logging.getLogger(__name__)

VIDEO_SOURCE_VERSION = 1
"""Bump when the meaning of a video episode changes (invalidates fingerprints and probe caches)."""
EPISODE_MEMORY_BYTES = 8 << 20
"""Clips up to this many decoded bytes are read whole once and kept with the episode."""
DEFAULT_CACHE_NAME = "frames.zarr"


def stride_seconds(spec: DatasetSpec) -> float:
    """The dataset's LAM stride in seconds (registry frames at the nominal rate)."""
    return spec.lam_stride / spec.control_hz


def clip_stride(spec: DatasetSpec, fps: float, data_cfg: DataConfig) -> int:
    """H in frames for a clip at ``fps`` (the config's frame override wins)."""
    if data_cfg.lam_stride > 0:
        return data_cfg.lam_stride
    return max(1, int(round(stride_seconds(spec) * fps)))


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    if frames.shape[1] == size:
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BILINEAR)) for f in frames])


@dataclass
class ClipFrames:
    """Reads one clip's frames (cache or video) at the model's size; picklable."""

    key: str
    """Clip key (frame cache name)."""
    path: Path
    """Video file."""
    size: int
    """Side of the delivered square frames."""
    num_frames: int
    """Frames in the clip."""
    episode: int
    """Episode index (for error messages)."""
    info: VideoInfo | None = None
    """Probe result; None when the frames come from the cache."""
    cache: FrameCache | None = None
    """Frame cache holding the clip, or None to decode the video."""
    memory_bytes: int = EPISODE_MEMORY_BYTES
    """Read the whole clip once when it is at most this big."""
    _all: np.ndarray | None = field(default=None, init=False, repr=False)
    """The whole clip once read (``whole`` clips only)."""

    @property
    def whole(self) -> bool:
        side = self.cache.size if self.cache is not None else self.size
        return self.num_frames * side * side * 3 <= self.memory_bytes

    def _load_all(self) -> np.ndarray:
        if self.cache is not None:
            return _resize(self.cache.read_all(self.key, episode=self.episode), self.size)
        assert self.info is not None
        return read_all(self.path, self.size, self.info, episode=self.episode)

    def read(self, indices: list[int] | np.ndarray) -> np.ndarray:
        """uint8 ``[n, size, size, 3]`` frames at ``indices``."""
        idx = np.asarray(indices, np.int64)
        if ((idx < 0) | (idx >= self.num_frames)).any():
            raise DataError(f"frame index outside the clip's {self.num_frames} frames: {idx.tolist()}",
                            file=self.path, episode=self.episode, field="video")
        if self.whole:
            if self._all is None:
                self._all = self._load_all()
            return self._all[idx]
        if self.cache is not None:
            return _resize(self.cache.read(self.key, idx, episode=self.episode), self.size)
        assert self.info is not None
        return read_frames(self.path, idx, self.size, self.info, episode=self.episode)


class _NoEncodedFrames(list):  # type: ignore[type-arg]
    """``image_primary`` of a video episode: empty, and indexing it says what to use instead
    (code that treats a clip as an RLDS episode fails clearly rather than with an IndexError)."""

    def __getitem__(self, i: object) -> object:
        raise TypeError("a video episode has no encoded frames: read them with episode.frames.read(...) "
                        "(samples: VideoSource.make_sample, which SampleReader picks per source)")


@dataclass
class VideoEpisode(StandardEpisode):
    """A clip as an episode: no encoded frame list (``image_primary`` is empty; frames are read on
    demand through ``frames``), zero-width action and proprio of length T."""

    key: str = ""
    """Clip key."""
    fps: float = 0.0
    """Frame rate of the clip."""
    stride: int = 1
    """H in frames for this clip."""
    frames: ClipFrames | None = None
    """Frame reader of the clip."""


@dataclass
class _ClipMeta:
    """What the source knows about one clip before reading it."""

    num_frames: int = 0
    """Frames in the clip (from the frame cache or a probe)."""
    fps: float = 0.0
    """Frame rate of the clip."""
    info: VideoInfo | None = None
    """Probe result (None when the clip is served from the frame cache)."""
    error: DataError | None = None
    """Why the clip is unusable (bad row, unreadable file, too short), or None."""


class VideoSource:
    """A human-video dataset split as an :class:`EpisodeSource` (see the module doc).

    ``annotations``: annotation file of the (single) split instead of the directory convention;
    ``frame_cache``: a zarr frame cache instead of ``<path>/frames.zarr``; ``use_frame_cache``:
    False decodes the videos even when a cache exists; ``episode_memory_bytes``: clips up to this
    size are read whole on first use and kept with the episode (0: always per sample).
    """

    def __init__(self, entry: DatasetEntry, spec: DatasetSpec, data_cfg: DataConfig, *,
                 annotations: str | Path | None = None, frame_cache: str | Path | None = None,
                 use_frame_cache: bool = True, episode_memory_bytes: int = EPISODE_MEMORY_BYTES) -> None:
        if not spec.is_video:
            raise ValueError(f"{spec.name}: VideoSource needs a registry spec with is_video=True")
        self.name, self.spec, self.entry, self.data_cfg = entry.name, spec, entry, data_cfg
        self.root = Path(entry.path)
        self.strict = data_cfg.on_bad_sample == "error"
        self.memory_bytes = episode_memory_bytes
        self.annotation_files = self._annotation_files(annotations)
        self.clips = self._select_clips()
        self.cache = self._open_cache(frame_cache) if use_frame_cache else None
        self._meta = self._clip_meta()
        bad = [m.error for m in self._meta if m.error is not None]
        if bad:
            if self.strict:
                first = bad[0]
                if len(bad) > 1:
                    first = DataError(f"{first.reason} (and {len(bad) - 1} more bad clips)", file=first.file,
                                      episode=first.episode, field=first.field)
                raise first
            log.warning("%s: %d of %d clips are unusable and get no samples; first: %s",
                        self.name, len(bad), len(self.clips), bad[0])
        if not self.clips:
            raise DataError(f"split {entry.split!r} selects no clips", file=self.root)

    # -- construction -------------------------------------------------------------------------
    def _annotation_files(self, explicit: str | Path | None) -> dict[str, Path]:
        names = split_names(self.entry.split)
        if explicit:
            if len(names) != 1 or names[0] == "all":
                raise ValueError(f"{self.name}: with an explicit annotation file the split must name one split "
                                 f"(e.g. 'train[:95%]'), got {self.entry.split!r}")
            return {names[0]: Path(explicit)}
        if names == ["all"]:
            found = {n: f for n in KNOWN_SPLITS if (f := find_split_file(self.root, n)) is not None}
            if not found:
                raise DataError(f"no annotation files for split 'all' (looked for {', '.join(KNOWN_SPLITS)})",
                                file=self.root)
            return found
        files = {}
        for n in names:
            f = find_split_file(self.root, n)
            if f is None:
                raise DataError(f"annotation file for split {n!r} not found (looked for {n}.json, {n}.csv, "
                                f"labels/{n}.json, annotations.csv, ... under the dataset directory)", file=self.root)
            files[n] = f
        return files

    def _select_clips(self) -> list[Clip]:
        per_split = {n: load_annotations(f, self.root) for n, f in self.annotation_files.items()}
        expr = self.entry.split
        if split_names(expr) == ["all"]:
            expr = "+".join(per_split)
        ranges = resolve_split(expr, {n: [len(c)] for n, c in per_split.items()})
        return [c for r in ranges for c in per_split[r.split][r.start:r.stop]]

    def _open_cache(self, explicit: str | Path | None) -> FrameCache | None:
        path = Path(explicit) if explicit else self.root / DEFAULT_CACHE_NAME
        if not explicit and not (path / "zarr.json").exists():
            return None
        cache = FrameCache(path)  # an explicit cache that is missing is an error
        if cache.size < self.data_cfg.image_size:
            log.warning("%s: frame cache %s holds %dpx frames, smaller than data.image_size=%d; decoding the "
                        "videos instead", self.name, path, cache.size, self.data_cfg.image_size)
            return None
        return cache

    def _probe_all(self, clips: list[tuple[int, Clip]]) -> dict[str, dict[str, Any]]:
        """Probe results for clips not in the frame cache, cached as JSON by file size and mtime."""
        files: dict[str, tuple[int, int] | None] = {}
        for _, c in clips:
            try:
                st = c.path.stat()
                files[c.key] = (st.st_size, st.st_mtime_ns)
            except OSError:
                files[c.key] = None
        key = {"v": VIDEO_SOURCE_VERSION, "files": {k: v for k, v in sorted(files.items())}}
        fingerprint = stable_hash(key)
        candidates = cache_candidates(self.root, f".lavla_video_probe-{stable_hash(sorted(files))[:16]}.json")
        hit = load_json_cache(candidates, fingerprint)
        if hit is not None:
            return hit["clips"]
        out: dict[str, dict[str, Any]] = {}
        for i, c in tqdm(clips, desc=f"probing {self.name}", unit="clip", disable=None, leave=False):
            if files[c.key] is None:
                out[c.key] = {"error": "video file not found"}
                continue
            try:
                out[c.key] = {"info": probe(c.path, episode=i).to_dict()}
            except DataError as e:
                out[c.key] = {"error": e.reason}
        store_json_cache(candidates, {"fingerprint": fingerprint, "clips": out})
        return out

    def _clip_meta(self) -> list[_ClipMeta]:
        metas = [_ClipMeta() for _ in self.clips]
        to_probe = []
        for i, c in enumerate(self.clips):
            if c.error is not None:
                metas[i].error = DataError(f"row {c.row}: {c.error}", file=c.annotations, episode=i, field=c.field)
            elif self.cache is not None and c.key in self.cache:
                cached = self.cache.clips[c.key]
                metas[i].num_frames, metas[i].fps = cached.num_frames, cached.fps
            else:
                to_probe.append((i, c))
        probed = self._probe_all(to_probe) if to_probe else {}
        for i, c in to_probe:
            res = probed[c.key]
            if "error" in res:
                metas[i].error = DataError(res["error"], file=c.path, episode=i, field="video")
            else:
                info = VideoInfo.from_dict(res["info"])
                metas[i].num_frames, metas[i].fps, metas[i].info = info.num_frames, info.fps, info
        for i, m in enumerate(metas):
            if m.error is None:
                H = clip_stride(self.spec, m.fps, self.data_cfg)
                if m.num_frames < H + 1:
                    m.error = DataError(f"clip has {m.num_frames} frames, fewer than the {H + 1} a (t, t+H) pair needs "
                                        f"(H = {H} frames at {m.fps:g} fps)", file=self.clips[i].path, episode=i,
                                        field="video")
        return metas

    # -- EpisodeSource ------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self.clips)

    @cached_property
    def episode_lengths(self) -> np.ndarray:
        """int64 [num_episodes] frames per clip; 0 for unusable clips (never sampled)."""
        return np.array([0 if m.error is not None else m.num_frames for m in self._meta], np.int64)

    @cached_property
    def fingerprint(self) -> str:
        """Hash of annotations + standardization + split + clip lengths: changes when the plan would."""
        return stable_hash({"kind": "video", "v": VIDEO_SOURCE_VERSION, "spec": self.spec.to_dict(),
                            "split": self.entry.split,
                            "annotations": {n: file_digest(f) for n, f in self.annotation_files.items()},
                            "lengths": self.episode_lengths.tolist()})

    def read_episode(self, i: int) -> VideoEpisode:
        if not 0 <= i < len(self.clips):
            raise IndexError(f"{self.name}: episode {i} outside [0, {len(self.clips)})")
        meta, clip = self._meta[i], self.clips[i]
        if meta.error is not None:
            raise meta.error
        T = meta.num_frames
        from_cache = self.cache is not None and clip.key in self.cache
        frames = ClipFrames(clip.key, clip.path, self.data_cfg.image_size, T, i, info=meta.info,
                            cache=self.cache if from_cache else None, memory_bytes=self.memory_bytes)
        empty = np.zeros((T, 0), np.float32)
        return VideoEpisode(image_primary=_NoEncodedFrames(), image_wrist=None, proprio=empty, action=empty.copy(),
                            language=clip.instruction, dataset=self.name, episode=i, file=str(clip.path),
                            key=clip.key, fps=meta.fps, stride=clip_stride(self.spec, meta.fps, self.data_cfg),
                            frames=frames)

    def make_sample(self, episode: VideoEpisode, t: int, source: EpisodeSource, normalizer: Normalizer | None,
                    data_cfg: DataConfig) -> Sample:
        """The per-source sample seam of ``data_service.sampling.reader.SampleReader`` (used instead of
        ``windowing.make_sample``, which assumes actions): see :func:`make_video_sample`."""
        return make_video_sample(episode, t, self, normalizer, data_cfg)

    def statistics(self) -> DatasetStatistics:
        """Zero-dimensional action/proprio statistics (nothing to normalize) + transition counts."""
        empty = ArrayStats.of(np.zeros((0, 0), np.float32))
        lengths = self.episode_lengths
        return DatasetStatistics(empty, empty, int(lengths.sum()), int((lengths > 0).sum()))


def open_video_source(entry: DatasetEntry, spec: DatasetSpec, data_cfg: DataConfig) -> VideoSource:
    """The ``video`` opener of :func:`data_service.sources.open_source`."""
    return VideoSource(entry, spec, data_cfg, annotations=getattr(entry, "annotations", None) or None,
                       frame_cache=getattr(entry, "frame_cache", None) or None)


register_opener("video", open_video_source)


# -- samples -----------------------------------------------------------------------------------


def make_video_sample(episode: VideoEpisode, t: int, source: EpisodeSource, normalizer: Normalizer | None,
                      data_cfg: DataConfig) -> Sample:
    """The sample at frame ``t`` of a clip, in the exact schema of ``data_service.schema``:
    frames t and min(t+H, T-1), no wrist view, zero action/proprio with all-False masks and
    validity, ``has_action`` False. ``sample_id``/``dataset_id`` are -1 (the caller fills them)."""
    T = episode.length
    if not 0 <= t < T:
        raise IndexError(f"{episode.dataset} episode {episode.episode}: t={t} outside [0, {T})")
    if episode.frames is None:
        raise DataError("episode has no frame reader", file=episode.file, episode=episode.episode, field="video")
    frames = episode.frames.read([t, min(t + episode.stride, T - 1)])
    size, N = data_cfg.image_size, data_cfg.action_horizon
    A, P = data_cfg.max_action_dim, data_cfg.max_proprio_dim
    return {
        "sample_id": np.asarray(-1, np.int64),
        "image_primary": np.ascontiguousarray(frames[0].transpose(2, 0, 1)),
        "image_future": np.ascontiguousarray(frames[1].transpose(2, 0, 1)),
        "image_wrist": np.zeros((3, size, size), np.uint8),
        "has_wrist": np.asarray(False),
        "proprio": np.zeros(P, np.float32),
        "proprio_dim_mask": np.zeros(P, bool),
        "action": np.zeros((N, A), np.float32),
        "action_valid": np.zeros(N, bool),
        "action_dim_mask": np.zeros(A, bool),
        "has_action": np.asarray(False),
        "embodiment_id": np.asarray(source.spec.embodiment_id, np.int64),
        "dataset_id": np.asarray(-1, np.int64),
        "language": episode.language,
    }
