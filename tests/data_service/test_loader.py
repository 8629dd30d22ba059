"""The in-process data client: exact resume across world sizes, plan guard, stats, mixed sources.

The helpers here (building one client per simulated rank, collecting the global sequence) are
shared with ``test_ray_service.py``, which checks the Ray path against the same reference.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lavla.data_service.config import DataConfig, DatasetEntry
from lavla.data_service.data_stats import STAT_KEYS
from lavla.data_service.sampling.loader import ClientBase, DataClient, PlanMismatchError, SampleReader, build_plan_datasets
from lavla.data_service.pipeline import build_data
from lavla.data_service.sampling.plan import SamplePlan
from lavla.data_service.sources import open_source
from lavla.data_service.stats import Normalizer
from lavla.data_service.sampling.windowing import make_sample

from .conftest import TinyFactory, tiny_episode

Sample = dict[str, Any]


def make_clients(cfg: DataConfig, *, world: int, micro: int, accum: int) -> list[ClientBase]:
    """One client per simulated rank, built through the trainer's own entry point."""
    return [build_data(cfg, rank=r, world_size=world, micro_batch_size=micro, grad_accum=accum,
                       is_local_leader=r == 0, barrier=lambda: None).client for r in range(world)]


def run_steps(clients: list[ClientBase], steps: int) -> dict[int, Sample]:
    """Consume ``steps`` optimizer steps on every rank; the samples seen, keyed by sample id."""
    out: dict[int, Sample] = {}
    for _ in range(steps):
        for c in clients:
            for _ in range(c.grad_accum):
                batch = c.next_micro_batch()
                for j, sid in enumerate(batch["sample_id"].tolist()):
                    assert sid not in out, f"sample {sid} delivered twice"
                    out[sid] = {k: (v[j].numpy() if isinstance(v, torch.Tensor) else v[j]) for k, v in batch.items()}
        for c in clients:
            c.step_done()
    return out


def close_all(clients: list[ClientBase]) -> None:
    for c in clients:
        c.close()


def reference(cfg: DataConfig, n: int) -> dict[int, Sample]:
    """The first ``n`` samples of the plan, decoded in-process by a single rank."""
    cfg = dataclasses.replace(cfg, num_workers=0)
    clients = make_clients(cfg, world=1, micro=n, accum=1)
    try:
        return run_steps(clients, 1)
    finally:
        close_all(clients)


def assert_same_samples(got: dict[int, Sample], want: dict[int, Sample]) -> None:
    assert sorted(got) == sorted(want)
    for sid in sorted(want):
        for key, value in want[sid].items():
            if isinstance(value, np.ndarray):
                assert got[sid][key].dtype == value.dtype and np.array_equal(got[sid][key], value), (sid, key)
            else:
                assert got[sid][key] == value, (sid, key)


# ---------------------------------------------------------------------------------------------


def test_resume_with_another_world_size_continues_the_sequence(data_cfg: DataConfig) -> None:
    G = 12
    want = reference(data_cfg, 4 * G)
    first = make_clients(data_cfg, world=2, micro=3, accum=2)
    got = run_steps(first, 2)
    states = [c.state_dict() for c in first]
    close_all(first)
    assert all(s == states[0] for s in states) and states[0]["consumed"] == 2 * G

    second = make_clients(data_cfg, world=3, micro=2, accum=2)
    for c in second:
        c.load_state_dict(states[0])
    got.update(run_steps(second, 2))
    close_all(second)
    assert_same_samples(got, want)


def test_changed_mixture_is_refused_unless_allowed(data_cfg: DataConfig) -> None:
    (client,) = make_clients(data_cfg, world=1, micro=2, accum=1)
    run_steps([client], 2)
    state = client.state_dict()
    client.close()
    changed = dataclasses.replace(data_cfg, datasets=[dataclasses.replace(data_cfg.datasets[0], split="train[:50%]")])
    (other,) = make_clients(changed, world=1, micro=2, accum=1)
    with pytest.raises(PlanMismatchError, match="allow_new_plan"):
        other.load_state_dict(state)
    other.load_state_dict(state, allow_new_plan=True)
    assert other.consumed == 0
    assert other.next_micro_batch()["sample_id"].tolist() == [0, 1]
    other.close()


