"""Offline latent-action labels in training samples (``data.latent_labels``): every sample carries
the labels of its action-chunk steps, through the in-process loader and the Ray service; an
unannotated mixture dataset gets ``has_latent`` False; incomplete or mismatched stores are
DataErrors naming store, dataset and episode.

The store labels step t of episode e with ids ``(e * 1000 + t + q) % K`` and embeddings
``ids + d / 4``, so every delivered value can be checked against its (episode, step) identity.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("zarr")

from lavla.data_service.config import DataConfig, DatasetEntry, SyntheticDataConfig  # noqa: E402
from lavla.data_service.errors import DataError  # noqa: E402
from lavla.data_service.latents import store as latent_store  # noqa: E402
from lavla.data_service.latents.store import LatentStoreWriter  # noqa: E402
from lavla.data_service.pipeline import DataBundle, build_data  # noqa: E402
from lavla.data_service.sampling.reader import stack_samples  # noqa: E402
from lavla.data_service.datasets.registry import get_spec, register  # noqa: E402
from lavla.data_service.schema import LATENT_KEYS, LIST_KEYS, TENSOR_KEYS  # noqa: E402
from lavla.data_service.sources import open_source  # noqa: E402

Q, D, K = 2, 3, 100_003


def expected_labels(episode: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    ids = (episode * 1000 + np.arange(T)[:, None] + np.arange(Q)[None, :]) % K
    emb = ids[:, :, None] + np.arange(D)[None, None, :] / 4.0
    return ids.astype(np.int64), emb.astype(np.float32)


def write_store(path: Path, dataset: str, lengths: np.ndarray, *, skip: tuple[int, ...] = (), short: tuple[int, ...] = (),
                split: str | None = "train") -> Path:
    """Labels for every episode of ``dataset`` (except ``skip``; ``short`` ones lack their last step)."""
    meta = {"splits": {dataset: split}} if split else {}
    w = LatentStoreWriter(path, num_tokens=Q, dim=D, metadata=meta)
    for e, T in enumerate(np.asarray(lengths).tolist()):
        if e in skip or T == 0:
            continue
        ids, emb = expected_labels(e, T)
        n = T - 1 if e in short else T
        w.write_episode(dataset, e, ids[:n], emb[:n])
    return path


def lengths_of(cfg: DataConfig, i: int = 0) -> np.ndarray:
    return np.asarray(open_source(cfg.datasets[i], cfg).episode_lengths)


def bundle(cfg: DataConfig, micro: int = 16) -> DataBundle:
    return build_data(cfg, rank=0, world_size=1, micro_batch_size=micro, grad_accum=1, is_local_leader=True,
                      barrier=lambda: None)


def batches(b: DataBundle, n: int) -> list[dict[str, Any]]:
    try:
        out = []
        for _ in range(n):
            out.append(b.client.next_micro_batch())
            b.client.step_done()
        return out
    finally:
        b.client.close()


def check_batch(batch: dict[str, Any], b: DataBundle, cfg: DataConfig, annotated: set[str]) -> dict[str, int]:
    """Every sample's latent keys against its plan identity; counts of what was seen."""
    N = cfg.action_horizon
    B = len(batch["sample_id"])
    assert set(batch) == set(TENSOR_KEYS) | set(LIST_KEYS) | set(LATENT_KEYS)
    shapes = {"latent_ids": ((B, N, Q), torch.int64), "latent_emb": ((B, N, Q, D), torch.float32),
              "latent_valid": ((B, N), torch.bool), "has_latent": ((B,), torch.bool)}
    for key, (shape, dtype) in shapes.items():
        assert tuple(batch[key].shape) == shape and batch[key].dtype == dtype, key
    seen = {"annotated": 0, "unannotated": 0, "clamped": 0}
    for j, sid in enumerate(batch["sample_id"].tolist()):
        s = b.plan.sample(sid)
        source = b.sources[s.dataset]
        ids, emb = batch["latent_ids"][j].numpy(), batch["latent_emb"][j].numpy()
        valid, has = batch["latent_valid"][j].numpy(), bool(batch["has_latent"][j])
        if source.name not in annotated:
            assert not has and not valid.any() and not ids.any() and not emb.any(), sid
            seen["unannotated"] += 1
            continue
        T = int(source.episode_lengths[s.episode])
        idx = np.arange(s.t, s.t + N)
        want_ids, want_emb = expected_labels(s.episode, T)
        assert has, sid
        np.testing.assert_array_equal(valid, idx < T)
        np.testing.assert_array_equal(ids, want_ids[np.minimum(idx, T - 1)])
        np.testing.assert_array_equal(emb, want_emb[np.minimum(idx, T - 1)])
        if bool(batch["has_action"][j]):  # the same step indices as the action chunk
            np.testing.assert_array_equal(valid, batch["action_valid"][j].numpy())
        seen["annotated"] += 1
        seen["clamped"] += int((~valid).any())
    return seen


