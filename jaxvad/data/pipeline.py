"""Grain input pipeline: prepared datasets (one record per frame) → training windows and
evaluation samples.

A prepared dataset (see `builder`) holds one record per video frame with the fields `video`,
`video_index` (0-based), `frame_index` (1-based), `frame` `[S, S, C]` uint8, `flow` `[S, S, 2]`
float16 (from frame t−1 to frame t; zeros for frame 1 by the dataset's convention), `label` and
`mask` `[S, S]` uint8. Record order in the files is not meaningful (TFDS orders records by key
hash), so a `FrameTable` first indexes the split: for every video, the record ids of its frames
in frame order. Everything else works on record ids.

Training (`train_dataset`) samples windows: T = `history` consecutive past frames of one video
plus the next (target) frame. Evaluation (`eval_dataset`) visits every frame of a split in order
and pads the missing history of the first T frames of each video.

Both return `grain.IterDataset`s whose elements are whole batches (dicts of numpy arrays with a
fixed leading batch dimension B). Reading is done by `read_threads` grain threads, one batch per
thread; a batch reads each distinct record it needs once. The training iterator's state is
`{"next_index": <batches consumed>}` (JSON), restorable with `set_state` or through
`grain.checkpoint.CheckpointSave` / `CheckpointRestore` inside an Orbax `Composite`.

Object samples (`objects=` of both, an `ObjectCrops`): instead of whole frames, each sample is
one object's region cut from its frame's window (the T past frames, the target and their
flows, all of the object's own video) and resized to s × s, with the keys, dtypes and layout
of frame samples at S = s, so every model trains and scores on objects unchanged. The region
is the object's box (stored per frame at the original resolution) mapped onto the stored
S × S frame, each side pushed out by a margin (`stored_boxes`). Choices:
- resizing: bilinear (OpenCV `INTER_LINEAR`; masks nearest), the box's aspect not kept (the
  field's object crops; a square around a walker would be mostly background);
- past the frame border: padded by repeating the border pixels (frames and flows alike, as if
  the scene went on), so a box at the edge is not framed by an artificial black edge;
- flows: kept in the stored frame's units (not rescaled to the crop's pixels), so a vector
  means the same motion in every crop: a cyclist's speed stays larger than a walker's
  whatever the boxes' sizes, which rescaling by the crop's zoom would divide away.
Training takes the objects of frames t > T (a full history in the object's video); evaluation
takes every object, those of frames t ≤ T padded as `eval_samples` pads frames (`scored`
False).

Pseudo-anomalous object samples (`ObjectCrops.pseudo`, one of `PSEUDO_SAMPLES`): a normal
object's sample changed the way an anomaly would change it, for choosing an object score's
components without test labels (`jaxvad.component_choice`): `skip` (twice as fast), `reverse`
(played backwards) and `shuffled` (its appearance scrambled); see `pseudo_samples`.
"""

from __future__ import annotations

import dataclasses
import os
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from jaxvad import atomic
from jaxvad.data.video_io import convert_channels

Record = Mapping[str, Any]

TRAIN_KEYS = ("frames", "flows", "target_frame", "target_flow", "video_index", "frame_index")
EVAL_KEYS = (*TRAIN_KEYS, "label", "mask", "scored", "valid")

_SCAN_CHUNK = 256


