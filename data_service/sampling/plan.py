"""The deterministic sample plan: (seed, mixture, global index) -> (dataset, episode, t).

Order never depends on world size, worker count or timing, so the only data state a checkpoint
needs is the number of global samples consumed. Memory stays bounded without a shuffle buffer:

* Mixture: global indices are cut into blocks of ``block_size``. Dataset i owns exactly
  ``C_i(n) = floor(n * P_{i+1}) - floor(n * P_i)`` of the first n indices (P = cumulative mixture
  probabilities, weight x transitions normalized as in OpenVLA/Octo), so proportions are exact
  at every block boundary. Inside a block the slots are permuted by a keyed hash.
* Within a dataset, its k-th sample belongs to epoch ``k // N_i`` (N_i = its valid windows).
  Each epoch permutes the episodes, walks them in groups of ``episode_group`` and interleaves
  all windows of a group in a keyed random order: every window appears exactly once per epoch,
  while a decoder only needs the episodes of the current group.

Randomness comes from splitmix64 over explicit keys (not numpy's Generator streams), so the plan
is identical across numpy versions and machines.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

PLAN_VERSION = 1
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)

# Key tags keep the hash streams of different decisions independent.
_TAG_BLOCK, _TAG_EPISODES, _TAG_GROUP = 0x1B, 0x2E, 0x3C


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorized splitmix64 finalizer on uint64 (wrap-around arithmetic is intended)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _key(*parts: int) -> np.uint64:
    acc = np.array([0x243F6A8885A308D3], dtype=np.uint64)
    for p in parts:
        acc = _splitmix64(acc ^ np.array([p & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return acc[0]


def keyed_permutation(n: int, *key: int) -> np.ndarray:
    """A pseudo-random permutation of ``range(n)`` that depends only on ``key``."""
    k = _key(*key)
    scores = _splitmix64(np.arange(n, dtype=np.uint64) ^ k)
    return np.argsort(scores, kind="stable")


@dataclass(frozen=True)
class PlanDataset:
    """What the plan needs to know about one dataset of the mixture."""

    name: str
    """Dataset name (for messages and the fingerprint)."""
    windows_per_episode: np.ndarray
    """Number of valid start steps t of each episode (t ranges over ``[0, n)``)."""
    weight: float
    """Mixture weight before the transitions factor."""
    fingerprint: str
    """Hash of the dataset's metadata and standardization (a changed dataset changes the plan)."""


@dataclass(frozen=True)
class PlanSample:
    """One planned sample."""

    index: int
    """Global sample index."""
    dataset: int
    """Position of the dataset in the mixture."""
    episode: int
    """Episode index within the dataset (split-relative)."""
    t: int
    """Start step of the window."""
    epoch: int
    """How many full passes over this dataset precede this sample."""


class _DatasetOrder:
    """The per-dataset sample stream: epoch-permuted episodes, grouped, windows interleaved."""

    def __init__(self, ds: PlanDataset, dataset_pos: int, seed: int, group: int) -> None:
        self.ds, self.pos, self.seed, self.group = ds, dataset_pos, seed, group
        self.total = int(ds.windows_per_episode.sum())
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._groups: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Episode order of an epoch and the start offset of each episode group."""
        hit = self._epochs.get(epoch)
        if hit is None:
            order = keyed_permutation(len(self.ds.windows_per_episode), self.seed, _TAG_EPISODES, self.pos, epoch)
            counts = self.ds.windows_per_episode[order]
            group_sizes = np.add.reduceat(counts, np.arange(0, len(counts), self.group))
            hit = (order, np.concatenate([[0], np.cumsum(group_sizes)]))
            self._epochs[epoch] = hit
            while len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return hit

    def _group(self, epoch: int, g: int) -> tuple[np.ndarray, np.ndarray]:
        """(episode, t) of every window of group g, in its interleaved order."""
        hit = self._groups.get((epoch, g))
        if hit is None:
            order, _ = self._epoch(epoch)
            episodes = order[g * self.group : (g + 1) * self.group]
            counts = self.ds.windows_per_episode[episodes]
            ep = np.repeat(episodes, counts)
            t = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            perm = keyed_permutation(len(ep), self.seed, _TAG_GROUP, self.pos, epoch, g)
            hit = (ep[perm], t[perm])
            self._groups[(epoch, g)] = hit
            while len(self._groups) > 4:
                self._groups.popitem(last=False)
        return hit

    def lookup(self, k: int) -> tuple[int, int, int]:
        """The k-th sample of this dataset's stream as (episode, t, epoch)."""
        epoch, r = divmod(k, self.total)
        _, offsets = self._epoch(epoch)
        g = int(np.searchsorted(offsets, r, side="right") - 1)
        eps, ts = self._group(epoch, g)
        j = r - int(offsets[g])
        return int(eps[j]), int(ts[j]), epoch


