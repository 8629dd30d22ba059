"""Video files with PyAV: probe, decode frames by index, encode (fixtures, synthetic videos).

Frame ``i`` of a clip is the i-th frame in presentation order. Random access maps it to a
timestamp, ``start_pts + i / fps`` (in the stream's time base), seeks to the keyframe before it
and decodes forward, so streams that do not start at PTS 0 (Ego4D: the container and its streams
start at different times) decode the right frame. The mapping assumes a constant frame rate, which
holds for SSv2/Ego4D and our own encodes.

Every decoded frame becomes a square uint8 RGB image: the short side is scaled to ``size``
(area filter, so downscaling does not alias) and the centre is cropped, so wide egocentric frames
are not squashed. The frame cache (``zarr_cache``) stores exactly these pixels.

A file that cannot be opened, has no video stream, is truncated (its index lists more frames than
can be read) or fails mid-decode raises :class:`DataError` naming the file and the frame.
"""

from __future__ import annotations

import fractions
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lavla.data_service.errors import DataError

try:  # the [video] extra
    import av
    from av.video.reformatter import VideoReformatter
except ImportError:  # pragma: no cover - exercised only without the extra
    av = None  # type: ignore[assignment]

DECODE_THREADS = 1
"""Codec threads per decoder: parallelism comes from decode workers, one core each, so extra
codec threads would only oversubscribe the CPUs (PyAV's defaults do)."""
SEEK_GAP = 32
"""Decode forward through a gap of up to this many frames rather than seeking again."""

_AV_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, IndexError, RuntimeError)
# av.error.FFmpegError subclasses OSError/ValueError (per errno), so these cover PyAV's errors too.


def require_av() -> None:
    if av is None:
        raise ImportError("human video needs PyAV: pip install 'latent-vla-pretrain[video]' (av>=14, zarr>=3)")


@dataclass(frozen=True)
class VideoInfo:
    """What probing a video file found; enough to map frame indices to timestamps."""

    num_frames: int
    """Readable frames (packets of the video stream, without discarded ones)."""
    fps: float
    """Average frame rate (frames per second)."""
    start_pts: int
    """PTS of the first frame in ``time_base`` units (nonzero for e.g. Ego4D)."""
    time_base: tuple[int, int]
    """Stream time base as (numerator, denominator)."""
    width: int
    """Coded frame width in pixels."""
    height: int
    """Coded frame height in pixels."""

    def pts_of(self, index: float) -> int:
        """Timestamp (stream units) of frame ``index`` (fractional indices allowed)."""
        num, den = self.time_base
        return self.start_pts + int(np.floor(index / self.fps * den / num))

    def index_of(self, pts: int) -> int:
        """Frame index of a decoded frame's timestamp (nearest frame)."""
        num, den = self.time_base
        return int(round((pts - self.start_pts) * num / den * self.fps))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> VideoInfo:
        tb = d["time_base"]
        return cls(int(d["num_frames"]), float(d["fps"]), int(d["start_pts"]),  # type: ignore[arg-type]
                   (int(tb[0]), int(tb[1])), int(d["width"]), int(d["height"]))  # type: ignore[index]


def _open(path: Path, episode: int | None) -> tuple[object, object]:
    require_av()
    try:
        container = av.open(str(path))
    except _AV_ERRORS as e:
        reason = "file not found" if isinstance(e, FileNotFoundError) else f"cannot open video: {e}"
        raise DataError(reason, file=path, episode=episode, field="video") from e
    if not container.streams.video:
        container.close()
        raise DataError("no video stream in the file", file=path, episode=episode, field="video")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = DECODE_THREADS
    return container, stream


def probe(path: str | Path, *, episode: int | None = None) -> VideoInfo:
    """Counts the frames by demuxing (no decoding: cheap) and reads the rate and first PTS."""
    path = Path(path)
    container, stream = _open(path, episode)
    try:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or float(rate) <= 0:
            raise DataError("unknown frame rate", file=path, episode=episode, field="video")
        count, discarded, first = 0, 0, None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end
                    continue
                if packet.is_discard:  # dropped by an edit list: never presented
                    discarded += 1
                    continue
                count += 1
                if packet.pts is not None and (first is None or packet.pts < first):
                    first = packet.pts
        except _AV_ERRORS as e:
            raise DataError(f"unreadable after {count} frames (truncated or corrupt): {e}",
                            file=path, episode=episode, field="video") from e
        if stream.frames and count + discarded < stream.frames:
            raise DataError(f"truncated: the container lists {stream.frames} frames, only {count} are readable",
                            file=path, episode=episode, field="video")
        if count == 0:
            raise DataError("no frames", file=path, episode=episode, field="video")
        tb = stream.time_base or fractions.Fraction(1, 1)
        return VideoInfo(count, float(rate), int(first or 0), (tb.numerator, tb.denominator),
                         int(stream.codec_context.width), int(stream.codec_context.height))
    finally:
        container.close()


def square_rgb(frame: object, size: int, reformatter: object | None = None) -> np.ndarray:
    """Decoded frame -> uint8 ``[size, size, 3]``: short side scaled to ``size``, centre crop.

    Pass one ``VideoReformatter`` for all frames of a clip: it keeps the
    swscale context, which ``frame.reformat`` rebuilds per call (10x slower on small frames)."""
    w, h = frame.width, frame.height  # type: ignore[attr-defined]
    scale = size / min(w, h)
    nw, nh = max(size, int(round(w * scale))), max(size, int(round(h * scale)))
    r = reformatter if reformatter is not None else VideoReformatter()
    rgb = r.reformat(frame, width=nw, height=nh, format="rgb24", interpolation="AREA").to_ndarray()  # type: ignore
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(rgb[top:top + size, left:left + size])


