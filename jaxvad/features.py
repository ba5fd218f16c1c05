"""CLIP snippet features of a weakly labelled dataset, in VadCLIP's layout.

    python -m jaxvad.features --clip=DIR --dataset={synthetic_weak,ucf_crime,xd_violence,
        shanghaitech} [--source=DIR] --output=DIR [--objects=auto|mot:DIR|none]
        [--snippet=16] [--crops=1|10] [--batch=64] [--synthetic=tiny|full] [--synthetic-seed=0]

Writes into `OUTPUT` (`jaxvad.data.clip_features` computes and writes the files, and says what
a feature is):
- `<video>__<k>.npy`, one file per video and crop k, `[snippets, D]` float32 with
  snippets = ceil(frames / snippet) and D the CLIP projection width E (2E with objects);
- `train.csv`, `test.csv`: VadCLIP's list files, header `path,label`, one row per file (the file
  name, relative to the list's folder), label the video's anomaly categories joined by `-`, or
  the dataset's normal class (`Normal`, `normal`). `weak.read_features(OUTPUT / "test.csv",
  width=D)` reads them back; so are published features (`weak.read_features` on their list);
- `features.json`: the settings; a rerun with other settings into the same folder is refused.

Sources (`--source`; not needed for `synthetic_weak`: `weak.synthetic_weak_videos` of the
preset `--synthetic` of `weak.SYNTHETIC_PRESETS` with seed `--synthetic-seed`, or of the
default `WeakSyntheticSpec` without `--synthetic`, both splits; the training config's embedded
synthetic features are this command's output). Videos are found anywhere under `--source` by
file name; each split's videos are:
- ucf_crime: those of `Anomaly_Train.txt` and `Anomaly_Test.txt` (the official split files,
  anywhere under the source);
- xd_violence: the video files under `SOURCE/train/` and `SOURCE/test/`;
- shanghaitech: Zhong et al.'s weak split as RTFM lists it, `shanghai-i3d-train-10crop.list`
  and `shanghai-i3d-test-10crop.list` (anywhere under the source), of the clips of the official
  layout (`training/videos/*.avi`, `testing/frames/<clip>/`, read by `readers`).

A video's files are written atomically once it is computed; a rerun skips the videos whose
files all exist and writes only the missing ones. A video is decoded whole (its frames at
their original resolution sit in memory).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jaxvad.data import readers, weak
from jaxvad.data.clip_features import (
    CROPS,
    SPLITS,
    Settings,
    SourceVideo,
    extract,
    rgb,
    synthetic_videos,
    valid_objects,
)
from jaxvad.data.video_io import VIDEO_SUFFIXES, DataError, read_frames
from jaxvad.vlm.clip import Clip, ClipWeightsError

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


# ----------------------------------------------------------------------------- command


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jaxvad.features", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--clip", type=Path, required=True, help="a local HF CLIPModel folder")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--source", type=Path, help="the dataset's videos (see the module doc)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument(
        "--objects",
        default="none",
        help="auto (motion detector), mot:DIR (DIR/<video>.txt) or none",
    )
    parser.add_argument("--snippet", type=int, default=16, help="frames per snippet")
    parser.add_argument("--crops", type=int, default=1, choices=CROPS)
    parser.add_argument("--batch", type=int, default=64, help="images per CLIP call")
    parser.add_argument(
        "--synthetic",
        choices=tuple(weak.SYNTHETIC_PRESETS),
        help="synthetic_weak only: the preset (default: WeakSyntheticSpec())",
    )
    parser.add_argument("--synthetic-seed", type=int, default=0, help="with --synthetic")
    args = parser.parse_args(argv)
    if args.dataset != "synthetic_weak" and args.source is None:
        parser.error(f"--source is required for --dataset={args.dataset}")
    if args.snippet < 1:
        parser.error(f"--snippet must be at least 1, not {args.snippet}")
    if args.batch < 1:
        parser.error(f"--batch must be at least 1, not {args.batch}")
    if not valid_objects(args.objects):
        parser.error(f"--objects must be auto, mot:DIR or none, not {args.objects!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        synthetic = None
        if args.synthetic:
            preset = weak.SYNTHETIC_PRESETS[args.synthetic]
            synthetic = dataclasses.replace(preset, seed=args.synthetic_seed)
        videos = dataset_videos(args.dataset, args.source, synthetic)
        clip = Clip.load(args.clip)
        settings = Settings(
            args.dataset,
            str(args.clip.resolve()),
            args.snippet,
            args.crops,
            args.objects,
            clip.config.projection_dim * (1 if args.objects == "none" else 2),
        )
        timing = extract(
            clip,
            videos,
            args.output,
            settings,
            batch=args.batch,
            progress=lambda items: tqdm(items, desc="features", unit="video"),
        )
    except (ClipWeightsError, DataError) as e:  # DataError: also WeakLabelError.
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(videos)} videos' features (width {settings.width}) in {args.output}")
    print(timing.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