class SamplePlan:
    """Pure function from a global sample index to a (dataset, episode, t) window."""

    def __init__(self, datasets: list[PlanDataset], seed: int, block_size: int = 4096, episode_group: int = 32):
        if not datasets:
            raise ValueError("the sample plan needs at least one dataset")
        if block_size < 1 or episode_group < 1:
            raise ValueError(f"plan block_size and episode_group must be >= 1, got {block_size} and {episode_group}")
        self.datasets, self.seed, self.block_size, self.episode_group = datasets, seed, block_size, episode_group
        transitions = np.array([d.windows_per_episode.sum() for d in datasets], dtype=np.float64)
        for d, n in zip(datasets, transitions):
            if n <= 0:
                raise ValueError(f"dataset '{d.name}' has no valid windows (episodes too short for the LAM stride?)")
            if not d.weight >= 0:  # also rejects NaN
                raise ValueError(f"dataset '{d.name}' has an invalid mixture weight {d.weight}")
            if (np.asarray(d.windows_per_episode) < 0).any():
                raise ValueError(f"dataset '{d.name}' has a negative window count")
        mass = np.array([d.weight for d in datasets]) * transitions
        if mass.sum() <= 0:
            raise ValueError("all mixture weights are zero")
        self.probabilities = mass / mass.sum()
        self._cdf = np.concatenate([[0.0], np.cumsum(self.probabilities)])
        self._cdf[-1] = 1.0
        self._orders = [_DatasetOrder(d, i, seed, episode_group) for i, d in enumerate(datasets)]
        self._blocks: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.fingerprint = self._fingerprint()

    def _fingerprint(self) -> str:
        payload = {
            "version": PLAN_VERSION,
            "seed": self.seed,
            "block_size": self.block_size,
            "episode_group": self.episode_group,
            "datasets": [
                {
                    "name": d.name,
                    # float(): a YAML ``weight: 1`` and ``1.0`` are the same mixture.
                    "weight": float(d.weight),
                    "fingerprint": d.fingerprint,
                    "windows": hashlib.sha256(np.ascontiguousarray(d.windows_per_episode, dtype=np.int64).tobytes()).hexdigest(),
                }
                for d in self.datasets
            ],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def _cumulative_counts(self, n: int) -> np.ndarray:
        """How many of the first n global indices each dataset owns."""
        edges = np.floor(n * self._cdf).astype(np.int64)
        return np.diff(edges)

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """For every slot of block b: its dataset and its occurrence number in that dataset's stream."""
        hit = self._blocks.get(b)
        if hit is None:
            before = self._cumulative_counts(b * self.block_size)
            quota = self._cumulative_counts((b + 1) * self.block_size) - before
            ds = np.repeat(np.arange(len(quota)), quota)[keyed_permutation(self.block_size, self.seed, _TAG_BLOCK, b)]
            # Occurrence numbers follow the order of appearance, so each dataset's stream is
            # consumed in sequence (an epoch ends before the next one starts, globally).
            by_ds = np.argsort(ds, kind="stable")
            rank = np.empty(self.block_size, dtype=np.int64)
            rank[by_ds] = np.arange(self.block_size) - np.repeat(np.cumsum(quota) - quota, quota)
            hit = (ds, before[ds] + rank)
            self._blocks[b] = hit
            while len(self._blocks) > 2:
                self._blocks.popitem(last=False)
        return hit

    def sample(self, index: int) -> PlanSample:
        """The window planned at global ``index``."""
        if index < 0:
            raise IndexError(f"plan index must be >= 0, got {index}")
        b, j = divmod(index, self.block_size)
        ds, occurrence = self._block(b)
        d = int(ds[j])
        episode, t, epoch = self._orders[d].lookup(int(occurrence[j]))
        return PlanSample(index=index, dataset=d, episode=episode, t=t, epoch=epoch)

    def epoch_of(self, consumed: int) -> float:
        """Fractional passes over the mixture after ``consumed`` samples (for logging)."""
        total = sum(o.total for o in self._orders)
        return consumed / total