def iter_frames(path: str | Path, size: int, *, episode: int | None = None) -> Iterator[np.ndarray]:
    """Every frame in order (sequential decode: no seeks), as ``[size, size, 3]`` uint8."""
    path = Path(path)
    container, stream = _open(path, episode)
    reformatter = VideoReformatter()
    i = 0
    try:
        for frame in container.decode(stream):
            yield square_rgb(frame, size, reformatter)
            i += 1
    except _AV_ERRORS as e:
        raise DataError(f"frame {i}: decode failed (truncated or corrupt): {e}", file=path, episode=episode,
                        field="video") from e
    finally:
        container.close()


def read_all(path: str | Path, size: int, info: VideoInfo, *, episode: int | None = None) -> np.ndarray:
    """All ``info.num_frames`` frames ``[T, size, size, 3]``; DataError if fewer decode."""
    frames = np.empty((info.num_frames, size, size, 3), np.uint8)
    n = 0
    for img in iter_frames(path, size, episode=episode):
        if n < info.num_frames:  # a decoder may flush an extra frame; the probe's count rules
            frames[n] = img
        n += 1
    if n < info.num_frames:
        raise DataError(f"truncated: decoded {n} of {info.num_frames} frames", file=path, episode=episode, field="video")
    return frames


def read_frames(path: str | Path, indices: Sequence[int] | np.ndarray, size: int, info: VideoInfo, *,
                episode: int | None = None) -> np.ndarray:
    """Frames at ``indices`` (any order, repeats allowed) ``[n, size, size, 3]``, by seeking.

    Sorted unique targets are decoded in runs: one seek per run, forward decoding through gaps of
    up to :data:`SEEK_GAP` frames."""
    path = Path(path)
    idx = np.asarray(indices, np.int64)
    bad = idx[(idx < 0) | (idx >= info.num_frames)]
    if bad.size:
        raise DataError(f"frame {int(bad[0])} outside the clip's {info.num_frames} frames", file=path,
                        episode=episode, field="video")
    wanted = np.unique(idx)
    found: dict[int, np.ndarray] = {}
    container, stream = _open(path, episode)
    try:
        runs: list[list[int]] = []
        for i in wanted.tolist():
            if runs and i - runs[-1][-1] <= SEEK_GAP:
                runs[-1].append(i)
            else:
                runs.append([i])
        reformatter = VideoReformatter()
        for run in runs:
            _decode_run(container, stream, info, run, size, found, path, episode, reformatter)
    finally:
        container.close()
    return np.stack([found[int(i)] for i in idx])


def _decode_run(container: object, stream: object, info: VideoInfo, run: list[int], size: int,
                found: dict[int, np.ndarray], path: Path, episode: int | None, reformatter: object) -> None:
    first, last = run[0], run[-1]
    need = set(run)
    # Seek half a frame early: the keyframe at or before frame `first`, robust to PTS rounding.
    for target in (info.pts_of(first - 0.5), None):  # second try: from the very start of the stream
        try:
            if target is None:
                container.seek(0, stream=stream, backward=True, any_frame=False)  # type: ignore[attr-defined]
            else:
                container.seek(max(target, info.start_pts), stream=stream, backward=True)  # type: ignore[attr-defined]
            overshot = False
            n_decoded = 0
            for frame in container.decode(stream):  # type: ignore[attr-defined]
                pts = frame.pts if frame.pts is not None else frame.dts
                i = info.index_of(pts) if pts is not None else -1
                if n_decoded == 0 and i > first:
                    overshot = True  # the seek landed after the target (inexact index); retry from 0
                    break
                n_decoded += 1
                if i in need:
                    found[i] = square_rgb(frame, size, reformatter)
                    need.discard(i)
                if not need:
                    return
                if i >= last:
                    break  # past the run without some targets: their timestamps are missing
        except _AV_ERRORS as e:
            raise DataError(f"frame {first}: decode failed (truncated or corrupt): {e}", file=path, episode=episode,
                            field="video") from e
        if not overshot:
            break
    missing = sorted(need)
    raise DataError(f"frame {missing[0]} not found: the stream ended or skips it (truncated, or a variable frame "
                    f"rate; the clip has {info.num_frames} frames by its index)",
                    file=path, episode=episode, field="video")


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float, *, codec: str = "libx264",
                gop: int = 2, start_pts: int = 0, crf: int | None = None, faststart: bool = False) -> Path:
    """Encodes uint8 ``[H, W, 3]`` RGB frames (even H and W) to ``path`` (mp4/webm by suffix).

    ``gop`` is the keyframe interval: short GOPs keep random access cheap (LeRobot uses 2).
    ``start_pts`` shifts the stream's first timestamp (in frames) to mimic Ego4D-style offsets.
    Single-threaded encoding keeps the bytes deterministic."""
    require_av()
    path = Path(path)
    rate = fractions.Fraction(fps).limit_denominator(1001)
    container = av.open(str(path), "w", options={"movflags": "+faststart"} if faststart else {})
    try:
        stream = None
        for i, img in enumerate(frames):
            if stream is None:
                h, w = img.shape[:2]
                if h % 2 or w % 2:
                    raise ValueError(f"{path}: frames are {w}x{h}; yuv420p video needs even sides")
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                opts = {"g": str(gop), "threads": "1"}
                if codec == "libx264":
                    opts.update({"preset": "veryfast", "crf": str(18 if crf is None else crf)})
                elif crf is not None:
                    opts["crf"] = str(crf)
                stream.options = opts
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = start_pts + i, 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        if stream is None:
            raise ValueError(f"{path}: no frames to encode")
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return path
