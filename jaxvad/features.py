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
synthetic features are this command's output). Videos are found by file name under
`--source`, each split's as `jaxvad.data.weak_sources` lists them (the official split files).

A video's files are written atomically once it is computed; a rerun skips the videos whose
files all exist and writes only the missing ones. A video is decoded whole (its frames at
their original resolution sit in memory).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from jaxvad.data import weak
from jaxvad.data.clip_features import CROPS, Settings, extract, valid_objects
from jaxvad.data.video_io import DataError
from jaxvad.data.weak_sources import DATASETS, dataset_videos
from jaxvad.vlm.clip import Clip, ClipWeightsError


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
