"""Prepares a dataset: official layout → TFDS ArrayRecord (frames, flow, labels, masks).

    python -m jaxvad.data_prep --dataset={ped2,avenue,shanghaitech,synthetic} --source=DIR \\
        --output=DIR [--size=224] [--flow=farneback|dis|tvl1] [--workers=N]

`--source` is not needed for `synthetic` (its official-layout source is generated under
`OUTPUT/synthetic/source`). The dataset lands in `OUTPUT/<dataset>/<size>_<flow>[...]/1.0.0`,
readable with `tfds.builder_from_directory`. Re-running skips finished work; see
`jaxvad.data.builder` for what an interrupted run leaves.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import tensorflow_datasets as tfds

from jaxvad.data import builder as builder_lib
from jaxvad.data import flow as flow_lib
from jaxvad.data import readers, synthetic


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jaxvad.data_prep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dataset", required=True, choices=sorted(builder_lib.BUILDERS))
    parser.add_argument("--source", type=Path, help="the unpacked official archive")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--size", type=int, default=224, help="frames are resized to size×size")
    parser.add_argument("--flow", default="farneback", choices=flow_lib.METHODS)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel videos")
    parser.add_argument(
        "--label_version",
        default="mask",
        choices=readers.AVENUE_LABEL_VERSIONS,
        help="Avenue only: frame labels derived from the pixel masks, or the interval release",
    )
    parser.add_argument(
        "--synthetic", default="full", choices=sorted(synthetic.PRESETS), help="synthetic size"
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic only")
    parser.add_argument(
        "--objects",
        default="none",
        help="per-frame object boxes: auto (the weight-free motion detector), mot:DIR "
        "(MOTChallenge files DIR/<video>.txt) or none",
    )
    args = parser.parse_args(argv)
    if args.dataset != "synthetic" and args.source is None:
        parser.error(f"--source is required for --dataset={args.dataset}")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def summary(dataset_dir: Path) -> dict:
    """Per split: videos, frames, anomalous frames (from the dataset's metadata)."""
    metadata = builder_lib.read_metadata(dataset_dir)
    return {
        split: {k: info[k] for k in ("num_videos", "num_frames", "num_anomalous_frames")}
        for split, info in metadata["splits"].items()
    }


def _remove_stale_incomplete(config_dir: Path) -> None:
    """TFDS leaves `incomplete.*` folders behind only when a run is killed; they never look
    complete, but they take space."""
    for stale in config_dir.glob("incomplete.*"):
        shutil.rmtree(stale, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tfds.disable_progress_bar()  # Ours shows the long phase with an ETA; TFDS's add noise.
    try:
        config = builder_lib.VadConfig.make(
            args.dataset,
            size=args.size,
            flow=args.flow,
            label_version=args.label_version,
            synthetic=args.synthetic,
            seed=args.seed,
            objects=args.objects,
        )
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    source = args.source or builder_lib.synthetic_source(args.output, config)
    if args.dataset != "synthetic" and not source.is_dir():
        print(f"error: {source}: source folder not found", file=sys.stderr)
        return 1
    _remove_stale_incomplete(args.output / args.dataset / config.name)
    try:
        dataset_dir = builder_lib.prepare(
            args.dataset, config, output=args.output, source=source, workers=args.workers
        )
    except ValueError as e:  # DataError, or e.g. a foreign folder where the synthetic source goes.
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.dataset} prepared at {dataset_dir}")
    print(f"{'split':<6} {'videos':>7} {'frames':>8} {'anomalous frames':>17}")
    for split, counts in summary(dataset_dir).items():
        print(
            f"{split:<6} {counts['num_videos']:>7,} {counts['num_frames']:>8,} "
            f"{counts['num_anomalous_frames']:>17,}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
