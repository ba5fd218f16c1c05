"""The CLIP snippet features of videos in VadCLIP's layout: what `python -m jaxvad.features`
computes and writes, and what the weakly labelled synthetic set's embedded features are
(`jaxvad.data.weak_input`), so both write the same files.

What a feature is:
- frame: CLIP's L2-normalised image embedding (`Clip.image_embeds`) of a view of the frame.
  The frame is resized (aspect kept) so that its short edge is S·256/224 (S the CLIP input
  size), then cut in S×S views: `crops=1` the centre view (crop 0); `crops=10` the standard
  ten-crop in the order centre, top-left, top-right, bottom-left, bottom-right (crops 0–4),
  then the same five flipped left-right (crops 5–9). Crop 0 is the same in both, so test
  features (one crop) and training features (ten) are views at one scale.
- objects (`objects="auto"|"mot:DIR"`): a frame's boxes come from `jaxvad.data.objects` as in
  `data_prep` (`auto`: the motion detector's, `mot:DIR`: the MOTChallenge file
  `DIR/<video>.txt`). Each box is widened to a square around its centre (kept inside the
  frame), cut from the original frame, resized to S×S and embedded; the frame's feature is the
  concatenation [frame view, max over its objects' embeddings] (2E), the object half zeros
  where the frame has no box. Crops 5–9 use the flipped object crops; the object half does not
  depend on which of the five views a crop is.
- snippet: the mean of the features of its `snippet` frames (not renormalised); the last,
  partial snippet is padded by repeating the video's last frame.

Files (`extract`): `<video>__<k>.npy`, one per video and crop k, `[snippets, D]` float32 (D = E,
or 2E with objects), each written atomically once its video is computed (a rerun computes only
the videos with missing files); `train.csv`, `test.csv`: VadCLIP's `path,label` lists, one row
per file, label the video's categories joined by `-` or the dataset's normal class;
`features.json`: the settings (a folder holding other settings' features is refused).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from jaxvad import atomic
from jaxvad.data import objects as object_lib
from jaxvad.data import weak
from jaxvad.data.video_io import DataError
from jaxvad.vlm.clip import Clip, normalize

CROPS = (1, 10)
SPLITS = ("train", "test")
SCALE = 256 / 224  # short edge of the resized frame / CLIP input size, as I3D's ten-crop
NORMAL_CLASS = {
    "synthetic_weak": weak.SYNTHETIC_CATEGORIES[0],
    "ucf_crime": weak.UCF_CRIME_CATEGORIES[0],
    "xd_violence": weak.XD_VIOLENCE_CATEGORIES[0],
    "shanghaitech": weak.SHANGHAITECH_CATEGORIES[0],
}


@dataclasses.dataclass(frozen=True)
class SourceVideo:
    """One video to featurise: its weak labels, split, and `frames()` → `[N, H, W, 3]` uint8
    RGB at the original resolution."""

    video: weak.WeakVideo
    split: str
    frames: Callable[[], np.ndarray]


def valid_objects(objects: str) -> bool:
    """Whether `objects` is "none", "auto" or "mot:DIR"."""
    return objects in ("none", "auto") or (objects.startswith("mot:") and len(objects) > 4)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the features depend on (written to `features.json`)."""

    dataset: str
    clip: str
    snippet: int
    crops: int
    objects: str
    width: int

    def __post_init__(self) -> None:
        if self.snippet < 1:
            raise ValueError(f"--snippet must be at least 1, not {self.snippet}")
        if self.crops not in CROPS:
            raise ValueError(f"--crops must be 1 or 10, not {self.crops}")
        if not valid_objects(self.objects):
            raise ValueError(f"--objects must be auto, mot:DIR or none, not {self.objects!r}")

    def record(self) -> dict:
        pooling = "mean of the snippet's frames, last snippet padded with the last frame"
        fusion = "[frame, max over objects' embeddings], zeros without objects"
        return dataclasses.asdict(self) | {
            "pooling": pooling,
            "fusion": fusion if self.objects != "none" else "none",
        }


def rgb(frames: np.ndarray) -> np.ndarray:
    """`[N, H, W]` or `[N, H, W, 1|3]` uint8 → `[N, H, W, 3]` RGB."""
    frames = frames if frames.ndim == 4 else frames[..., None]
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def synthetic_videos(spec: weak.WeakSyntheticSpec | None = None) -> list[SourceVideo]:
    """Both splits of the weakly labelled synthetic set `spec` (default: `WeakSyntheticSpec()`),
    train first."""
    spec = spec or weak.WeakSyntheticSpec()
    return [
        SourceVideo(video, split, lambda frames=frames: rgb(frames))
        for split in SPLITS
        for video, frames in weak.synthetic_weak_videos(spec, split)
    ]


# ----------------------------------------------------------------------------- views


