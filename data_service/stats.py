"""Per-dataset action/proprio statistics and the normalizer that uses them.

Statistics come from one pass over every episode of the dataset (all splits, as OpenVLA does, so
a ``train[:95%]`` entry and its ``train[95%:]`` validation twin normalize identically). Quantiles
are exact (``np.quantile`` over the concatenated arrays): the pass keeps every action and proprio
row, i.e. ``num_transitions x (A + P) x 4`` bytes (about 230 MB for fractal's 3.8M transitions),
then frees them. Results are cached as JSON keyed by a hash of the dataset metadata and its
standardization, next to the dataset or in the user cache dir.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lavla.data_service.cache import cache_candidates, load_json_cache, stable_hash, store_json_cache

EPS = 1e-8
"""Denominator guard of every normalization mode (as OpenVLA)."""
STATS_VERSION = 1
NORMALIZATION_MODES = ("bounds_q99", "normal", "bounds")


@dataclass(frozen=True)
class ArrayStats:
    """Per-dim statistics of one quantity (action or proprio) over all transitions."""

    mean: np.ndarray
    """float32 [D] mean."""
    std: np.ndarray
    """float32 [D] standard deviation (population, ddof=0)."""
    min: np.ndarray
    """float32 [D] minimum."""
    max: np.ndarray
    """float32 [D] maximum."""
    q01: np.ndarray
    """float32 [D] 1st percentile (np.quantile, linear interpolation)."""
    q99: np.ndarray
    """float32 [D] 99th percentile."""
    count: int
    """Rows (transitions) the statistics were computed over."""

    @classmethod
    def of(cls, rows: np.ndarray) -> ArrayStats:
        rows = np.asarray(rows, np.float32)
        d = rows.shape[1]
        if rows.shape[0] == 0:
            z = np.zeros(d, np.float32)
            return cls(z, z, z, z, z, z, 0)
        f = np.float32
        return cls(rows.mean(0).astype(f), rows.std(0).astype(f), rows.min(0).astype(f), rows.max(0).astype(f),
                   np.quantile(rows, 0.01, axis=0).astype(f), np.quantile(rows, 0.99, axis=0).astype(f), int(rows.shape[0]))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def to_dict(self) -> dict[str, object]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ArrayStats:
        arr = {k: np.asarray(d[k], np.float32) for k in ("mean", "std", "min", "max", "q01", "q99")}
        return cls(**arr, count=int(d["count"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class DatasetStatistics:
    """What normalization and the mixture weights need to know about one dataset."""

    action: ArrayStats
    """Statistics of the standardized action (gripper absolute)."""
    proprio: ArrayStats
    """Statistics of the standardized proprio (D may be 0)."""
    num_transitions: int
    """Total steps over all episodes."""
    num_trajectories: int
    """Number of episodes."""

    def to_dict(self) -> dict[str, object]:
        """JSON-able form (saved with checkpoints for de-normalization at inference)."""
        return {"action": self.action.to_dict(), "proprio": self.proprio.to_dict(),
                "num_transitions": self.num_transitions, "num_trajectories": self.num_trajectories}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> DatasetStatistics:
        return cls(ArrayStats.from_dict(d["action"]), ArrayStats.from_dict(d["proprio"]),  # type: ignore[arg-type]
                   int(d["num_transitions"]), int(d["num_trajectories"]))  # type: ignore[arg-type]


def compute_statistics(episodes: Iterable[tuple[np.ndarray, np.ndarray]], *, total: int | None = None,
                       desc: str = "statistics") -> DatasetStatistics:
    """One streaming pass over ``(action [T,A], proprio [T,P])`` pairs, with a progress bar."""
    actions, proprios = [], []
    for action, proprio in tqdm(episodes, total=total, desc=desc, unit="ep", disable=None, leave=False):
        actions.append(np.asarray(action, np.float32))
        proprios.append(np.asarray(proprio, np.float32))
    if not actions:
        raise ValueError(f"{desc}: no episodes to compute statistics from")
    a, p = np.concatenate(actions), np.concatenate(proprios)
    return DatasetStatistics(ArrayStats.of(a), ArrayStats.of(p), int(a.shape[0]), len(actions))


def cached_statistics(dataset_dir: Path, key: object, compute: Callable[[], DatasetStatistics]) -> DatasetStatistics:
    """Statistics from the JSON cache for ``key`` (metadata + standardization), computing on a miss."""
    fingerprint = stable_hash({"v": STATS_VERSION, "key": key})
    candidates = cache_candidates(dataset_dir, f".lavla_stats-{fingerprint[:16]}.json")
    hit = load_json_cache(candidates, fingerprint)
    if hit is not None:
        return DatasetStatistics.from_dict(hit["statistics"])
    stats = compute()
    store_json_cache(candidates, {"fingerprint": fingerprint, "statistics": stats.to_dict()})
    return stats


class Normalizer:
    """Maps raw action/proprio to the model's range and back.

    Modes: ``bounds_q99`` (q01/q99 -> [-1, 1], clipped), ``normal`` ((x - mean) / (std + eps)),
    ``bounds`` (min/max -> [-1, 1], clipped). Absolute action dims (gripper) pass through
    untouched; dims that never vary (min == max) map to 0 (and back to that constant).
    """

    def __init__(self, stats: DatasetStatistics, mode: str = "bounds_q99",
                 absolute_mask: np.ndarray | tuple[bool, ...] | None = None) -> None:
        if mode not in NORMALIZATION_MODES:
            raise ValueError(f"normalization mode must be one of {NORMALIZATION_MODES}, got {mode!r}")
        self.stats = stats
        self.mode = mode
        a = stats.action.dim
        mask = np.zeros(a, bool) if absolute_mask is None else np.asarray(absolute_mask, bool)
        if mask.shape != (a,):
            raise ValueError(f"absolute_mask has {mask.shape[0]} dims, action statistics have {a}")
        self._absolute = {"action": mask, "proprio": np.zeros(stats.proprio.dim, bool)}

    def _parts(self, field: str) -> tuple[ArrayStats, np.ndarray]:
        if field not in self._absolute:
            raise ValueError(f"field must be 'action' or 'proprio', got {field!r}")
        return getattr(self.stats, field), self._absolute[field]

    def _lo_hi(self, s: ArrayStats) -> tuple[np.ndarray, np.ndarray]:
        return (s.q01, s.q99) if self.mode == "bounds_q99" else (s.min, s.max)

    def normalize(self, x: np.ndarray, field: str = "action") -> np.ndarray:
        """Raw ``[..., D]`` -> normalized float32."""
        s, absolute = self._parts(field)
        x = np.asarray(x, np.float32)
        if self.mode == "normal":
            y = (x - s.mean) / (s.std + EPS)
        else:
            lo, hi = self._lo_hi(s)
            y = np.clip(2.0 * (x - lo) / (hi - lo + EPS) - 1.0, -1.0, 1.0)
        y = np.where(s.min == s.max, 0.0, y)
        return np.where(absolute, x, y).astype(np.float32)

    def unnormalize(self, y: np.ndarray, field: str = "action") -> np.ndarray:
        """Normalized ``[..., D]`` -> raw float32 (exact inverse inside the clipping range)."""
        s, absolute = self._parts(field)
        y = np.asarray(y, np.float32)
        if self.mode == "normal":
            x = y * (s.std + EPS) + s.mean
        else:
            lo, hi = self._lo_hi(s)
            x = (np.clip(y, -1.0, 1.0) + 1.0) / 2.0 * (hi - lo + EPS) + lo
        x = np.where(s.min == s.max, s.min, x)
        return np.where(absolute, y, x).astype(np.float32)
