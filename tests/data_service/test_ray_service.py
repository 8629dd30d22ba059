"""The Ray data service against the in-process reference: identical samples, exact resume with
another world size and worker count, decoder crashes, bad samples, stats.

One small local Ray instance (2 CPUs, no dashboard) serves the whole module and is shut down at
its end; every test names its own service and kills its decoders when done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from lavla.data_service.config import DataConfig, DatasetEntry
from lavla.data_service.data_stats import STAT_KEYS
from lavla.data_service.errors import DataError
from lavla.data_service.datasets.registry import get_spec, register

from .conftest import TinyFactory, tiny_episode
from .test_loader import assert_same_samples, make_clients, reference, run_steps

ray = pytest.importorskip("ray")

NAMESPACE = "lavla-test"


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             namespace=NAMESPACE, object_store_memory=80 * 1024 * 1024)
    try:
        yield
    finally:
        ray.shutdown()


def _service(cfg: DataConfig, name: str, workers: int) -> DataConfig:
    return dataclasses.replace(cfg, num_workers=workers, service_name=name, ray_namespace=NAMESPACE, prefetch_batches=2)


def _shutdown(clients) -> None:
    clients[0].pool.shutdown()
    for c in clients:
        c.close()


@pytest.fixture
def mixed_cfg(data_cfg: DataConfig) -> DataConfig:
    """Two datasets (a second embodiment registered at run time: decoders get it with the sources)."""
    register(dataclasses.replace(get_spec("synthetic_world"), name="synthetic_world_b", embodiment_id=3))
    path = data_cfg.datasets[0].path
    return dataclasses.replace(data_cfg, datasets=[DatasetEntry(path=path, weight=1.0),
                                                   DatasetEntry(name="synthetic_world_b", path=path, weight=2.0)],
                               plan_block_size=64, episode_group=2)


def test_service_delivers_exactly_the_in_process_batches(ray_local: None, mixed_cfg: DataConfig) -> None:
    inproc = make_clients(mixed_cfg, world=2, micro=3, accum=2)
    served = make_clients(_service(mixed_cfg, "identical", 2), world=2, micro=3, accum=2)
    try:
        for _ in range(3):
            for a, b in zip(inproc, served):
                for _ in range(2):
                    x, y = a.next_micro_batch(), b.next_micro_batch()
                    assert x.keys() == y.keys()
                    for key in x:
                        if key == "language":
                            assert x[key] == y[key]
                        else:
                            assert x[key].dtype == y[key].dtype and x[key].equal(y[key]), key
            for c in inproc + served:
                c.step_done()
        assert {int(d) for d in y["dataset_id"]} | {int(d) for d in x["dataset_id"]} <= {0, 1}
        stats = served[0].stats.pop()
        assert set(stats) == set(STAT_KEYS) and stats["data/samples"] == 18 and stats["data/decode_s"] > 0
    finally:
        for c in inproc:
            c.close()
        _shutdown(served)


def test_resume_into_a_fresh_service_with_other_world_and_workers(ray_local: None, mixed_cfg: DataConfig) -> None:
    G = 12
    want = reference(mixed_cfg, 6 * G)
    first = make_clients(_service(mixed_cfg, "before", 2), world=2, micro=3, accum=2)
    got = run_steps(first, 3)
    state = first[1].state_dict()
    assert all(c.state_dict() == state for c in first)
    _shutdown(first)

    second = make_clients(_service(mixed_cfg, "after", 1), world=3, micro=2, accum=2)
    assert second[0].pool.num_workers == 1
    for c in second:
        c.load_state_dict(state)
    got.update(run_steps(second, 3))
    _shutdown(second)
    assert_same_samples(got, want)


@pytest.mark.parametrize("restart", [False, True], ids=["killed", "crashed-and-restarted"])
def test_killed_decoder_is_replaced_and_the_stream_is_unchanged(ray_local: None, data_cfg: DataConfig,
                                                                restart: bool) -> None:
    G = 8
    want = reference(data_cfg, 5 * G)
    clients = make_clients(_service(data_cfg, f"kill-{restart}", 2), world=2, micro=2, accum=2)
    try:
        got = run_steps(clients, 2)  # the prefetch window now holds requests to both decoders
        victim = clients[0].pool.handles[0]
        ray.kill(victim, no_restart=not restart)
        got.update(run_steps(clients, 3))
        reissued = sum(c.stats.pop()["data/requests_reissued"] for c in clients)
    finally:
        _shutdown(clients)
    assert_same_samples(got, want)
    assert reissued > 0


def test_bad_samples_through_the_service(ray_local: None, make_tiny: TinyFactory) -> None:
    episodes = [tiny_episode(8, seed=i) for i in range(4)]
    episodes[2]["steps/observation/image"][5] = b"garbage"
    path = make_tiny(episodes)
    cfg = DataConfig(datasets=[DatasetEntry(path=str(path))], image_size=8, action_horizon=2, on_bad_sample="skip",
                     plan_block_size=64)
    want = reference(cfg, 32)
    clients = make_clients(_service(cfg, "bad-skip", 2), world=1, micro=8, accum=1)
    try:
        got = run_steps(clients, 4)
        assert clients[0].stats.pop()["data/skipped"] > 0
    finally:
        _shutdown(clients)
    assert_same_samples(got, want)

    clients = make_clients(_service(dataclasses.replace(cfg, on_bad_sample="error"), "bad-error", 1),
                           world=1, micro=8, accum=1)
    try:  # the trainer sees the DataError itself (file, episode, field), not a Ray wrapper
        with pytest.raises(DataError, match="episode 2.*cannot decode"):
            run_steps(clients, 4)
    finally:
        _shutdown(clients)


def test_attaching_to_a_service_of_another_plan_is_refused(ray_local: None, data_cfg: DataConfig) -> None:
    from lavla.data_service.service.ray_service import DataServiceError

    clients = make_clients(_service(data_cfg, "shared", 1), world=1, micro=2, accum=1)
    try:
        with pytest.raises(DataServiceError, match="different plan"):
            make_clients(_service(dataclasses.replace(data_cfg, seed=7), "shared", 1), world=1, micro=2, accum=1)
    finally:
        _shutdown(clients)


def test_robot_and_human_video_mixture_through_the_service(ray_local: None, tmp_path, synthetic_dir) -> None:
    """Video sources travel to the decoders as objects and assemble their own action-less samples."""
    pytest.importorskip("av")
    pytest.importorskip("zarr")
    from lavla.data_service.config import SyntheticDataConfig
    from lavla.data_service.synthetic import generate_synthetic_human_video

    videos = generate_synthetic_human_video(SyntheticDataConfig(root=str(tmp_path), train_episodes=4, val_episodes=0,
                                                                episode_length=12, image_size=32, seed=0))
    cfg = DataConfig(datasets=[DatasetEntry(path=str(synthetic_dir)),
                               DatasetEntry(name="synthetic_human_video", path=str(videos))],
                     image_size=32, action_horizon=4, plan_block_size=16, episode_group=2)
    want = reference(cfg, 48)
    clients = make_clients(_service(cfg, "video", 2), world=2, micro=4, accum=1)
    try:
        got = run_steps(clients, 6)
    finally:
        _shutdown(clients)
    assert_same_samples(got, want)
    has_action = {bool(s["has_action"]) for s in got.values()}
    assert has_action == {True, False}


def test_rlds_and_lerobot_mixture_through_the_service(ray_local: None, synthetic_dir) -> None:
    """A LeRobot v3.0 dataset (inline spec, video frames decoded in the actors) mixed with RLDS: the
    service's samples equal the in-process reference."""
    pytest.importorskip("av")
    from pathlib import Path

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "lerobot" / "v3.0"
    spec = {"image_primary_key": "observation.images.front", "image_wrist_key": "observation.images.wrist",
            "proprio_keys": ["observation.state"], "action_keys": ["action"], "language_key": "task", "control_hz": 10.0}
    cfg = DataConfig(datasets=[DatasetEntry(path=str(synthetic_dir)),
                               DatasetEntry(name="lerobot_fixture", path=str(fixture), spec=spec)],
                     image_size=32, action_horizon=4, plan_block_size=16, episode_group=2)
    want = reference(cfg, 48)
    clients = make_clients(_service(cfg, "lerobot", 2), world=2, micro=4, accum=1)
    try:
        got = run_steps(clients, 6)
    finally:
        _shutdown(clients)
    assert_same_samples(got, want)
    assert {int(s["dataset_id"]) for s in got.values()} == {0, 1}
