"""Readers for the official layouts of UCSD Ped2, CUHK Avenue and ShanghaiTech.

A reader lists a dataset's videos as `VideoSpec`s without decoding them: where the frames are,
how to get the frame labels and the pixel masks. `VideoSpec.load()` decodes one video and checks
that frames, labels and masks agree; the builder calls it in worker processes, so specs hold only
paths and small arrays.

Layouts (what the official archives unpack to):
- Ped2: `Train/TrainNNN/*.tif`, `Test/TestNNN/*.tif`, `Test/TestNNN_gt/*.bmp`, `Test/UCSDped2.m`;
  also the repackaged layout with one video file per clip (`Train/TrainNNN.mp4`) and `.png`
  masks, some named `frameNNN.png` (masks are matched to frames by the number in the name).
- Avenue: `training_videos/NN.avi`, `testing_videos/NN.avi`, `testing_label_mask/N_label.mat`
  (`volLabel`: one pixel mask per frame). Two frame-label versions circulate: `mask` (default),
  derived from those pixel masks (3,712 abnormal frames; videos 08 and 18 entirely abnormal), and
  `interval`, the future-frame-prediction release's intervals as the concatenated per-frame file
  `frame_labels_avenue.npy` (3,867 abnormal frames) placed in the source folder.
- ShanghaiTech: `training/videos/*.avi`, `testing/frames/<scene_clip>/*.jpg`,
  `test_frame_mask/<scene_clip>.npy`, `test_pixel_mask/<scene_clip>.npy` (the two mask folders
  either at the top or under `testing/`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from jaxvad.data.video_io import (
    VIDEO_SUFFIXES,
    DataError,
    frame_number,
    numbered_images,
    read_frames,
    read_image,
)

SPLITS = ("train", "test")
AVENUE_LABEL_VERSIONS = ("mask", "interval")


# ----------------------------------------------------------------------------- label files


def read_ucsd_m(path: Path) -> list[list[tuple[int, int]]]:
    """UCSD `.m` annotation → per test video, its 1-based inclusive anomalous frame ranges.

    Each entry line reads `TestVideoFile{end+1}.gt_frame = [61:180];` (several ranges are
    comma-separated, as in Ped1).
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"unreadable label file ({e})") from e
    videos = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line.startswith("TestVideoFile{end+1}"):
            continue
        match = re.fullmatch(r"TestVideoFile\{end\+1\}\.gt_frame\s*=\s*\[([^\]]*)\];?", line)
        if not match:
            raise DataError(
                path, f"line {number} is not `TestVideoFile{{end+1}}.gt_frame = [a:b];`"
            )
        ranges = []
        for part in match.group(1).split(","):
            bounds = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", part)
            if not bounds or not 1 <= int(bounds.group(1)) <= int(bounds.group(2)):
                raise DataError(path, f"line {number}: bad frame range {part.strip()!r}")
            ranges.append((int(bounds.group(1)), int(bounds.group(2))))
        videos.append(ranges)
    if not videos:
        raise DataError(path, "no `TestVideoFile{end+1}.gt_frame = [...]` entries")
    return videos


