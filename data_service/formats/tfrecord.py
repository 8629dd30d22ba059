"""TFRecord framing without TensorFlow.

A TFRecord file is a sequence of records, each::

    u64 length (little endian) | u32 masked_crc32c(length bytes) | payload | u32 masked_crc32c(payload)

Both checksums are verified on read, so a flipped bit or a truncated copy is reported as a
:class:`DataError` naming the file and the record index instead of surfacing as a protobuf
parse failure somewhere downstream. :func:`scan_offsets` walks only the headers (one seek per
record), which lets a reader build an index and later fetch one episode with a single seek.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import google_crc32c

from lavla.data_service.errors import DataError

_HEADER = struct.Struct("<QI")  # length, masked crc of the length bytes
_FOOTER = struct.Struct("<I")  # masked crc of the payload
_MASK_DELTA = 0xA282EAD8
HEADER_SIZE = _HEADER.size
FOOTER_SIZE = _FOOTER.size


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C: rotate right by 15 and add a constant (guards CRC-of-CRC)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(payload: bytes) -> bytes:
    """One framed record (header, payload, footer) as bytes."""
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked_crc32c(length)) + payload + _FOOTER.pack(masked_crc32c(payload))


class TFRecordWriter:
    """Appends framed records to a file; ``write`` returns the byte offset of the record."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._f: BinaryIO = open(self.path, "wb")
        self._offset = 0

    def write(self, payload: bytes) -> int:
        offset = self._offset
        data = frame(payload)
        self._f.write(data)
        self._offset += len(data)
        return offset

    @property
    def num_bytes(self) -> int:
        """Bytes written so far."""
        return self._offset

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_header(f: BinaryIO, path: Path, index: int, offset: int) -> int | None:
    """Length of the record at ``offset``; None at a clean end of file."""
    head = f.read(HEADER_SIZE)
    if not head:
        return None
    if len(head) < HEADER_SIZE:
        raise DataError(f"truncated record header at byte {offset} ({len(head)} of {HEADER_SIZE} bytes)",
                        file=path, record=index)
    length, length_crc = _HEADER.unpack(head)
    if masked_crc32c(head[:8]) != length_crc:
        raise DataError(f"bad length CRC at byte {offset} (corrupt or not a TFRecord file)", file=path, record=index)
    return length


def read_record_at(f: BinaryIO, offset: int, *, path: Path, index: int, verify: bool = True) -> bytes:
    """The payload of the record starting at ``offset`` (checksums verified)."""
    f.seek(offset)
    length = _read_header(f, path, index, offset)
    if length is None:
        raise DataError(f"no record at byte {offset} (file is shorter than its index)", file=path, record=index)
    body = f.read(length + FOOTER_SIZE)
    if len(body) < length + FOOTER_SIZE:
        raise DataError(
            f"truncated record at byte {offset}: expected {length + FOOTER_SIZE} payload+CRC bytes, got {len(body)}",
            file=path, record=index,
        )
    payload = body[:length]
    if verify and masked_crc32c(payload) != _FOOTER.unpack(body[length:])[0]:
        raise DataError(f"bad payload CRC at byte {offset} (corrupt data)", file=path, record=index)
    return payload


def iter_records(path: str | os.PathLike[str], *, verify: bool = True) -> Iterator[tuple[int, bytes]]:
    """Yields ``(byte offset, payload)`` for every record, in file order."""
    path = Path(path)
    with open(path, "rb") as f:
        offset, index = 0, 0
        while True:
            f.seek(offset)
            if not f.read(1):
                return
            payload = read_record_at(f, offset, path=path, index=index, verify=verify)
            yield offset, payload
            offset += HEADER_SIZE + len(payload) + FOOTER_SIZE
            index += 1


def scan_offsets(path: str | os.PathLike[str]) -> list[int]:
    """Byte offsets of all records, reading only headers (length CRCs are checked, payloads are not)."""
    path = Path(path)
    size = path.stat().st_size
    offsets: list[int] = []
    with open(path, "rb") as f:
        offset = 0
        while offset < size:
            f.seek(offset)
            length = _read_header(f, path, len(offsets), offset)
            if length is None:
                break
            end = offset + HEADER_SIZE + length + FOOTER_SIZE
            if end > size:
                raise DataError(f"truncated record at byte {offset}: needs {end - size} more bytes",
                                file=path, record=len(offsets))
            offsets.append(offset)
            offset = end
    return offsets


def write_records(path: str | os.PathLike[str], payloads: list[bytes]) -> list[int]:
    """Writes ``payloads`` as one TFRecord file; returns their byte offsets."""
    with TFRecordWriter(path) as w:
        return [w.write(p) for p in payloads]
