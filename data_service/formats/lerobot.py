"""LeRobot datasets (v2.1 and v3.0) as an episode source, read with pyarrow and PyAV only.

No ``lerobot`` or torchvision import at run time. The layouts (``meta/info.json`` names the version):

* **v2.1**: one parquet per episode (``data_path``, formatted with ``episode_chunk`` and
  ``episode_index``) and one mp4 per episode and camera (``video_path``); ``meta/episodes.jsonl``
  (episode_index, tasks, length) and ``meta/tasks.jsonl`` (task_index, task).
* **v3.0**: many episodes per parquet and per mp4 (``data/chunk-XXX/file-YYY.parquet``,
  ``videos/<camera>/chunk-XXX/file-YYY.mp4``); ``meta/episodes/**.parquet`` holds each episode's
  file indices, its ``dataset_from_index``/``dataset_to_index`` rows and, per camera,
  ``from_timestamp``/``to_timestamp`` in the concatenated video; ``meta/tasks.parquet`` maps task
  strings to indices.

An episode is standardized through its spec like an RLDS one (``data_service.datasets.standardize``): the
spec's keys are LeRobot feature names (``observation.state``, ``action``,
``observation.images.<camera>``), and ``language_key: task`` takes the episode's task string. Frames
come from the video at the model's size, by timestamp (frame ``i`` of an episode is at
``from_timestamp + i / fps``); image features stored in the parquet (``dtype: image``) are decoded
from their PNG/JPEG bytes. Splits are ``info.json``'s episode ranges, sliced like TFDS
(``train[:90%]``). Statistics are computed the project's way over the standardized actions and
proprio; LeRobot's own ``meta/stats.json`` is never used (a test compares the two).

Bad input (a missing parquet or video, a parquet whose rows disagree with the episode table, a
column missing, non-finite values) raises DataError naming the file, episode and field.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lavla.data_service.cache import stable_hash
from lavla.data_service.config import DataConfig, DatasetEntry
from lavla.data_service.errors import DataError
from lavla.data_service.datasets.registry import DatasetSpec
from lavla.data_service.formats.rlds import RawEpisode
from lavla.data_service.formats.splits import resolve_split
from lavla.data_service.datasets.standardize import StandardEpisode, standardize
from lavla.data_service.stats import DatasetStatistics, cached_statistics, compute_statistics

log = logging.getLogger(__name__)

__all__ = ["LeRobotEpisodeRow", "LeRobotSource", "is_lerobot_root", "read_lerobot_info"]

TASK_KEY = "task"
"""The spec's ``language_key`` that reads the episode's task string."""
LEROBOT_READER_VERSION = 1
"""Bump when this reader changes meaning (part of the fingerprint and the statistics key)."""


def is_lerobot_root(path: str | Path) -> bool:
    return (Path(path) / "meta" / "info.json").is_file()


def read_lerobot_info(root: Path) -> dict[str, Any]:
    f = root / "meta" / "info.json"
    try:
        info = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read LeRobot metadata: {e}", file=f) from e
    version = str(info.get("codebase_version", ""))
    if not version.startswith(("v2.", "v3.")):
        raise DataError(f"unsupported LeRobot codebase_version {version!r} (this reader knows v2.1 and v3.0)",
                        file=f, field="codebase_version")
    for k in ("fps", "features", "data_path"):
        if k not in info:
            raise DataError("missing field", file=f, field=k)
    return info


@dataclass(frozen=True)
class LeRobotEpisodeRow:
    """Where one episode lives (from ``meta/episodes``)."""

    index: int
    """LeRobot episode_index."""
    length: int
    """Frames."""
    tasks: tuple[str, ...]
    """Task strings of the episode (the first is its instruction)."""
    data_file: str
    """Parquet (relative to the root) holding its rows."""
    row_from: int
    """Global row index (``index`` column) of its first frame."""
    videos: tuple[tuple[str, str, float], ...]
    """Per video camera: (feature key, mp4 relative to the root, timestamp of its first frame)."""


def _episode_rows(root: Path, info: dict[str, Any]) -> list[LeRobotEpisodeRow]:
    cams = [k for k, f in info["features"].items() if f.get("dtype") == "video"]
    chunks = int(info.get("chunks_size", 1000))
    if str(info["codebase_version"]).startswith("v3."):
        import pyarrow.parquet as pq

        files = sorted((root / "meta" / "episodes").rglob("*.parquet"))
        if not files:
            raise DataError("no episode table (meta/episodes/**/*.parquet)", file=root / "meta" / "episodes")
        rows = []
        for f in files:
            t = pq.read_table(f)
            cols = set(t.column_names)
            need = ["episode_index", "length", "tasks", "data/chunk_index", "data/file_index", "dataset_from_index"]
            need += [f"videos/{c}/{k}" for c in cams for k in ("chunk_index", "file_index", "from_timestamp")]
            missing = [c for c in need if c not in cols]
            if missing:
                raise DataError(f"episode table lacks columns {missing}", file=f, field=missing[0])
            for r in t.select(need).to_pylist():
                data = info["data_path"].format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"])
                vids = tuple((c, info["video_path"].format(video_key=c, chunk_index=r[f"videos/{c}/chunk_index"],
                                                           file_index=r[f"videos/{c}/file_index"]),
                              float(r[f"videos/{c}/from_timestamp"])) for c in cams)
                rows.append(LeRobotEpisodeRow(int(r["episode_index"]), int(r["length"]), tuple(r["tasks"] or ()),
                                              data, int(r["dataset_from_index"]), vids))
    else:
        f = root / "meta" / "episodes.jsonl"
        try:
            lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read the episode table: {e}", file=f) from e
        rows, start = [], 0
        for r in sorted(lines, key=lambda r: int(r["episode_index"])):
            e = int(r["episode_index"])
            data = info["data_path"].format(episode_chunk=e // chunks, episode_index=e)
            vids = tuple((c, info["video_path"].format(episode_chunk=e // chunks, video_key=c, episode_index=e), 0.0)
                         for c in cams)
            rows.append(LeRobotEpisodeRow(e, int(r["length"]), tuple(r.get("tasks") or ()), data, start, vids))
            start += int(r["length"])
    rows.sort(key=lambda r: r.index)
    return rows


class EpisodeVideoFrames(Sequence):  # type: ignore[type-arg]
    """The frames of one episode of one camera, decoded on demand at ``size`` (uint8 HWC arrays).

    Indexable like an RLDS episode's list of encoded frames (``windowing`` calls
    ``decode_image(frames[i])``, which passes arrays through); the whole segment is decoded once
    when it fits ``memory_bytes``, else frames are read by seeking."""

    def __init__(self, path: Path, start_s: float, length: int, size: int, episode: int, key: str,
                 memory_bytes: int = 64 << 20, lo: int = 0, hi: int | None = None) -> None:
        self.path, self.start_s, self.length, self.size = path, start_s, length, size
        self.episode, self.key, self.memory_bytes = episode, key, memory_bytes
        self.lo, self.hi = lo, length if hi is None else hi
        self._all: np.ndarray | None = None
        self._info: Any = None

    def __len__(self) -> int:
        return max(0, self.hi - self.lo)

    def _segment_info(self) -> Any:
        """The video's probe, re-based so frame 0 is the episode's first (v3.0: ``from_timestamp``)."""
        if self._info is None:
            from lavla.data_service.video.codec import probe

            info = probe(self.path, episode=self.episode)
            num, den = info.time_base
            first = round(self.start_s * info.fps)
            if first + self.length > info.num_frames:
                raise DataError(f"the video holds {info.num_frames} frames, the episode needs frames "
                                f"{first}..{first + self.length - 1}", file=self.path, episode=self.episode,
                                field=self.key)
            start = info.start_pts + round(self.start_s * den / num)
            self._info = replace(info, start_pts=start, num_frames=self.length)
        return self._info

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 ``[n, size, size, 3]`` frames at ``indices`` (relative to this view)."""
        from lavla.data_service.video.codec import read_frames

        idx = np.asarray(indices, np.int64)
        if ((idx < 0) | (idx >= len(self))).any():
            raise IndexError(f"frame {idx.tolist()} outside the episode's {len(self)} frames")
        idx = idx + self.lo
        if self.length * self.size * self.size * 3 <= self.memory_bytes:
            if self._all is None:
                self._all = read_frames(self.path, np.arange(self.length), self.size, self._segment_info(),
                                        episode=self.episode)
            return self._all[idx]
        return read_frames(self.path, idx, self.size, self._segment_info(), episode=self.episode)

    def __getitem__(self, i):  # type: ignore[no-untyped-def, override]
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                raise ValueError("episode frames slice contiguously only")
            view = EpisodeVideoFrames(self.path, self.start_s, self.length, self.size, self.episode, self.key,
                                      self.memory_bytes, self.lo + start, self.lo + max(start, stop))
            view._all, view._info = self._all, self._info
            return view
        return self.read([int(i)])[0]

    def __getstate__(self) -> dict[str, Any]:  # decoded frames stay in the process that decoded them
        return {**self.__dict__, "_all": None}


