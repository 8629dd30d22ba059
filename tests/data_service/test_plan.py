"""The sample plan: pure, exact per epoch, mixture-faithful, world-size independent."""

from __future__ import annotations

import numpy as np
import pytest

from lavla.data_service.sampling.plan import PlanDataset, SamplePlan, keyed_permutation


def _plan(seed=0, weights=(1.0, 2.0), block=64, group=2):
    a = PlanDataset("a", np.array([5, 7, 3, 9, 1, 6]), weights[0], "fa")
    b = PlanDataset("b", np.array([4] * 10), weights[1], "fb")
    return SamplePlan([a, b], seed=seed, block_size=block, episode_group=group)


def _seq(plan, n, start=0):
    return [(s.dataset, s.episode, s.t) for s in map(plan.sample, range(start, start + n))]


def test_plan_is_a_pure_function_of_seed_and_index():
    p1, p2 = _plan(), _plan()
    assert _seq(p1, 500) == _seq(p2, 500)
    # random access gives the same answer as sequential access
    assert [(s.dataset, s.episode, s.t) for s in (p2.sample(i) for i in reversed(range(500)))][::-1] == _seq(p1, 500)
    assert _seq(_plan(seed=1), 200) != _seq(p1, 200)


def test_every_window_once_per_dataset_epoch():
    plan = _plan()
    samples = [plan.sample(i) for i in range(2000)]
    for d, ds in enumerate(plan.datasets):
        stream = [s for s in samples if s.dataset == d]
        n = int(ds.windows_per_episode.sum())
        for e in range(len(stream) // n):
            chunk = stream[e * n:(e + 1) * n]
            assert {s.epoch for s in chunk} == {e}
            assert len({(s.episode, s.t) for s in chunk}) == n
            assert all(0 <= s.t < ds.windows_per_episode[s.episode] for s in chunk)


def test_mixture_proportions_are_exact_at_block_boundaries():
    plan = _plan(weights=(3.0, 1.0), block=128)
    expected = plan.probabilities
    counts = np.bincount([plan.sample(i).dataset for i in range(128 * 20)], minlength=2)
    assert np.allclose(counts / counts.sum(), expected, atol=1.0 / 128)
    # weight x transitions, normalized (OpenVLA/Octo semantics)
    mass = np.array([3.0 * 31, 1.0 * 40])
    assert np.allclose(expected, mass / mass.sum())


def test_windows_interleave_across_episodes():
    plan = _plan(group=4)
    first = [plan.sample(i) for i in range(200) if plan.sample(i).dataset == 1][:16]
    assert len({s.episode for s in first}) >= 3


def test_rank_slices_partition_each_global_batch():
    from lavla.data_service.sampling.loader import DataClient

    plan = _plan()
    G = 12
    for world in (1, 2, 3, 4):
        micro = G // world
        union = []
        for r in range(world):
            c = DataClient(plan, reader=None, rank=r, world_size=world, micro_batch_size=micro, grad_accum=1)
            union += c.rank_indices(consumed=24, micro=0)
        assert sorted(union) == list(range(24, 36))


def test_fingerprint_changes_with_mixture():
    assert _plan().fingerprint == _plan().fingerprint
    assert _plan(weights=(1.0, 3.0)).fingerprint != _plan().fingerprint
    assert _plan(seed=5).fingerprint != _plan().fingerprint


def test_keyed_permutation_is_a_permutation():
    p = keyed_permutation(1000, 7, 3)
    assert sorted(p.tolist()) == list(range(1000))
    assert not np.array_equal(p, keyed_permutation(1000, 7, 4))


def test_empty_dataset_is_rejected():
    with pytest.raises(ValueError, match="no valid windows"):
        SamplePlan([PlanDataset("z", np.array([0, 0]), 1.0, "f")], seed=0)


def _mixed_plan(seed=0, block=256):
    """A robot-like dataset (few long episodes) and a human-video-like one (many short clips)."""
    robot = PlanDataset("robot", np.array([40, 55, 38, 61, 47, 50, 44, 59]), 1.0, "fr")
    video = PlanDataset("video", np.array([6, 8, 7, 5] * 25), 0.5, "fv")
    return SamplePlan([robot, video], seed=seed, block_size=block, episode_group=4)


def test_mixture_proportions_match_weights_within_sampling_error():
    plan = _mixed_plan()
    n = 40 * plan.block_size
    ds = np.array([plan.sample(i).dataset for i in range(n)])
    p = plan.probabilities
    # weight x transitions: 1.0 x 394 robot windows vs 0.5 x 650 video windows
    assert np.allclose(p, np.array([394.0, 325.0]) / 719.0)
    # At block boundaries the quota is exact (floor rounding: off by < 1).
    for b in range(1, 41):
        counts = np.bincount(ds[: b * plan.block_size], minlength=2)
        assert np.all(np.abs(counts - b * plan.block_size * p) < 1.0), b
    # Inside a block the slots are a random permutation: any prefix stays within hypergeometric
    # error of its expected share (5 sigma of a binomial bounds it from above).
    rng = np.random.default_rng(0)
    for m in rng.integers(1, n, 200):
        got = int((ds[:m] == 0).sum())
        sigma = np.sqrt(min(m % plan.block_size, plan.block_size // 2) * p[0] * p[1]) + 1.0
        assert abs(got - m * p[0]) <= 5 * sigma, m


def test_ranks_never_share_a_sample_within_an_epoch():
    from lavla.data_service.sampling.loader import DataClient

    plan = _mixed_plan(block=64)
    world, micro, accum = 3, 4, 2
    clients = [DataClient(plan, reader=None, rank=r, world_size=world, micro_batch_size=micro, grad_accum=accum)
               for r in range(world)]
    G = clients[0].global_batch_size
    # Enough steps for more than two full epochs of the robot dataset.
    steps = 2 * int(plan.datasets[0].windows_per_episode.sum() / plan.probabilities[0]) // G + 2
    seen: dict[tuple[int, int, int, int], int] = {}
    per_rank = [[] for _ in range(world)]
    for step in range(steps):
        for r, c in enumerate(clients):
            for m in range(accum):
                per_rank[r] += c.rank_indices(step * G, m)
    for r, indices in enumerate(per_rank):
        for i in indices:
            s = plan.sample(i)
            key = (s.dataset, s.epoch, s.episode, s.t)
            assert key not in seen, f"rank {r} and rank {seen[key]} both got {key}"
            seen[key] = r
    assert sorted(i for ind in per_rank for i in ind) == list(range(steps * G))
    # Two full epochs of the robot dataset were covered exactly once each.
    robot = [k for k in seen if k[0] == 0 and k[1] < 2]
    assert len(robot) == 2 * int(plan.datasets[0].windows_per_episode.sum())


def test_plan_rejects_invalid_settings():
    a = PlanDataset("a", np.array([3]), 1.0, "f")
    with pytest.raises(ValueError, match="block_size"):
        SamplePlan([a], seed=0, block_size=0)
    with pytest.raises(ValueError, match="mixture weight"):
        SamplePlan([PlanDataset("a", np.array([3]), float("nan"), "f")], seed=0)
    # an integer weight is the same mixture as its float
    as_int = SamplePlan([PlanDataset("a", np.array([3]), 1, "f")], seed=0)
    assert as_int.fingerprint == SamplePlan([a], seed=0).fingerprint
