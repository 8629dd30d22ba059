"""Episode sources: the seam between on-disk datasets and the sample plan / loader.

``open_source(entry, data_cfg)`` looks the dataset up in the registry and returns an
:class:`EpisodeSource`: episode count and lengths (for the plan), a fingerprint (for resume
checks), standardized episodes and statistics. RLDS is built in; other kinds (human video,
LeRobot roots: ``meta/info.json``) register an opener with :func:`register_opener`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from lavla.data_service.cache import stable_hash
from lavla.data_service.config import DataConfig, DatasetEntry
from lavla.data_service.errors import DataError
from lavla.data_service.datasets.inline_spec import spec_for_entry
from lavla.data_service.datasets.registry import DatasetSpec
from lavla.data_service.formats.rlds import RawEpisode, RLDSDataset
from lavla.data_service.datasets.standardize import StandardEpisode, standardize
from lavla.data_service.stats import DatasetStatistics, cached_statistics, compute_statistics

log = logging.getLogger(__name__)

STANDARDIZATION_VERSION = 1
"""Bump when standardization code changes meaning (invalidates fingerprints and cached statistics)."""


@runtime_checkable
class EpisodeSource(Protocol):
    """What the plan and the loader need from one dataset of the mixture."""

    name: str
    spec: DatasetSpec

    @property
    def num_episodes(self) -> int: ...

    @property
    def episode_lengths(self) -> np.ndarray: ...

    @property
    def fingerprint(self) -> str: ...

    def read_episode(self, i: int) -> StandardEpisode: ...

    def statistics(self) -> DatasetStatistics: ...


class RLDSSource:
    """An RLDS (TFDS layout) dataset split, standardized per its registry spec."""

    def __init__(self, entry: DatasetEntry, spec: DatasetSpec, data_cfg: DataConfig) -> None:
        self.name = entry.name
        self.spec = spec
        self.entry = entry
        self.data_cfg = data_cfg
        self.split = entry.split
        self.strict = data_cfg.on_bad_sample == "error"
        self.dataset = RLDSDataset(entry.path, strict=self.strict)
        if spec.image_primary_key and spec.image_primary_key not in self.dataset.features:
            raise DataError(f"{self.name}: primary image key not in features.json "
                            f"(available: {sorted(self.dataset.step_features)})",
                            file=self.dataset.path / "features.json", field=spec.image_primary_key)
        if self.dataset.num_episodes(self.split) == 0:  # also validates the split expression
            raise DataError(f"split {self.split!r} selects no episodes", file=self.dataset.path)

    @property
    def num_episodes(self) -> int:
        return self.dataset.num_episodes(self.split)

    @cached_property
    def episode_lengths(self) -> np.ndarray:
        """int64 [num_episodes] standardized lengths (raw step counts minus trimmed steps; 0 = unusable)."""
        lengths = self.dataset.episode_lengths(self.split) - self.spec.drop_first_steps - self.spec.drop_last_steps
        return np.maximum(lengths, 0).astype(np.int64)

    def _standardization_key(self) -> dict[str, object]:
        return {"metadata": self.dataset.metadata_hash(), "spec": self.spec.to_dict(), "v": STANDARDIZATION_VERSION}

    @cached_property
    def fingerprint(self) -> str:
        """Hash of dataset metadata + standardization + split: changes when the plan would."""
        return stable_hash({**self._standardization_key(), "split": self.split})

    def read_episode(self, i: int) -> StandardEpisode:
        return standardize(self.dataset.read_episode(self.split, i), self.spec)

    def statistics(self) -> DatasetStatistics:
        """Cached statistics over all splits of the dataset (see ``data_service.stats``)."""
        def compute() -> DatasetStatistics:
            ds = self.dataset
            reads = (functools.partial(ds.read_episode, split, i) for split in ds.splits for i in range(ds.num_episodes(split)))
            total = sum(ds.num_episodes(s) for s in ds.splits)
            return compute_statistics(standardized_actions(reads, self.spec, self.name, self.strict), total=total,
                                      desc=f"statistics {self.name}")

        return cached_statistics(self.dataset.path, self._standardization_key(), compute)


def standardized_actions(reads: Iterable[Callable[[], RawEpisode]], spec: DatasetSpec, name: str,
                         strict: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(action, proprio)`` of each episode ``reads`` yields a reader for, standardized: what a
    statistics pass consumes. A bad episode raises (``strict``) or is skipped with a warning."""
    for read in reads:
        try:
            ep = standardize(read(), spec)
        except DataError as e:
            if strict:
                raise
            log.warning("statistics of %s: skipping bad episode: %s", name, e)
            continue
        yield ep.action, ep.proprio


Opener = Callable[[DatasetEntry, DatasetSpec, DataConfig], EpisodeSource]
_OPENERS: dict[str, Opener] = {"rlds": RLDSSource}


def register_opener(kind: str, opener: Opener) -> None:
    """Registers a source kind (e.g. ``video``: specs with ``is_video``)."""
    _OPENERS[kind] = opener


def open_source(entry: DatasetEntry, data_cfg: DataConfig, index: int | None = None) -> EpisodeSource:
    """The source for one mixture entry (its inline spec or the registry's + on-disk metadata check);
    ``index`` (the entry's position in ``data.datasets``) only sharpens error messages."""
    spec = spec_for_entry(entry, index)
    kind = "video" if spec.is_video else "lerobot" if (Path(entry.path) / "meta" / "info.json").is_file() else "rlds"
    if kind == "video" and kind not in _OPENERS:
        import lavla.data_service.video.source  # noqa: F401  (registers the video opener; keeps PyAV off the RLDS path)
    if kind == "lerobot" and kind not in _OPENERS:
        import lavla.data_service.formats.lerobot  # noqa: F401  (registers the LeRobot opener)
    if kind not in _OPENERS:
        raise NotImplementedError(f"{entry.name}: no opener registered for {kind!r} sources")
    if not Path(entry.path).exists():
        raise DataError("dataset path does not exist (run the synthetic generator or download it)", file=entry.path)
    return _OPENERS[kind](entry, spec, data_cfg)
