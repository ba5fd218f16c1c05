"""Weakly labelled datasets: UCF-Crime, XD-Violence, ShanghaiTech's weakly supervised split, the
published snippet features of these, and a weakly labelled synthetic set.

Weak supervision labels whole videos (normal or anomalous, and the anomaly categories); only the
test videos carry the frame-level segments that evaluation needs. Readers return `WeakVideo`s in
list order; every malformed input is a `WeakLabelError` naming the file and the 1-based line.

Formats, as published (the tests write fixtures in exactly these):
- UCF-Crime `Temporal_Anomaly_Annotation_for_Testing_Videos.txt`: one test video a line,
  whitespace-separated `Arson011_x264.mp4  Arson  150  420  680  1267`: video, class, two
  (start, end) frame pairs, `-1 -1` for none; normal videos `Normal  -1  -1  -1  -1` (VadCLIP's
  copy drops the `.mp4`). Lists `Anomaly_Train.txt`, `Anomaly_Test.txt`: `Abuse/Abuse001_x264.mp4`,
  normal videos `Training_Normal_Videos_Anomaly/Normal_Videos001_x264.mp4` and
  `Testing_Normal_Videos_Anomaly/Normal_Videos_003_x264.mp4`. A video's class is read from its
  name (`Abuse001_x264` → Abuse), so every list variant below works.
- XD-Violence `annotations.txt`: `name start end [start end ...]` for the anomalous test videos
  (a few names end in `.mp4`). Names carry the labels after `_label_`: `A` for normal, else one
  to three codes joined by `-`, with `0` for none: `..._label_B2-G-0` (see `XD_VIOLENCE_CODES`).
- ShanghaiTech, the split of Zhong et al. (2019) that RTFM and VadCLIP use: a clip named with a
  4-digit number (`01_0014`) comes from the original test set, all of whose clips hold anomalies,
  and is anomalous; a 3-digit one (`01_001`, training set) is normal. Frame labels come from the
  official `test_frame_mask/<clip>.npy`.
- List files: one entry a line, a path or a name (`/feat/Abuse/Abuse001_x264__0.npy`,
  `G:\\UCF_Test\\Abuse028_x264_i3d.npy`, `Abuse/Abuse001_x264.mp4`, `01_0014`), or VadCLIP's CSV
  with a `path,label` header. An entry's video is its file name without folders, extension, crop
  suffix `__<k>` (VadCLIP) and `_i3d` (RTFM); further crops of a listed video add no video.
- Feature files: VadCLIP's one `.npy` per video and crop, `<video>__<k>.npy` `[snippets, D]`
  (10 crops in the training lists, one in the test lists), or RTFM's one per video,
  `<video>_i3d.npy` `[snippets, crops, D]`.

Segments are 0-based half-open frame ranges [start, end) holding the published numbers
unchanged: VadCLIP builds its ground truth as `gt[start:end] = 1`, so AUCs stay comparable.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxvad.data.readers import check_binary, load_npy
from jaxvad.data.synthetic import SyntheticSpec, generate_clip
from jaxvad.data.video_io import VIDEO_SUFFIXES, DataError

# Class tables: entry 0 names the normal class, the others the anomaly categories (a video
# classifier's class list, in VadCLIP's order and spelling).
UCF_CRIME_CATEGORIES = (
    "Normal", "Abuse", "Arrest", "Arson", "Assault", "Burglary", "Explosion", "Fighting",
    "RoadAccidents", "Robbery", "Shooting", "Shoplifting", "Stealing", "Vandalism",
)  # fmt: skip
XD_VIOLENCE_CODES = {
    "A": "normal", "B1": "fighting", "B2": "shooting", "B4": "riot", "B5": "abuse",
    "B6": "car accident", "G": "explosion",
}  # fmt: skip
XD_VIOLENCE_CATEGORIES = tuple(XD_VIOLENCE_CODES.values())
SHANGHAITECH_CATEGORIES = ("normal", "anomaly")  # the split has no categories
SYNTHETIC_KIND_CATEGORIES = {  # the generator's ANOMALY_KINDS → category names
    "fast_rider": "rider", "vehicle": "vehicle", "runner": "runner",
    "against_flow": "against_the_flow", "lawn_crossing": "lawn_crossing",
}  # fmt: skip
SYNTHETIC_CATEGORIES = ("normal", *SYNTHETIC_KIND_CATEGORIES.values())

Segment = tuple[int, int]
_NAMES = "<names>"  # the `source` of errors in a list given as names


class WeakLabelError(DataError):
    """A malformed annotation, list or feature file. The message starts with the file and,
    where there is one, the 1-based line: `Anomaly_Test.txt, line 3: ...`."""

    def __init__(self, path: str | Path, line: int | None, problem: str):
        super().__init__(f"{path}, line {line}" if line is not None else path, problem)
        self.path, self.line = str(path), line

    def __reduce__(self):  # Worker processes send errors back pickled.
        return type(self), (self.path, self.line, self.problem)


@dataclasses.dataclass(frozen=True)
class WeakVideo:
    """One video's weak labels.

    `label` is 1 for an anomalous video; `categories` are its anomaly categories (names from the
    dataset's table, empty exactly for normal videos); `segments` its anomalous frames as 0-based
    half-open [start, end) ranges, known for test videos only: None for a training video, () for
    a normal test video; `frames` its frame count where the source gives it.
    """

    name: str
    label: int
    categories: tuple[str, ...] = ()
    segments: tuple[Segment, ...] | None = None
    frames: int | None = None

    def __post_init__(self) -> None:
        if self.label not in (0, 1) or bool(self.categories) != bool(self.label):
            raise ValueError(f"{self.name}: label {self.label} with categories {self.categories}")
        if self.segments is not None:
            if bool(self.segments) != bool(self.label):
                raise ValueError(f"{self.name}: label {self.label} with segments {self.segments}")
            if any(not 0 <= start < end for start, end in self.segments):
                raise ValueError(f"{self.name}: segments must satisfy 0 ≤ start < end")


def frame_labels(segments: Sequence[Segment], frames: int) -> np.ndarray:
    """Per-frame labels `[frames]` int32, 1 inside the [start, end) segments. Segments are cut
    at `frames` (published ends may pass a decode's last frame, as in VadCLIP's ground truth);
    one starting at or after `frames` means a wrong frame count and raises ValueError."""
    labels = np.zeros(frames, np.int32)
    for start, end in segments:
        if start >= frames:
            raise ValueError(f"segment [{start}, {end}) starts after the video's {frames} frames")
        labels[start:end] = 1
    return labels


def label_segments(labels: np.ndarray) -> tuple[Segment, ...]:
    """The [start, end) runs of 1 in per-frame 0/1 labels `[frames]`; inverse of `frame_labels`."""
    flags = (np.asarray(labels) != 0).astype(np.int8)
    edges = np.diff(np.concatenate([[0], flags, [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return tuple((int(s), int(e)) for s, e in zip(starts, ends, strict=True))


# ----------------------------------------------------------------------------- list files


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One list entry: where it is (`source`, 1-based `line`), the path or name as written, and
    the video and crop (None: no `__<k>` suffix) it names."""

    source: str
    line: int
    text: str
    video: str
    crop: int | None


def _video_and_crop(text: str) -> tuple[str, int | None]:
    """`/f/Abuse/Abuse001_x264__3.npy` → (`Abuse001_x264`, 3); `G:\\x\\01_0014_i3d.npy` →
    (`01_0014`, None); `Abuse/Abuse001_x264.mp4` → (`Abuse001_x264`, None)."""
    base = re.split(r"[/\\]", text.strip())[-1]
    for suffix in (".npy", *VIDEO_SUFFIXES):  # not Path.suffix: XD names hold dots
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    match = re.fullmatch(r"(.*?)(?:__(\d+))?", base)
    video, crop = match.group(1).removesuffix("_i3d"), match.group(2)
    return video, None if crop is None else int(crop)


def _read_text(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise WeakLabelError(path, None, f"unreadable ({e})") from e


def _list_entries(videos: Path | str | Sequence[str]) -> list[_Entry]:
    """Every entry of a list file (plain or VadCLIP's CSV) or of a sequence of names."""
    if isinstance(videos, str | os.PathLike):
        source, lines = str(videos), _read_text(Path(videos))
    else:
        source, lines = _NAMES, list(videos)
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if numbered and numbered[0][1].strip().lower().startswith("path,"):
        numbered = [(number, next(csv.reader([line]))[0]) for number, line in numbered[1:]]
    entries = []
    for number, text in numbered:
        video, crop = _video_and_crop(text)
        if not video:
            raise WeakLabelError(source, number, f"no video name in {text.strip()!r}")
        entries.append(_Entry(source, number, text.strip(), video, crop))
    if not entries:
        raise WeakLabelError(source, None, "the list names no video")
    return entries


def _first_per_video(entries: list[_Entry]) -> list[_Entry]:
    first: dict[str, _Entry] = {}
    for entry in entries:
        first.setdefault(entry.video, entry)
    return list(first.values())


def _ints(path: Path, number: int, fields: Sequence[str]) -> list[int]:
    try:
        return [int(field) for field in fields]
    except ValueError:
        raise WeakLabelError(path, number, f"frame numbers must be integers: {fields}") from None


def _segments(path: Path, number: int, pairs: list[Segment]) -> tuple[Segment, ...]:
    for start, end in pairs:
        if not 0 <= start < end:
            raise WeakLabelError(
                path, number, f"bad segment ({start}, {end}): need 0 ≤ start < end"
            )
    return tuple(pairs)


# ----------------------------------------------------------------------------- UCF-Crime


def _ucf_category(source: str | Path, line: int, video: str) -> str:
    match = re.fullmatch(r"(Normal_Videos|[A-Za-z]+?)_?\d+_x264", video)
    if not match:
        raise WeakLabelError(source, line, f"{video!r} is not a UCF-Crime name (`Abuse001_x264`)")
    category = "Normal" if match.group(1) == "Normal_Videos" else match.group(1)
    if category not in UCF_CRIME_CATEGORIES:
        raise WeakLabelError(
            source,
            line,
            f"{video}: unknown UCF-Crime category {category!r} "
            f"(known: {', '.join(UCF_CRIME_CATEGORIES)})",
        )
    return category


def _ucf_annotations(path: Path) -> dict[str, tuple[Segment, ...]]:
    """`Temporal_Anomaly_Annotation_for_Testing_Videos.txt` → video → segments."""
    annotations = {}
    for number, line in enumerate(_read_text(path), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise WeakLabelError(
                path, number, f"expected `video class start1 end1 start2 end2`, found {fields}"
            )
        if fields[1] not in UCF_CRIME_CATEGORIES:
            raise WeakLabelError(path, number, f"unknown UCF-Crime category {fields[1]!r}")
        video = _video_and_crop(fields[0])[0]
        category = _ucf_category(path, number, video)
        if fields[1] != category:
            raise WeakLabelError(path, number, f"class {fields[1]!r}, but {video} is {category}")
        values = _ints(path, number, fields[2:])
        pairs = [p for p in zip(values[::2], values[1::2], strict=True) if p != (-1, -1)]
        segments = _segments(path, number, pairs)
        if bool(segments) != (category != "Normal"):
            need = "no segment" if category == "Normal" else "a segment"
            raise WeakLabelError(path, number, f"{video} ({category}) needs {need}")
        if video in annotations:
            raise WeakLabelError(path, number, f"{video} annotated twice")
        annotations[video] = segments
    return annotations


def read_ucf_crime(
    videos: Path | str | Sequence[str], annotation_file: Path | str | None = None
) -> list[WeakVideo]:
    """UCF-Crime videos of a list (`Anomaly_Train.txt`, `Anomaly_Test.txt`, a feature list, or
    names). With the temporal annotation file (test lists), every listed video must have its
    line there and gets its segments; without it (training lists) segments are None."""
    annotations = None if annotation_file is None else _ucf_annotations(Path(annotation_file))
    result = []
    for entry in _first_per_video(_list_entries(videos)):
        category = _ucf_category(entry.source, entry.line, entry.video)
        segments = None
        if annotations is not None:
            if entry.video not in annotations:
                raise WeakLabelError(
                    entry.source, entry.line, f"{entry.video} has no line in {annotation_file}"
                )
            segments = annotations[entry.video]
        categories = () if category == "Normal" else (category,)
        result.append(WeakVideo(entry.video, int(bool(categories)), categories, segments))
    return result


# ----------------------------------------------------------------------------- XD-Violence


def _xd_categories(source: str | Path, line: int, video: str) -> tuple[str, ...]:
    """Anomaly categories of an XD-Violence name (`..._label_B2-G-0` → shooting, explosion)."""
    _, found, codes = video.rpartition("_label_")
    if not found:
        raise WeakLabelError(source, line, f"{video}: no `_label_` in this XD-Violence name")
    if codes == "A":
        return ()
    parts = codes.split("-")
    named = [code for code in parts if code != "0"]
    if len(parts) > 3 or not named or parts[: len(named)] != named or len(set(named)) < len(named):
        raise WeakLabelError(
            source,
            line,
            f"{video}: label {codes!r} is neither A nor one to three codes joined "
            "by '-' with 0 for none",
        )
    for code in named:
        if code not in XD_VIOLENCE_CODES or code == "A":
            known = ", ".join(c for c in XD_VIOLENCE_CODES if c != "A")
            raise WeakLabelError(
                source, line, f"{video}: unknown XD-Violence category code {code!r} ({known})"
            )
    return tuple(XD_VIOLENCE_CODES[code] for code in named)


def _xd_annotations(path: Path) -> dict[str, tuple[Segment, ...]]:
    """`annotations.txt` → video → segments (anomalous test videos only)."""
    annotations = {}
    for number, line in enumerate(_read_text(path), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 3 or len(fields) % 2 == 0:
            raise WeakLabelError(
                path, number, f"expected `video start end [start end ...]`: {line!r}"
            )
        video = _video_and_crop(fields[0])[0]
        if not _xd_categories(path, number, video):
            raise WeakLabelError(path, number, f"{video} is normal (label A) but has segments")
        values = _ints(path, number, fields[1:])
        pairs = list(zip(values[::2], values[1::2], strict=True))
        if video in annotations:
            raise WeakLabelError(path, number, f"{video} annotated twice")
        annotations[video] = _segments(path, number, pairs)
    return annotations


def read_xd_violence(
    videos: Path | str | Sequence[str], annotations_file: Path | str | None = None
) -> list[WeakVideo]:
    """XD-Violence videos of a list (a feature list, VadCLIP's CSV, or names). With
    `annotations.txt` (test lists) every anomalous video must have its line there and gets its
    segments, a normal one gets (); without it (training lists) segments are None."""
    annotations = None if annotations_file is None else _xd_annotations(Path(annotations_file))
    result = []
    for entry in _first_per_video(_list_entries(videos)):
        categories = _xd_categories(entry.source, entry.line, entry.video)
        segments = None
        if annotations is not None and categories:
            if entry.video not in annotations:
                raise WeakLabelError(
                    entry.source, entry.line, f"{entry.video} has no line in {annotations_file}"
                )
            segments = annotations[entry.video]
        elif annotations is not None:
            segments = ()
        result.append(WeakVideo(entry.video, int(bool(categories)), categories, segments))
    return result


# ----------------------------------------------------------------------------- ShanghaiTech


def read_shanghaitech_weak(
    videos: Path | str | Sequence[str], frame_mask_dir: Path | str | None = None
) -> list[WeakVideo]:
    """ShanghaiTech videos of a weakly supervised list (RTFM's `shanghai-i3d-*-10crop.list`, a
    feature list, or names); the label follows from the clip name (see the module doc). With
    `frame_mask_dir` (the official `test_frame_mask/`, for test lists) anomalous clips get their
    segments and frame counts from `<clip>.npy` and normal ones (); without it segments are None."""
    result = []
    for entry in _first_per_video(_list_entries(videos)):
        match = re.fullmatch(r"\d\d_\d{3}(\d)?", entry.video)
        if not match:
            raise WeakLabelError(
                entry.source,
                entry.line,
                f"{entry.video!r} is not a ShanghaiTech clip (`01_001` training, `01_0014` test)",
            )
        anomalous = match.group(1) is not None
        segments, frames = None, None
        if frame_mask_dir is not None and anomalous:
            mask_file = Path(frame_mask_dir) / f"{entry.video}.npy"
            if not mask_file.is_file():
                raise WeakLabelError(
                    entry.source, entry.line, f"frame labels {mask_file} of {entry.video} not found"
                )
            labels = load_npy(mask_file, 1)
            check_binary(mask_file, labels, entry.video)
            segments, frames = label_segments(labels), len(labels)
            if not segments:
                raise WeakLabelError(mask_file, None, "a test-set clip without anomalous frames")
        elif frame_mask_dir is not None:
            segments = ()
        categories = SHANGHAITECH_CATEGORIES[1:] if anomalous else ()
        result.append(WeakVideo(entry.video, int(anomalous), categories, segments, frames))
    return result


# ----------------------------------------------------------------------------- features


@dataclasses.dataclass(frozen=True)
class VideoFeatures:
    """One video's published snippet features, checked but not loaded: `files` holds one
    `[snippets, width]` file per crop in crop order (VadCLIP), or one `[snippets, crops, width]`
    file (RTFM's I3D)."""

    name: str
    files: tuple[Path, ...]
    crops: int
    snippets: int
    width: int

    def load(self) -> np.ndarray:
        """The features `[crops, snippets, width]` float32."""
        arrays = [np.load(path, allow_pickle=False) for path in self.files]
        stacked = arrays[0].transpose(1, 0, 2) if arrays[0].ndim == 3 else np.stack(arrays)
        return stacked.astype(np.float32, copy=False)


def _feature_index(feature_dir: Path) -> dict[str, list[Path]]:
    """File name → the `.npy` files of that name anywhere under `feature_dir`."""
    if not feature_dir.is_dir():
        raise WeakLabelError(feature_dir, None, "feature folder not found")
    index: dict[str, list[Path]] = {}
    for path in sorted(feature_dir.rglob("*.npy")):
        index.setdefault(path.name, []).append(path)
    return index


def _feature_file(entry: _Entry, index: dict[str, list[Path]] | None) -> Path:
    """The file a list entry names: by file name under the feature folder when one is given
    (published lists hold their authors' absolute paths), else as written, relative to the list."""
    if index is None:
        path = Path(entry.text)
        path = path if path.is_absolute() else Path(entry.source).parent / path
        found = [path] if path.is_file() else []
    else:
        found = index.get(re.split(r"[/\\]", entry.text)[-1], [])
    if len(found) != 1:
        problem = "not found" if not found else f"ambiguous: {', '.join(map(str, found))}"
        raise WeakLabelError(
            entry.source, entry.line, f"feature file {entry.text} of {entry.video} {problem}"
        )
    return found[0]


def _feature_shape(entry: _Entry, path: Path, width: int) -> tuple[int, ...]:
    """The checked shape of a feature file, read from its header."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        shape, dtype = array.shape, array.dtype
        del array  # closes the memory map
    except (OSError, ValueError, EOFError) as e:
        raise WeakLabelError(entry.source, entry.line, f"{path}: unreadable .npy ({e})") from e
    if not np.issubdtype(dtype, np.floating) or len(shape) not in (2, 3) or shape[0] < 1:
        raise WeakLabelError(
            entry.source,
            entry.line,
            f"{path}: {dtype} array {shape}, expected float "
            "[snippets, width] or [snippets, crops, width] with snippets ≥ 1",
        )
    if shape[-1] != width:
        raise WeakLabelError(
            entry.source, entry.line, f"{path}: features of width {shape[-1]}, expected {width}"
        )
    if len(shape) == 3 and entry.crop is not None:
        raise WeakLabelError(entry.source, entry.line, f"{path}: a crop file holding crops {shape}")
    return shape


def _video_features(video: str, items: list[tuple[_Entry, Path, tuple[int, ...]]]) -> VideoFeatures:
    """Checks that one video's files form one `[crops, snippets, width]` array."""
    entry, path, shape = items[0]
    if len(shape) == 3 or entry.crop is None:
        if len(items) > 1:
            later = items[1][0]
            raise WeakLabelError(later.source, later.line, f"{video}: listed twice ({path} first)")
        return VideoFeatures(
            video, (path,), shape[1] if len(shape) == 3 else 1, shape[0], shape[-1]
        )
    by_crop = {}
    for entry, path, shape in items:
        if entry.crop is None or entry.crop in by_crop:
            raise WeakLabelError(
                entry.source, entry.line, f"{video}: {path} repeats a crop or lacks `__<k>`"
            )
        if shape[0] != items[0][2][0]:
            raise WeakLabelError(
                entry.source,
                entry.line,
                f"{video}: crop {entry.crop} ({path}) has {shape[0]} "
                f"snippets, crop {items[0][0].crop} ({items[0][1]}) has {items[0][2][0]}",
            )
        by_crop[entry.crop] = path
    files = tuple(by_crop[crop] for crop in sorted(by_crop))
    return VideoFeatures(video, files, len(files), shape[0], shape[-1])


def read_features(
    list_file: Path | str, feature_dir: Path | str | None = None, *, width: int
) -> dict[str, VideoFeatures]:
    """Published snippet features of the videos of a list (plain or VadCLIP's CSV), in list
    order. With `feature_dir` each listed file is found by its name anywhere under it; without
    it, at the path written (relative paths from the list's folder). Every file is checked from
    its header: present, float, `width` features, and one video's crops all of one length."""
    index = None if feature_dir is None else _feature_index(Path(feature_dir))
    grouped: dict[str, list[tuple[_Entry, Path, tuple[int, ...]]]] = {}
    for entry in _list_entries(Path(list_file)):
        path = _feature_file(entry, index)
        grouped.setdefault(entry.video, []).append(
            (entry, path, _feature_shape(entry, path, width))
        )
    return {video: _video_features(video, items) for video, items in grouped.items()}


# ----------------------------------------------------------------------------- synthetic


@dataclasses.dataclass(frozen=True)
class WeakSyntheticSpec:
    """Size of the weakly labelled synthetic set: normal and anomalous videos per split, and the
    clips' length range (frames) and size. Normal videos are the generator's anomaly-free train
    clips, anomalous ones its test clips, whose first anomaly's kind cycles through
    ANOMALY_KINDS: five anomalous videos of a split hold every category."""

    train_normal: int = 4
    train_anomalous: int = 5
    test_normal: int = 2
    test_anomalous: int = 5
    min_frames: int = 24
    max_frames: int = 32
    height: int = 64
    width: int = 64
    seed: int = 0

    def generator_spec(self) -> SyntheticSpec:
        """The generator's spec: train clips [0, train_normal) and test clips
        [0, train_anomalous) make the training split, the clips after them the test split."""
        return SyntheticSpec(
            self.train_normal + self.test_normal,
            self.train_anomalous + self.test_anomalous,
            self.min_frames,
            self.max_frames,
            self.height,
            self.width,
            self.seed,
        )


# Presets of the weakly labelled synthetic set (`config.data.synthetic`, `python -m
# jaxvad.features --synthetic`).
SYNTHETIC_PRESETS = {
    # About 2-3 s of frames a video; features from every 2 frames: 24-48 snippets.
    "full": WeakSyntheticSpec(
        train_normal=80, train_anomalous=80, test_normal=20, test_anomalous=20,
        min_frames=48, max_frames=96,
    ),
    "tiny": WeakSyntheticSpec(
        train_normal=8, train_anomalous=10, test_normal=4, test_anomalous=10,
        min_frames=32, max_frames=48,
    ),
}  # fmt: skip


def synthetic_weak_videos(
    spec: WeakSyntheticSpec, split: str
) -> list[tuple[WeakVideo, np.ndarray]]:
    """The videos of `split` ("train" or "test"), normal ones first, each with its frames
    `[N, H, W]` uint8; deterministic from `spec.seed`. Names are the generator's clip names
    (`Test003` = `generate_clip(spec.generator_spec(), "test", 2)`); categories are those of the
    anomalies that come into view (SYNTHETIC_CATEGORIES); test videos get the segments of their
    frames with anomalous pixels, training videos only the video label."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    base = spec.generator_spec()
    if split == "train":
        normal, anomalous = range(spec.train_normal), range(spec.train_anomalous)
    else:
        normal = range(spec.train_normal, spec.train_normal + spec.test_normal)
        anomalous = range(spec.train_anomalous, spec.train_anomalous + spec.test_anomalous)
    result = []
    for clip_split, clip in [("train", c) for c in normal] + [("test", c) for c in anomalous]:
        frames, masks, records = generate_clip(base, clip_split, clip)
        categories = tuple(dict.fromkeys(SYNTHETIC_KIND_CATEGORIES[r["kind"]] for r in records))
        segments = None
        if split == "test":
            segments = () if masks is None else label_segments(masks.any(axis=(1, 2)))
        name = f"{clip_split.capitalize()}{clip + 1:03d}"
        video = WeakVideo(name, int(bool(categories)), categories, segments, len(frames))
        result.append((video, frames))
    return result
