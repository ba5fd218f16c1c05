"""Object benchmark: detection frames/s of the weight-free detector, kNN scoring objects/s, and
object samples: training samples/s and evaluation frames/s of a model of object samples.

    python -m jaxvad.bench.objects --dataset=ped2 --source=../shared/data/ped2 --videos=2
    python -m jaxvad.bench.objects --config=configs/ped2_cpu_objects.py --samples \
        --config.objects.samples=True --config.score.components="('error','speed')" \
        --workdir=runs/bench_samples [--train_steps=50] [--config.a.b=v ...]

Detection: `objects.video_objects` (MOG2 background, Farneback flow for the motion test, DIS
flow and the velocity histograms, IoU tracks) on the first `--videos` test videos at their
original resolution, decoding excluded. Scoring: a bank fitted on the first `--videos` training
videos' objects (leave-one-video-out calibration included), then the test objects scored,
after one warm-up call (compilation of the kNN search).

Object samples (`--samples`; a config with `objects.samples` on, its dataset prepared with
objects): `jaxvad.bench.train`'s measurements at the crops' side (compilation, train step
samples/s, memory, the loader's object samples/s), then the evaluation's object path end to
end on the prepared test split: `jaxvad.evaluate` of the run in `--workdir` (trained there for
`--train_steps` steps first when it holds no checkpoint) twice, the second timed (the first
compiles): frames/s and objects/s of scoring (frames, objects read, crops, model, kNN) and
frames/s of the whole command (also metrics, pixel maps, plots).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import ml_collections
from absl import flags

from jaxvad import cli, object_scores
from jaxvad import evaluate as evaluate_lib
from jaxvad import train as train_lib
from jaxvad.bench import train as bench_train
from jaxvad.checkpoint import Checkpoints
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


def detection(dataset: str, source: Path, videos: int, component: str, k: int) -> None:
    """Detection frames/s and the kNN bank's fitting and scoring (the module docstring)."""
    specs = READERS[dataset](source)
    train, _, _ = _objects(specs["train"][: max(videos, 2)], "train")
    test, seconds, frames = _objects(specs["test"][:videos], "test")
    print(f"detection: {frames / seconds:,.1f} frames/s ({frames} frames, {seconds:.1f} s)")
    object_scores.fit_bank(train, component, k)  # Warm-up: compiles the search.
    start = time.perf_counter()
    bank = object_scores.fit_bank(train, component, k)
    fitted = time.perf_counter() - start
    start = time.perf_counter()
    object_scores.score(test, object_scores.ObjectModel({component: bank}))
    scored = time.perf_counter() - start
    print(
        f"bank of {len(train.boxes)} training objects ({component}, k={k}): fitted "
        f"with leave-one-video-out calibration in {fitted:.2f} s; {len(test.boxes)} test "
        f"objects scored at {len(test.boxes) / scored:,.0f} objects/s"
    )


def samples(config: ml_collections.ConfigDict, workdir: Path, steps: int, train_steps: int):
    """Training and evaluation speeds of a model of object samples (the module docstring)."""
    bench_train.benchmark(config, steps)
    if Checkpoints(workdir).latest_step() is None:
        print(f"training {train_steps} steps in {workdir} (for the evaluation)", flush=True)
        config = ml_collections.ConfigDict(config.to_dict())
        config.train.num_steps = train_steps
        config.train.checkpoint_every = train_steps
        train_lib.train(config, workdir)
    evaluate_lib.evaluate(config, workdir)  # Warm-up: compiles the error steps.
    start = time.perf_counter()
    result = evaluate_lib.evaluate(config, workdir)
    total = time.perf_counter() - start
    timing, frames = result["timing"], result["protocol"]["frames"]
    count = result["objects"]["objects"]
    scoring = timing["test_split_seconds"] + timing["objects_seconds"]
    print(
        f"evaluation, object path ({frames} test frames, {count} objects, "
        f"{config.objects.size}² crops, components {list(config.score.components)}): "
        f"{frames / scoring:,.1f} frames/s, {count / scoring:,.1f} objects/s ({scoring:.1f} s)"
    )
    print(
        f"evaluation, whole command (also metrics, pixel maps, plots): "
        f"{frames / total:,.1f} frames/s ({total:.1f} s)"
    )


USAGE = (
    "python -m jaxvad.bench.objects --dataset=NAME --source=DIR [--videos=N] | "
    "--config=FILE --samples --workdir=DIR [--train_steps=N] [--config.a.b=v ...]"
)


def main() -> None:
    config = cli.define_config_flag()
    dataset = flags.DEFINE_enum("dataset", None, sorted(READERS), "detection: the dataset")
    source = flags.DEFINE_string("source", None, "detection: its official folder")
    videos = flags.DEFINE_integer("videos", 2, "detection: videos per split")
    component = flags.DEFINE_string("component", "speed", "detection: the bank's component")
    k = flags.DEFINE_integer("k", 1, "detection: the bank's neighbours")
    on = flags.DEFINE_bool("samples", False, "object samples: train and evaluation speeds")
    workdir = flags.DEFINE_string("workdir", None, "object samples: the run to evaluate")
    steps = flags.DEFINE_integer("steps", 20, "object samples: timed train steps")
    train_steps = flags.DEFINE_integer("train_steps", 50, "object samples: steps of a new run")

    def command() -> None:
        device = jax.devices()[0].device_kind
        print(f"machine: {platform.node()}, {os.cpu_count()} cores, {device}")
        if source.value:
            detection(dataset.value, Path(source.value), videos.value, component.value, k.value)
        if on.value:
            samples(config.value, Path(workdir.value), steps.value, train_steps.value)

    cli.run(command, config=config, usage=USAGE, config_optional=True)  # Detection needs none.


if __name__ == "__main__":
    main()
