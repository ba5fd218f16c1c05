"""The TensorBoard event files of `jaxvad.metric_writer`, read back through tensorboardX's
compiled protocol buffers and CRC-32C (a test dependency, independent of the writer's code)."""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from jaxvad.metric_writer import MetricWriter, crc32c, read_jsonl


def read_records(path: Path) -> list[bytes]:
    """The TFRecords of `path`, each length and payload checked against its masked CRC."""
    from tensorboardX.crc32c import crc32c as reference_crc

    def masked(data: bytes) -> int:
        crc = reference_crc(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    data, records, at = path.read_bytes(), [], 0
    while at < len(data):
        header = data[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[at + 8 : at + 12])[0] == masked(header)
        payload = data[at + 12 : at + 12 + length]
        assert struct.unpack("<I", data[at + 12 + length : at + 16 + length])[0] == masked(payload)
        records.append(payload)
        at += 16 + length
    assert at == len(data)
    return records


def test_crc32c_of_the_standard_check_string():
    assert crc32c(b"123456789") == 0xE3069283  # The CRC-32C check value (RFC 3720, B.4).
    assert crc32c(b"") == 0


def test_events_hold_every_scalar_of_every_write_and_the_jsonl_the_same(tmp_path):
    from tensorboardX.proto.event_pb2 import Event

    writer = MetricWriter(tmp_path, enabled=True)
    writes = [
        (1, {"loss": 0.75, "grad_norm": 12.5}),
        (300, {"loss": 0.25, "steps_per_second": 3.0e5}),
        (2**40, {"loss/σ": -1.5}),  # A step of several varint bytes; a non-ASCII tag.
    ]
    for step, scalars in writes:
        writer.write(step, scalars)
    writer.close()
    [path] = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    first, *rest = [Event.FromString(r) for r in read_records(path)]
    assert first.file_version == "brain.Event:2" and first.wall_time > 1.7e9
    assert [e.step for e in rest] == [step for step, _ in writes]
    for e, (_, scalars) in zip(rest, writes, strict=True):
        assert {v.tag: v.simple_value for v in e.summary.value} == scalars
        assert e.wall_time >= first.wall_time
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": s, **v} for s, v in writes]


def test_a_disabled_writer_writes_nothing(tmp_path):
    writer = MetricWriter(tmp_path / "run", enabled=False)
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert not (tmp_path / "run").exists()


def test_training_starts_without_importing_torch():
    """Where torch is installed (here: the parity tests' reference), the trainer must not load
    it: tensorboardX did, 1.6 s at every start."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: nothing could import it")
    listed = "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorboardX'))"
    result = subprocess.run(
        [sys.executable, "-c", f"import json, sys, jaxvad.train; print(json.dumps({listed}))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