# ---------------------------------------------------------------------------------------------


def test_samples_carry_the_labels_of_their_chunk_steps(tmp_path: Path, data_cfg: DataConfig,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = write_store(tmp_path / "latents.zarr", "synthetic_world", lengths_of(data_cfg))
    cfg = dataclasses.replace(data_cfg, latent_labels=str(store), plan_block_size=64)
    opened: list[str] = []
    real_open = latent_store.zarr.open_array
    monkeypatch.setattr(latent_store.zarr, "open_array", lambda path, **kw: opened.append(path) or real_open(path, **kw))
    b = bundle(cfg)
    seen = {"annotated": 0, "clamped": 0}
    got = batches(b, 4)
    for batch in got:
        for k, v in check_batch(batch, b, cfg, {"synthetic_world"}).items():
            seen[k] = seen.get(k, 0) + v
    assert seen["annotated"] == 64 and seen["clamped"] > 0  # some chunks run past the episode end
    episodes = {b.plan.sample(i).episode for batch in got for i in batch["sample_id"].tolist()}
    assert len(opened) == 2 * len(episodes)  # the LRU: each episode's two arrays are read once

    plain = batches(bundle(data_cfg), 1)[0]  # without the setting: no latent keys at all
    assert set(plain) == set(TENSOR_KEYS) | set(LIST_KEYS)


def test_unannotated_mixture_dataset_gets_has_latent_false(tmp_path: Path, data_cfg: DataConfig,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    register(dataclasses.replace(get_spec("synthetic_world"), name="synthetic_world_b", embodiment_id=3))
    path = data_cfg.datasets[0].path
    store = write_store(tmp_path / "latents.zarr", "synthetic_world", lengths_of(data_cfg))
    cfg = dataclasses.replace(data_cfg, datasets=[DatasetEntry(path=path), DatasetEntry(name="synthetic_world_b", path=path)],
                              latent_labels=str(store), plan_block_size=32, episode_group=2)
    with caplog.at_level(logging.WARNING, logger="lavla.data_service.latents.labels"):
        b = bundle(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no labels for dataset 'synthetic_world_b'" in warnings[0]
    seen = {"annotated": 0, "unannotated": 0}
    for batch in batches(b, 2):
        for k in seen:
            seen[k] += check_batch(batch, b, cfg, {"synthetic_world"})[k]
    assert seen["annotated"] > 0 and seen["unannotated"] > 0


def test_missing_episode_is_a_data_error_naming_store_dataset_episode(tmp_path: Path, data_cfg: DataConfig) -> None:
    lengths = lengths_of(data_cfg)
    store = write_store(tmp_path / "latents.zarr", "synthetic_world", lengths, skip=(2, 4))
    cfg = dataclasses.replace(data_cfg, latent_labels=str(store))
    with pytest.raises(DataError) as e:
        bundle(cfg)
    msg = str(e.value)
    assert str(store) in msg and "'synthetic_world'" in msg and "episode 2" in msg and "episodes 2, 4" in msg
    assert (e.value.file, e.value.episode, e.value.field) == (str(store), 2, "latents/synthetic_world")

    # on_bad_sample=skip: a warning at start-up, then those episodes' samples are replaced
    skip = dataclasses.replace(cfg, on_bad_sample="skip", plan_block_size=64)
    b = bundle(skip)
    got = batches(b, 4)
    assert b.stats.pop()["data/skipped"] > 0
    for batch in got:  # a replacement keeps its plan index as sample_id: read its episode off the labels
        assert batch["has_latent"].all()
        assert not set((batch["latent_ids"][:, 0, 0] // 1000).tolist()) & {2, 4}


def test_label_count_or_split_mismatch_is_a_data_error(tmp_path: Path, data_cfg: DataConfig) -> None:
    lengths = lengths_of(data_cfg)
    short = write_store(tmp_path / "short.zarr", "synthetic_world", lengths, short=(1,))
    with pytest.raises(DataError, match=r"latent labels cover \d+ steps of dataset 'synthetic_world' episode 1") as e:
        batches(bundle(dataclasses.replace(data_cfg, latent_labels=str(short)), micro=64), 1)
    assert e.value.file == str(short) and e.value.episode == 1

    # labels of the second half cannot serve the first half; labels of the whole split serve a prefix
    half = round(len(lengths) / 2)
    other = write_store(tmp_path / "other.zarr", "synthetic_world", lengths[half:], split="train[50%:]")
    with pytest.raises(DataError, match=r"written for split 'train\[50%:\]', the mixture reads 'train\[:50%\]'"):
        bundle(dataclasses.replace(data_cfg, latent_labels=str(other),
                                   datasets=[dataclasses.replace(data_cfg.datasets[0], split="train[:50%]")]))
    whole = write_store(tmp_path / "whole.zarr", "synthetic_world", lengths)
    both = [data_cfg.datasets[0], dataclasses.replace(data_cfg.datasets[0], split="val")]  # one name, two splits
    with pytest.raises(DataError, match=r"written for split 'train', the mixture reads 'val'"):
        bundle(dataclasses.replace(data_cfg, latent_labels=str(whole), datasets=both))
    prefix = dataclasses.replace(data_cfg, latent_labels=str(whole), plan_block_size=16,
                                 datasets=[dataclasses.replace(data_cfg.datasets[0], split="train[:50%]")])
    b = bundle(prefix)
    check_batch(batches(b, 1)[0], b, prefix, {"synthetic_world"})


def test_human_video_clips_are_labelled_by_clip_index(tmp_path: Path, synthetic_dir: Path) -> None:
    pytest.importorskip("av")
    from lavla.data_service.synthetic import generate_synthetic_human_video

    videos = generate_synthetic_human_video(SyntheticDataConfig(root=str(tmp_path), train_episodes=3, val_episodes=0,
                                                                episode_length=10, image_size=32, seed=0))
    name = "synthetic_human_video"
    cfg = DataConfig(datasets=[DatasetEntry(path=str(synthetic_dir)), DatasetEntry(name=name, path=str(videos))],
                     image_size=32, action_horizon=4, plan_block_size=32, episode_group=2)
    store = write_store(tmp_path / "latents.zarr", name, lengths_of(cfg, 1))  # only the clips are annotated
    cfg = dataclasses.replace(cfg, latent_labels=str(store))
    b = bundle(cfg)
    seen = check_batch(batches(b, 2)[1], b, cfg, {name})
    assert seen["annotated"] > 0 and seen["unannotated"] > 0


def test_stacking_refuses_mixed_latent_keys() -> None:
    a = {k: np.zeros(1) for k in TENSOR_KEYS} | {"language": ""}
    b = {**a, **{k: np.zeros(1) for k in LATENT_KEYS}}
    assert set(stack_samples([b, b])) >= set(LATENT_KEYS)
    with pytest.raises(ValueError, match="tensor keys"):
        stack_samples([a, b])


def test_ray_service_carries_the_labels(tmp_path: Path, data_cfg: DataConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "0")  # shared CI machines: no OOM kills of a 1-actor test
    store = write_store(tmp_path / "latents.zarr", "synthetic_world", lengths_of(data_cfg))
    cfg = dataclasses.replace(data_cfg, latent_labels=str(store), plan_block_size=64)
    want = batches(bundle(cfg, micro=8), 2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             namespace="lavla-test-latents", object_store_memory=80 * 1024 * 1024)
    try:
        served = dataclasses.replace(cfg, num_workers=1, service_name="latents", ray_namespace="lavla-test-latents")
        b = bundle(served, micro=8)
        try:
            got = []
            for _ in range(2):
                got.append(b.client.next_micro_batch())
                b.client.step_done()
        finally:
            b.client.pool.shutdown()
            b.client.close()
    finally:
        ray.shutdown()
    for x, y in zip(want, got):
        assert x.keys() == y.keys()
        for key in x:
            if key in LIST_KEYS:
                assert x[key] == y[key]
            else:
                assert x[key].dtype == y[key].dtype and x[key].equal(y[key]), key
        check_batch(y, b, served, {"synthetic_world"})
