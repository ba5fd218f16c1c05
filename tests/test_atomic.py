"""Atomic writes (`jaxvad.atomic`): the target is complete or untouched, and no temporary file
or folder is left behind."""

from __future__ import annotations

import numpy as np
import pytest

from jaxvad import atomic


def test_file_replaces_the_target_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "metrics.json"
    atomic.write_text(path, "old\n")
    assert path.read_text() == "old\n"
    with pytest.raises(RuntimeError), atomic.file(path) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    atomic.write_text(path, "a,b\r\n", newline="")
    assert path.read_bytes() == b"a,b\r\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_file_with_a_suffix_serves_numpy_writers(tmp_path):
    path = tmp_path / "index.npz"
    with atomic.file(path, suffix=".npz") as tmp:
        np.savez(tmp, x=np.arange(3))  # numpy appends ".npz" to names without it.
    with np.load(path) as data:
        np.testing.assert_array_equal(data["x"], [0, 1, 2])
    assert [p.name for p in tmp_path.iterdir()] == ["index.npz"]


def test_folder_replaces_an_older_one_only_once_complete(tmp_path):
    out = tmp_path / "explain" / "clip"
    with atomic.folder(out) as staging:
        (staging / "records.jsonl").write_text("1\n")
    assert (out / "records.jsonl").read_text() == "1\n"
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)
    with pytest.raises(KeyboardInterrupt), atomic.folder(out) as staging:
        (staging / "records.jsonl").write_text("2\n")
        raise KeyboardInterrupt
    assert (out / "records.jsonl").read_text() == "1\n"  # The older folder is kept whole.
    assert [p.name for p in out.parent.iterdir()] == ["clip"]
    with atomic.folder(out) as staging:
        (staging / "summary.json").write_text("{}\n")
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


def test_folder_without_replace_refuses_an_existing_target(tmp_path):
    out = tmp_path / "dataset"
    (out / "Train").mkdir(parents=True)
    with pytest.raises(OSError), atomic.folder(out, replace=False) as staging:
        (staging / ".complete").write_text("spec\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]
    assert [p.name for p in out.iterdir()] == ["Train"]