class LeRobotSource:
    """A LeRobot v2.1/v3.0 dataset split, standardized per its spec (``EpisodeSource``)."""

    def __init__(self, entry: DatasetEntry, spec: DatasetSpec, data_cfg: DataConfig) -> None:
        self.name, self.spec, self.entry, self.data_cfg = entry.name, spec, entry, data_cfg
        try:
            import av  # noqa: F401
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise ImportError(f"{entry.name}: LeRobot datasets need pyarrow and PyAV: "
                              "pip install 'latent-vla-pretrain[lerobot]'") from e
        self.root = Path(entry.path)
        self.split = entry.split
        self.strict = data_cfg.on_bad_sample == "error"
        self.info = read_lerobot_info(self.root)
        self.rows = _episode_rows(self.root, self.info)
        feats = self.info["features"]
        for key in (spec.image_primary_key, spec.image_wrist_key):
            if key and key not in feats:
                raise DataError(f"{self.name}: camera not among the LeRobot features (available: "
                                f"{sorted(k for k, f in feats.items() if f.get('dtype') in ('video', 'image'))})",
                                file=self.root / "meta" / "info.json", field=key)
        if self.num_episodes == 0:
            raise DataError(f"split {self.split!r} selects no episodes", file=self.root)

    # -- splits ------------------------------------------------------------------------------

    @cached_property
    def _split_sizes(self) -> dict[str, list[int]]:
        """Episodes per split name, as ``resolve_split`` wants (one "shard" per split)."""
        splits = self.info.get("splits") or {"train": f"0:{len(self.rows)}"}
        out = {}
        for name, rng in splits.items():
            lo, hi = (int(x) for x in str(rng).split(":"))
            out[name] = [hi - lo]
        return out

    @cached_property
    def _selected(self) -> list[LeRobotEpisodeRow]:
        splits = self.info.get("splits") or {"train": f"0:{len(self.rows)}"}
        by_index = {r.index: r for r in self.rows}
        out = []
        for sr in resolve_split(self.split, self._split_sizes):
            lo = int(str(splits[sr.split]).split(":")[0])
            for e in range(lo + sr.start, lo + sr.stop):
                if e not in by_index:
                    raise DataError(f"split {sr.split} lists episode {e}, the episode table does not",
                                    file=self.root / "meta", episode=e)
                out.append(by_index[e])
        return out

    @property
    def num_episodes(self) -> int:
        return len(self._selected)

    @cached_property
    def episode_lengths(self) -> np.ndarray:
        lengths = np.array([r.length for r in self._selected], np.int64) - self.spec.drop_first_steps - self.spec.drop_last_steps
        return np.maximum(lengths, 0).astype(np.int64)

    def _standardization_key(self) -> dict[str, object]:
        meta = {"info": {k: v for k, v in self.info.items() if k != "splits"},
                "episodes": [(r.index, r.length, r.data_file, r.row_from, r.videos, r.tasks) for r in self.rows]}
        return {"metadata": stable_hash(meta), "spec": self.spec.to_dict(), "v": LEROBOT_READER_VERSION}

    @cached_property
    def fingerprint(self) -> str:
        return stable_hash({**self._standardization_key(), "split": self.split, "format": "lerobot"})

    # -- reading -----------------------------------------------------------------------------

    def _columns(self) -> list[str]:
        parts = [*self.spec.action_keys, *self.spec.proprio_keys]
        keys = {p.split("[")[0].split(":")[-1] for p in parts if not p.startswith(("zeros:", "ones:"))}
        feats = self.info["features"]
        for key in (self.spec.image_primary_key, self.spec.image_wrist_key):
            if key and feats.get(key, {}).get("dtype") == "image":
                keys.add(key)
        return sorted(keys | {"episode_index", "frame_index", "index", "task_index"})

    def _rows_of(self, row: LeRobotEpisodeRow, episode: int) -> dict[str, Any]:
        import pyarrow.parquet as pq

        f = self.root / row.data_file
        if not f.is_file():
            raise DataError("parquet file not found", file=f, episode=episode, field="data")
        try:
            table = pq.read_table(f, columns=self._columns(), filters=[("episode_index", "=", row.index)])
        except (OSError, ValueError, KeyError) as e:
            missing = [c for c in self._columns() if c not in pq.read_schema(f).names] if f.is_file() else []
            raise DataError(f"cannot read rows: {e}", file=f, episode=episode,
                            field=missing[0] if missing else "data") from e
        table = table.sort_by("frame_index")
        if table.num_rows != row.length:
            raise DataError(f"{table.num_rows} rows, the episode table says {row.length}", file=f, episode=episode,
                            field="episode_index")
        frames = np.asarray(table["frame_index"].to_numpy())
        if not np.array_equal(frames, np.arange(row.length)):
            raise DataError("frame_index is not 0..length-1", file=f, episode=episode, field="frame_index")
        return {name: table[name] for name in table.column_names}

    def _raw(self, i: int) -> RawEpisode:
        row = self._selected[i]
        cols = self._rows_of(row, i)
        steps: dict[str, Any] = {}
        feats = self.info["features"]
        for name, col in cols.items():
            if feats.get(name, {}).get("dtype") == "image":
                steps[name] = [v["bytes"] if isinstance(v, dict) else v for v in col.to_pylist()]
            elif name not in ("episode_index", "frame_index", "index", "task_index"):
                arr = np.asarray(col.to_pylist(), np.float32)
                steps[name] = arr.reshape(row.length, -1)
        task = (row.tasks[0] if row.tasks else self._task_of(int(cols["task_index"][0].as_py()))).encode("utf-8")
        steps[TASK_KEY] = [task] * row.length
        size = self.data_cfg.image_size
        for key, rel, start in row.videos:
            if key in (self.spec.image_primary_key, self.spec.image_wrist_key):
                path = self.root / rel
                if not path.is_file():
                    raise DataError("video file not found", file=path, episode=i, field=key)
                steps[key] = EpisodeVideoFrames(path, start, row.length, size, i, key)
        return RawEpisode(steps, {}, row.length, self.root / row.data_file, row.index, i)

    @cached_property
    def _tasks(self) -> dict[int, str]:
        if str(self.info["codebase_version"]).startswith("v3."):
            import pyarrow.parquet as pq

            t = pq.read_table(self.root / "meta" / "tasks.parquet").to_pylist()
            name = next((k for k in (t[0] if t else {}) if k != "task_index"), "task")
            return {int(r["task_index"]): str(r[name]) for r in t}
        f = self.root / "meta" / "tasks.jsonl"
        return {int(r["task_index"]): str(r["task"]) for r in (json.loads(x) for x in f.read_text().splitlines() if x.strip())}

    def _task_of(self, index: int) -> str:
        return self._tasks.get(index, "")

    def read_episode(self, i: int) -> StandardEpisode:
        return standardize(self._raw(i), self.spec)

    def statistics(self) -> DatasetStatistics:
        """The project's statistics over every episode of the dataset (all splits), from the parquet
        rows only (no video is decoded)."""
        def compute() -> DatasetStatistics:
            from lavla.data_service.sources import standardized_actions

            whole = LeRobotSource(replace(self.entry, split="+".join(self._split_sizes)), self.spec, self.data_cfg)
            reads = (functools.partial(whole._raw, i) for i in range(whole.num_episodes))
            return compute_statistics(standardized_actions(reads, self.spec, self.name, self.strict),
                                      total=len(self.rows), desc=f"statistics {self.name}")

        return cached_statistics(self.root, self._standardization_key(), compute)


def open_lerobot_source(entry: DatasetEntry, spec: DatasetSpec, data_cfg: DataConfig) -> LeRobotSource:
    """The ``lerobot`` opener of :func:`data_service.sources.open_source`."""
    return LeRobotSource(entry, spec, data_cfg)


def _register() -> None:
    from lavla.data_service.sources import register_opener

    register_opener("lerobot", open_lerobot_source)


_register()