def load_npy(path: Path, ndim: int) -> np.ndarray:
    """A `.npy` array of the given rank (leading axes of size 1 dropped); DataError for an
    unreadable file or another rank."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(path, f"unreadable .npy file ({e})") from e
    while array.ndim > ndim and array.shape[0] == 1:
        array = array[0]
    if array.ndim != ndim:
        raise DataError(path, f"expected a {ndim}-d array, found shape {array.shape}")
    return array


def load_mat(path: Path) -> dict:
    """A MATLAB `.mat` file as a dict; DataError when scipy cannot read it."""
    try:
        return scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several unrelated types for corrupt files.
        raise DataError(path, f"unreadable .mat file ({type(e).__name__}: {e})") from e


def read_avenue_label_mask(path: Path) -> np.ndarray:
    """Avenue `testing_label_mask/N_label.mat` → `[N, H, W]` uint8 0/1 pixel masks."""
    content = load_mat(path)
    if "volLabel" not in content:
        raise DataError(path, "no `volLabel` variable")
    cells = content["volLabel"].ravel()
    masks = [np.asarray(c) for c in cells]
    if not masks or any(m.ndim != 2 for m in masks) or len({m.shape for m in masks}) != 1:
        raise DataError(path, "`volLabel` must hold one 2-d mask per frame, all of one size")
    return (np.stack(masks) > 0).astype(np.uint8)


def read_keyed_mat_labels(path: Path) -> dict[str, np.ndarray]:
    """A `.mat` of per-video 0/1 frame labels keyed by video name (e.g. `'01'`…`'21'`)."""
    content = load_mat(path)
    labels = {  # Skips scipy's `__header__` (bytes), `__version__` and `__globals__`.
        k: np.asarray(v).ravel() for k, v in content.items() if not k.startswith("__")
    }
    if not labels:
        raise DataError(path, "no label arrays in this file")
    for name, values in labels.items():
        check_binary(path, values, f"video {name}")
    return {name: values.astype(np.int32) for name, values in sorted(labels.items())}


def split_concatenated(path: Path, lengths: list[int]) -> list[np.ndarray]:
    """A concatenated per-frame label file (`[1, F]` or `[F]`) → one array per video."""
    values = load_npy(path, 1)
    if values.size != sum(lengths):
        raise DataError(path, f"holds {values.size} frame labels, the videos have {sum(lengths)}")
    check_binary(path, values, "labels")
    return np.split(values.astype(np.int32), np.cumsum(lengths)[:-1])


def check_binary(path: Path, values: np.ndarray, what: str) -> None:
    if values.size and not np.isin(values, (0, 1)).all():
        raise DataError(path, f"{what}: frame labels must be 0 or 1")


# ------------------------------------------------------------------ label and mask sources


@dataclasses.dataclass(frozen=True)
class RangeLabels:
    """Anomalous 1-based inclusive frame ranges from `source` (a UCSD `.m` file)."""

    source: Path
    ranges: tuple[tuple[int, int], ...]

    def load(self, num_frames: int, video: str) -> np.ndarray:
        labels = np.zeros(num_frames, np.int32)
        for start, end in self.ranges:
            if end > num_frames:
                raise DataError(
                    self.source,
                    f"range {start}:{end} of {video} runs past the clip's {num_frames} frames",
                )
            labels[start - 1 : end] = 1
        return labels


@dataclasses.dataclass(frozen=True)
class ArrayLabels:
    """Per-frame 0/1 labels read from `source` (`.npy` per video, or a slice of a file)."""

    source: Path
    values: np.ndarray

    def load(self, num_frames: int, video: str) -> np.ndarray:
        if len(self.values) != num_frames:
            raise DataError(
                self.source,
                f"{len(self.values)} frame labels for {video}, which has {num_frames} frames",
            )
        return self.values.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class MaskDerivedLabels:
    """A frame is anomalous when its pixel mask has any anomalous pixel."""

    def load_from_masks(self, masks: np.ndarray) -> np.ndarray:
        return masks.reshape(len(masks), -1).any(axis=1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class ImageMasks:
    """One mask image per frame (non-zero = anomalous), numbered like the frames."""

    folder: Path

    def load(self) -> np.ndarray:
        return np.stack([read_image(p, grayscale=True)[..., 0] > 0 for p in self._files()]).astype(
            np.uint8
        )

    def _files(self) -> list[Path]:
        files = numbered_images(self.folder)
        numbers = [frame_number(p) for p in files]
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            raise DataError(self.folder, "mask numbers are not consecutive")
        return files


@dataclasses.dataclass(frozen=True)
class NpyMasks:
    """`[N, H, W]` masks in one `.npy` file (ShanghaiTech `test_pixel_mask`)."""

    path: Path

    def load(self) -> np.ndarray:
        return (load_npy(self.path, 3) > 0).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class MatMasks:
    """Avenue `N_label.mat` masks."""

    path: Path

    def load(self) -> np.ndarray:
        return read_avenue_label_mask(self.path)


Labels = RangeLabels | ArrayLabels | MaskDerivedLabels
Masks = ImageMasks | NpyMasks | MatMasks


@dataclasses.dataclass(frozen=True)
class LoadedVideo:
    """One decoded video: frames `[N, H, W, C]` uint8, labels `[N]` int32 0/1 (None when
    unlabeled), masks `[N, H, W]` uint8 0/1 (None when the dataset has none)."""

    frames: np.ndarray
    labels: np.ndarray | None
    masks: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    """Where one video's frames, labels and masks are; `load()` reads and cross-checks them."""

    name: str
    split: str
    frames: Path
    labels: Labels | None = None
    masks: Masks | None = None

    def load(self) -> LoadedVideo:
        frames = read_frames(self.frames)
        masks = None
        if self.masks is not None:
            masks = self.masks.load()
            where = getattr(self.masks, "folder", None) or self.masks.path
            if len(masks) != len(frames):
                raise DataError(
                    where, f"{len(masks)} masks for {len(frames)} frames of {self.frames}"
                )
            if masks.shape[1:] != frames.shape[1:3]:
                raise DataError(
                    where, f"masks of size {masks.shape[1:]}, frames of {frames.shape[1:3]}"
                )
        if isinstance(self.labels, MaskDerivedLabels):
            labels = self.labels.load_from_masks(masks)
        elif self.labels is not None:
            labels = self.labels.load(len(frames), self.name)
        else:
            labels = None
        return LoadedVideo(frames, labels, masks)


