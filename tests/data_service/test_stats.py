from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lavla.data_service.config import DataConfig
from lavla.data_service.sources import open_source
from lavla.data_service.stats import ArrayStats, DatasetStatistics, Normalizer, compute_statistics


def test_statistics_exact_against_numpy(data_cfg: DataConfig) -> None:
    src = open_source(data_cfg.datasets[0], data_cfg)
    stats = src.statistics()
    ds = src.dataset
    eps = [ds.read_episode(split, i) for split in ds.splits for i in range(ds.num_episodes(split))]
    a = np.concatenate([e.steps["steps/action"] for e in eps])
    p = np.concatenate([e.steps["steps/observation/state"] for e in eps])
    assert stats.num_trajectories == len(eps) == 8
    assert stats.num_transitions == len(a) == stats.action.count == stats.proprio.count
    for arr, s in ((a, stats.action), (p, stats.proprio)):
        np.testing.assert_allclose(s.mean, arr.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s.std, arr.std(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(s.min, arr.min(0))
        np.testing.assert_array_equal(s.max, arr.max(0))
        np.testing.assert_allclose(s.q01, np.quantile(arr, 0.01, axis=0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(s.q99, np.quantile(arr, 0.99, axis=0), rtol=1e-6, atol=1e-7)


def test_statistics_are_cached(data_cfg: DataConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    src = open_source(data_cfg.datasets[0], data_cfg)
    first = src.statistics()
    assert list(Path(src.dataset.path).glob(".lavla_stats-*.json"))
    import lavla.data_service.sources as sources_mod

    monkeypatch.setattr(sources_mod, "compute_statistics", lambda *a, **k: pytest.fail("recomputed despite cache"))
    again = open_source(data_cfg.datasets[0], data_cfg).statistics()
    assert again.to_dict() == first.to_dict()
    assert DatasetStatistics.from_dict(first.to_dict()).to_dict() == first.to_dict()


def _stats(rows: np.ndarray) -> DatasetStatistics:
    return compute_statistics([(rows, rows[:, :2])], desc="test")


@pytest.mark.parametrize("mode", ["bounds_q99", "normal", "bounds"])
def test_normalizer_modes(mode: str) -> None:
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.normal(2.0, 3.0, (500, 2)), np.full((500, 1), 5.0), rng.integers(0, 2, (500, 1))], 1)
    rows = rows.astype(np.float32)
    stats = _stats(rows)
    absolute = np.array([False, False, False, True])
    norm = Normalizer(stats, mode, absolute)
    y = norm.normalize(rows)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y[:, 3], rows[:, 3])  # absolute gripper untouched
    np.testing.assert_array_equal(y[:, 2], 0.0)  # min == max -> 0
    s = stats.action
    if mode == "normal":
        np.testing.assert_allclose(y[:, :2], (rows[:, :2] - s.mean[:2]) / (s.std[:2] + 1e-8), rtol=1e-5)
    else:
        lo, hi = (s.q01, s.q99) if mode == "bounds_q99" else (s.min, s.max)
        expected = np.clip(2 * (rows[:, :2] - lo[:2]) / (hi[:2] - lo[:2] + 1e-8) - 1, -1, 1)
        np.testing.assert_allclose(y[:, :2], expected, rtol=1e-5, atol=1e-6)
        assert y.min() >= -1 and y.max() <= 1
    back = norm.unnormalize(y)
    inside = np.ones(len(rows), bool)
    if mode == "bounds_q99":  # clipped values cannot come back
        inside = ((rows[:, :2] >= s.q01[:2]) & (rows[:, :2] <= s.q99[:2])).all(1)
    np.testing.assert_allclose(back[inside], rows[inside], rtol=1e-4, atol=1e-4)
    # Proprio has no absolute dims.
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(rows[:5, :2], "proprio"), "proprio"), rows[:5, :2],
                               rtol=1e-4, atol=1e-4)


def test_normalizer_rejects_bad_arguments() -> None:
    stats = _stats(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="mode"):
        Normalizer(stats, "minmax")
    with pytest.raises(ValueError, match="absolute_mask"):
        Normalizer(stats, "normal", (True,))
    with pytest.raises(ValueError, match="field"):
        Normalizer(stats).normalize(np.zeros(4), "reward")
    empty = ArrayStats.of(np.zeros((0, 3), np.float32))
    assert empty.count == 0 and empty.dim == 3
