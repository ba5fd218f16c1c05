"""Tests of the grain input pipeline (`jaxvad.data.pipeline`) on tiny tables.

Frames encode where they come from: every pixel of frame t of video v is `32 * v + t`, and its
flow is `(v, t)` (zeros for frame 1, as in prepared datasets), so a test can tell which frame
each sample holds. Records are stored in a shuffled order on purpose.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from jaxvad import atomic
from jaxvad.data import pipeline as pl

LENGTHS = (7, 9, 12)
SIZE = 8


def make_records(lengths=LENGTHS, size=SIZE, channels=1, seed=0) -> list[dict]:
    """One record per frame, in a random order (see the module docstring for the values)."""
    records = []
    for v, n in enumerate(lengths):
        for t in range(1, n + 1):
            flow = np.zeros((size, size, 2), np.float16)
            if t > 1:
                flow[..., 0], flow[..., 1] = v, t
            label = int(t % 3 == 0)
            records.append(
                {
                    "video": f"Video{v:02d}",
                    "video_index": v,
                    "frame_index": t,
                    "frame": np.full((size, size, channels), 32 * v + t, np.uint8),
                    "flow": flow,
                    "label": label,
                    "mask": np.full((size, size), label, np.uint8),
                }
            )
    order = np.random.default_rng(seed).permutation(len(records))
    return [records[i] for i in order]


def make_table(lengths=LENGTHS, channels=1) -> pl.FrameTable:
    records = make_records(lengths, channels=channels)
    return pl.FrameTable(
        records,
        np.array([r["video_index"] for r in records]),
        np.array([r["frame_index"] for r in records]),
        name="memory",
        split="train",
        video_names=[f"Video{v:02d}" for v in range(len(lengths))],
    )


def decode(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`[..., S, S, C]` frames → (video, frame number) of each."""
    value = frames[..., 0, 0, 0].astype(np.int64)
    return value // 32, value % 32


def all_windows(history: int) -> set[tuple[int, int]]:
    """Every (video, target frame) a training epoch should contain."""
    return {(v, t) for v, n in enumerate(LENGTHS) for t in range(history + 1, n + 1)}


def targets(batches) -> list[tuple[int, int]]:
    return [
        (int(v), int(t))
        for b in batches
        for v, t in zip(b["video_index"], b["frame_index"], strict=True)
    ]


def take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_frame_table_indexes_shuffled_records():
    table = make_table()
    assert table.num_videos == 3 and table.num_frames == sum(LENGTHS)
    np.testing.assert_array_equal(table.video_lengths, LENGTHS)
    for v, n in enumerate(LENGTHS):
        frames = table.read(table.video_records(v), ["frame"])["frame"]
        video, t = decode(frames)
        assert (video == v).all()
        np.testing.assert_array_equal(t, np.arange(1, n + 1))


@pytest.mark.parametrize("change", ["gap", "duplicate", "zero"])
def test_frame_table_rejects_bad_frame_numbers(change):
    records = make_records()
    video_index = np.array([r["video_index"] for r in records])
    frame_index = np.array([r["frame_index"] for r in records])
    i = int(np.flatnonzero((video_index == 1) & (frame_index == 4))[0])
    frame_index[i] = {"gap": 20, "duplicate": 5, "zero": 0}[change]
    names = ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"dir/x split 'test'.*video 1 \(b\)"):
        pl.FrameTable(
            records, video_index, frame_index, name="dir/x", split="test", video_names=names
        )


def test_window_index_is_consecutive_frames_of_one_video():
    table = make_table()
    history = 3
    windows = pl.window_index(table, history)
    assert windows.shape == (sum(n - history for n in LENGTHS), history + 1)
    video, t = decode(table.read(windows, ["frame"])["frame"])  # [W, T + 1]
    assert (video == video[:, :1]).all()
    np.testing.assert_array_equal(t - t[:, :1], np.broadcast_to(np.arange(history + 1), t.shape))
    assert set(zip(video[:, -1].tolist(), t[:, -1].tolist(), strict=True)) == all_windows(history)
    assert (t[:, 0] == 1).sum() == len(LENGTHS)  # One window per video starts at frame 1.