# ----------------------------------------------------------------------------- layouts


def _require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise DataError(path, "folder not found")
    return path


def _clips(folder: Path, prefix: str) -> list[tuple[str, Path]]:
    """`PrefixNNN/` frame folders or `PrefixNNN.<video>` files, sorted by NNN."""
    clips = {}
    for entry in _require_dir(folder).iterdir():
        match = re.fullmatch(rf"({prefix}\d+)", entry.stem)
        is_clip = entry.is_dir() or entry.suffix.lower() in VIDEO_SUFFIXES
        if match and is_clip and not entry.name.endswith("_gt"):
            if match.group(1) in clips:
                raise DataError(entry, f"{match.group(1)} exists both as a folder and a video")
            clips[match.group(1)] = entry
    if not clips:
        raise DataError(folder, f"no {prefix}NNN clips (folders of frames or video files)")
    return sorted(clips.items(), key=lambda kv: int(kv[0][len(prefix) :]))


def ped2_videos(source: Path) -> dict[str, list[VideoSpec]]:
    """UCSD Ped2 (official `.tif`/`.bmp` layout or the repackaged `.mp4`/`.png` one). Without
    a `.m` label file in `Test/` the test videos are read unlabeled (with a warning)."""
    source = _require_dir(Path(source))
    test_dir = source / "Test"
    train = [VideoSpec(n, "train", p) for n, p in _clips(source / "Train", "Train")]
    m_files = sorted(_require_dir(test_dir).glob("*.m"))
    clips = _clips(test_dir, "Test")
    if not m_files:
        logging.warning(
            "%s: no UCSD `.m` frame-label file: the test videos are unlabeled", test_dir
        )
        return {"train": train, "test": [VideoSpec(n, "test", p) for n, p in clips]}
    if len(m_files) > 1:
        raise DataError(test_dir, f"expected one UCSD `.m` frame-label file, found {len(m_files)}")
    ranges = read_ucsd_m(m_files[0])
    test = []
    # Entries are matched to clips by number (TestNNN ↔ entry NNN), so a subset of the clips
    # (e.g. the official sample) reads correctly; a clip without an entry is an error.
    for name, path in clips:
        number = int(name[len("Test") :])
        if number > len(ranges):
            raise DataError(m_files[0], f"{len(ranges)} label entries, no entry for clip {name}")
        gt = test_dir / f"{name}_gt"
        masks = ImageMasks(gt) if gt.is_dir() else None
        labels = RangeLabels(m_files[0], tuple(ranges[number - 1]))
        test.append(VideoSpec(name, "test", path, labels, masks))
    if len(clips) != len(ranges):
        logging.warning(
            "%s: %d label entries, %d test clips present", m_files[0], len(ranges), len(clips)
        )
    return {"train": train, "test": test}


