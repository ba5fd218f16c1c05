"""One video → the arrays a prepared dataset stores: resized frames, normalised flow, labels, masks.

Used by the builder's worker processes and, without labels, by inference on a user's video, so
both go through the same decode → resize → flow. Kept free of TFDS and JAX imports so worker
processes start fast.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np

from jaxvad import atomic
from jaxvad.data import flow as flow_lib
from jaxvad.data import objects as object_lib
from jaxvad.data.readers import VideoSpec
from jaxvad.data.video_io import convert_channels, resize_frames, resize_masks, to_gray


@dataclasses.dataclass(frozen=True)
class PreparedVideo:
    """frames `[N, S, S, C]` uint8, flow `[N, S, S, 2]` float16, labels `[N]` int32 (zeros
    when the video is unlabeled), masks `[N, S, S]` uint8 0/1 (zeros when the dataset has
    none), has_labels, has_masks, and
    flow_moments `[2, 2]` float64: per flow component (dx, dy), the sum and the sum of squares
    over all pixels and frames (for dataset statistics without re-reading the flow), and the
    objects (`jaxvad.data.objects.video_objects`; none unless asked for) flattened over frames:
    object_counts `[N]` int32 (objects per frame), boxes `[M, 4]` float32 (original-resolution
    pixels), tracks `[M]` int32, velocity `[M, VELOCITY_BINS]` float32; frame_size `[2]` int32:
    the original (height, width)."""

    frames: np.ndarray
    flow: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    has_labels: bool
    has_masks: bool
    flow_moments: np.ndarray
    object_counts: np.ndarray
    boxes: np.ndarray
    tracks: np.ndarray
    velocity: np.ndarray
    frame_size: np.ndarray

    def frame_objects(self, i: int) -> dict[str, np.ndarray]:
        """Frame i's (0-based) `boxes` `[K, 4]`, `tracks` `[K]`, `velocity` `[K, B]`."""
        start = int(self.object_counts[:i].sum())
        end = start + int(self.object_counts[i])
        return {k: getattr(self, k)[start:end] for k in ("boxes", "tracks", "velocity")}


def frames_and_flow(
    frames: np.ndarray, *, size: int, channels: int, flow_method: str
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded frames `[N, H, W, C]` uint8 → (`[N, S, S, channels]` uint8, `[N, S, S, 2]`
    float16 normalised flow into each frame; see `flow`)."""
    resized = resize_frames(frames, size)
    flow = flow_lib.video_flow(to_gray(resized), flow_method)
    return convert_channels(resized, channels), flow.astype(np.float16)


def video_boxes(objects: str, spec: VideoSpec, frames: np.ndarray) -> list[np.ndarray] | None:
    """The boxes `objects` ("auto" or "mot:DIR") names for the video `spec` of `frames`
    `[N, H, W, C]`: None for "auto" (the detector's), the MOT file `DIR/<name>.txt`'s
    otherwise."""
    if objects == "auto":
        return None
    n, height, width = frames.shape[:3]
    return object_lib.read_mot(object_lib.mot_path(objects[4:], spec.name), n, width, height)


def prepare_video(
    spec: VideoSpec, *, size: int, channels: int, flow_method: str, objects: str = "none"
) -> PreparedVideo:
    """Decodes, checks and converts one video of a dataset; `objects`: "none", "auto" or
    "mot:DIR" (see `video_boxes`)."""
    cv2.setNumThreads(1)  # Parallelism comes from one process per video.
    video = spec.load()
    frames, flow = frames_and_flow(
        video.frames, size=size, channels=channels, flow_method=flow_method
    )
    n = len(frames)
    labels = video.labels if video.labels is not None else np.zeros(n, np.int32)
    has_masks = video.masks is not None
    masks = resize_masks(video.masks, size) if has_masks else np.zeros((n, size, size), np.uint8)
    flat = flow.reshape(-1, 2).astype(np.float64)
    moments = np.stack([flat.sum(0), (flat**2).sum(0)])
    boxes = np.zeros((0, 4), np.float32)
    counts, tracks = np.zeros(n, np.int32), np.zeros(0, np.int32)
    velocity = np.zeros((0, object_lib.VELOCITY_BINS), np.float32)
    if objects != "none":
        found = object_lib.video_objects(video.frames, video_boxes(objects, spec, video.frames))
        counts = np.array([len(b) for b in found.boxes], np.int32)
        boxes, tracks = np.concatenate(found.boxes), np.concatenate(found.tracks)
        velocity = np.concatenate(found.velocity)
    return PreparedVideo(
        frames,
        flow,
        labels.astype(np.int32),
        masks,
        video.labels is not None,
        has_masks,
        moments,
        counts,
        boxes,
        tracks,
        velocity,
        np.array(video.frames.shape[1:3], np.int32),
    )


def save(video: PreparedVideo, path: Path) -> None:
    """Writes atomically (a temp file renamed), so a killed run leaves no half-written cache."""
    with atomic.file(path, suffix=".npz") as tmp:
        np.savez(tmp, **dataclasses.asdict(video))


def load(path: Path) -> PreparedVideo:
    with np.load(path) as data:
        fields = {f.name: data[f.name] for f in dataclasses.fields(PreparedVideo)}
    fields["has_labels"] = bool(fields["has_labels"])
    fields["has_masks"] = bool(fields["has_masks"])
    return PreparedVideo(**fields)


def prepare_to_cache(
    job: tuple[VideoSpec, Path], *, size: int, channels: int, flow_method: str, objects: str
) -> tuple[str, str, Path]:
    """Worker entry point: prepares the video `job[0]` into the file `job[1]` unless it is
    already there; returns (split, name, path)."""
    spec, path = job
    if not path.is_file():
        video = prepare_video(
            spec, size=size, channels=channels, flow_method=flow_method, objects=objects
        )
        save(video, path)
    return spec.split, spec.name, path
