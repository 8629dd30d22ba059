"""zarr v3 cache of decoded video frames: random access to any (t, t+H) pair without GOP seeks.

Layout of ``CACHE.zarr``::

    zarr.json          group attrs {format, version, size, crop}
    clips/<name>       uint8 [T, S, S, 3] per clip; chunk = 1 frame, shard = the whole clip
                       (up to ``shard_frames``), so a clip is one file written in one call
                       (zarr cannot write part of a shard) and a frame read touches one chunk
    manifest.jsonl     one line per *completed* clip {key, name, num_frames, fps, source}

A clip counts as cached only once its manifest line exists; the line is appended (and fsynced)
after the clip's shards are written. An interrupted write therefore leaves an array without a
line: the next run overwrites it. One writer at a time (an advisory lock guards the manifest).
Frames are exactly :func:`data_service.video.codec.square_rgb`'s pixels, so cached and direct
decoding agree bit for bit.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lavla.data_service.errors import DataError

try:  # the [video] extra
    import google_crc32c  # a zarr dependency (its crc32c codec)
    import zarr
    from numcodecs import Zstd
    from zarr.codecs import ZstdCodec
except ImportError:  # pragma: no cover
    zarr = None  # type: ignore[assignment]

CACHE_FORMAT = "lavla_frame_cache"
CACHE_VERSION = 1
MANIFEST = "manifest.jsonl"
SHARD_FRAMES = 2048
"""Frames per shard: one shard per clip up to this length (bounds the writer's memory for
hour-long Ego4D videos: 2048 frames of 224x224 are 300 MB)."""
_OPEN_ARRAYS = 64


def _require_zarr() -> None:
    if zarr is None:
        raise ImportError("the frame cache needs zarr v3: pip install 'latent-vla-pretrain[video]'")


@dataclass(frozen=True)
class CachedClip:
    """Manifest record of one completed clip."""

    key: str
    """Clip key (annotation id or path)."""
    name: str
    """Array path inside the cache (``clips/...``)."""
    num_frames: int
    """Frames stored (T)."""
    fps: float
    """Frame rate of the source video."""
    source: str
    """Video file the frames were decoded from (informational)."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def array_name(key: str) -> str:
    """Array path of a clip: readable prefix + hash (keys may hold '/', spaces, ...)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[-60:].lstrip("._") or "clip"
    return f"clips/{safe}-{hashlib.sha1(key.encode('utf-8')).hexdigest()[:12]}"


def read_manifest(path: Path) -> dict[str, CachedClip]:
    """Completed clips; a torn last line (crash mid-append) is ignored, a later line wins."""
    out: dict[str, CachedClip] = {}
    try:
        lines = (path / MANIFEST).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            d = json.loads(line)
            clip = CachedClip(str(d["key"]), str(d["name"]), int(d["num_frames"]), float(d["fps"]),
                              str(d.get("source", "")))
        except (ValueError, KeyError, TypeError):
            continue
        out[clip.key] = clip
    return out


def _check_attrs(path: Path, attrs: dict[str, object]) -> int:
    if attrs.get("format") != CACHE_FORMAT:
        raise DataError(f"not a frame cache (group attribute format={attrs.get('format')!r})", file=path)
    if int(attrs.get("version", -1)) != CACHE_VERSION:  # type: ignore[arg-type]
        raise DataError(f"frame cache version {attrs.get('version')} (this code reads {CACHE_VERSION}); rebuild it",
                        file=path)
    return int(attrs["size"])  # type: ignore[arg-type]


class FrameCacheWriter:
    """Creates or resumes a cache at ``path`` holding ``size`` x ``size`` frames."""

    def __init__(self, path: str | Path, size: int, *, shard_frames: int = SHARD_FRAMES) -> None:
        _require_zarr()
        self.path, self.size, self.shard_frames = Path(path), int(size), int(shard_frames)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / ".lock", "w")  # noqa: SIM115 - held for the writer's lifetime
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._lock.close()
            raise DataError("another process is writing this frame cache", file=self.path) from e
        if (self.path / "zarr.json").exists():
            self.group = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
            have = _check_attrs(self.path, dict(self.group.attrs))
            if have != self.size:
                raise DataError(f"the cache holds {have}px frames, asked for {self.size}px; use another --out",
                                file=self.path)
        else:
            # mode "a", not "w": "w" would empty the directory, lock file included.
            self.group = zarr.open_group(str(self.path), mode="a", zarr_format=3,
                                         attributes={"format": CACHE_FORMAT, "version": CACHE_VERSION,
                                                     "size": self.size, "crop": "center"})
        self.completed = read_manifest(self.path)
        """Clips already in the cache (a rerun skips them)."""

    def write_clip(self, key: str, frames: Iterable[np.ndarray], num_frames: int, fps: float, *,
                   source: str = "") -> CachedClip:
        """Stores ``num_frames`` frames of ``[S, S, 3]`` uint8, then records the clip as complete."""
        S, T = self.size, int(num_frames)
        if T < 1:
            raise DataError("clip has no frames", file=source or None, field="video")
        name = array_name(key)
        shard = min(T, self.shard_frames)
        arr = self.group.create_array(name, shape=(T, S, S, 3), chunks=(1, S, S, 3), shards=(shard, S, S, 3),
                                      dtype="uint8", compressors=ZstdCodec(level=3), overwrite=True,
                                      attributes={"key": key, "fps": float(fps)})
        buf: list[np.ndarray] = []
        n = 0
        for img in frames:
            if n >= T:  # decoders may flush one frame more than the index lists
                break
            if img.shape != (S, S, 3):
                raise DataError(f"frame {n} has shape {img.shape}, expected {(S, S, 3)}", file=source or None,
                                field="video")
            buf.append(img)
            n += 1
            if len(buf) == shard or n == T:  # a whole shard per write call
                arr[n - len(buf):n] = np.stack(buf)
                buf = []
        if n < T:
            raise DataError(f"truncated: decoded {n} of {T} frames", file=source or None, field="video")
        clip = CachedClip(key, name, T, float(fps), source)
        self._append(clip)
        self.completed[key] = clip
        return clip

    def _append(self, clip: CachedClip) -> None:
        with open(self.path / MANIFEST, "a", encoding="utf-8") as f:
            f.write(json.dumps(clip.to_dict(), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> FrameCacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ZarrClip:
    """Generic reader through zarr-python (any layout zarr can read)."""

    def __init__(self, array: Any) -> None:
        self.array = array

    def read(self, idx: np.ndarray) -> np.ndarray:
        return np.stack([self.array[int(i)] for i in idx])

    def read_all(self) -> np.ndarray:
        return np.asarray(self.array[:])


class _ShardClip:
    """Direct reader of the layout this module writes, per the zarr v3 sharding spec: each shard
    file ends with a little-endian uint64 (offset, nbytes) pair per chunk plus a CRC32C of that
    index. Why: zarr-python 3 hands every chunk to its event loop and a thread pool (~0.5-1 ms per
    chunk), which dominates a (t, t+H) sample; reading the index once and the two frames' bytes
    with ``pread`` costs tens of microseconds. Any other layout goes through :class:`_ZarrClip`."""

    _EMPTY = np.uint64(2**64 - 1)

    def __init__(self, array_dir: Path, shape: tuple[int, ...], shard_frames: int) -> None:
        self.dir, self.shape, self.shard_frames = array_dir, shape, shard_frames
        self._index: dict[int, np.ndarray] = {}
        self._zstd = Zstd()

    @staticmethod
    def layout(meta: dict[str, Any]) -> int | None:
        """Frames per shard if ``meta`` (an array's zarr.json) is exactly our layout, else None."""
        try:
            (codec,) = meta["codecs"]
            conf = codec["configuration"]
            S = meta["shape"][1]
            ok = (meta["data_type"] == "uint8" and meta["fill_value"] == 0 and codec["name"] == "sharding_indexed"
                  and meta["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
                  and conf["chunk_shape"] == [1, S, S, 3] and conf["index_location"] == "end"
                  and [c["name"] for c in conf["codecs"]] == ["bytes", "zstd"]
                  and conf["index_codecs"] == [{"name": "bytes", "configuration": {"endian": "little"}},
                                               {"name": "crc32c"}])
            return int(meta["chunk_grid"]["configuration"]["chunk_shape"][0]) if ok else None
        except (KeyError, TypeError, ValueError):
            return None

    def _path(self, k: int) -> Path:
        return self.dir / "c" / str(k) / "0" / "0" / "0"

    def _chunk_index(self, k: int, fd: int) -> np.ndarray:
        index = self._index.get(k)
        if index is None:
            n = self.shard_frames
            size = os.fstat(fd).st_size
            raw = os.pread(fd, 16 * n + 4, size - 16 * n - 4) if size >= 16 * n + 4 else b""
            if len(raw) != 16 * n + 4 or np.uint32(google_crc32c.value(raw[:-4])).tobytes() != raw[-4:]:
                raise ValueError(f"shard {k}: chunk index missing or corrupt (checksum mismatch)")
            index = self._index[k] = np.frombuffer(raw[:-4], "<u8").reshape(n, 2)
        return index

    def _decode(self, raw: bytes) -> np.ndarray:
        return np.frombuffer(self._zstd.decode(raw), np.uint8).reshape(self.shape[1:])

    def read(self, idx: np.ndarray) -> np.ndarray:
        out = np.zeros((len(idx), *self.shape[1:]), np.uint8)
        shards, chunks = np.divmod(idx, self.shard_frames)
        for k in np.unique(shards).tolist():
            fd = os.open(self._path(k), os.O_RDONLY)
            try:
                index = self._chunk_index(k, fd)
                for j in np.flatnonzero(shards == k).tolist():
                    offset, nbytes = index[chunks[j]]
                    if offset != self._EMPTY:  # a never-written chunk is the fill value (zeros)
                        out[j] = self._decode(os.pread(fd, int(nbytes), int(offset)))
            finally:
                os.close(fd)
        return out

    def read_all(self) -> np.ndarray:
        T = self.shape[0]
        out = np.zeros(self.shape, np.uint8)
        for k in range((T + self.shard_frames - 1) // self.shard_frames):
            data = self._path(k).read_bytes()  # one sequential read per shard
            n = self.shard_frames
            if len(data) < 16 * n + 4 or np.uint32(google_crc32c.value(data[-16 * n - 4:-4])).tobytes() != data[-4:]:
                raise ValueError(f"shard {k}: chunk index missing or corrupt (checksum mismatch)")
            index = np.frombuffer(data[-16 * n - 4:-4], "<u8").reshape(n, 2)
            for c in range(min(n, T - k * n)):
                offset, nbytes = index[c]
                if offset != self._EMPTY:
                    out[k * n + c] = self._decode(data[int(offset):int(offset + nbytes)])
        return out


class FrameCache:
    """Read side: frames of completed clips by index (picklable: readers reopen lazily)."""

    def __init__(self, path: str | Path) -> None:
        _require_zarr()
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise DataError("frame cache not found (build it with python -m lavla.data_service.video.prepare)", file=self.path)
        attrs = json.loads((self.path / "zarr.json").read_text(encoding="utf-8")).get("attributes", {})
        self.size = _check_attrs(self.path, attrs)
        """Side of the stored square frames."""
        self.clips = read_manifest(self.path)
        """Completed clips by key."""
        self._readers: OrderedDict[str, _ShardClip | _ZarrClip] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self.clips

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_readers": OrderedDict()}

    def _reader(self, key: str, episode: int | None) -> _ShardClip | _ZarrClip:
        reader = self._readers.get(key)
        if reader is not None:
            self._readers.move_to_end(key)
            return reader
        clip = self.clips.get(key)
        if clip is None:
            raise DataError(f"clip {key!r} is not in the frame cache", file=self.path, episode=episode, field="frames")
        array_dir = self.path / clip.name
        try:
            meta = json.loads((array_dir / "zarr.json").read_text(encoding="utf-8"))
            shard_frames = _ShardClip.layout(meta)
            if shard_frames is not None:
                reader = _ShardClip(array_dir, tuple(meta["shape"]), shard_frames)
            else:
                reader = _ZarrClip(zarr.open_array(str(array_dir), mode="r", zarr_format=3))
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"clip {key!r}: cannot open {clip.name}: {e}", file=self.path, episode=episode,
                            field="frames") from e
        self._readers[key] = reader
        if len(self._readers) > _OPEN_ARRAYS:
            self._readers.popitem(last=False)
        return reader

    def read(self, key: str, indices: np.ndarray | list[int], *, episode: int | None = None) -> np.ndarray:
        """uint8 ``[n, S, S, 3]`` frames at ``indices`` (one chunk read each)."""
        reader = self._reader(key, episode)
        idx = np.asarray(indices, np.int64)
        T = self.clips[key].num_frames
        if ((idx < 0) | (idx >= T)).any():
            raise DataError(f"frame index outside the cached clip's {T} frames: {idx.tolist()}", file=self.path,
                            episode=episode, field="frames")
        try:
            return reader.read(idx)
        except (OSError, ValueError, RuntimeError) as e:
            raise DataError(f"clip {key!r}: cannot read frames {idx.tolist()}: {e}",
                            file=self.path / self.clips[key].name,
                            episode=episode, field="frames") from e

    def read_all(self, key: str, *, episode: int | None = None) -> np.ndarray:
        """All frames of a clip ``[T, S, S, 3]``."""
        reader = self._reader(key, episode)
        try:
            return reader.read_all()
        except (OSError, ValueError, RuntimeError) as e:
            raise DataError(f"clip {key!r}: cannot read: {e}", file=self.path / self.clips[key].name, episode=episode,
                            field="frames") from e
