"""Training metrics on disk: TensorBoard event files and one JSON line per write.

`WORKDIR/metrics.jsonl` holds `{"step": s, "<name>": value, ...}` per line, appended across
resumed runs (a step logged twice, before and after a kill, appears twice with the same values).
`WORKDIR/tensorboard/events.out.tfevents.<time>.<host>.<pid>` holds the same scalars as
TensorBoard reads them: TFRecords of `Event` protocol buffers, one event per write with a
`simple_value` per scalar. They are written here, in the few bytes their format takes: clu's
writers import TensorFlow, and tensorboardX imports PyTorch wherever it is installed (1.6 s and
180 MB more at every training start). Only process 0 writes; on other processes the writer does
nothing.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path

import jax

FILE_VERSION = b"brain.Event:2"  # The first event of every file: TensorBoard checks it.


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as TFRecord framing uses it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def tf_record(data: bytes) -> bytes:
    """`data` framed as one TFRecord: its length, the length's masked CRC, the data, its CRC."""
    length = struct.pack("<Q", len(data))
    return length + _masked_crc(length) + data + _masked_crc(data)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(
    wall_time: float,
    step: int,
    scalars: Mapping[str, float] | None = None,
    *,
    file_version: bytes | None = None,
) -> bytes:
    """An `Event` message (tensorboard/compat/proto/event.proto): wall_time (1, double), step
    (2, int64 ≥ 0), file_version (3) or a `Summary` (5) of one `Value` per scalar, each a tag
    (1) and a simple_value (2, float)."""
    message = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        message += _field(3, file_version)
    if scalars:
        values = b"".join(
            _field(1, _field(1, name.encode()) + b"\x15" + struct.pack("<f", value))
            for name, value in scalars.items()
        )
        message += _field(5, values)
    return message


class MetricWriter:
    """Scalars to `LOGDIR/tensorboard/` and `LOGDIR/metrics.jsonl`."""

    def __init__(self, logdir: str | Path, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        if not self.enabled:
            return
        logdir = Path(logdir)
        (logdir / "tensorboard").mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
        self._events = (logdir / "tensorboard" / name).open("ab")
        self._events.write(tf_record(event(now, 0, file_version=FILE_VERSION)))
        self._jsonl = (logdir / "metrics.jsonl").open("a")

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        self._events.write(tf_record(event(time.time(), step, scalars)))
        self._events.flush()
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._events.close()
            self._jsonl.close()


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a `metrics.jsonl` in file order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]
