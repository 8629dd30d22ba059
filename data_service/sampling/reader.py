"""Plan index -> one decoded sample: the work every decoder does, in-process or in a Ray actor.

Torch-free on purpose: Ray decoder actors import this module, and importing torch there would
cost each actor ~300 MB and seconds of start-up for nothing.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from lavla.data_service.config import DataConfig
from lavla.data_service.data_stats import DataStats
from lavla.data_service.decode import DecodedFrameCache
from lavla.data_service.errors import DataError
from lavla.data_service.sampling.plan import SamplePlan
from lavla.data_service.schema import LIST_KEYS, tensor_keys

log = logging.getLogger(__name__)

MakeSample = Callable[..., dict[str, Any]]
"""``make_sample(episode, t, source, normalizer, cfg) -> sample dict`` (see ``data_service.sampling.windowing``)."""


class SampleReader:
    """Plan index -> one decoded sample dict, with a small LRU cache of standardized episodes.

    A source may assemble its own samples by defining ``make_sample`` with the same signature
    (e.g. human video without actions); otherwise the shared ``make_sample`` is used, so robot
    and video datasets mix in one plan and one reader.

    ``latents`` (a ``data_service.latents.labels.LatentLabels``) adds the latent-label keys to
    every sample; when None and ``cfg.latent_labels`` is set, the reader opens the store itself.
    """

    # How far away (in plan indices) a replacement for a bad sample is drawn; far enough to
    # avoid the same episode group, and a pure function of the index so every rank agrees.
    _REPLACEMENT_STRIDE = 1_000_003
    _MAX_REPLACEMENTS = 16

    def __init__(self, plan: SamplePlan, sources: list[Any], normalizers: list[Any], cfg: DataConfig,
                 make_sample: MakeSample, stats: DataStats | None = None, latents: Any = None) -> None:
        self.plan, self.sources, self.normalizers, self.cfg = plan, sources, normalizers, cfg
        self._make_sample = make_sample
        self.stats = stats
        self.skipped = 0
        """Bad samples replaced over this reader's life."""
        self._episodes: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self._capacity = max(4, 2 * cfg.episode_group * len(sources))
        self.frame_cache = DecodedFrameCache(cfg.decoded_frame_cache_mb * 2**20)
        if latents is None and cfg.latent_labels:
            from lavla.data_service.latents.labels import LatentLabels

            latents = LatentLabels.open(cfg, sources)
        self.latents = latents
        """Latent-label join (None: samples carry no latent keys)."""

    def _episode(self, d: int, e: int) -> Any:
        key = (d, e)
        ep = self._episodes.get(key)
        if ep is None:
            ep = self.sources[d].read_episode(e)
            self._episodes[key] = ep
            if len(self._episodes) > self._capacity:
                self._episodes.popitem(last=False)
        else:
            self._episodes.move_to_end(key)
        return ep

    def read(self, index: int) -> dict[str, Any]:
        attempts = 0
        probe = index
        while True:
            s = self.plan.sample(probe)
            source = self.sources[s.dataset]
            own_make = getattr(source, "make_sample", None)
            try:
                ep = self._episode(s.dataset, s.episode)
                if own_make is not None:
                    sample = own_make(ep, s.t, source, self.normalizers[s.dataset], self.cfg)
                else:
                    sample = self._make_sample(ep, s.t, source, self.normalizers[s.dataset], self.cfg,
                                               frame_cache=self.frame_cache)
                if self.latents is not None:
                    sample.update(self.latents.labels(source.name, s.episode, s.t,
                                                      int(source.episode_lengths[s.episode])))
            except DataError:
                if self.cfg.on_bad_sample != "skip" or attempts >= self._MAX_REPLACEMENTS:
                    raise
                attempts += 1
                self.skipped += 1
                if self.stats is not None:
                    self.stats.add(skipped=1)
                log.warning("skipping bad sample at plan index %d", probe, exc_info=True)
                probe = index + attempts * self._REPLACEMENT_STRIDE
                continue
            sample["sample_id"] = np.int64(index)
            sample["dataset_id"] = np.int64(s.dataset)
            return sample


def stack_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-sample dicts -> batch dict of stacked numpy arrays (tensor keys, including the optional
    latent keys when the samples carry them) and lists (list keys)."""
    keys = tensor_keys(samples[0])
    for i, s in enumerate(samples):
        if tensor_keys(s) != keys:
            raise ValueError(f"sample {i} has tensor keys {tensor_keys(s)}, sample 0 has {keys}")
    batch: dict[str, Any] = {key: np.stack([np.asarray(s[key]) for s in samples]) for key in keys}
    for key in LIST_KEYS:
        batch[key] = [s[key] for s in samples]
    return batch
