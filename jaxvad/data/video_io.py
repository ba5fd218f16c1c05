"""Decoding and resizing of video files and folders of frames.

Everything that reads pixels from disk goes through here, for preparation (`builder`) and for
inference on a user's video (`jaxvad.explain`), so both see the same decode and resize.
Frames come out as `[N, H, W, C]` uint8 with C = 1 for grayscale sources and C = 3 (RGB order)
for colour sources.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

IMAGE_SUFFIXES = (".tif", ".tiff", ".bmp", ".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".webm")


class DataError(ValueError):
    """Bad input data. The message starts with the offending file or folder."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem

    def __reduce__(self):  # Worker processes send errors back pickled.
        return type(self), (self.path, self.problem)


def frame_number(path: Path) -> int:
    """The last integer in a file's stem: `frame012.png` → 12, `012.tif` → 12."""
    digits = re.findall(r"\d+", path.stem)
    if not digits:
        raise DataError(path, "file name holds no frame number")
    return int(digits[-1])


def numbered_images(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files of `folder` sorted by the number in their names (not by the names).

    Raises DataError when the folder is missing, holds no images, or two files share a number.
    """
    if not folder.is_dir():
        raise DataError(folder, "folder not found")
    files = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file()
    ]
    if not files:
        raise DataError(folder, f"no frames ({'/'.join(suffixes)}) in this folder")
    files.sort(key=frame_number)
    numbers = [frame_number(p) for p in files]
    if len(set(numbers)) != len(numbers):
        raise DataError(folder, "two files carry the same frame number")
    return files


def _as_nhwc(frames: list[np.ndarray], source: Path) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise DataError(source, f"frames of different sizes in one clip: {sorted(shapes)}")
    return np.stack(frames)


def to_channels_last(image: np.ndarray) -> np.ndarray:
    """BGR/BGRA/gray from OpenCV → RGB `[H, W, 3]`, or `[H, W, 1]` for gray."""
    if image.ndim == 2:
        return image[..., None]
    if image.shape[-1] == 4:
        image = image[..., :3]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _maybe_gray(frames: np.ndarray) -> np.ndarray:
    """Three equal channels (grayscale stored as colour, e.g. Ped2 in mp4) → one channel."""
    if frames.shape[-1] == 3:
        sample = frames[:: max(1, len(frames) // 8)]
        if np.array_equal(sample[..., 0], sample[..., 1]) and np.array_equal(
            sample[..., 0], sample[..., 2]
        ):
            return frames[..., :1]
    return frames


def _jpeg_complete(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(max(path.stat().st_size - 64, 0))
        return b"\xff\xd9" in f.read()


def read_image(path: Path, *, grayscale: bool = False) -> np.ndarray:
    """One image as `[H, W, C]` uint8 (C = 1 with `grayscale`, else as stored)."""
    flag = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_UNCHANGED
    image = cv2.imread(str(path), flag)
    if image is None:
        raise DataError(path, "unreadable or truncated image")
    if path.suffix.lower() in (".jpg", ".jpeg") and not _jpeg_complete(path):
        # OpenCV decodes a cut JPEG with a grey tail and only a warning.
        raise DataError(path, "truncated JPEG (no end-of-image marker)")
    if image.dtype != np.uint8:
        if image.dtype != np.uint16:
            raise DataError(path, f"unsupported pixel type {image.dtype}")
        image = (image // 257).astype(np.uint8)
    return to_channels_last(image)


def read_image_folder(files: Sequence[Path], size: int | None = None) -> np.ndarray:
    """Frames from numbered image files, `[N, H, W, C]` uint8 (C = 1 if all are gray); with
    `size`, each frame is resized to `size`×`size` as it is read (see `resize_frames`)."""
    if size is None:
        return _maybe_gray(_as_nhwc([read_image(p) for p in files], files[0].parent))
    frames, shape = [], None
    for path in tqdm(files, desc="read", unit="frame"):
        image = read_image(path)
        shape = shape or image.shape
        if image.shape != shape:
            raise DataError(path, f"frame of size {image.shape}, the first frame is {shape}")
        frames.append(resize_frame(image, size))
    return _maybe_gray(np.stack(frames))


def read_video_file(path: Path, size: int | None = None) -> np.ndarray:
    """Every frame of a video file, `[N, H, W, C]` uint8 (C = 1 if its channels are equal);
    with `size`, each frame is resized to `size`×`size` as it is decoded (see `resize_frames`),
    so a long video never sits in memory at its full resolution.

    Raises DataError for a missing, unreadable or empty file, and for a file that ends before
    the frame count in its header (a truncated download).
    """
    if not path.is_file():
        raise DataError(path, "video file not found")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(path, "OpenCV cannot open this video")
    declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    progress = tqdm(total=max(declared, 0) or None, desc="decode", unit="frame", disable=not size)
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frame = to_channels_last(frame)
        frames.append(frame if size is None else resize_frame(frame, size))
        progress.update()
    progress.close()
    capture.release()
    if not frames:
        raise DataError(path, "unreadable video: no frame could be decoded")
    if declared > 0 and len(frames) < declared:
        raise DataError(
            path, f"truncated video: decoded {len(frames)} of {declared} frames in its header"
        )
    return _maybe_gray(_as_nhwc(frames, path))


def read_frames(path: Path, size: int | None = None) -> np.ndarray:
    """A video file or a folder of numbered frames → `[N, H, W, C]` uint8 (`[N, size, size, C]`
    with `size`: resized frame by frame while reading)."""
    if path.is_dir():
        return read_image_folder(numbered_images(path), size)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise DataError(path, "neither a folder of frames nor a video file")
    return read_video_file(path, size)


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """`[H, W, C]` uint8 → `[size, size, C]` (area interpolation, aspect not kept)."""
    resized = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    return resized.reshape(size, size, frame.shape[-1])


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """`[N, H, W, C]` uint8 → `[N, size, size, C]` uint8 (area interpolation, aspect not kept,
    as the field's 224×224 protocols do)."""
    out = np.empty((len(frames), size, size, frames.shape[-1]), np.uint8)
    for i, frame in enumerate(frames):
        out[i] = resize_frame(frame, size)
    return out


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """`[N, H, W]` 0/1 uint8 → `[N, size, size]` 0/1 uint8 (nearest, so labels stay exact)."""
    out = np.empty((len(masks), size, size), np.uint8)
    for i, mask in enumerate(masks):
        out[i] = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return out


def to_gray(frames: np.ndarray) -> np.ndarray:
    """`[N, H, W, C]` uint8 (C = 1 or RGB) → `[N, H, W]` uint8 luminance."""
    if frames.shape[-1] == 1:
        return frames[..., 0]
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


def convert_channels(frames: np.ndarray, channels: int | None) -> np.ndarray:
    """`[..., S, S, C]` uint8 → `[..., S, S, channels]` (None: unchanged).

    Gray → 3 channels repeats the channel; RGB → 1 channel is the luminance of
    `to_gray` (ITU-R BT.601 weights, as everywhere else in jaxvad).
    """
    stored = frames.shape[-1]
    if channels is None or channels == stored:
        return frames
    if stored == 1 and channels == 3:
        return np.repeat(frames, 3, axis=-1)
    if stored == 3 and channels == 1:
        gray = to_gray(frames.reshape(-1, *frames.shape[-3:]))
        return gray.reshape(*frames.shape[:-1], 1)
    raise ValueError(f"cannot convert frames with {stored} channels to {channels}")
