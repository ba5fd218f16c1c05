"""Object benchmark: detection frames/s of the weight-free detector, and kNN scoring objects/s.

    python -m jaxvad.bench.objects --dataset=ped2 --source=../shared/data/ped2 --videos=2

Detection: `objects.video_objects` (MOG2 background, Farneback flow for the motion test, DIS
flow and the velocity histograms, IoU tracks) on the first `--videos` test videos at their
original resolution, decoding excluded. Scoring: a bank fitted on the first `--videos` training
videos' objects (leave-one-video-out calibration included), then the test objects scored,
after one warm-up call (compilation of the kNN search).

Evaluation frames/s in object mode, end to end: `python -m jaxvad.bench.evaluate` on an object
config's run (its `timing.objects_seconds` is the object part).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import jax

from jaxvad import object_scores
from jaxvad.data import objects, readers

READERS = {
    "ped2": readers.ped2_videos,
    "avenue": readers.avenue_videos,
    "shanghaitech": readers.shanghaitech_videos,
}


def _objects(videos: Sequence, split: str) -> tuple[object_scores.SplitObjects, float, int]:
    """The objects of `videos` (VideoSpecs), the detection seconds and the frame count."""
    found, seconds, frames = [], 0.0, 0
    for spec in videos:
        loaded = spec.load().frames
        start = time.perf_counter()
        found.append(objects.video_objects(loaded))
        seconds += time.perf_counter() - start
        frames += len(loaded)
        print(f"  {split} {spec.name}: {len(loaded)} frames {loaded.shape[1:3]}", flush=True)
    split_objects = object_scores.SplitObjects.from_frames(
        [b for f in found for b in f.boxes],
        [t for f in found for t in f.tracks],
        [v for f in found for v in f.velocity],
        [len(f.boxes) for f in found],
    )
    return split_objects, seconds, frames


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jaxvad.bench.objects")
    parser.add_argument("--dataset", required=True, choices=sorted(READERS))
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--videos", type=int, default=2, help="per split")
    parser.add_argument("--component", default="speed")
    parser.add_argument("--k", type=int, default=1)
    args = parser.parse_args(argv)
    specs = READERS[args.dataset](args.source)
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, {jax.devices()[0].device_kind}")
    train, _, _ = _objects(specs["train"][: max(args.videos, 2)], "train")
    test, seconds, frames = _objects(specs["test"][: args.videos], "test")
    print(f"detection: {frames / seconds:,.1f} frames/s ({frames} frames, {seconds:.1f} s)")
    object_scores.fit_bank(train, args.component, args.k)  # Warm-up: compiles the search.
    start = time.perf_counter()
    bank = object_scores.fit_bank(train, args.component, args.k)
    fitted = time.perf_counter() - start
    start = time.perf_counter()
    object_scores.score(test, object_scores.ObjectModel({args.component: bank}))
    scored = time.perf_counter() - start
    print(
        f"bank of {len(train.boxes)} training objects ({args.component}, k={args.k}): fitted "
        f"with leave-one-video-out calibration in {fitted:.2f} s; {len(test.boxes)} test "
        f"objects scored at {len(test.boxes) / scored:,.0f} objects/s"
    )


if __name__ == "__main__":
    main()
