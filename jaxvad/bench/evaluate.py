"""Evaluation benchmark: frames/s of the model alone and of `jaxvad.evaluate` end to end.

    python -m jaxvad.bench.evaluate --config=configs/ped2_cpu.py --workdir=runs/ped2_cpu

Model only: the jitted error step (forward pass + per-frame errors, `eval.batch_size` frames a
batch, no pixel maps) on one batch of the config's shapes already on the devices, timed over
`--steps` calls after two warm-up calls (compilation). End to end: `jaxvad.evaluate` on the
trained run in `--workdir` (its stored training errors are reused): frames/s of the test split
(reading, model, pixel maps, copy back) and of the whole command (also metrics and plots).
"""

from __future__ import annotations

import os
import platform
import time

import jax
import ml_collections
import numpy as np
from absl import flags
from flax import nnx

from jaxvad import cli, detector, distributed, model
from jaxvad import evaluate as evaluate_lib
from jaxvad.bench.train import random_batch


def model_frames_per_second(config: ml_collections.ConfigDict, steps: int) -> float:
    """Frames/s of the jitted error step with random parameters on a random batch."""
    mesh = distributed.make_mesh(config.mesh.fsdp)
    graphdef, params = nnx.split(model.make_model(config, rngs=nnx.Rngs(config.seed)), nnx.Param)
    scorer = detector.error_scorer(config, graphdef, mesh)
    size = config.eval.batch_size
    batch = random_batch(config, size) | {
        "video_index": np.zeros(size, np.int32),
        "frame_index": np.arange(size, dtype=np.int32),
        "label": np.zeros(size, np.int32),
        "scored": np.ones(size, bool),
        "valid": np.ones(size, bool),
    }
    batch = distributed.global_batch(batch, scorer.data_sharding)
    for _ in range(2):
        jax.block_until_ready(scorer.step(params, batch, maps=False))
    start = time.perf_counter()
    for _ in range(steps):
        out = scorer.step(params, batch, maps=False)
    jax.block_until_ready(out)
    return steps * size / (time.perf_counter() - start)


def benchmark(config: ml_collections.ConfigDict, workdir: str | None, steps: int) -> None:
    device = jax.devices()[0]
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, {jax.device_count()} × "
        f"{device.device_kind}; eval batch {config.eval.batch_size}, {config.data.size}² frames"
    )
    fps = model_frames_per_second(config, steps)
    print(f"model only (after warm-up, {steps} batches): {fps:,.1f} frames/s")
    if workdir:
        start = time.perf_counter()
        result = evaluate_lib.evaluate(config, workdir)
        total = time.perf_counter() - start
        frames = result["protocol"]["frames"]
        print(
            f"end to end, test split ({frames} frames: read, model, maps, copy back): "
            f"{result['timing']['frames_per_second']:,.1f} frames/s "
            f"({result['timing']['test_split_seconds']:.1f} s)"
        )
        print(
            f"end to end, whole evaluate (also metrics, plots): {frames / total:,.1f} frames/s "
            f"({total:.1f} s)"
        )


def main() -> None:
    config = cli.define_config_flag()
    workdir = flags.DEFINE_string("workdir", None, "a trained run (for the end-to-end number)")
    steps = flags.DEFINE_integer("steps", 20, "timed batches of the model-only measurement")
    cli.run(
        lambda: benchmark(config.value, workdir.value, steps.value),
        config=config,
        usage="python -m jaxvad.bench.evaluate --config=FILE [--workdir=DIR] [--steps=N]",
        user_errors=evaluate_lib.USER_ERRORS,
    )


if __name__ == "__main__":
    main()
