"""The decoded-frame cache: same samples, fewer decodes, bounded memory."""

from __future__ import annotations

import numpy as np

from lavla.data_service.decode import DecodedFrameCache
from lavla.data_service.sources import open_source
from lavla.data_service.stats import Normalizer
from lavla.data_service.sampling.windowing import make_sample


def test_cache_gives_identical_samples_and_saves_decodes(data_cfg):
    source = open_source(data_cfg.datasets[0], data_cfg)
    norm = Normalizer(source.statistics(), data_cfg.normalization, source.spec.action_absolute_mask)
    ep = source.read_episode(0)
    cache = DecodedFrameCache(64 * 2**20)
    for t in range(ep.length):
        plain = make_sample(ep, t, source, norm, data_cfg)
        cached = make_sample(ep, t, source, norm, data_cfg, frame_cache=cache)
        for key in ("image_primary", "image_future", "image_wrist", "action", "proprio"):
            np.testing.assert_array_equal(plain[key], cached[key])
    # x_t of window t is x_{t+H} of window t-H: about a third of all decodes are cache hits.
    assert cache.hits >= ep.length - source.spec.lam_stride - 1
    assert cache.misses <= 2 * ep.length


def test_cache_respects_its_byte_budget():
    frame = np.zeros((3, 8, 8), np.uint8)
    cache = DecodedFrameCache(max_bytes=3 * frame.nbytes)
    for i in range(10):
        cache.get(i, lambda: frame.copy())
    assert cache.bytes <= 3 * frame.nbytes and len(cache._frames) == 3
    cache.get(9, lambda: (_ for _ in ()).throw(AssertionError("must be a hit")))
    disabled = DecodedFrameCache(0)
    disabled.get("a", lambda: frame.copy())
    assert disabled.bytes == 0 and disabled.misses == 1
