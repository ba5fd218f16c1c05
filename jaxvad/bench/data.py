"""Data benchmark: Ped2 preparation frames/s at 1 and N workers, and grain windows/s.

    python -m jaxvad.bench.data --source=../shared/data/ped2 [--size=224] [--flow=farneback]

Prepares the whole dataset from scratch into temporary folders once per worker count (so each
run pays decode, resize, flow and the TFDS write), then reads training windows from the last
one with the input pipeline. Absolute times on shared machines are noisy: compare the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import tensorflow_datasets as tfds

from jaxvad.data import builder, pipeline
from jaxvad.data_prep import summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/ped2"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--flow", default="farneback")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--history", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    tfds.disable_progress_bar()
    config = builder.VadConfig.make("ped2", size=args.size, flow=args.flow)
    print(f"machine: {platform.node()} {os.cpu_count()} cores; {config.name}")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            out = Path(tmp) / f"w{workers}"
            start = time.perf_counter()
            dataset_dir = builder.prepare(
                "ped2", config, output=out, source=args.source, workers=workers
            )
            seconds = time.perf_counter() - start
            frames = sum(s["num_frames"] for s in summary(dataset_dir).values())
            rates[workers] = frames / seconds
            print(
                f"prepare --workers={workers}: {frames} frames in {seconds:.1f} s "
                f"= {rates[workers]:.0f} frames/s"
            )
        first, last = args.workers[0], args.workers[-1]
        print(f"speed-up workers={last} vs workers={first}: {rates[last] / rates[first]:.2f}x")
        table = pipeline.open_prepared(dataset_dir, "train")
        windows = pipeline.measure_windows_per_second(
            table, history=args.history, batch_size=args.batch_size, steps=40
        )
        print(
            f"grain train windows/s (T={args.history}, batch {args.batch_size}, "
            f"{args.size}x{args.size}): {windows:.0f}"
        )


if __name__ == "__main__":
    main()
