"""Every kind of bad input is a DataError that names the file, the episode and the field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lavla.data_service.config import DataConfig, DatasetEntry
from lavla.data_service.errors import DataError
from lavla.data_service.formats.example_proto import Example
from lavla.data_service.formats.rlds import RLDSDataset
from lavla.data_service.sources import open_source
from lavla.data_service.formats.tfrecord import frame, scan_offsets

from .conftest import TinyFactory, tiny_episode

SHARD = "synthetic_world-train.tfrecord-00000-of-00001"


def _read(path: Path, episode: int) -> None:
    cfg = DataConfig(datasets=[DatasetEntry(path=str(path))])
    open_source(cfg.datasets[0], cfg).read_episode(episode)


def _assert_located(err: DataError, path: Path, episode: int | None, field: str | None) -> None:
    """``path``: the dataset dir (error in a shard of it) or the shard itself."""
    assert err.file is not None
    assert Path(err.file) == path or Path(err.file) == path / SHARD
    assert err.episode == episode
    assert err.field == field
    msg = str(err)
    assert err.file in msg
    if episode is not None:
        assert f"episode {episode}" in msg
    if field is not None:
        assert repr(field) in msg


def _episodes_with(i: int, **changes: object) -> list[dict[str, object]]:
    eps = [tiny_episode(4, seed=k) for k in range(3)]
    eps[i].update(changes)
    return eps


def test_nan_action(make_tiny: TinyFactory) -> None:
    ep = tiny_episode(4, seed=1)
    action = np.array(ep["steps/action"])
    action[2, 3] = np.nan
    path = make_tiny(_episodes_with(1, **{"steps/action": action}))
    with pytest.raises(DataError, match=r"contains NaN \(first at step 2, dim 3\)") as e:
        _read(path, 1)
    _assert_located(e.value, path, 1, "steps/action")
    _read(path, 0)  # the neighbours are fine


def test_inf_proprio(make_tiny: TinyFactory) -> None:
    state = np.zeros((4, 8), np.float32)
    state[0, 0] = np.inf
    path = make_tiny(_episodes_with(2, **{"steps/observation/state": state}))
    with pytest.raises(DataError, match="contains inf") as e:
        _read(path, 2)
    _assert_located(e.value, path, 2, "steps/observation/state")


def test_empty_instruction(make_tiny: TinyFactory) -> None:
    path = make_tiny(_episodes_with(0, **{"steps/language_instruction": ["", " ", "", ""]}))
    with pytest.raises(DataError, match="empty language instruction") as e:
        _read(path, 0)
    _assert_located(e.value, path, 0, "steps/language_instruction")


def test_wrong_shape(make_tiny: TinyFactory) -> None:
    path = make_tiny(_episodes_with(1, **{"steps/action": np.zeros((4, 6), np.float32)}))
    with pytest.raises(DataError, match="wrong shape") as e:
        _read(path, 1)
    _assert_located(e.value, path, 1, "steps/action")


def test_missing_feature_key(make_tiny: TinyFactory) -> None:
    path = make_tiny()
    # Rewrite episode 1 without its state key (the writer refuses to, so edit the Example).
    shard = path / SHARD
    data = shard.read_bytes()
    offsets = scan_offsets(shard) + [len(data)]
    records = [data[offsets[i] + 12: offsets[i + 1] - 4] for i in range(3)]
    ex = Example.FromString(records[1])
    del ex.features.feature["steps/observation/state"]
    records[1] = ex.SerializeToString()
    shard.write_bytes(b"".join(frame(r) for r in records))
    with pytest.raises(DataError, match="missing feature key") as e:
        _read(path, 1)
    _assert_located(e.value, path, 1, "steps/observation/state")


def test_bad_crc_in_shard(make_tiny: TinyFactory) -> None:
    path = make_tiny()
    shard = path / SHARD
    offsets = scan_offsets(shard)
    data = bytearray(shard.read_bytes())
    data[offsets[2] + 40] ^= 0xFF  # inside episode 2's payload
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="bad payload CRC") as e:
        _read(path, 0)  # strict (on_bad_sample: error): indexing the split reports it
    _assert_located(e.value, shard, 2, None)
    assert e.value.record == 2 and "record 2" in str(e.value)
    # Lenient (on_bad_sample: skip): the bad episode gets length 0 and the others stay readable.
    cfg = DataConfig(datasets=[DatasetEntry(path=str(path))], on_bad_sample="skip")
    src = open_source(cfg.datasets[0], cfg)
    np.testing.assert_array_equal(src.episode_lengths, [4, 5, 0])
    src.read_episode(1)
    with pytest.raises(DataError, match="bad payload CRC") as e:
        src.read_episode(2)
    _assert_located(e.value, shard, 2, None)
    assert src.statistics().num_trajectories == 2


def test_truncated_shard(make_tiny: TinyFactory) -> None:
    path = make_tiny()
    shard = path / SHARD
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated") as e:
        _read(path, 0)  # indexing the split walks the whole shard
    _assert_located(e.value, shard, 2, None)
    assert e.value.record == 2
    cfg = DataConfig(datasets=[DatasetEntry(path=str(path))], on_bad_sample="skip")
    np.testing.assert_array_equal(open_source(cfg.datasets[0], cfg).episode_lengths, [4, 5, 0])


def test_missing_shard_file(make_tiny: TinyFactory) -> None:
    path = make_tiny()
    (path / SHARD).unlink()
    with pytest.raises(DataError, match="missing") as e:
        _read(path, 0)
    assert e.value.file == str(path / SHARD)


def test_bad_metadata_files(make_tiny: TinyFactory) -> None:
    path = make_tiny()
    (path / "features.json").write_text("{not json")
    with pytest.raises(DataError, match="invalid JSON") as e:
        RLDSDataset(path)
    assert e.value.file == str(path / "features.json")
    (path / "features.json").write_text(json.dumps({"type": "old"}))
    with pytest.raises(DataError, match="unsupported features.json layout"):
        RLDSDataset(path)


def test_data_error_is_picklable() -> None:
    import pickle

    err = DataError("contains NaN", file="/x/shard", episode=12, field="steps/action")
    assert str(err) == "/x/shard: episode 12, field 'steps/action': contains NaN"
    back = pickle.loads(pickle.dumps(err))
    assert (back.file, back.episode, back.field, str(back)) == (err.file, err.episode, err.field, str(err))
