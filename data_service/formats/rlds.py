"""RLDS reader for the TFDS on-disk layout, without TensorFlow.

``RLDSDataset(path)`` reads ``dataset_info.json`` (splits, episodes per shard) and
``features.json`` (shape/dtype/encoding of every leaf), resolves TFDS split expressions
(``train[:95%]``), and returns one episode at a time as raw arrays, images still encoded.

TFDS metadata has episodes per shard but not steps per episode, so the first use of a split walks
its shards once and caches an index (record byte offsets + step counts) as JSON keyed by a hash of
the shard files' names, sizes and mtimes; later reads are one seek per episode.

A corrupt record does not poison the split: the index marks it bad (length 0, so a sample plan
never draws from it) and keeps the reason. ``strict=True`` (``on_bad_sample: error``) raises the
first such problem as a DataError; ``strict=False`` logs it and reads the rest.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lavla.data_service.cache import cache_candidates, load_json_cache, stable_hash, store_json_cache
from lavla.data_service.errors import DataError
from lavla.data_service.formats.example_proto import FeatureValue, decode_example
from lavla.data_service.formats.splits import SplitRange, resolve_split
from lavla.data_service.formats.tfds_meta import DatasetInfo, FeatureSpec, parse_dataset_info, parse_features, read_json
from lavla.data_service.formats.tfrecord import iter_records, read_record_at

log = logging.getLogger(__name__)

INDEX_VERSION = 2
_COUNT_PRIORITY = ("steps/is_first", "steps/is_last", "steps/reward", "steps/discount", "steps/action")


@dataclass
class RawEpisode:
    """One episode as stored: step features stacked over T, images/text as bytes."""

    steps: dict[str, np.ndarray | list[bytes]]
    """Flat step key -> ``[T, *shape]`` array (numeric) or list of T bytes (images, text)."""
    metadata: dict[str, np.ndarray | list[bytes]]
    """Episode-level features (e.g. ``episode_metadata/file_path``), as stored."""
    length: int
    """Number of steps T."""
    file: Path
    """Shard file holding the episode."""
    record: int
    """Record index of the episode within ``file``."""
    episode: int
    """Index of the episode within the split expression it was read through."""


@dataclass(frozen=True)
class ShardIndex:
    """Per-shard index: where each episode starts and how many steps it has."""

    file: Path
    """Shard path."""
    offsets: np.ndarray
    """int64 byte offset of each record."""
    lengths: np.ndarray
    """int64 step count of each record (0 for bad records)."""
    bad: dict[int, str]
    """Record index -> why it is unreadable (CRC, truncation, parse error)."""

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file.name, "offsets": self.offsets.tolist(), "lengths": self.lengths.tolist(),
                "bad": {str(k): v for k, v in self.bad.items()}}

    @classmethod
    def from_dict(cls, root: Path, d: dict[str, object]) -> ShardIndex:
        return cls(root / str(d["file"]), np.asarray(d["offsets"], np.int64), np.asarray(d["lengths"], np.int64),
                   {int(k): str(v) for k, v in dict(d.get("bad", {})).items()})  # type: ignore[arg-type]


def _decode_numeric(spec: FeatureSpec, value: FeatureValue, n: int | None) -> np.ndarray:
    """Stored values -> ``[n, *shape]`` (step features) or ``shape`` array of ``spec.dtype``."""
    if spec.encoding in ("bytes", "zlib"):
        items = value if isinstance(value, list) else []
        dtype = np.dtype(spec.dtype)
        try:
            arrs = [np.frombuffer(zlib.decompress(b) if spec.encoding == "zlib" else b, dtype=dtype) for b in items]
        except (zlib.error, ValueError) as e:
            raise DataError(f"cannot decode {spec.encoding}-encoded {spec.dtype} tensor: {e}", field=spec.key) from e
        flat = np.concatenate(arrs) if arrs else np.zeros(0, dtype)
    else:
        if isinstance(value, list):
            raise DataError(f"stored as bytes, features.json says {spec.dtype}", field=spec.key)
        flat = value
    shape = tuple(spec.shape)
    lead = (n,) if n is not None else ()
    full = lead + shape
    if -1 in full:  # one unknown dim (TFDS allows None dims): infer it
        if full.count(-1) > 1:
            raise DataError(f"cannot infer shape {full} from {flat.size} values", field=spec.key)
        known = math.prod(d for d in full if d != -1)
        full = tuple(flat.size // known if d == -1 and known else d for d in full)
    if math.prod(full) != flat.size:
        raise DataError(f"wrong shape: {flat.size} values, expected {full} from features.json", field=spec.key)
    arr = flat.reshape(full)
    if spec.dtype == "bool":
        return arr.astype(bool)
    if spec.dtype != "string" and arr.dtype != np.dtype(spec.dtype):
        return arr.astype(spec.dtype)
    return arr


class RLDSDataset:
    """A TFDS-layout RLDS dataset directory (``<data_dir>/<name>/<version>``)."""

    def __init__(self, path: str | Path, *, strict: bool = True) -> None:
        self.path = Path(path)
        self.strict = strict
        info_path, feat_path = self.path / "dataset_info.json", self.path / "features.json"
        self._info_raw = read_json(info_path)
        self._features_raw = read_json(feat_path)
        self.info: DatasetInfo = parse_dataset_info(self._info_raw, source=info_path)
        self.features: dict[str, FeatureSpec] = parse_features(self._features_raw, source=feat_path)
        self._index: dict[str, list[ShardIndex]] = {}

    # -- metadata ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def version(self) -> str:
        return self.info.version

    @property
    def splits(self) -> list[str]:
        return list(self.info.splits)

    @property
    def step_features(self) -> dict[str, FeatureSpec]:
        return {k: f for k, f in self.features.items() if f.in_steps}

    def metadata_hash(self) -> str:
        """Hash of dataset_info.json + features.json content (identifies the dataset's schema/splits)."""
        return stable_hash([self._info_raw, self._features_raw])

    def shard_paths(self, split: str) -> list[Path]:
        if split not in self.info.splits:
            raise DataError(f"unknown split {split!r}; available: {self.splits}", file=self.path / "dataset_info.json")
        return [self.path / f for f in self.info.splits[split].shard_filenames(self.name)]

    def resolve(self, split: str) -> list[SplitRange]:
        """TFDS split expression -> absolute ranges (metadata only, no file access)."""
        try:
            return resolve_split(split, {s: list(i.shard_lengths) for s, i in self.info.splits.items()})
        except ValueError as e:
            raise DataError(str(e), file=self.path) from e

    def num_episodes(self, split: str) -> int:
        return sum(len(r) for r in self.resolve(split))

    # -- index ---------------------------------------------------------------------------------

    def _files_fingerprint(self, split: str) -> str:
        stats = []
        for p in self.shard_paths(split):
            try:
                st = p.stat()
            except FileNotFoundError as e:
                raise DataError("shard file listed in dataset_info.json is missing", file=p) from e
            stats.append([p.name, st.st_size, st.st_mtime_ns])
        return stable_hash({"v": INDEX_VERSION, "files": stats, "info": self._info_raw})

    def split_index(self, split: str) -> list[ShardIndex]:
        """The (cached) index of every shard of ``split`` (a plain split name, no slicing)."""
        if split in self._index:
            return self._index[split]
        fingerprint = self._files_fingerprint(split)
        candidates = cache_candidates(self.path, f".lavla_episode_index.{split}.json")
        cached = load_json_cache(candidates, fingerprint)
        if cached is not None:
            shards = [ShardIndex.from_dict(self.path, s) for s in cached["shards"]]
        else:
            shards = [self._index_shard(p, n) for p, n in zip(self.shard_paths(split), self.info.splits[split].shard_lengths)]
            store_json_cache(candidates, {"fingerprint": fingerprint, "shards": [s.to_dict() for s in shards]})
        self._index[split] = shards
        bad = self._bad_errors(split, shards)
        if bad:
            if self.strict:
                raise bad[0]
            log.warning("%s split %r: %d unreadable episodes are skipped; first: %s", self.path, split, len(bad), bad[0])
        return shards

    def _bad_errors(self, split: str, shards: list[ShardIndex]) -> list[DataError]:
        out, first = [], 0
        for shard in shards:
            for rec, reason in sorted(shard.bad.items()):
                out.append(DataError(reason, file=shard.file, record=rec, episode=first + rec))
            first += len(shard.lengths)
        return out

    def _index_shard(self, path: Path, expected: int) -> ShardIndex:
        """One pass over a shard: offsets + step counts; bad records are recorded, not raised."""
        offsets: list[int] = []
        lengths: list[int] = []
        bad: dict[int, str] = {}
        try:
            for rec, (offset, payload) in enumerate(iter_records(path)):
                offsets.append(offset)
                try:
                    lengths.append(self._count_steps(decode_example(payload)))
                except Exception as e:  # a parse error or a shape error: this record only
                    lengths.append(0)
                    bad[rec] = (f"field {e.field!r}: {e.reason}" if isinstance(e, DataError) and e.field
                                else f"not a valid tf.train.Example ({e})")
        except DataError as e:  # framing lost (bad length CRC, truncation): the rest is unreachable
            bad[len(offsets)] = e.reason
            offsets.append(-1)
            lengths.append(0)
        except FileNotFoundError:
            bad[0] = "shard file is missing"
        if len(offsets) > expected:
            raise DataError(f"shard has {len(offsets)} episodes, dataset_info.json says {expected}", file=path)
        if len(offsets) < expected:
            if not bad:
                raise DataError(f"shard has {len(offsets)} episodes, dataset_info.json says {expected}", file=path)
            first_missing = len(offsets)
            for rec in range(first_missing, expected):
                bad.setdefault(rec, f"unreachable after the damage at record {min(bad)}")
            offsets += [-1] * (expected - first_missing)
            lengths += [0] * (expected - first_missing)
        return ShardIndex(path, np.asarray(offsets, np.int64), np.asarray(lengths, np.int64), bad)

    def _count_steps(self, ex: dict[str, FeatureValue]) -> int:
        steps = self.step_features
        keys = [k for k in _COUNT_PRIORITY if k in steps] + sorted(steps)
        for key in keys:
            spec = steps[key]
            if key not in ex or (not spec.is_bytes and -1 in spec.shape):
                continue
            value = ex[key]
            if spec.is_bytes:
                return len(value)
            per_step = math.prod(spec.shape)
            if per_step == 0 or len(value) % per_step:
                raise DataError(f"wrong shape: {len(value)} values is not a multiple of {spec.shape}", field=key)
            return len(value) // per_step
        raise DataError("no step feature found to count steps", field="steps")

    # -- episodes ------------------------------------------------------------------------------

    def _locate(self, split: str, i: int) -> tuple[ShardIndex, int]:
        """(shard, record) of episode ``i`` of a split expression."""
        n = self.num_episodes(split)
        if not 0 <= i < n:
            raise IndexError(f"episode {i} out of range for split {split!r} ({n} episodes)")
        for r in self.resolve(split):
            if i < len(r):
                g = r.start + i
                for shard, count in zip(self.split_index(r.split), self.info.splits[r.split].shard_lengths):
                    if g < count:
                        return shard, g
                    g -= count
            i -= len(r)
        raise AssertionError("unreachable: index within range but not located")

    def episode_lengths(self, split: str) -> np.ndarray:
        """int64 step count of every episode of a split expression, in order."""
        out = []
        for r in self.resolve(split):
            lengths = np.concatenate([s.lengths for s in self.split_index(r.split)] or [np.zeros(0, np.int64)])
            out.append(lengths[r.start:r.stop])
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)

    def read_episode(self, split: str, i: int) -> RawEpisode:
        """Episode ``i`` of a split expression (one seek + one parse)."""
        shard, rec = self._locate(split, i)
        if rec in shard.bad:
            raise DataError(shard.bad[rec], file=shard.file, episode=i, record=rec)
        try:
            with open(shard.file, "rb") as f:
                payload = read_record_at(f, int(shard.offsets[rec]), path=shard.file, index=rec)
            return self._decode(decode_example(payload), shard.file, rec, i)
        except DataError as e:
            raise e.located(file=shard.file, episode=i) from None
        except FileNotFoundError as e:
            raise DataError("shard file is missing", file=shard.file, episode=i) from e

    def iter_episodes(self, split: str) -> Iterator[RawEpisode]:
        for i in range(self.num_episodes(split)):
            yield self.read_episode(split, i)

    def _decode(self, ex: dict[str, FeatureValue], file: Path, rec: int, episode: int) -> RawEpisode:
        try:
            n = self._count_steps(ex)
        except DataError as e:
            raise e.located(file=file, episode=episode) from None
        steps: dict[str, np.ndarray | list[bytes]] = {}
        meta: dict[str, np.ndarray | list[bytes]] = {}
        for key, spec in self.features.items():
            if key not in ex:
                if spec.in_steps and n == 0:
                    steps[key] = [] if spec.is_bytes and spec.encoding not in ("bytes", "zlib") else np.zeros((0,), spec.dtype)
                    continue
                raise DataError("missing feature key (declared in features.json)", file=file, episode=episode, field=key)
            value = ex[key]
            target = steps if spec.in_steps else meta
            try:
                if spec.is_bytes and spec.encoding not in ("bytes", "zlib"):
                    if not isinstance(value, list):
                        raise DataError(f"expected bytes ({spec.kind}), found numeric values", field=key)
                    expected = n if spec.in_steps else 1
                    if len(value) != expected and (spec.in_steps or spec.shape == ()):
                        raise DataError(f"wrong shape: {len(value)} values, expected {expected}", field=key)
                    target[key] = value
                else:
                    target[key] = _decode_numeric(spec, value, n if spec.in_steps else None)
            except DataError as e:
                raise e.located(file=file, episode=episode, field=key) from None
        return RawEpisode(steps, meta, n, file, rec, episode)
