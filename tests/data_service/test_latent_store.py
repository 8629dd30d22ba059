"""Latent-action label store: round trip, completion markers, errors for missing keys."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("zarr")

from lavla.data_service.latents import store as latent_store  # noqa: E402
from lavla.data_service.errors import DataError  # noqa: E402
from lavla.data_service.latents.store import LatentStore, LatentStoreWriter  # noqa: E402

Q, D = 4, 6


def _labels(T: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 16, (T, Q)), rng.normal(size=(T, Q, D)).astype(np.float32)


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "latents.zarr"
    w = LatentStoreWriter(path, num_tokens=Q, dim=D, metadata={"lam": "ckpt-1000", "codebook_size": 16})
    data = {("bridge_orig", 0): _labels(5, 0), ("bridge_orig", 7): _labels(70, 1), ("ssv2", 3): _labels(2, 2)}
    for (ds, ep), (ids, emb) in data.items():
        w.write_episode(ds, ep, ids, emb)
    # A second writer (another annotation rank) appends to the same store.
    LatentStoreWriter(path, num_tokens=Q, dim=D).write_episode("ssv2", 4, *_labels(3, 3))
    data[("ssv2", 4)] = _labels(3, 3)

    store = LatentStore(path)
    assert (store.num_tokens, store.dim, store.metadata["lam"]) == (Q, D, "ckpt-1000")
    assert store.episodes("bridge_orig") == [0, 7] and store.episodes("ssv2") == [3, 4] and store.episodes("x") == []
    for (ds, ep), (ids, emb) in data.items():
        got_ids, got_emb = store.get(ds, ep, np.arange(len(ids)))
        assert got_ids.dtype == np.int64 and got_emb.dtype == np.float32
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_array_equal(got_emb, emb)
    ids, emb = data[("bridge_orig", 7)]
    got_ids, got_emb = store.get("bridge_orig", 7, [69, 0, 64, 0])  # across step chunks, any order, repeats
    np.testing.assert_array_equal(got_ids, ids[[69, 0, 64, 0]])
    np.testing.assert_array_equal(got_emb, emb[[69, 0, 64, 0]])
    one_ids, one_emb = store.get("bridge_orig", 7, 3)
    assert one_ids.shape == (Q,) and one_emb.shape == (Q, D)
    np.testing.assert_array_equal(store.get("bridge_orig", 7, slice(10, 13))[0], ids[10:13])
    assert store.num_steps("bridge_orig", 7) == 70
    tiny = LatentStore(path, cache_bytes=1)  # the loaded-episode LRU keeps just the latest one
    for (ds, ep), (ids, _) in data.items():
        np.testing.assert_array_equal(tiny.get(ds, ep, [0])[0], ids[[0]])
    assert len(tiny._open) == 1
    again = pickle.loads(pickle.dumps(store))  # crosses to decode workers
    np.testing.assert_array_equal(again.get("ssv2", 3, [1])[0], data[("ssv2", 3)][0][[1]])


def test_missing_keys_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "latents.zarr"
    LatentStoreWriter(path, num_tokens=Q, dim=D).write_episode("ssv2", 0, *_labels(4, 0))
    store = LatentStore(path)
    with pytest.raises(DataError, match="no latent labels for dataset 'ssv2' episode 1") as e:
        store.get("ssv2", 1, [0])
    assert (e.value.file, e.value.episode, e.value.field) == (str(path), 1, "latents/ssv2")
    with pytest.raises(DataError, match="no latent labels for dataset 'ego4d' episode 0"):
        store.get("ego4d", 0, [0])
    with pytest.raises(DataError, match="step 4 outside the episode's 4 labelled steps"):
        store.get("ssv2", 0, [1, 4])
    with pytest.raises(DataError, match="latent store not found"):
        LatentStore(tmp_path / "nowhere.zarr")


def test_incomplete_episode_is_invisible_until_rewritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "latents.zarr"
    w = LatentStoreWriter(path, num_tokens=Q, dim=D)

    def crash(*a: object, **k: object) -> None:
        raise KeyboardInterrupt  # killed after the arrays, before the completion marker

    monkeypatch.setattr(latent_store, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        w.write_episode("droid", 2, *_labels(6, 0))
    monkeypatch.undo()
    store = LatentStore(path)
    assert not store.has("droid", 2) and store.episodes("droid") == []
    with pytest.raises(DataError, match="did not complete"):
        store.get("droid", 2, [0])
    assert not w.is_complete("droid", 2)
    w.write_episode("droid", 2, *_labels(6, 1))  # the job redoes it
    np.testing.assert_array_equal(LatentStore(path).get("droid", 2, [5])[0], _labels(6, 1)[0][[5]])


def test_rewrite_replaces_an_episode(tmp_path: Path) -> None:
    path = tmp_path / "latents.zarr"
    w = LatentStoreWriter(path, num_tokens=Q, dim=D)
    w.write_episode("a", 0, *_labels(9, 0))
    w.write_episode("a", 0, *_labels(3, 1))
    ids, _ = LatentStore(path).get("a", 0, slice(None))
    np.testing.assert_array_equal(ids, _labels(3, 1)[0])


def test_writer_validates_input(tmp_path: Path) -> None:
    path = tmp_path / "latents.zarr"
    w = LatentStoreWriter(path, num_tokens=Q, dim=D)
    ids, emb = _labels(3, 0)
    with pytest.raises(ValueError, match=r"ids must be integers of shape \(T, 4\)"):
        w.write_episode("a", 0, ids[:, :2], emb)
    with pytest.raises(ValueError, match="ids must be integers"):
        w.write_episode("a", 0, ids.astype(np.float32), emb)
    with pytest.raises(ValueError, match=r"embeddings must have shape \(3, 4, 6\)"):
        w.write_episode("a", 0, ids, emb[:, :, :2])
    bad = emb.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        w.write_episode("a", 0, ids, bad)
    with pytest.raises(ValueError, match="not usable as a store path"):
        w.write_episode("../evil", 0, ids, emb)
    with pytest.raises(ValueError, match="store holds Q=4, D=6"):
        LatentStoreWriter(path, num_tokens=8, dim=D)
