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
from jaxvad.data.readers import VideoSpec
from jaxvad.data.video_io import convert_channels, resize_frames, resize_masks, to_gray


@dataclasses.dataclass(frozen=True)
class PreparedVideo:
    """frames `[N, S, S, C]` uint8, flow `[N, S, S, 2]` float16, labels `[N]` int32 (zeros
    when the video is unlabeled), masks `[N, S, S]` uint8 0/1 (zeros when the dataset has
    none), has_labels, has_masks, and
    flow_moments `[2, 2]` float64: per flow component (dx, dy), the sum and the sum of squares
    over all pixels and frames (for dataset statistics without re-reading the flow)."""

    frames: np.ndarray
    flow: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    has_labels: bool
    has_masks: bool
    flow_moments: np.ndarray


def frames_and_flow(
    frames: np.ndarray, *, size: int, channels: int, flow_method: str
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded frames `[N, H, W, C]` uint8 → (`[N, S, S, channels]` uint8, `[N, S, S, 2]`
    float16 normalised flow into each frame; see `flow`)."""
    resized = resize_frames(frames, size)
    flow = flow_lib.video_flow(to_gray(resized), flow_method)
    return convert_channels(resized, channels), flow.astype(np.float16)


def prepare_video(spec: VideoSpec, *, size: int, channels: int, flow_method: str) -> PreparedVideo:
    """Decodes, checks and converts one video of a dataset."""
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
    return PreparedVideo(
        frames, flow, labels.astype(np.int32), masks, video.labels is not None, has_masks, moments
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
    job: tuple[VideoSpec, Path], *, size: int, channels: int, flow_method: str
) -> tuple[str, str, Path]:
    """Worker entry point: prepares the video `job[0]` into the file `job[1]` unless it is
    already there; returns (split, name, path)."""
    spec, path = job
    if not path.is_file():
        save(prepare_video(spec, size=size, channels=channels, flow_method=flow_method), path)
    return spec.split, spec.name, path