def test_stats_have_the_fixed_key_set(data_cfg: DataConfig) -> None:
    (client,) = make_clients(data_cfg, world=1, micro=2, accum=2)
    assert set(client.stats.pop()) == set(STAT_KEYS)  # before any batch too: every rank, every step
    run_steps([client], 2)
    stats = client.stats.pop()
    client.close()
    assert set(stats) == set(STAT_KEYS)
    assert stats["data/samples"] == 8 and stats["data/samples_per_s"] > 0 and stats["data/decode_s"] > 0


def test_bad_samples_are_replaced_deterministically(make_tiny: TinyFactory) -> None:
    episodes = [tiny_episode(8, seed=i) for i in range(4)]
    episodes[1]["steps/observation/image"][3] = b"not an image"
    path = make_tiny(episodes)
    cfg = DataConfig(datasets=[DatasetEntry(path=str(path))], image_size=8, action_horizon=2, on_bad_sample="skip",
                     plan_block_size=64)
    a, b = reference(cfg, 32), reference(cfg, 32)
    assert_same_samples(a, b)
    strict = dataclasses.replace(cfg, on_bad_sample="error")
    from lavla.data_service.errors import DataError

    with pytest.raises(DataError, match="episode 1.*cannot decode"):
        reference(strict, 32)


class _FakeVideoSource:
    """An action-less source with its own sample assembly (the human-video seam)."""

    name = "fake_video"

    def __init__(self, spec: Any, lengths: list[int]) -> None:
        self.spec = dataclasses.replace(spec, name="fake_video", is_video=True, embodiment_id=5)
        self.episode_lengths = np.asarray(lengths, np.int64)
        self.num_episodes = len(lengths)
        self.fingerprint = "fake-video-v1"

    def read_episode(self, i: int) -> int:
        return i

    def make_sample(self, episode: int, t: int, source: Any, normalizer: Any, cfg: DataConfig) -> Sample:
        s = cfg.image_size
        frame = np.full((3, s, s), (episode * 7 + t) % 256, np.uint8)
        return {"sample_id": np.int64(-1), "image_primary": frame, "image_future": frame,
                "image_wrist": np.zeros_like(frame), "has_wrist": np.asarray(False),
                "proprio": np.zeros(cfg.max_proprio_dim, np.float32),
                "proprio_dim_mask": np.zeros(cfg.max_proprio_dim, bool),
                "action": np.zeros((cfg.action_horizon, cfg.max_action_dim), np.float32),
                "action_valid": np.zeros(cfg.action_horizon, bool),
                "action_dim_mask": np.zeros(cfg.max_action_dim, bool),
                "has_action": np.asarray(False), "embodiment_id": np.int64(5), "dataset_id": np.int64(-1),
                "language": ""}


def test_robot_and_human_video_sources_mix_in_one_plan(data_cfg: DataConfig) -> None:
    robot = open_source(data_cfg.datasets[0], data_cfg)
    video = _FakeVideoSource(robot.spec, [5, 9, 4, 7, 6])
    sources = [robot, video]
    windows = [robot.episode_lengths, video.episode_lengths]
    plan = SamplePlan(build_plan_datasets(sources, [1.0, 2.0], windows), seed=0, block_size=32, episode_group=2)
    normalizers = [Normalizer(robot.statistics(), data_cfg.normalization, robot.spec.action_absolute_mask), None]
    reader = SampleReader(plan, sources, normalizers, data_cfg, make_sample)
    client = DataClient(plan, reader, rank=0, world_size=1, micro_batch_size=32, grad_accum=1)
    batch = client.next_micro_batch()
    client.close()
    ds = batch["dataset_id"].numpy()
    assert set(ds.tolist()) == {0, 1}
    assert np.array_equal(batch["has_action"].numpy(), ds == 0)
    assert np.array_equal(batch["embodiment_id"].numpy()[ds == 1], np.full((ds == 1).sum(), 5))
    # The block's exact quota: C_i = floor(32 * P_{i+1}) - floor(32 * P_i) over the cumulative mixture P.
    quota = np.diff(np.floor(32 * np.concatenate([[0.0], np.cumsum(plan.probabilities)]) + 1e-9))
    assert np.array_equal(np.bincount(ds, minlength=2), quota)


def test_missing_dataset_is_named_before_any_worker_starts(tmp_path: Path, data_cfg: DataConfig) -> None:
    # a missing dataset stops the build with the path named (before any worker starts)
    bad = dataclasses.replace(data_cfg, datasets=[DatasetEntry(path=str(tmp_path / "nope"))])
    from lavla.data_service.errors import DataError

    with pytest.raises(DataError, match="nope"):
        make_clients(bad, world=1, micro=1, accum=1)
