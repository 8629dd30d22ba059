from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from lavla.data_service.errors import DataError
from lavla.data_service.formats.example_proto import decode_example, encode_example
from lavla.data_service.formats.tfrecord import iter_records, masked_crc32c, read_record_at, scan_offsets, write_records


def test_masked_crc_known_values() -> None:
    # crc32c(b"") == 0, so the masked value is the mask delta itself; crc32c(b"123456789") == 0xE3069283.
    assert masked_crc32c(b"") == 0xA282EAD8
    crc = 0xE3069283
    assert masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_roundtrip_offsets_and_seek(tmp_path: Path) -> None:
    payloads = [b"", b"a", b"hello" * 100, bytes(range(256))]
    path = tmp_path / "x.tfrecord"
    offsets = write_records(path, payloads)
    assert scan_offsets(path) == offsets
    assert [p for _, p in iter_records(path)] == payloads
    with open(path, "rb") as f:
        assert read_record_at(f, offsets[2], path=path, index=2) == payloads[2]
    assert path.stat().st_size == sum(len(p) + 16 for p in payloads)


def test_bad_payload_crc_names_file_and_record(tmp_path: Path) -> None:
    path = tmp_path / "bad.tfrecord"
    offsets = write_records(path, [b"first record", b"second record"])
    data = bytearray(path.read_bytes())
    data[offsets[1] + 12 + 3] ^= 0x01  # flip a bit inside the second payload
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="bad payload CRC") as e:
        list(iter_records(path))
    assert e.value.file == str(path) and e.value.record == 1
    assert str(path) in str(e.value) and "record 1" in str(e.value)


def test_bad_length_crc(tmp_path: Path) -> None:
    path = tmp_path / "bad.tfrecord"
    write_records(path, [b"abc"])
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="bad length CRC"):
        scan_offsets(path)


@pytest.mark.parametrize("cut", [5, 14, 20])
def test_truncated_file(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "t.tfrecord"
    write_records(path, [b"x" * 10, b"y" * 10])  # second record starts at byte 26
    data = path.read_bytes()
    path.write_bytes(data[: 26 + cut])
    with pytest.raises(DataError, match="truncated") as e:
        list(iter_records(path))
    assert e.value.record == 1
    with pytest.raises(DataError, match="truncated"):
        scan_offsets(path)


def test_example_roundtrip() -> None:
    feats = {
        "f": np.linspace(0, 1, 7, dtype=np.float32),
        "i": np.array([1, -2, 3], np.int64),
        "b": np.array([True, False]),
        "s": ["héllo", "x"],
        "raw": [b"\x00\x01", b""],
    }
    out = decode_example(encode_example(feats))
    np.testing.assert_array_equal(out["f"], feats["f"])
    np.testing.assert_array_equal(out["i"], feats["i"])
    np.testing.assert_array_equal(out["b"], [1, 0])
    assert out["s"] == ["héllo".encode(), b"x"]
    assert out["raw"] == [b"\x00\x01", b""]
    assert out["f"].dtype == np.float32 and out["i"].dtype == np.int64


def test_example_is_packed_on_the_wire() -> None:
    # Packed repeated floats: one length-delimited blob of 4-byte floats, as TF writes them.
    blob = encode_example({"a": np.array([1.0, 2.0], np.float32)})
    assert struct.pack("<2f", 1.0, 2.0) in blob
