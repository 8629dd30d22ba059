"""zarr v3 store of precomputed latent-action labels, keyed by (dataset, episode, step).

A LAM annotation job writes, per episode, the token ids ``[T, Q]`` and the quantized embeddings
``[T, Q, D]`` of every step; training reads them back for (dataset, episode, steps). Layout::

    LATENTS.zarr/
      zarr.json                          group attrs {format, version, num_tokens, dim, ...metadata}
      <dataset>/<episode:08d>/ids        int32   [T, Q]     (shard = the episode, written once)
      <dataset>/<episode:08d>/emb        float32 [T, Q, D]
      _complete/<dataset>/<episode:08d>.json   {"steps": T}: the completion marker

An episode is readable only once its marker exists. The marker is written after both arrays,
atomically (temp file + rename), so a crash leaves an unmarked episode that the reader refuses
and the job redoes. Several writers (one per annotation rank) may share a store as long as they
write different episodes: nothing global is rewritten per episode.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lavla.data_service.atomic import atomic_write_json
from lavla.data_service.errors import DataError

try:  # the [video] extra
    import zarr
    from zarr.codecs import ZstdCodec
except ImportError:  # pragma: no cover
    zarr = None  # type: ignore[assignment]

STORE_FORMAT = "lavla_latent_store"
STORE_VERSION = 1
_MARKERS = "_complete"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_STEP_CHUNK = 64


def _require_zarr() -> None:
    if zarr is None:
        raise ImportError("the latent store needs zarr v3: pip install 'latent-vla-pretrain[video]'")


def _check_dataset(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"dataset name {name!r} is not usable as a store path (letters, digits, '._-')")
    return name


def _episode_path(dataset: str, episode: int) -> str:
    return f"{_check_dataset(dataset)}/{int(episode):08d}"


def _marker(root: Path, dataset: str, episode: int) -> Path:
    return root / _MARKERS / _check_dataset(dataset) / f"{int(episode):08d}.json"


def _read_attrs(root: Path) -> dict[str, Any]:
    try:
        attrs = json.loads((root / "zarr.json").read_text(encoding="utf-8")).get("attributes", {})
    except FileNotFoundError:
        raise DataError("latent store not found", file=root) from None
    except (OSError, ValueError) as e:
        raise DataError(f"unreadable latent store metadata: {e}", file=root / "zarr.json") from e
    if attrs.get("format") != STORE_FORMAT or attrs.get("version") != STORE_VERSION:
        raise DataError(f"not a latent store of version {STORE_VERSION} (format={attrs.get('format')!r}, "
                        f"version={attrs.get('version')!r})", file=root)
    return attrs


class LatentStoreWriter:
    """Creates (or appends to) a store of ``num_tokens`` (Q) tokens of ``dim`` (D) per step."""

    def __init__(self, path: str | Path, *, num_tokens: int, dim: int, metadata: dict[str, Any] | None = None) -> None:
        _require_zarr()
        self.path = Path(path)
        self.num_tokens, self.dim = int(num_tokens), int(dim)
        if (self.path / "zarr.json").exists():
            attrs = _read_attrs(self.path)
            if (attrs["num_tokens"], attrs["dim"]) != (self.num_tokens, self.dim):
                raise ValueError(f"{self.path}: store holds Q={attrs['num_tokens']}, D={attrs['dim']}; "
                                 f"writer asked for Q={self.num_tokens}, D={self.dim}")
            self.group = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        else:
            attrs = {"format": STORE_FORMAT, "version": STORE_VERSION, "num_tokens": self.num_tokens, "dim": self.dim,
                     "metadata": metadata or {}}
            self.group = zarr.open_group(str(self.path), mode="a", zarr_format=3, attributes=attrs)

    def is_complete(self, dataset: str, episode: int) -> bool:
        return _marker(self.path, dataset, episode).exists()

    def write_episode(self, dataset: str, episode: int, ids: np.ndarray, embeddings: np.ndarray) -> None:
        """Stores one episode's labels (``ids [T, Q]`` ints, ``embeddings [T, Q, D]``) and marks it
        complete. Rewriting an episode replaces it (the marker is removed first)."""
        ids, emb = np.asarray(ids), np.asarray(embeddings)
        T = ids.shape[0] if ids.ndim else 0
        Q, D = self.num_tokens, self.dim
        where = f"{dataset} episode {episode}"
        if ids.shape != (T, Q) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{where}: ids must be integers of shape (T, {Q}), got {ids.dtype} {ids.shape}")
        if emb.shape != (T, Q, D):
            raise ValueError(f"{where}: embeddings must have shape ({T}, {Q}, {D}), got {emb.shape}")
        if T == 0:
            raise ValueError(f"{where}: no steps")
        if not np.isfinite(emb).all():
            raise ValueError(f"{where}: embeddings contain NaN/inf")
        marker = _marker(self.path, dataset, episode)
        marker.unlink(missing_ok=True)
        group = self.group.require_group(_episode_path(dataset, episode))
        chunk = min(T, _STEP_CHUNK)
        shard = -(-T // chunk) * chunk  # the whole episode, rounded up to whole chunks (zarr requires it)
        for name, data, dtype in (("ids", ids, "int32"), ("emb", emb, "float32")):
            arr = group.create_array(name, shape=data.shape, chunks=(chunk, *data.shape[1:]),
                                     shards=(shard, *data.shape[1:]),
                                     dtype=dtype, compressors=ZstdCodec(level=3), overwrite=True)
            arr[...] = data.astype(dtype)  # the whole shard in one call
        atomic_write_json(marker, {"steps": int(T)})


class LatentStore:
    """Read side: ``get(dataset, episode, steps) -> (ids [n, Q] int64, embeddings [n, Q, D] float32)``."""

    def __init__(self, path: str | Path, *, cache_bytes: int = 128 << 20) -> None:
        _require_zarr()
        self.path = Path(path)
        self.cache_bytes = cache_bytes
        """Budget of the in-memory LRU of loaded episodes."""
        attrs = _read_attrs(self.path)
        self.num_tokens: int = int(attrs["num_tokens"])
        """Q: tokens per step."""
        self.dim: int = int(attrs["dim"])
        """D: embedding width."""
        self.metadata: dict[str, Any] = dict(attrs.get("metadata", {}))
        """What the writer recorded (e.g. the LAM checkpoint that produced the labels)."""
        self._open: OrderedDict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": OrderedDict(), "_bytes": 0}

    def episodes(self, dataset: str) -> list[int]:
        """Completed episodes of ``dataset``, sorted."""
        folder = self.path / _MARKERS / _check_dataset(dataset)
        return sorted(int(p.stem) for p in folder.glob("*.json")) if folder.is_dir() else []

    def has(self, dataset: str, episode: int) -> bool:
        return _marker(self.path, dataset, episode).exists()

    def _episode(self, dataset: str, episode: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids [T, Q], emb [T, Q, D]) of a completed episode, loaded whole: an episode is small
        (T x Q x D floats) and zarr-python costs ~1 ms per read call, so samples index in memory."""
        key = (dataset, int(episode))
        hit = self._open.get(key)
        if hit is not None:
            self._open.move_to_end(key)
            return hit
        field = f"latents/{dataset}"
        try:
            steps = int(json.loads(_marker(self.path, dataset, episode).read_text(encoding="utf-8"))["steps"])
        except FileNotFoundError:
            raise DataError(f"no latent labels for dataset {dataset!r} episode {episode} (not annotated, or its "
                            f"annotation did not complete)", file=self.path, episode=int(episode), field=field) from None
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"unreadable completion marker: {e}", file=self.path, episode=int(episode), field=field) from e
        base = self.path / _episode_path(dataset, episode)
        try:
            ids = np.asarray(zarr.open_array(str(base / "ids"), mode="r", zarr_format=3)[:], np.int64)
            emb = np.asarray(zarr.open_array(str(base / "emb"), mode="r", zarr_format=3)[:], np.float32)
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"marked complete but its arrays are unreadable: {e}", file=base, episode=int(episode),
                            field=field) from e
        if ids.shape != (steps, self.num_tokens) or emb.shape != (steps, self.num_tokens, self.dim):
            raise DataError(f"arrays {ids.shape}/{emb.shape} disagree with the marker's {steps} steps", file=base,
                            episode=int(episode), field=field)
        hit = (ids, emb)
        self._open[key] = hit
        self._bytes += ids.nbytes + emb.nbytes
        while self._bytes > self.cache_bytes and len(self._open) > 1:
            _, (old_ids, old_emb) = self._open.popitem(last=False)
            self._bytes -= old_ids.nbytes + old_emb.nbytes
        return hit

    def num_steps(self, dataset: str, episode: int) -> int:
        return int(self._episode(dataset, episode)[0].shape[0])

    def get(self, dataset: str, episode: int,
            steps: int | Sequence[int] | np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        """Token ids ``[n, Q]`` (int64) and embeddings ``[n, Q, D]`` (float32) at ``steps`` (an int
        gives ``[Q]`` / ``[Q, D]``). DataError for a missing episode or an out-of-range step."""
        ids, emb = self._episode(dataset, episode)
        T = ids.shape[0]
        scalar = np.isscalar(steps) or (isinstance(steps, np.ndarray) and steps.ndim == 0)
        idx = np.arange(T)[steps] if isinstance(steps, slice) else np.atleast_1d(np.asarray(steps, np.int64))
        bad = idx[(idx < 0) | (idx >= T)]
        if bad.size:
            raise DataError(f"step {int(bad[0])} outside the episode's {T} labelled steps", file=self.path,
                            episode=int(episode), field=f"latents/{dataset}")
        out_ids, out_emb = ids[idx], emb[idx]
        return (out_ids[0], out_emb[0]) if scalar else (out_ids, out_emb)
