from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from lavla.data_service.cache import store_json_cache
from lavla.data_service.errors import DataError
from lavla.data_service.formats.rlds import RLDSDataset
from lavla.data_service.formats.splits import resolve_split

from .conftest import TinyFactory, tiny_episode


@pytest.mark.parametrize(
    ("expr", "n", "expected"),
    [
        ("train[:95%]", 20, (0, 19)),
        ("train[95%:]", 20, (19, 20)),
        ("train[:95%]", 30, (0, 28)),  # 28.5 rounds half-to-even -> 28
        ("train[:12.5%]", 20, (0, 2)),  # 2.5 -> 2
        ("train[:37.5%]", 20, (0, 8)),  # 7.5 -> 8
        ("train[10:20]", 30, (10, 20)),
        ("train[-5:]", 30, (25, 30)),
        ("train[:-10%]", 30, (0, 27)),
        ("train[10%:20]", 50, (5, 10)),  # one unit applies to both bounds
        ("train", 7, (0, 7)),
    ],
)
def test_split_slicing_matches_tfds_rules(expr: str, n: int, expected: tuple[int, int]) -> None:
    (r,) = resolve_split(expr, {"train": [n]})
    assert (r.start, r.stop) == expected


def test_split_shards_sum_and_all() -> None:
    lengths = {"train": [4, 4, 3], "val": [2]}
    assert [(r.start, r.stop) for r in resolve_split("train[1shard:]", lengths)] == [(4, 11)]
    assert [(r.start, r.stop) for r in resolve_split("train[:-1shard]", lengths)] == [(0, 8)]
    assert [(r.split, len(r)) for r in resolve_split("all", lengths)] == [("train", 11), ("val", 2)]
    assert [(r.split, len(r)) for r in resolve_split("train[:50%] + val", lengths)] == [("train", 6), ("val", 2)]
    for bad in ("test", "train[:200%]", "train[0:40]", "train[1:2:3]", "all[:5]", "train[5]"):
        with pytest.raises(ValueError):
            resolve_split(bad, lengths)


def test_reads_synthetic_fixture(synthetic_dir: Path) -> None:
    ds = RLDSDataset(synthetic_dir)
    assert ds.name == "synthetic_world" and ds.version == "1.0.0"
    assert ds.splits == ["train", "val"]
    assert ds.num_episodes("train") == 6 and ds.num_episodes("val") == 2
    lengths = ds.episode_lengths("train")
    # episode_length 12 +-25%, or shorter when the expert finishes early (2 still steps after it)
    assert lengths.dtype == np.int64 and len(lengths) == 6 and lengths.min() >= 3 and lengths.max() <= 15
    ep = ds.read_episode("train", 3)
    T = int(lengths[3])
    assert ep.length == T
    assert ep.steps["steps/action"].shape == (T, 7) and ep.steps["steps/action"].dtype == np.float32
    assert ep.steps["steps/observation/state"].shape == (T, 8)
    assert ep.steps["steps/is_first"].dtype == bool and ep.steps["steps/is_first"][0]
    assert ep.steps["steps/observation/image"][0][:4] == b"\x89PNG"
    assert ep.steps["steps/observation/wrist_image"][0][:2] == b"\xff\xd8"
    assert len(ep.steps["steps/language_instruction"]) == T
    assert ep.metadata["episode_metadata/file_path"] == [b"synthetic_world/train/episode_00003"]


def test_split_slices_select_the_right_episodes(synthetic_dir: Path) -> None:
    ds = RLDSDataset(synthetic_dir)
    all_paths = [ds.read_episode("train", i).metadata["episode_metadata/file_path"][0] for i in range(6)]
    tail = [ds.read_episode("train[4:]", i).metadata["episode_metadata/file_path"][0] for i in range(2)]
    assert tail == all_paths[4:]
    np.testing.assert_array_equal(ds.episode_lengths("train[:50%]"), ds.episode_lengths("train")[:3])
    both = ds.episode_lengths("train[-1:]+val")
    assert len(both) == 3 and both[0] == ds.episode_lengths("train")[-1]
    with pytest.raises(IndexError):
        ds.read_episode("train[:50%]", 3)


def test_multi_shard_and_index_cache(make_tiny: TinyFactory) -> None:
    path = make_tiny([tiny_episode(3 + i, seed=i) for i in range(5)], num_shards=2)
    info = json.loads((path / "dataset_info.json").read_text())
    assert info["splits"][0]["shardLengths"] == ["3", "2"]
    ds = RLDSDataset(path)
    np.testing.assert_array_equal(ds.episode_lengths("train"), [3, 4, 5, 6, 7])
    cache = path / ".lavla_episode_index.train.json"
    assert cache.exists()
    assert ds.read_episode("train", 4).length == 7  # second shard, via the index offsets

    # A fresh reader uses the cache (no shard parse): make a parse impossible and read lengths.
    ds2 = RLDSDataset(path)
    ds2._index_shard = None  # type: ignore[assignment]
    np.testing.assert_array_equal(ds2.episode_lengths("train"), [3, 4, 5, 6, 7])

    # Rewriting a shard (size/mtime change) invalidates the cache.
    shard = path / "synthetic_world-train.tfrecord-00001-of-00002"
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds3 = RLDSDataset(path)
    calls = []
    orig = ds3._index_shard
    ds3._index_shard = lambda p, n: calls.append(p) or orig(p, n)  # type: ignore[assignment]
    ds3.episode_lengths("train")
    assert len(calls) == 2


def test_cache_falls_back_to_user_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    fallback = tmp_path / "user" / "c.json"
    written = store_json_cache([blocker / "c.json", fallback], {"fingerprint": "x"})
    assert written == fallback and json.loads(fallback.read_text()) == {"fingerprint": "x"}


def test_shard_count_mismatch_is_reported(make_tiny: TinyFactory) -> None:
    path = make_tiny()
    info = json.loads((path / "dataset_info.json").read_text())
    info["splits"][0]["shardLengths"] = ["5"]
    (path / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="shard has 3 episodes, dataset_info.json says 5"):
        RLDSDataset(path).episode_lengths("train")


def test_not_a_dataset_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset_info.json: missing"):
        RLDSDataset(tmp_path)
