"""A user's video (a file OpenCV reads, or a folder of numbered frames) as a one-video split.

The frames are decoded and resized exactly as the dataset preparation does (`jaxvad.data`:
same decode, same area resize to the config's size, same optical flow on the resized grayscale
frames, same normalisation), so a prepared test video and the same video handed to
`jaxvad.explain` get the same scores. Only the resized frames are held in memory
(N·S²·C bytes), unless objects are found in the video (object mode: the detector, like the
dataset preparation, reads the whole video at its original resolution, N·H·W·C bytes); the flow
into a frame is computed when a batch reads it (in the input pipeline's reader threads) and not
kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxvad.data import flow as flow_lib
from jaxvad.data.pipeline import FrameTable
from jaxvad.data.video_io import DataError, read_frames, resize_frames, to_gray


class VideoFrames(Sequence[dict[str, Any]]):
    """The records of one unlabeled video: frame k → `frame` `[S, S, C]` uint8, `flow`
    `[S, S, 2]` float16 (from frame k−1 to k; zeros for the first frame, unless `flows`
    `[N, S, S, 2]` gives every frame's flow already, e.g. a watched stream's), `label` 0 and
    an empty `mask` `[S, S]`."""

    def __init__(self, frames: np.ndarray, flow_method: str, flows: np.ndarray | None = None):
        flow_lib.flow_function(flow_method)  # Fails now for an unknown method or missing package.
        self.frames = frames
        self.flows = flows
        self.gray = to_gray(frames)
        self.flow_method = flow_method
        self._empty_mask = np.zeros(frames.shape[1:3], np.uint8)
        self._empty_mask.flags.writeable = False

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, k: int) -> dict[str, Any]:
        if self.flows is not None:
            flow = self.flows[k]
        elif k == 0:
            flow = np.zeros((*self.gray.shape[1:], 2), np.float16)
        else:
            flow = flow_lib.video_flow(self.gray[k - 1 : k + 1], self.flow_method)[1]
        return {
            "frame": self.frames[k],
            "flow": flow.astype(np.float16),
            "label": 0,
            "mask": self._empty_mask,
        }


def video_name(path: Path) -> str:
    """What outputs call the video: a file's stem or a folder's name."""
    return path.name if path.is_dir() else path.stem


def decode(path: str | Path, *, history: int, size: int | None = None) -> np.ndarray:
    """The frames of `path`, `[N, size, size, C]` uint8 (`size` None: `[N, H, W, C]`, the
    original resolution).

    Raises DataError for a missing or unreadable video and for one shorter than T + 1 frames
    (T = `history`: no frame would have a prediction).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such video file or folder of frames")
    frames = read_frames(path, size=size)
    needed = history + 1
    if len(frames) < needed:
        raise DataError(
            path,
            f"{len(frames)} frame(s): too short; the model predicts frame t from the "
            f"T = {history} frames before it, so a video needs at least T + 1 = "
            f"{needed} frames",
        )
    return frames


def open_video(
    path: str | Path,
    *,
    size: int,
    history: int,
    flow: str,
    originals: np.ndarray | None = None,
) -> FrameTable:
    """`path` at `size`×`size` as a one-video `FrameTable` (split "video") whose flow is
    computed with the method `flow`; `originals`: its frames already decoded at the original
    resolution (`decode`), resized here rather than decoded again (the same frames: decoding
    resizes each frame with the same area interpolation; the table then has their original
    `frame_sizes`, which object boxes and crops are placed with). DataError as `decode`."""
    path = Path(path)
    if originals is None:
        frames = decode(path, history=history, size=size)
    else:
        frames = resize_frames(originals, size)
    n = len(frames)
    return FrameTable(
        VideoFrames(frames, flow),
        np.zeros(n, np.int64),
        np.arange(1, n + 1),
        name=str(path),
        split="video",
        video_names=[video_name(path)],
        frame_sizes=None if originals is None else np.array([originals.shape[1:3]]),
    )
