"""The source videos of the weakly labelled datasets, for feature extraction and explanation.

`dataset_videos(dataset, source)` lists both splits' videos (train first) as `SourceVideo`s,
each decoded on demand. Videos are found anywhere under `source` by file name; each split's
videos are:
- ucf_crime: those of `Anomaly_Train.txt` and `Anomaly_Test.txt` (the official split files,
  anywhere under the source);
- xd_violence: the video files under `SOURCE/train/` and `SOURCE/test/`;
- shanghaitech: Zhong et al.'s weak split as RTFM lists it, `shanghai-i3d-train-10crop.list`
  and `shanghai-i3d-test-10crop.list` (anywhere under the source), of the clips of the official
  layout (`training/videos/*.avi`, `testing/frames/<clip>/`, read by `readers`);
- synthetic_weak: `weak.synthetic_weak_videos` of a `WeakSyntheticSpec`, no source.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxvad.data import readers, weak
from jaxvad.data.clip_features import SPLITS, SourceVideo, rgb, synthetic_videos
from jaxvad.data.video_io import VIDEO_SUFFIXES, DataError, read_frames

DATASETS = ("synthetic_weak", "ucf_crime", "xd_violence", "shanghaitech")
UCF_LISTS = {"train": "Anomaly_Train.txt", "test": "Anomaly_Test.txt"}
SHANGHAITECH_LISTS = {
    "train": "shanghai-i3d-train-10crop.list",
    "test": "shanghai-i3d-test-10crop.list",
}


# ----------------------------------------------------------------------------- sources


def _decoder(path: Path) -> Callable[[], np.ndarray]:
    return lambda: rgb(read_frames(path))


def _find_one(source: Path, name: str) -> Path:
    found = sorted(source.rglob(name))
    if len(found) != 1:
        problem = "not found" if not found else f"found {len(found)} times"
        raise DataError(source, f"{name} {problem} under this folder")
    return found[0]


def _video_index(folder: Path) -> dict[str, Path]:
    """Video name → its file, for every video file anywhere under `folder`."""
    index: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
            if path.stem in index:
                raise DataError(path, f"two videos named {path.stem} (also {index[path.stem]})")
            index[path.stem] = path
    return index


def _listed(
    videos: list[weak.WeakVideo], split: str, paths: dict[str, Path], where: Path
) -> list[SourceVideo]:
    missing = [v.name for v in videos if v.name not in paths]
    if missing:
        raise DataError(where, f"{len(missing)} listed {split} videos not found: {missing[:3]}")
    return [SourceVideo(v, split, _decoder(paths[v.name])) for v in videos]


def ucf_crime_videos(source: Path) -> list[SourceVideo]:
    index = _video_index(source)
    result = []
    for split, name in UCF_LISTS.items():
        list_file = _find_one(source, name)
        result += _listed(weak.read_ucf_crime(list_file), split, index, source)
    return result


def xd_violence_videos(source: Path) -> list[SourceVideo]:
    result = []
    for split in SPLITS:
        folder = source / split
        if not folder.is_dir():
            raise DataError(folder, "folder not found")
        index = _video_index(folder)
        if not index:
            raise DataError(folder, f"no video files ({'/'.join(VIDEO_SUFFIXES)})")
        result += _listed(weak.read_xd_violence(list(index)), split, index, folder)
    return result


def shanghaitech_videos(source: Path) -> list[SourceVideo]:
    clips = {spec.name: spec.frames for specs in readers.shanghaitech_videos(source).values()
             for spec in specs}  # fmt: skip
    result = []
    for split, name in SHANGHAITECH_LISTS.items():
        list_file = _find_one(source, name)
        result += _listed(weak.read_shanghaitech_weak(list_file), split, clips, source)
    return result


def dataset_videos(
    dataset: str, source: Path | None, synthetic: weak.WeakSyntheticSpec | None = None
) -> list[SourceVideo]:
    """The videos of both splits of `dataset` (train first), from `source` (see the module
    doc; `synthetic`: the synthetic set's spec); DataError (a WeakLabelError for a malformed
    list) when the source lacks them."""
    if dataset == "synthetic_weak":
        return synthetic_videos(synthetic)
    readers_by_name = {
        "ucf_crime": ucf_crime_videos,
        "xd_violence": xd_violence_videos,
        "shanghaitech": shanghaitech_videos,
    }
    if dataset not in readers_by_name:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if source is None or not source.is_dir():
        raise DataError(source, "source folder not found")
    return readers_by_name[dataset](source)