class FrameTable:
    """One split of a dataset: a random-access record source plus a frame index (and, for a
    dataset prepared with objects, each video's original frame size).

    `frame_ids` `[N]` lists the record ids of all N frames ordered by (video, frame), and the
    frames of video v are `frame_ids[video_starts[v]:video_starts[v + 1]]` (frame 1 first).

    Args:
        source: random-access records (`len(source)`, `source[i]` → dict with at least `frame`
            and `flow`; `label` and `mask` for evaluation). Any order.
        video_index: `[len(source)]` int, the 0-based video of each record; every video
            0..V−1 must occur.
        frame_index: `[len(source)]` int, the 1-based frame number of each record; the frames
            of each video must be exactly 1..n_v.
        name: what error messages call the dataset (e.g. its directory).
        split: the split's name, for error messages.
        video_names: `[V]` names of the videos, optional.
        frame_sizes: `[V, 2]` each video's original (height, width), the pixels its object
            boxes are in; optional (None: unknown).

    Attributes:
        frame_ids: `[N]` int64 record ids ordered by (video, frame).
        video_starts: `[V + 1]` int64 offsets of each video's frames in `frame_ids`.
        video_index, frame_index: `[N]` int64 video and frame number of each record id.

    Raises:
        ValueError: the index arrays are inconsistent with the source or with each other.
    """

    def __init__(
        self,
        source: Sequence[Record],
        video_index: np.ndarray,
        frame_index: np.ndarray,
        *,
        name: str = "<in-memory>",
        split: str = "",
        video_names: Sequence[str] | None = None,
        frame_sizes: np.ndarray | None = None,
    ):
        self.source = source
        self.name = name
        self.split = split
        video_index = np.asarray(video_index, np.int64)
        frame_index = np.asarray(frame_index, np.int64)
        if video_index.shape != (len(source),) or frame_index.shape != (len(source),):
            raise ValueError(
                f"{self._where()}: index arrays of shapes {video_index.shape} and "
                f"{frame_index.shape} for a source of {len(source)} records"
            )
        if len(source) == 0:
            raise ValueError(f"{self._where()}: no records")
        if video_index.min() < 0:
            raise ValueError(f"{self._where()}: negative video_index")
        lengths = np.bincount(video_index)
        if video_names is not None and len(video_names) != len(lengths):
            raise ValueError(
                f"{self._where()}: {len(video_names)} video names for {len(lengths)} videos"
            )
        self.video_names = None if video_names is None else [str(n) for n in video_names]
        self.frame_sizes = None if frame_sizes is None else np.asarray(frame_sizes, np.int64)
        if self.frame_sizes is not None and self.frame_sizes.shape != (len(lengths), 2):
            raise ValueError(
                f"{self._where()}: frame sizes of shape {self.frame_sizes.shape} for "
                f"{len(lengths)} videos"
            )
        if (lengths == 0).any():
            missing = int(np.flatnonzero(lengths == 0)[0])
            raise ValueError(f"{self._where()}: video {self._video(missing)} has no records")
        order = np.lexsort((frame_index, video_index))
        starts = np.concatenate([[0], np.cumsum(lengths)])
        expected = np.arange(len(order)) - np.repeat(starts[:-1], lengths) + 1
        bad = frame_index[order] != expected
        if bad.any():
            video = int(video_index[order][np.flatnonzero(bad)[0]])
            found = np.sort(frame_index[video_index == video])
            raise ValueError(
                f"{self._where()}: video {self._video(video)} has frame indices "
                f"{_describe(found)}, expected 1..{lengths[video]}"
            )
        self.frame_ids = order
        self.video_starts = starts
        self.video_index = video_index
        self.frame_index = frame_index

    @property
    def num_videos(self) -> int:
        return len(self.video_starts) - 1

    @property
    def num_frames(self) -> int:
        return len(self.frame_ids)

    @property
    def video_lengths(self) -> np.ndarray:
        """`[V]` number of frames of each video."""
        return np.diff(self.video_starts)

    def video_records(self, video: int) -> np.ndarray:
        """`[n_v]` record ids of a video's frames, frame 1 first."""
        return self.frame_ids[self.video_starts[video] : self.video_starts[video + 1]]

    def fetch(self, record_ids: Iterable[int]) -> dict[int, Record]:
        """Reads each distinct record once: record id → record."""
        return {i: self.source[i] for i in dict.fromkeys(int(i) for i in record_ids)}

    def gather(self, records: Mapping[int, Record], record_ids: np.ndarray, key: str) -> np.ndarray:
        """`[*record_ids.shape, *field shape]` values of field `key` of fetched records."""
        flat = np.asarray(record_ids).ravel()
        values: dict[int, np.ndarray] = {}
        for i in flat:
            if int(i) not in values:
                values[int(i)] = np.asarray(records[int(i)][key])
        first = next(iter(values.values()))
        out = np.empty((len(flat), *first.shape), first.dtype)
        for j, i in enumerate(flat):
            out[j] = values[int(i)]
        return out.reshape(*np.shape(record_ids), *first.shape)

    def read(self, record_ids: np.ndarray, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Fields `keys` of records `record_ids` (any shape), each distinct record read once."""
        records = self.fetch(np.asarray(record_ids).ravel())
        return {key: self.gather(records, record_ids, key) for key in keys}

    def _video(self, video: int) -> str:
        if self.video_names is None:
            return str(video)
        return f"{video} ({self.video_names[video]})"

    def _where(self) -> str:
        return f"{self.name} split {self.split!r}" if self.split else self.name


def _describe(values: np.ndarray) -> str:
    shown = ", ".join(str(v) for v in values[:8])
    return f"[{shown}{', ...' if len(values) > 8 else ''}] ({len(values)} records)"


def open_prepared(dataset_dir: str | os.PathLike, split: str) -> FrameTable:
    """Opens one split of a prepared TFDS ArrayRecord dataset as a `FrameTable`.

    `dataset_dir` is the version folder holding `dataset_info.json` (a local directory). Records
    are read as raw bytes and each field is decoded only when accessed (training never decodes
    `mask`), with the features' own `decode_example_np`. The frame index is cached as
    `index_<split>.npz` in that folder: built on first use by scanning the split's
    `video_index` / `frame_index` / `video` fields, reused afterwards, rebuilt when missing or
    when its record count does not match. When the folder is not writable the index is built in
    memory every time. A dataset prepared with objects gives the table its videos' original
    frame sizes (`frame_sizes`, from the metadata).

    Raises:
        ValueError: the frames of a video are not exactly 1..n, or the index disagrees with the
            dataset's metadata (`metadata["splits"][split]["videos"]`).
    """
    directory = Path(dataset_dir)
    builder = tfds.builder_from_directory(os.fspath(directory))
    raw = builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    source = ExampleSource(raw, builder.info.features)
    cache = directory / f"index_{split}.npz"
    index = _load_index(cache, len(source))
    if index is None:
        index = _scan_index(source, f"{directory} split {split!r}")
        _save_index(cache, index)
    video_index, frame_index, names = index
    videos = (builder.info.metadata or {}).get("splits", {}).get(split, {}).get("videos", [])
    sizes = None
    if videos and all("height" in v for v in videos) and len(videos) == len(names):
        sizes = np.array([[v["height"], v["width"]] for v in videos])
    table = FrameTable(
        source,
        video_index,
        frame_index,
        name=str(directory),
        split=split,
        video_names=names,
        frame_sizes=sizes,
    )
    _check_metadata(table, builder.info.metadata)
    return table


class ExampleSource(Sequence[Record]):
    """Raw serialized `tf.train.Example` records → lazily decoded records.

    `source[i]` parses record i's proto (cheap: the tensor bytes are not copied out) and returns
    a read-only mapping that decodes a field when it is accessed. Every feature must serialize
    to a single value, as `builder`'s features do (scalars, text, and tensors stored as bytes).
    """

    def __init__(self, raw: Sequence[bytes], features: tfds.features.FeaturesDict):
        for key, feature in features.items():
            info = feature.get_serialized_info()
            if not isinstance(info, tfds.features.TensorInfo) or info.shape != ():
                raise ValueError(f"feature {key!r} does not serialize to a single value: {info}")
        self.raw = raw
        self.features = features

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> _LazyExample:
        example = tf_example_pb2.Example.FromString(self.raw[index])
        return _LazyExample(example.features.feature, self.features)


class _LazyExample(Mapping[str, Any]):
    def __init__(self, fields: Any, features: tfds.features.FeaturesDict):
        self._fields = fields
        self._features = features

    def __getitem__(self, key: str) -> Any:
        if key not in self._fields:  # Indexing a proto map would insert the key.
            raise KeyError(key)
        field = self._fields[key]
        value = getattr(field, field.WhichOneof("kind")).value[0]
        return self._features[key].decode_example_np(value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


def _scan_index(source: Sequence[Record], where: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Reads (video_index, frame_index, video name) of every record, in parallel chunks."""

    def scan(start: int) -> list[tuple[int, int, str]]:
        out = []
        for i in range(start, min(start + _SCAN_CHUNK, len(source))):
            record = source[i]
            video = record["video"]
            video = video.decode() if isinstance(video, bytes) else str(video)
            out.append((int(record["video_index"]), int(record["frame_index"]), video))
        return out

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        chunks = pool.map(scan, range(0, len(source), _SCAN_CHUNK))
        rows = [row for chunk in chunks for row in chunk]
    video_index = np.array([r[0] for r in rows], np.int32)
    frame_index = np.array([r[1] for r in rows], np.int32)
    names: dict[int, str] = {}
    for v, _, name in rows:
        if names.setdefault(v, name) != name:
            raise ValueError(f"{where}: video_index {v} holds videos {names[v]!r} and {name!r}")
    num_videos = int(video_index.max()) + 1 if rows else 0
    return video_index, frame_index, [names.get(v, "") for v in range(num_videos)]


def _load_index(path: Path, num_records: int) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    try:
        with np.load(path) as data:
            video_index, frame_index = data["video_index"], data["frame_index"]
            names = [str(n) for n in data["video_names"]]
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if len(video_index) != num_records:
        return None
    return video_index, frame_index, names


def _save_index(path: Path, index: tuple[np.ndarray, np.ndarray, list[str]]) -> None:
    """Writes the index atomically (temp file + rename); does nothing if that fails."""
    video_index, frame_index, names = index
    try:
        with atomic.file(path, suffix=".npz") as tmp:
            np.savez(
                tmp, video_index=video_index, frame_index=frame_index, video_names=np.array(names)
            )
    except OSError:  # A read-only dataset folder: the index is rebuilt next time.
        return


def _check_metadata(table: FrameTable, metadata: Mapping[str, Any]) -> None:
    videos = (metadata or {}).get("splits", {}).get(table.split, {}).get("videos")
    if videos is None:
        return
    expected = [(str(v["name"]), int(v["frames"])) for v in videos]
    found = list(zip(table.video_names or [], table.video_lengths.tolist(), strict=False))
    if found != expected:
        mismatch = next(
            (i for i, (a, b) in enumerate(zip(found, expected, strict=False)) if a != b),
            min(len(found), len(expected)),
        )
        raise ValueError(
            f"{table.name} split {table.split!r}: the records hold {len(found)} videos and the "
            f"metadata lists {len(expected)}; first difference at video {mismatch}: records "
            f"{found[mismatch] if mismatch < len(found) else None}, metadata "
            f"{expected[mismatch] if mismatch < len(expected) else None}"
        )


def window_index(table: FrameTable, history: int) -> np.ndarray:
    """`[W, history + 1]` record ids of every training window, video by video.

    Row w is `history` consecutive frames t−T..t−1 of one video followed by its target frame t,
    for every t in T+1..n_v (windows never cross videos; videos of at most T frames give none).
    The first window of a video starts at frame 1, whose flow is zeros by the dataset's
    convention (there is no frame 0), so its first past flow carries no motion.
    """
    if history < 1:
        raise ValueError(f"history must be at least 1, got {history}")
    rows = [
        np.lib.stride_tricks.sliding_window_view(table.video_records(v), history + 1)
        for v in range(table.num_videos)
        if table.video_lengths[v] > history
    ]
    if not rows:
        return np.zeros((0, history + 1), np.int64)
    return np.concatenate(rows).astype(np.int64)


def stored_boxes(
    boxes: np.ndarray, frame_sizes: np.ndarray, size: int, margin: float = 0.0
) -> np.ndarray:
    """`[M, 4]` int64 regions `[x0, y0, x1, y1)` of the stored S × S frames (S = `size`) that
    cover `boxes` `[M, 4]` (`[x0, y0, x1, y1]`, original pixels, x1 and y1 exclusive) of
    frames of original (height, width) `frame_sizes` `[M, 2]`, each side first pushed out by
    `margin` × the box's width (x) or height (y): the low corner floored, the high one
    ceiled, at least one pixel. With a margin a region may reach past the frame."""
    boxes = np.asarray(boxes, np.float64)
    side = boxes[:, 2:] - boxes[:, :2]
    grown = np.concatenate([boxes[:, :2] - margin * side, boxes[:, 2:] + margin * side], 1)
    scale = np.tile(size / np.asarray(frame_sizes, np.float64)[:, ::-1], 2)  # (x, y) twice
    grown = grown * scale
    low = np.floor(grown[:, :2]).astype(np.int64)
    high = np.maximum(np.ceil(grown[:, 2:]).astype(np.int64), low + 1)
    return np.concatenate([low, high], 1)


@dataclasses.dataclass(frozen=True)
class ObjectCrops:
    """Where the M object samples of a split are cut (see the module docstring).

    `position` `[M]` int64: each object's frame, an index into the table's `frame_ids` (the
    split's (video, frame) order); `boxes` `[M, 4]` int64: the regions `[x0, y0, x1, y1)` cut,
    in the stored frame's pixels (`stored_boxes`); `size`: the side s they are resized to;
    `pseudo`: "" (the samples as they are) or one of `PSEUDO_SAMPLES` (`pseudo_samples`).
    """

    position: np.ndarray
    boxes: np.ndarray
    size: int
    pseudo: str = ""

    def __len__(self) -> int:
        return len(self.position)


def object_crops(
    table: FrameTable, position: np.ndarray, boxes: np.ndarray, *, size: int, margin: float
) -> ObjectCrops:
    """The crops of objects in the frames at `position` `[M]` (indices into
    `table.frame_ids`) with `boxes` `[M, 4]` at the original resolution, grown by `margin`
    and resized to `size` (ValueError when the table has no original frame sizes)."""
    if table.frame_sizes is None:
        raise ValueError(
            f"{table._where()}: no original frame sizes (a dataset prepared without "
            "--objects): object samples need them to place the boxes"
        )
    position = np.asarray(position, np.int64)
    video = table.video_index[table.frame_ids[position]]
    stored = np.shape(table.source[int(table.frame_ids[0])]["frame"])[0]  # S × S frames.
    regions = stored_boxes(boxes, table.frame_sizes[video], stored, margin)
    return ObjectCrops(position, regions, size)


def crop(
    images: np.ndarray, box: np.ndarray, size: int, interpolation: int = cv2.INTER_LINEAR
) -> np.ndarray:
    """`[..., s, s, C]` (s = `size`): the region `box` `[x0, y0, x1, y1)` of `images`
    `[..., H, W, C]`, resized by `interpolation` (bilinear by default), the part past the
    frame border padded by repeating the border pixels. Keeps the dtype (float16 is resized
    in float32)."""
    *lead, height, width, channels = images.shape
    x0, y0, x1, y1 = (int(v) for v in box)
    left, top = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    right, bottom = max(min(x1, width), left + 1), max(min(y1, height), top + 1)
    region = images[..., top:bottom, left:right, :]
    pad = [(0, 0)] * len(lead) + [(top - y0, y1 - bottom), (left - x0, x1 - right), (0, 0)]
    pad = [(max(a, 0), max(b, 0)) for a, b in pad]
    if any(a or b for a, b in pad):  # np.pad copies even when there is nothing to pad.
        region = np.pad(region, pad, mode="edge")
    # One resize of every image and channel at once: [..., h, w, C] → [h, w, (...)·C].
    h, w = region.shape[-3:-1]
    stacked = np.moveaxis(region.reshape(-1, h, w, channels), 0, 2).reshape(h, w, -1)
    work = stacked.astype(np.float32) if stacked.dtype == np.float16 else stacked
    resized = cv2.resize(work, (size, size), interpolation=interpolation).astype(images.dtype)
    resized = resized.reshape(size, size, -1, channels)
    return np.moveaxis(resized, 2, 0).reshape(*lead, size, size, channels)


def uncrop(image: np.ndarray, box: np.ndarray, size: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """Where a crop's `image` `[s, s, ...]` goes back in the `size` × `size` frame it was cut
    from at `box` `[x0, y0, x1, y1)` (`crop`'s inverse, without the padding): the frame's
    (rows, columns) inside `box` and `image` resized (bilinear) onto `box` there, `[h, w, ...]`
    float32."""
    x0, y0, x1, y1 = (int(v) for v in box)
    left, top, right, bottom = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
    resized = cv2.resize(image.astype(np.float32), (x1 - x0, y1 - y0))
    resized = resized.reshape(y1 - y0, x1 - x0, *image.shape[2:])  # OpenCV drops a last 1.
    inside = resized[top - y0 : bottom - y0, left - x0 : right - x0]
    return (slice(top, bottom), slice(left, right)), inside


def crop_samples(
    batch: Mapping[str, np.ndarray], boxes: np.ndarray, size: int
) -> dict[str, np.ndarray]:
    """Frame samples `batch` (`[B, ...]`, the keys of `eval_samples` or a training batch) →
    object samples: sample b's images cut at `boxes[b]` `[4]` and resized to `size` (frames
    and flows bilinear, `mask` nearest); other keys unchanged."""
    out = dict(batch)
    for key in ("frames", "flows", "target_frame", "target_flow", "mask"):
        if key in batch:
            values = batch[key] if key != "mask" else batch[key][..., None]
            method = cv2.INTER_NEAREST if key == "mask" else cv2.INTER_LINEAR
            cut = np.stack([crop(v, b, size, method) for v, b in zip(values, boxes, strict=True)])
            out[key] = cut[..., 0] if key == "mask" else cut
    return out


PSEUDO_SAMPLES = ("skip", "reverse", "shuffled")


def pseudo_reach(pseudo: str, history: int) -> tuple[int, int]:
    """(before, after): the frames a `pseudo` sample of frame t reads, t − before .. t + after
    (a frame sample reads t − T .. t)."""
    return {"skip": (2 * history, 0), "reverse": (0, history)}.get(pseudo, (history, 0))


def pseudo_samples(
    table: FrameTable,
    positions: np.ndarray,
    boxes: np.ndarray,
    *,
    pseudo: str,
    history: int,
    size: int,
    channels: int | None = None,
) -> dict[str, np.ndarray]:
    """Pseudo-anomalous object samples (the keys of `eval_samples`, cut at `boxes` `[B, 4]`
    and resized to `size`) of the objects in the frames at `positions` `[B]`, each frame t
    with the frames `pseudo_reach` names in its video (ValueError otherwise):

    - `skip`: twice as fast. The past frames are t − 2T, t − 2T + 2, .., t − 2 (every second
      one) and each flow the sum of the two one-frame flows it spans, at the same pixel (the
      first past one, whose earlier frame is not read, twice its own);
    - `reverse`: played backwards. The past frames are t + T, t + T − 1, .., t + 1 and the
      target t; the flow into frame τ is −flow(τ + 1), the motion from τ + 1 to τ (the first
      past one, τ = t + T, takes −flow(t + T));
    - `shuffled`: the appearance scrambled. The sample as it is, every image rolled by half
      its side along both axes, so the crop's quadrants swap diagonally.

    `label`, `mask`, `video_index`, `frame_index` and `scored` are the object's frame t's."""
    before, after = pseudo_reach(pseudo, history)
    positions = np.asarray(positions, np.int64)
    t = table.frame_index[table.frame_ids[positions]]
    length = table.video_lengths[table.video_index[table.frame_ids[positions]]]
    if pseudo not in PSEUDO_SAMPLES:
        raise ValueError(f"unknown pseudo-anomaly {pseudo!r}: one of {PSEUDO_SAMPLES}")
    if np.any(t <= before) or np.any(t + after > length):
        raise ValueError(
            f"{table._where()}: a {pseudo!r} sample of frame t reads frames t-{before}.."
            f"t+{after} of its video; some objects' frames lack them"
        )
    T = history
    if pseudo == "skip":
        batch = eval_samples(table, positions, history=2 * T, channels=channels)
        flows = batch["flows"].astype(np.float32)  # [B, 2T, S, S, 2], frames t−2T..t−1
        spans = flows[:, 0::2] + np.concatenate([flows[:, :1], flows[:, 1:-1:2]], axis=1)
        target = batch["target_flow"].astype(np.float32) + flows[:, -1]
        dtype = batch["flows"].dtype
        batch |= {
            "frames": batch["frames"][:, 0::2],
            "flows": spans.astype(dtype),
            "target_flow": target.astype(dtype),
        }
    elif pseudo == "reverse":
        ahead = eval_samples(table, positions + T, history=T, channels=channels)
        here = eval_samples(table, positions, history=T, channels=channels)
        frames = np.concatenate([ahead["target_frame"][:, None], ahead["frames"][:, :0:-1]], 1)
        flows = np.concatenate([ahead["flows"], ahead["target_flow"][:, None]], 1)  # t..t+T
        # Past frame τ = t+T−j takes −flow(τ + 1): j = 0 and 1 → flow(t+T); j ≥ 2 → flow(τ + 1).
        into = -np.concatenate([flows[:, -1:], flows[:, :1:-1]], axis=1)
        batch = here | {
            "frames": frames,
            "flows": into,
            "target_frame": ahead["frames"][:, 0],
            "target_flow": -flows[:, 1],
        }
    else:
        batch = eval_samples(table, positions, history=T, channels=channels)
    batch = crop_samples(batch, boxes, size)
    if pseudo == "shuffled":
        for key in ("frames", "flows", "target_frame", "target_flow"):
            batch[key] = np.roll(batch[key], (size // 2, size // 2), axis=(-3, -2))
    return batch


def _train_items(
    table: FrameTable, history: int, objects: ObjectCrops | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The training items: `[W, T + 1]` record ids of each window and, for object samples,
    `[W, 4]` each window's region (the objects of frames t > T, in `objects`' order)."""
    if objects is None:
        return window_index(table, history), None
    if history < 1:
        raise ValueError(f"history must be at least 1, got {history}")
    t = table.frame_index[table.frame_ids[objects.position]]
    keep = t > history
    position = objects.position[keep][:, None] - history + np.arange(history + 1)
    return table.frame_ids[position], objects.boxes[keep]


def _process_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if shard_index is None else shard_index
    count = jax.process_count() if shard_count is None else shard_count
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard_index {index} out of range for shard_count {count}")
    return index, count


def _shuffle_seed(seed: int) -> int:
    """A well-mixed 32-bit seed. Grain's shuffle uses seed + epoch for each epoch, which would
    make epoch e + 1 of seed s equal epoch e of seed s + 1 without this mixing."""
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


def _read_options(read_threads: int) -> grain.ReadOptions:
    # Elements are whole batches: a small buffer keeps memory bounded.
    return grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * read_threads)


@dataclasses.dataclass(frozen=True, eq=False)
class _TrainBatch:
    """Window ids `[B]` → a training batch (see `train_dataset`); with `boxes` `[W, 4]`,
    object samples of side `size`."""

    table: FrameTable
    windows: np.ndarray
    channels: int | None
    boxes: np.ndarray | None = None
    size: int = 0

    def __call__(self, window_ids: np.ndarray) -> dict[str, np.ndarray]:
        table, ids = self.table, self.windows[window_ids]  # [B, T + 1]
        past, target = ids[:, :-1], ids[:, -1]
        records = table.fetch(ids.ravel())
        # Past and target are gathered separately so that every output array is contiguous.
        batch = {
            "frames": convert_channels(table.gather(records, past, "frame"), self.channels),
            "flows": table.gather(records, past, "flow"),
            "target_frame": convert_channels(table.gather(records, target, "frame"), self.channels),
            "target_flow": table.gather(records, target, "flow"),
            "video_index": table.video_index[target].astype(np.int32),
            "frame_index": table.frame_index[target].astype(np.int32),
        }
        if self.boxes is None:
            return batch
        return crop_samples(batch, self.boxes[window_ids], self.size)


def steps_per_epoch(
    table: FrameTable,
    *,
    history: int,
    batch_size: int,
    shard_count: int | None = None,
    objects: ObjectCrops | None = None,
) -> int:
    """Batches per epoch of each shard of `train_dataset` (`shard_count` default: processes;
    `objects`: of object samples)."""
    count = jax.process_count() if shard_count is None else shard_count
    return len(_train_items(table, history, objects)[0]) // count // batch_size


def train_dataset(
    table: FrameTable,
    *,
    history: int,
    batch_size: int,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_epochs: int | None = None,
    channels: int | None = None,
    read_threads: int = 4,
    objects: ObjectCrops | None = None,
) -> grain.IterDataset:
    """Shuffled training batches of windows (or, with `objects`, of object samples) for this
    process.

    Each element is a dict of numpy arrays, B = `batch_size` (per process), T = `history`:
    `frames` `[B, T, S, S, C]` uint8 (past frames, oldest first), `flows` `[B, T, S, S, 2]`
    float16 (the flow into each past frame; zeros for frame 1), `target_frame` `[B, S, S, C]`
    uint8, `target_flow` `[B, S, S, 2]` float16, `video_index` `[B]` int32 and `frame_index`
    `[B]` int32 (the target's, 1-based). C is as stored unless `channels` is given (3: repeat
    a gray channel; 1: luminance of RGB). With `objects` a sample is one object of a frame
    t > T and its window, cut and resized to S = `objects.size` (see the module docstring);
    the windows below are then the object windows, one per such object, and everything else
    is the same.

    Order: every epoch shuffles all W windows of `window_index` with a permutation derived from
    (`seed`, epoch), the same on every process, so each epoch's order differs and all are
    reproducible. The last W mod `shard_count` windows of that order are dropped, and process
    `shard_index` takes every `shard_count`-th of the rest from position `shard_index`: shards
    are disjoint, of equal length, and together cover the epoch. Each shard's epoch is batched
    with `drop_remainder=True` (an epoch never mixes into the next; see `steps_per_epoch`), and
    epochs repeat `num_epochs` times (None: forever). `shard_index` / `shard_count` default to
    `jax.process_index()` / `jax.process_count()`.

    `iter()` of the result gives a `grain.DatasetIterator` with `get_state()` / `set_state()`
    (state: `{"next_index": batches consumed}`), usable with `grain.checkpoint.CheckpointSave`
    and `CheckpointRestore`. `read_threads` batches are read in parallel (0: read in the
    calling thread); results do not depend on it.

    Raises:
        ValueError: a shard gets fewer windows than one batch.
    """
    shard_index, shard_count = _process_shard(shard_index, shard_count)
    windows, boxes = _train_items(table, history, objects)
    per_epoch = len(windows) - len(windows) % shard_count
    if per_epoch // shard_count < batch_size:
        what = "windows" if objects is None else "object windows"
        raise ValueError(
            f"{table.name} split {table.split!r}: {len(windows)} {what} of {history} + 1 "
            f"frames give fewer than one batch of {batch_size} per shard ({shard_count} shards)"
        )
    ds = grain.MapDataset.range(len(windows)).shuffle(seed=_shuffle_seed(seed))
    ds = ds[:per_epoch][shard_index::shard_count]
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=np.asarray)
    size = 0 if objects is None else objects.size
    ds = ds.repeat(num_epochs).map(_TrainBatch(table, windows, channels, boxes, size))
    return ds.to_iter_dataset(_read_options(read_threads))


def _eval_blocks(num_frames: int, batch_size: int, shard_count: int) -> tuple[np.ndarray, int]:
    """Contiguous blocks of sample positions: `starts` `[shard_count + 1]` and steps per shard."""
    starts = np.linspace(0, num_frames, shard_count + 1).round().astype(np.int64)
    longest = int(np.diff(starts).max())
    return starts, max(1, -(-longest // batch_size))


def eval_steps(
    table: FrameTable,
    *,
    batch_size: int,
    shard_count: int | None = None,
    objects: ObjectCrops | None = None,
) -> int:
    """Number of batches of every shard of `eval_dataset` (of `objects`' samples if given)."""
    count = jax.process_count() if shard_count is None else shard_count
    items = table.num_frames if objects is None else len(objects)
    return _eval_blocks(items, batch_size, count)[1]


MEDIAN_FRAMES = 256  # Frames whose per-pixel median is a split's usual frame (`median_frame`).


def median_frame(table: FrameTable, key: str) -> np.ndarray:
    """Per pixel the median of field `key` ("frame" or "flow") over up to `MEDIAN_FRAMES`
    frames evenly spaced over `table`: `[S, S, C]` float32 (of a fixed camera's training
    split, its background, or its usual motion: about none)."""
    count = min(MEDIAN_FRAMES, len(table.frame_ids))
    ids = table.frame_ids[np.linspace(0, len(table.frame_ids) - 1, count).astype(int)]
    values = table.read(np.unique(ids), [key])[key]
    return np.median(values.astype(np.float32), axis=0)


def sample_ids(
    table: FrameTable, positions: np.ndarray, history: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The records an evaluation sample of each frame at `positions` `[B]` reads
    (`eval_samples`): the target frames' record ids `[B]`, the T = `history` past frames'
    `[B, T]` (frame 1's where the number is below 1) and the past frame numbers `[B, T]`
    (1-based, < 1 where missing)."""
    target = table.frame_ids[positions]  # [B]
    first = table.video_starts[table.video_index[target]]  # [B] position of frame 1
    past = table.frame_index[target][:, None] - history + np.arange(history)
    return target, table.frame_ids[first[:, None] + np.maximum(past, 1) - 1], past


def eval_samples(
    table: FrameTable, positions: np.ndarray, *, history: int, channels: int | None = None
) -> dict[str, np.ndarray]:
    """The evaluation samples of the frames at `positions` `[B]` (indices into
    `table.frame_ids`, i.e. the split's frames in (video, frame) order); any frames, in any order.

    Returns the keys of `train_dataset` plus `label` `[B]` int32, `mask` `[B, S, S]` uint8 and
    `scored` `[B]` bool. For frame t ≤ T the missing past frames repeat frame 1 with zero flows,
    and `scored` is False (no real prediction).
    """
    target, ids, past = sample_ids(table, positions, history)
    t = table.frame_index[target]  # [B] 1-based
    records = table.fetch(np.concatenate([ids.ravel(), target]))
    flows = table.gather(records, ids, "flow")
    flows[past < 1] = 0
    return {
        "frames": convert_channels(table.gather(records, ids, "frame"), channels),
        "flows": flows,
        "target_frame": convert_channels(table.gather(records, target, "frame"), channels),
        "target_flow": table.gather(records, target, "flow"),
        "video_index": table.video_index[target].astype(np.int32),
        "frame_index": t.astype(np.int32),
        "label": table.gather(records, target, "label").astype(np.int32),
        "mask": table.gather(records, target, "mask").astype(np.uint8),
        "scored": t > history,
    }


@dataclasses.dataclass(frozen=True, eq=False)
class _EvalBatch:
    """Batch number → an evaluation batch (see `eval_dataset`)."""

    table: FrameTable
    history: int
    batch_size: int
    start: int  # First sample position of this shard's block.
    stop: int
    channels: int | None
    objects: ObjectCrops | None = None

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        positions = self.start + step * self.batch_size + np.arange(self.batch_size)
        valid = positions < self.stop
        # Padding repeats the block's last sample (or the split's first for an empty block).
        positions = np.where(valid, positions, self.stop - 1 if self.stop > self.start else 0)
        objects = self.objects
        if objects is None:
            batch = eval_samples(
                self.table, positions, history=self.history, channels=self.channels
            )
        elif objects.pseudo:
            batch = pseudo_samples(
                self.table,
                objects.position[positions],
                objects.boxes[positions],
                pseudo=objects.pseudo,
                history=self.history,
                size=objects.size,
                channels=self.channels,
            )
        else:
            frames = objects.position[positions]
            batch = eval_samples(self.table, frames, history=self.history, channels=self.channels)
            batch = crop_samples(batch, objects.boxes[positions], objects.size)
        batch["label"][~valid] = 0
        batch["mask"][~valid] = 0
        batch["scored"] &= valid
        batch["valid"] = valid
        return batch


def eval_dataset(
    table: FrameTable,
    *,
    history: int,
    batch_size: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    channels: int | None = None,
    read_threads: int = 4,
    objects: ObjectCrops | None = None,
) -> grain.IterDataset:
    """Every frame of the split, in order (video by video, frame 1..n), one sample per frame;
    with `objects`, every object sample, in `objects`' order (below, "frame" then reads
    "object": its frame's window, label and `scored`, cut at its region; see the module
    docstring).

    Elements are dicts with the keys and shapes of `train_dataset` (for frame t the past frames
    are t−T..t−1) plus `label` `[B]` int32, `mask` `[B, S, S]` uint8, `scored` `[B]` bool and
    `valid` `[B]` bool. For t ≤ T the missing past frames (numbers < 1) repeat frame 1 with zero
    flows, and `scored` is False (no real prediction). The batch shape is fixed: padding
    samples, at the end, have `valid` and `scored` False and zero `label` and `mask`.

    Several processes: the ordered samples are split into `shard_count` contiguous blocks
    (sizes differ by at most one), each padded to the same number of batches (`eval_steps`),
    so every process runs the same number of steps, and the valid samples of the shards
    concatenated in shard order are the whole split in order. Shards default to the process
    index and count.
    """
    if history < 1:
        raise ValueError(f"history must be at least 1, got {history}")
    if objects is not None and not len(objects):
        raise ValueError(f"{table._where()}: no objects to sample")
    shard_index, shard_count = _process_shard(shard_index, shard_count)
    items = table.num_frames if objects is None else len(objects)
    starts, steps = _eval_blocks(items, batch_size, shard_count)
    load = _EvalBatch(
        table,
        history,
        batch_size,
        int(starts[shard_index]),
        int(starts[shard_index + 1]),
        channels,
        objects,
    )
    return grain.MapDataset.range(steps).map(load).to_iter_dataset(_read_options(read_threads))


def measure_windows_per_second(
    table: FrameTable,
    *,
    history: int,
    batch_size: int,
    steps: int = 50,
    seconds: float | None = None,
    warmup_steps: int = 5,
    read_threads: int = 4,
    channels: int | None = None,
    objects: ObjectCrops | None = None,
) -> float:
    """Training windows (object samples with `objects`) per second of `train_dataset` (one
    shard), after `warmup_steps`.

    Times `steps` batches, or as many as fit in `seconds` when that is given, and returns
    windows/s = batches × `batch_size` / elapsed seconds.
    """
    ds = train_dataset(
        table,
        history=history,
        batch_size=batch_size,
        seed=0,
        shard_index=0,
        shard_count=1,
        channels=channels,
        read_threads=read_threads,
        objects=objects,
    )
    iterator = iter(ds)
    for _ in range(warmup_steps):
        next(iterator)
    done, start = 0, time.perf_counter()
    while (done < steps) if seconds is None else (time.perf_counter() - start < seconds):
        next(iterator)
        done += 1
    elapsed = time.perf_counter() - start
    iterator.close()
    return done * batch_size / elapsed