def test_train_batches_shapes_dtypes_and_content():
    table = make_table()
    history, batch = 3, 4
    ds = pl.train_dataset(table, history=history, batch_size=batch, seed=0, num_epochs=1)
    batches = list(ds)
    assert len(batches) == len(all_windows(history)) // batch
    assert len(batches) == pl.steps_per_epoch(table, history=history, batch_size=batch)
    expected = {
        "frames": ((batch, history, SIZE, SIZE, 1), np.uint8),
        "flows": ((batch, history, SIZE, SIZE, 2), np.float16),
        "target_frame": ((batch, SIZE, SIZE, 1), np.uint8),
        "target_flow": ((batch, SIZE, SIZE, 2), np.float16),
        "video_index": ((batch,), np.int32),
        "frame_index": ((batch,), np.int32),
    }
    for b in batches:
        assert {k: (v.shape, v.dtype) for k, v in b.items()} == expected
        past_video, past_t = decode(b["frames"])
        video, t = decode(b["target_frame"][:, None])
        np.testing.assert_array_equal(video[:, 0], b["video_index"])
        np.testing.assert_array_equal(t[:, 0], b["frame_index"])
        assert (past_video == video).all()
        np.testing.assert_array_equal(past_t, t - history + np.arange(history))
        flows = b["flows"][:, :, 0, 0].astype(np.int64)  # [B, T, 2]
        real = past_t > 1
        np.testing.assert_array_equal(flows[..., 1][real], past_t[real])
        assert (flows[~real] == 0).all()  # Frame 1's flow is zeros.
        np.testing.assert_array_equal(b["target_flow"][:, 0, 0, 1], b["frame_index"])
    assert len(set(targets(batches))) == len(batches) * batch


