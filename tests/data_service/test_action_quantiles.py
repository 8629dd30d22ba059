"""Action samples for quantile bins: the rows are exactly the actions training batches hold
(same normalization and padding), follow split expressions and mixture shares, skip video, and
are deterministic given the seed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from lavla.data_service.action_quantiles import quotas, sample_actions
from lavla.data_service.config import DataConfig, DatasetEntry, SyntheticDataConfig
from lavla.data_service.datasets.registry import get_spec, register
from lavla.data_service.sources import open_source

from .conftest import TinyFactory, tiny_episode
from .test_loader import reference


def loader_rows(cfg: DataConfig) -> np.ndarray:
    """``[n, A]``: the action of every transition of a one-dataset mixture, read through the normal
    loader (chunks of one step over one plan epoch: every window exactly once)."""
    one = dataclasses.replace(cfg, action_horizon=1)
    n = int(open_source(one.datasets[0], one).episode_lengths.sum())
    samples = reference(one, n)
    assert all(s["action_valid"][0] and s["has_action"] for s in samples.values())
    return np.stack([s["action"][0] for s in samples.values()])


def sorted_rows(x: np.ndarray) -> np.ndarray:
    return x[np.lexsort(x.T[::-1])]


def row_set(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in np.ascontiguousarray(x, np.float32)}


def test_all_transitions_match_the_loader_exactly(data_cfg: DataConfig) -> None:
    cfg = dataclasses.replace(data_cfg, max_action_dim=9)  # padding as in the batches
    want = loader_rows(cfg)
    actions, valid = sample_actions(cfg, max_samples=10_000, seed=3)
    assert actions.dtype == np.float32 and valid.dtype == bool and actions.shape == valid.shape == want.shape
    np.testing.assert_array_equal(sorted_rows(actions), sorted_rows(want))  # each transition once, bit-exact
    assert valid[:, :7].all() and not valid[:, 7:].any() and not actions[:, 7:].any()


def test_split_subset_and_determinism(data_cfg: DataConfig) -> None:
    half = dataclasses.replace(data_cfg, datasets=[dataclasses.replace(data_cfg.datasets[0], split="train[:50%]")],
                               normalization="normal")
    allowed = row_set(loader_rows(half))
    actions, valid = sample_actions(half, max_samples=20, seed=0)
    assert actions.shape == (20, 7) and valid.all()
    assert row_set(actions) <= allowed and len(row_set(actions)) == 20  # without replacement
    again, _ = sample_actions(half, max_samples=20, seed=0)
    other, _ = sample_actions(half, max_samples=20, seed=1)
    np.testing.assert_array_equal(actions, again)
    assert not np.array_equal(actions, other)
    rest = row_set(loader_rows(dataclasses.replace(half, datasets=[dataclasses.replace(half.datasets[0],
                                                                                       split="train[50%:]")])))
    assert not row_set(actions) & rest


def test_mixture_shares_and_video_contributes_nothing(tmp_path: Path, data_cfg: DataConfig,
                                                      make_tiny: TinyFactory) -> None:
    pytest.importorskip("av")
    from lavla.data_service.synthetic import generate_synthetic_human_video

    register(dataclasses.replace(get_spec("synthetic_world"), name="synthetic_world_tiny"))
    tiny = make_tiny([tiny_episode(4 + i, seed=i) for i in range(3)])  # 15 transitions
    videos = generate_synthetic_human_video(SyntheticDataConfig(root=str(tmp_path), train_episodes=2, val_episodes=0,
                                                                episode_length=10, image_size=32, seed=0))
    big = data_cfg.datasets[0]
    cfg = dataclasses.replace(data_cfg, datasets=[
        big, DatasetEntry(name="synthetic_human_video", path=str(videos), weight=5.0),
        DatasetEntry(name="synthetic_world_tiny", path=str(tiny), weight=2.0)])
    rows_big = row_set(loader_rows(dataclasses.replace(cfg, datasets=[big])))
    rows_tiny = row_set(loader_rows(dataclasses.replace(cfg, datasets=[cfg.datasets[2]])))
    n_big = int(open_source(big, cfg).episode_lengths.sum())

    M = 40
    actions, valid = sample_actions(cfg, max_samples=M, seed=0)
    assert actions.shape == (M, 7) and valid.all()
    share = [(r in rows_big, r in rows_tiny) for r in (a.tobytes() for a in actions)]
    assert all(b != t for b, t in share)  # every row is a transition of exactly one robot dataset
    want = quotas(M, np.array([1.0 * n_big, 2.0 * 15]))
    assert sum(b for b, _ in share) == want[0] and sum(t for _, t in share) == want[1]

    # more than the tiny dataset holds: all of its transitions, then repeats
    many, _ = sample_actions(cfg, max_samples=10_000, seed=0)
    want = quotas(n_big + 15, np.array([1.0 * n_big, 2.0 * 15]))
    tiny_rows = [a.tobytes() for a in many if a.tobytes() in rows_tiny]
    assert len(many) == n_big + 15 and len(tiny_rows) == want[1] > 15 and set(tiny_rows) == rows_tiny


def test_quotas_are_exact() -> None:
    assert quotas(10, np.array([1.0, 1.0, 1.0])).tolist() == [4, 3, 3]
    assert quotas(7, np.array([0.0, 2.0, 1.0])).tolist() == [0, 5, 2]
    assert quotas(0, np.array([1.0])).tolist() == [0]
    with pytest.raises(ValueError, match="max_samples"):
        sample_actions(DataConfig(), max_samples=0)