def _videos_in(folder: Path) -> list[Path]:
    videos = [p for p in _require_dir(folder).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES]
    if not videos:
        raise DataError(folder, "no video files")
    return sorted(videos, key=lambda p: p.name)  # `01_001` … `01_083`, `02_001` …


def _video_length(path: Path) -> int:
    """Frame count from the container header (checked against the decode later)."""
    capture = cv2.VideoCapture(str(path))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    capture.release()
    if count <= 0:
        raise DataError(path, "OpenCV cannot read the frame count of this video")
    return count


def avenue_videos(source: Path, label_version: str = "mask") -> dict[str, list[VideoSpec]]:
    """CUHK Avenue; `label_version` is `mask` (default) or `interval` (see the module doc)."""
    if label_version not in AVENUE_LABEL_VERSIONS:
        raise ValueError(f"Avenue label version must be one of {AVENUE_LABEL_VERSIONS}")
    source = _require_dir(Path(source))
    train = [VideoSpec(p.stem, "train", p) for p in _videos_in(source / "training_videos")]
    test_videos = _videos_in(source / "testing_videos")
    mask_dir = _require_dir(source / "testing_label_mask")
    masks = []
    for video in test_videos:
        mat = mask_dir / f"{frame_number(video)}_label.mat"
        if not mat.is_file():
            raise DataError(mat, f"pixel-mask file of {video.name} not found")
        masks.append(MatMasks(mat))
    if label_version == "mask":
        labels = [MaskDerivedLabels() for _ in test_videos]
    else:
        interval_file = source / "frame_labels_avenue.npy"
        if not interval_file.is_file():
            raise DataError(interval_file, "interval labels not found (see data_prep/avenue.md)")
        lengths = [_video_length(v) for v in test_videos]
        parts = split_concatenated(interval_file, lengths)
        labels = [ArrayLabels(interval_file, part) for part in parts]
    test = [
        VideoSpec(v.stem, "test", v, label, mask)
        for v, label, mask in zip(test_videos, labels, masks, strict=True)
    ]
    return {"train": train, "test": test}


def _first_dir(*candidates: Path) -> Path:
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DataError(candidates[0], "folder not found")


def shanghaitech_videos(source: Path) -> dict[str, list[VideoSpec]]:
    """ShanghaiTech Campus (training videos, test frame folders, `.npy` masks)."""
    source = _require_dir(Path(source))
    train = [VideoSpec(p.stem, "train", p) for p in _videos_in(source / "training" / "videos")]
    frames_dir = _require_dir(source / "testing" / "frames")
    label_dir = _first_dir(source / "test_frame_mask", source / "testing" / "test_frame_mask")
    pixel_dir = source / "test_pixel_mask"
    if not pixel_dir.is_dir():
        pixel_dir = source / "testing" / "test_pixel_mask"
    clips = sorted(p for p in frames_dir.iterdir() if p.is_dir())
    if not clips:
        raise DataError(frames_dir, "no clip folders")
    test = []
    for clip in clips:
        label_file = label_dir / f"{clip.name}.npy"
        if not label_file.is_file():
            raise DataError(label_file, f"frame labels of {clip.name} not found")
        labels = load_npy(label_file, 1)
        check_binary(label_file, labels, clip.name)
        pixel_file = pixel_dir / f"{clip.name}.npy"
        masks = NpyMasks(pixel_file) if pixel_file.is_file() else None
        test.append(VideoSpec(clip.name, "test", clip, ArrayLabels(label_file, labels), masks))
    return {"train": train, "test": test}