def test_train_order_depends_on_seed_and_epoch():
    table = make_table()

    def epochs(seed):
        ds = pl.train_dataset(table, history=2, batch_size=2, seed=seed, num_epochs=2)
        order = targets(ds)
        return order[: len(order) // 2], order[len(order) // 2 :]

    first, second = epochs(7)
    assert epochs(7) == (first, second)
    assert set(first) == set(second) == all_windows(2)  # 22 windows = 11 batches of 2.
    assert first != second
    assert epochs(8)[0] != first
    assert second not in epochs(8)  # Seed 8 is not seed 7 shifted by one epoch.


def test_shards_are_disjoint_strided_slices_of_one_global_order():
    table = make_table()
    history = 3  # 19 windows: with 2 shards the last one of each epoch's order is dropped.
    kwargs = {"history": history, "batch_size": 3, "seed": 3, "num_epochs": 2}
    (whole,) = [targets(pl.train_dataset(table, **kwargs, shard_index=0, shard_count=1))]
    shards = [
        targets(pl.train_dataset(table, **kwargs, shard_index=i, shard_count=2)) for i in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 2 * 9  # 9 windows per shard and epoch.
    for epoch in range(2):
        order = whole[epoch * 18 : (epoch + 1) * 18]  # 19 windows, batches of 3: 18 per epoch.
        part = [shard[epoch * 9 : (epoch + 1) * 9] for shard in shards]
        assert part[0] == order[0::2] and part[1] == order[1::2]
        assert not set(part[0]) & set(part[1])

    even = {"history": 2, "batch_size": 1, "seed": 3, "num_epochs": 1}  # 22 windows.
    covered = [
        set(targets(pl.train_dataset(table, **even, shard_index=i, shard_count=2))) for i in (0, 1)
    ]
    assert not covered[0] & covered[1]
    assert covered[0] | covered[1] == all_windows(2)


def test_train_rejects_too_few_windows():
    with pytest.raises(ValueError, match="fewer than one batch"):
        pl.train_dataset(
            make_table(), history=3, batch_size=10, seed=0, shard_count=2, shard_index=0
        )


_RESUME_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
import test_pipeline as t
from jaxvad.data import pipeline as pl

it = iter(pl.train_dataset(t.make_table(), **{kwargs!r}))
with open({state!r}) as f:
    it.set_state(json.load(f))
batches = t.take(it, {n})
np.savez({out!r}, **{{f"{{i}}/{{k}}": v for i, b in enumerate(batches) for k, v in b.items()}})
"""


def test_state_restored_in_a_new_process(tmp_path):
    kwargs = {"history": 2, "batch_size": 3, "seed": 5, "read_threads": 2}
    it = iter(pl.train_dataset(make_table(), **kwargs))
    take(it, 9)  # Crosses the first epoch's end (7 batches).
    state = tmp_path / "state.json"
    state.write_text(json.dumps(it.get_state()))
    expected = take(it, 4)

    out = tmp_path / "batches.npz"
    script = _RESUME_SCRIPT.format(
        tests=str(Path(__file__).parent), kwargs=kwargs, state=str(state), n=4, out=str(out)
    )
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=True, timeout=120)
    with np.load(out) as data:
        restored = [{k: data[f"{i}/{k}"] for k in expected[0]} for i in range(4)]
    assert_batches_equal(restored, expected)


def test_state_through_orbax_checkpoint_manager(tmp_path):
    table = make_table()

    def new_iterator():
        return iter(pl.train_dataset(table, history=2, batch_size=2, seed=11))

    it = new_iterator()
    take(it, 5)
    weights = {"w": np.arange(4.0)}
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(
            5,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(weights),
                data=grain.checkpoint.CheckpointSave(it),
            ),
        )
        expected = take(it, 3)  # Advancing before the save finishes must not change it.
        manager.wait_until_finished()

    fresh = new_iterator()
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        restored = manager.restore(
            manager.latest_step(),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore({"w": np.zeros(4)}),
                data=grain.checkpoint.CheckpointRestore(fresh),
            ),
        )
    np.testing.assert_array_equal(restored.state["w"], weights["w"])
    assert restored.data is fresh
    assert_batches_equal(take(fresh, 3), expected)


def eval_samples(batches) -> dict[str, np.ndarray]:
    """Eval batches → their valid samples, concatenated."""
    valid = np.concatenate([b["valid"] for b in batches])
    return {k: np.concatenate([b[k] for b in batches])[valid] for k in batches[0]}


def test_eval_visits_every_frame_in_order():
    table = make_table()
    history, batch = 3, 5
    batches = list(pl.eval_dataset(table, history=history, batch_size=batch))
    total = sum(LENGTHS)  # 28 frames: 6 batches, the last with 2 padding samples.
    assert len(batches) == -(-total // batch) == pl.eval_steps(table, batch_size=batch)
    for b in batches:
        assert {k: v.shape[0] for k, v in b.items()} == dict.fromkeys(pl.EVAL_KEYS, batch)
    assert batches[0]["frames"].shape == (batch, history, SIZE, SIZE, 1)
    assert batches[0]["mask"].shape == (batch, SIZE, SIZE) and batches[0]["mask"].dtype == np.uint8
    assert batches[0]["label"].dtype == np.int32
    assert batches[0]["scored"].dtype == batches[0]["valid"].dtype == bool
    np.testing.assert_array_equal(batches[-1]["valid"], [True, True, True, False, False])
    assert not batches[-1]["scored"][3:].any()
    assert not batches[-1]["label"][3:].any() and not batches[-1]["mask"][3:].any()

    s = eval_samples(batches)
    expected_video = np.concatenate([np.full(n, v) for v, n in enumerate(LENGTHS)])
    expected_t = np.concatenate([np.arange(1, n + 1) for n in LENGTHS])
    np.testing.assert_array_equal(s["video_index"], expected_video)
    np.testing.assert_array_equal(s["frame_index"], expected_t)
    np.testing.assert_array_equal(s["scored"], expected_t > history)
    np.testing.assert_array_equal(s["label"], expected_t % 3 == 0)
    np.testing.assert_array_equal(s["mask"][:, 0, 0], expected_t % 3 == 0)
    video, t = decode(s["target_frame"][:, None])
    np.testing.assert_array_equal(video[:, 0], expected_video)
    np.testing.assert_array_equal(t[:, 0], expected_t)

    past_video, past_t = decode(s["frames"])
    wanted = expected_t[:, None] - history + np.arange(history)  # [N, T]
    assert (past_video == expected_video[:, None]).all()
    np.testing.assert_array_equal(past_t, np.maximum(wanted, 1))  # Missing frames: frame 1.
    flows = s["flows"][:, :, 0, 0, 1].astype(np.int64)
    np.testing.assert_array_equal(flows, np.where(wanted > 1, wanted, 0))


@pytest.mark.parametrize("shard_count", [2, 3])
def test_eval_shards_concatenate_to_the_whole(shard_count):
    table = make_table()
    kwargs = {"history": 2, "batch_size": 4}
    whole = eval_samples(list(pl.eval_dataset(table, **kwargs, shard_index=0, shard_count=1)))
    shards = [
        list(pl.eval_dataset(table, **kwargs, shard_index=i, shard_count=shard_count))
        for i in range(shard_count)
    ]
    steps = pl.eval_steps(table, batch_size=4, shard_count=shard_count)
    assert [len(s) for s in shards] == [steps] * shard_count
    parts = [eval_samples(s) for s in shards]
    for key, value in whole.items():
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value, key)


def test_channels_conversion():
    gray = make_table()
    b = next(iter(pl.train_dataset(gray, history=2, batch_size=2, seed=0, channels=3)))
    assert b["frames"].shape[-1] == b["target_frame"].shape[-1] == 3
    assert (b["frames"] == b["frames"][..., :1]).all()
    e = next(iter(pl.eval_dataset(gray, history=2, batch_size=2, channels=3)))
    assert e["frames"].shape[-1] == e["target_frame"].shape[-1] == 3

    rgb = make_table(channels=3)
    b = next(iter(pl.train_dataset(rgb, history=2, batch_size=2, seed=0)))
    assert b["frames"].shape[-1] == 3
    b1 = next(iter(pl.train_dataset(rgb, history=2, batch_size=2, seed=0, channels=1)))
    assert b1["frames"].shape[-1] == b1["target_frame"].shape[-1] == 1
    np.testing.assert_array_equal(b1["frames"], b["frames"][..., :1])  # Equal channels: same.
    with pytest.raises(ValueError, match="cannot convert"):
        pl.convert_channels(b["frames"], 2)


def test_measure_windows_per_second():
    rate = pl.measure_windows_per_second(
        make_table(), history=2, batch_size=2, steps=3, warmup_steps=1, read_threads=0
    )
    assert rate > 0


class TinyVadRecords(tfds.core.GeneratorBasedBuilder):
    """A prepared dataset in the project's format, from `make_records` (both splits alike)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        bytes_, zlib = tfds.features.Encoding.BYTES, tfds.features.Encoding.ZLIB
        features = tfds.features.FeaturesDict(
            {
                "video": tfds.features.Text(),
                "video_index": np.int32,
                "frame_index": np.int32,
                "frame": tfds.features.Tensor(
                    shape=(SIZE, SIZE, 1), dtype=np.uint8, encoding=bytes_
                ),
                "flow": tfds.features.Tensor(
                    shape=(SIZE, SIZE, 2), dtype=np.float16, encoding=bytes_
                ),
                "label": np.int32,
                "mask": tfds.features.Tensor(shape=(SIZE, SIZE), dtype=np.uint8, encoding=zlib),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self, features=features, metadata=tfds.core.MetadataDict()
        )

    def _split_generators(self, dl_manager):
        videos = [{"name": f"Video{v:02d}", "frames": n} for v, n in enumerate(LENGTHS)]
        self.info.metadata.update({"splits": {s: {"videos": videos} for s in ("train", "test")}})
        return {"train": self._generate_examples(), "test": self._generate_examples()}

    def _generate_examples(self):
        for r in make_records():
            yield f"{r['video']}_{r['frame_index']:06d}", r


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory) -> Path:
    builder = TinyVadRecords(data_dir=tmp_path_factory.mktemp("tfds"))
    builder.download_and_prepare(file_format="array_record")
    return Path(builder.data_dir)


def test_open_prepared_tfds_dataset(prepared_dir, monkeypatch):
    cache = prepared_dir / "index_test.npz"
    cache.unlink(missing_ok=True)
    table = pl.open_prepared(prepared_dir, "test")
    assert cache.is_file()
    assert table.video_names == [f"Video{v:02d}" for v in range(3)]
    np.testing.assert_array_equal(table.video_lengths, LENGTHS)

    def no_scan(*args):
        raise AssertionError("the cached index should have been used")

    with monkeypatch.context() as m:
        m.setattr(pl, "_scan_index", no_scan)
        again = pl.open_prepared(prepared_dir, "test")
    np.testing.assert_array_equal(again.frame_ids, table.frame_ids)

    reference = make_table()
    train = list(pl.train_dataset(table, history=2, batch_size=2, seed=1, num_epochs=1))
    expected = list(pl.train_dataset(reference, history=2, batch_size=2, seed=1, num_epochs=1))
    assert_batches_equal(train, expected)
    evaluated = list(pl.eval_dataset(table, history=2, batch_size=4))
    assert_batches_equal(evaluated, list(pl.eval_dataset(reference, history=2, batch_size=4)))


def test_open_prepared_without_writable_cache(prepared_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)  # The index's atomic write fails.
    (prepared_dir / "index_train.npz").unlink(missing_ok=True)
    table = pl.open_prepared(prepared_dir, "train")
    assert not (prepared_dir / "index_train.npz").exists()
    assert table.num_frames == sum(LENGTHS)


def test_open_prepared_checks_metadata(prepared_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared_dir, copy)
    metadata = json.loads((copy / "metadata.json").read_text())
    metadata["splits"]["test"]["videos"][1]["frames"] = 10
    (copy / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=r"split 'test'.*video 1"):
        pl.open_prepared(copy, "test")
