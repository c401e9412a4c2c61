"""TensorBoard scalars without TensorBoard: event files written by hand, in pure Python.

An event file is a TFRecord stream: per record the length (uint64, little-endian), the masked
CRC-32C of those 8 bytes (uint32), the data, and the masked CRC-32C of the data. Each record is a
serialized ``tensorflow.Event`` protobuf: the first says ``file_version: "brain.Event:2"``, each
later one holds a ``Summary`` of scalars (tag, simple_value) at a step. Only the few protobuf
fields used here are encoded. `tensorboard --logdir RUN_DIR` reads the files.
"""

from __future__ import annotations

import itertools
import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The CRC as TFRecord stores it: rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, the data's masked CRC."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# ------------------------------------------------------------------ protobuf wire format, by hand

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _int64_field(field: int, value: int) -> bytes:  # wire type 0, two's complement for negatives
    return _key(field, 0) + _varint(value & 0xFFFFFFFFFFFFFFFF)


def _double_field(field: int, value: float) -> bytes:  # wire type 1: fixed64
    return _key(field, 1) + struct.pack("<d", value)


def _bytes_field(field: int, value: bytes) -> bytes:  # wire type 2: length-delimited
    return _key(field, 2) + _varint(len(value)) + value


def _float_field(field: int, value: float) -> bytes:  # wire type 5: fixed32
    return _key(field, 5) + struct.pack("<f", value)


def version_event(wall_time: float) -> bytes:
    """Event{wall_time: 1, file_version: 3}: the first record of every event file."""
    return _double_field(1, wall_time) + _bytes_field(3, b"brain.Event:2")


def scalars_event(wall_time: float, step: int, scalars: dict[str, float]) -> bytes:
    """Event{wall_time: 1, step: 2, summary: 5} with Summary{value: 1 (repeated)} and
    Summary.Value{tag: 1, simple_value: 2}."""
    summary = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _float_field(2, float(value)))
                       for tag, value in scalars.items())
    return _double_field(1, wall_time) + _int64_field(2, step) + _bytes_field(5, summary)


class EventWriter:
    """Scalars per step into ``events.out.tfevents.<time>.<host>`` in ``folder``.

    The file is created at the first write (never over an existing one) and opened for each write
    only, so nothing stays open and a crash loses nothing written; every writer has its own file.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path: Path | None = None

    def _create(self) -> Path:
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}"
        for n in itertools.count():  # another writer's file of the same second: add .1, .2, ...
            path = self.folder / (f"{name}.{n}" if n else name)
            try:
                with path.open("xb") as handle:
                    handle.write(tfrecord(version_event(now)))
                return path
            except FileExistsError:
                pass

    def add_scalars(self, step: int, scalars: dict[str, float], wall_time: float | None = None) -> None:
        """One event with every (tag, value) of ``scalars`` at ``step``."""
        if self.path is None:
            self.path = self._create()
        with self.path.open("ab") as handle:
            handle.write(tfrecord(scalars_event(time.time() if wall_time is None else wall_time, step, scalars)))