def crop_views(frames: np.ndarray, size: int, crops: int) -> np.ndarray:
    """`[N, H, W, 3]` uint8 → `[crops, N, size, size, 3]` uint8: each frame resized so that its
    short edge is round(size · 256/224), then its centre view (`crops=1`) or the ten-crop
    (centre, top-left, top-right, bottom-left, bottom-right, then the five flipped)."""
    if crops not in CROPS:
        raise ValueError(f"crops must be 1 or 10, not {crops}")
    height, width = frames.shape[1:3]
    short = round(size * SCALE)
    new_h, new_w = (
        (short, round(width * short / height))
        if height <= width
        else (round(height * short / width), short)
    )
    shrink = new_h < height
    resized = np.stack(
        [
            cv2.resize(
                f, (new_w, new_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
            )
            for f in frames
        ]
    ).reshape(len(frames), new_h, new_w, -1)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    corners = [
        (top, left),
        (0, 0),
        (0, new_w - size),
        (new_h - size, 0),
        (new_h - size, new_w - size),
    ]
    views = [resized[:, y : y + size, x : x + size] for y, x in corners[: 1 if crops == 1 else 5]]
    if crops == 10:
        views += [view[:, :, ::-1] for view in views]
    return np.stack(views)


def object_crops(frame: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """One frame `[H, W, 3]` uint8 and its boxes `[K, 4]` `[x0, y0, x1, y1]` → `[K, size, size,
    3]` uint8: each box widened to a square around its centre (side ≤ the frame's short edge,
    shifted inside the frame), cut and resized."""
    height, width = frame.shape[:2]
    out = np.empty((len(boxes), size, size, 3), np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.float64)):
        side = int(min(max(round(max(x1 - x0, y1 - y0)), 1), height, width))
        left = int(np.clip(round((x0 + x1 - side) / 2), 0, width - side))
        top = int(np.clip(round((y0 + y1 - side) / 2), 0, height - side))
        patch = frame[top : top + side, left : left + side]
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
        out[i] = cv2.resize(patch, (size, size), interpolation=interpolation).reshape(size, size, 3)
    return out


# ----------------------------------------------------------------------------- features


def embed(clip: Clip, images: np.ndarray, batch: int) -> np.ndarray:
    """`[M, S, S, 3]` uint8 → `[M, E]` float32 unit rows, in calls of exactly `batch` images
    (the last padded with zeros), so the image tower compiles once."""
    width = clip.config.projection_dim
    parts = []
    for start in range(0, len(images), batch):
        pixels = clip.preprocess(images[start : start + batch])
        padded = np.zeros((batch, *pixels.shape[1:]), np.float32)
        padded[: len(pixels)] = pixels
        parts.append(clip.image_embeds(padded)[: len(pixels)])
    return normalize(np.concatenate(parts)) if parts else np.zeros((0, width), np.float32)


def _object_part(
    clip: Clip, frames: np.ndarray, boxes: Sequence[np.ndarray], flips: bool, batch: int
) -> np.ndarray:
    """`[2 if flips else 1, N, E]`: per frame the max over its objects' embeddings (of the
    flipped crops in row 1), zeros for a frame without objects."""
    size, width = clip.config.vision.image_size, clip.config.projection_dim
    crops = [object_crops(frame, b, size) for frame, b in zip(frames, boxes, strict=True)]
    counts = [len(c) for c in crops]
    stacked = np.concatenate(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    variants = [stacked, stacked[:, :, ::-1]] if flips else [stacked]
    out = np.zeros((len(variants), len(frames), width), np.float32)
    ends = np.cumsum(counts)
    for v, images in enumerate(variants):
        embeds = embed(clip, np.ascontiguousarray(images), batch)
        for t, (end, count) in enumerate(zip(ends, counts, strict=True)):
            if count:
                out[v, t] = embeds[end - count : end].max(axis=0)
    return out


def frame_features(
    clip: Clip,
    frames: np.ndarray,
    boxes: Sequence[np.ndarray] | None,
    *,
    crops: int,
    batch: int,
) -> np.ndarray:
    """Per-frame features `[crops, N, D]` float32 (D = E, or 2E with `boxes`) of `[N, H, W, 3]`
    uint8 RGB frames, computed `batch // crops` frames at a time."""
    size, width = clip.config.vision.image_size, clip.config.projection_dim
    per_chunk = max(1, batch // crops)
    out = np.zeros((crops, len(frames), width * (1 if boxes is None else 2)), np.float32)
    for start in range(0, len(frames), per_chunk):
        chunk = frames[start : start + per_chunk]
        views = crop_views(chunk, size, crops)
        flat = views.reshape(-1, size, size, 3)
        out[:, start : start + len(chunk), :width] = embed(clip, flat, batch).reshape(
            crops, len(chunk), width
        )
        if boxes is not None:
            found = _object_part(clip, chunk, boxes[start : start + len(chunk)], crops == 10, batch)
            flipped = np.arange(crops) >= 5  # crops 5–9 are the flipped views
            out[:, start : start + len(chunk), width:] = found[flipped.astype(int)]
    return out


def pool_snippets(features: np.ndarray, snippet: int) -> np.ndarray:
    """`[..., N, D]` per-frame → `[..., ceil(N / snippet), D]`: the mean over each snippet's
    frames, the last snippet padded with copies of the last frame."""
    frames = features.shape[-2]
    pad = math.ceil(frames / snippet) * snippet - frames
    if pad:
        last = np.repeat(features[..., -1:, :], pad, axis=-2)
        features = np.concatenate([features, last], axis=-2)
    shape = (*features.shape[:-2], -1, snippet, features.shape[-1])
    return features.reshape(shape).mean(axis=-2, dtype=np.float64).astype(np.float32)


def video_boxes(objects: str, name: str, frames: np.ndarray) -> list[np.ndarray] | None:
    """Per frame the `[K, 4]` boxes `objects` names ("auto": the motion detector's, as
    `data_prep` finds them; "mot:DIR": `DIR/<name>.txt`), None for "none"."""
    if objects == "none":
        return None
    if objects == "auto":
        return object_lib.video_objects(frames, velocity=False).boxes
    count, height, width = frames.shape[:3]
    return object_lib.read_mot(object_lib.mot_path(objects[4:], name), count, width, height)


def video_features(
    clip: Clip,
    frames: np.ndarray,
    boxes: Sequence[np.ndarray] | None = None,
    *,
    snippet: int = 16,
    crops: int = 1,
    batch: int = 64,
) -> np.ndarray:
    """One video's snippet features `[crops, ceil(N / snippet), D]` float32 (see the module
    doc) of its frames `[N, H, W, 3]` uint8 RGB and, in object mode, its boxes per frame."""
    return pool_snippets(frame_features(clip, frames, boxes, crops=crops, batch=batch), snippet)


# ----------------------------------------------------------------------------- files


def crop_file(output: Path, name: str, crop: int) -> Path:
    return output / f"{name}__{crop}.npy"


def _check_settings(output: Path, settings: Settings) -> None:
    """Writes `features.json`, or checks that the one there holds the same settings."""
    path, record = output / "features.json", settings.record()
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(path, f"unreadable ({e})") from e
        if found != record:
            changed = sorted(k for k in record if found.get(k) != record[k])
            raise DataError(
                output,
                f"holds features of other settings ({', '.join(changed)} "
                f"{'differs' if len(changed) == 1 else 'differ'}); "
                "choose another --output",
            )
        return
    atomic.write_text(path, json.dumps(record, indent=2) + "\n")


def write_lists(output: Path, videos: Sequence[SourceVideo], settings: Settings) -> list[Path]:
    """`train.csv` and `test.csv` (VadCLIP's `path,label`), one row per crop file."""
    written = []
    for split in SPLITS:
        rows = ["path,label"]
        for item in (v for v in videos if v.split == split):
            label = "-".join(item.video.categories) or NORMAL_CLASS[settings.dataset]
            rows += [
                f"{crop_file(Path(), item.video.name, k)},{label}" for k in range(settings.crops)
            ]
        written.append(
            atomic.write_text(output / f"{split}.csv", "\n".join(rows) + "\n", newline="")
        )
    return written


@dataclasses.dataclass
class Timing:
    videos: int = 0
    frames: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        if not self.videos:
            return "no video computed (all were already there)"
        return (
            f"{self.videos} videos, {self.frames} frames in {self.seconds:.1f} s: "
            f"{self.seconds / self.videos:.2f} s per video, {self.frames / self.seconds:.1f} "
            "frames/s"
        )


def extract(
    clip: Clip,
    videos: Sequence[SourceVideo],
    output: Path,
    settings: Settings,
    *,
    batch: int = 64,
    progress: Callable[[Sequence[SourceVideo]], Iterable[SourceVideo]] = iter,
) -> Timing:
    """Writes every video's missing crop files and the list files into `output`; returns the
    time spent on the videos computed (decode, objects, CLIP, writing). `progress` wraps the
    loop over `videos` (the command's progress bar)."""
    output.mkdir(parents=True, exist_ok=True)
    _check_settings(output, settings)
    timing = Timing()
    for item in progress(videos):
        name = item.video.name
        missing = [k for k in range(settings.crops) if not crop_file(output, name, k).is_file()]
        if not missing:
            continue
        start = time.perf_counter()
        frames = item.frames()
        boxes = video_boxes(settings.objects, name, frames)
        features = video_features(
            clip, frames, boxes, snippet=settings.snippet, crops=settings.crops, batch=batch
        )
        for k in missing:
            with atomic.file(crop_file(output, name, k), suffix=".npy") as tmp:
                np.save(tmp, features[k])
        timing.videos, timing.frames = timing.videos + 1, timing.frames + len(frames)
        timing.seconds += time.perf_counter() - start
    write_lists(output, videos, settings)
    return timing
