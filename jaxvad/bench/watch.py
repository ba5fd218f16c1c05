"""Streaming benchmark: what a new frame costs in `jaxvad.watch`, against scoring its full
window, and how many cameras a machine watches live.

    python -m jaxvad.bench.watch --config=configs/ped2_cpu.py [--cameras=1,4,8] [--frames=60]
        [--fps=10] [--config.a.b=v]

Random weights of the config's model (speed does not depend on training), on every device:
1. per new frame, for a batch of `B` = each `--cameras` value: XLA's cost analysis (FLOPs) and
   measured frames/s of the streaming step (`inference.stream_step`: each frame's cached work
   computed once) and of the full-window step (`inference.error_step`, what `jaxvad.evaluate`
   runs), both compiled, timed after warm-up;
2. the whole per-frame path for `B` cameras (`jaxvad.watch.stream`): resizing, optical flow
   (the config's method; a thread pool, one task per camera), the streaming step and the
   scores, on synthetic frames of Ped2's 240×360, `--frames` ticks; and whether that keeps up
   with `--fps` per camera (live without dropping frames: ticks/s ≥ fps).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import platform
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from flax import nnx

from jaxvad import allocator, cli, distributed, inference, model, scoring
from jaxvad.bench.train import random_batch
from jaxvad.watch import stream as stream_lib


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def _time(fn, repeats: int) -> float:
    """Seconds per call of `fn` (which returns a pytree), after two warm-up calls."""
    for _ in range(2):
        jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def steps(config: ml_collections.ConfigDict, cameras: int, repeats: int, net, params, graphdef):
    """(FLOPs, seconds) per call of the streaming and the full-window step for `cameras` rows."""
    batch = random_batch(config, cameras)
    full = batch | {
        **{k: np.zeros(cameras, np.int32) for k in ("video_index", "frame_index", "label")},
        "scored": np.ones(cameras, bool),
        "valid": np.ones(cameras, bool),
    }
    shape = jax.eval_shape(net.cached_frame, jnp.zeros(batch["target_frame"].shape, jnp.float32))
    cache = jnp.zeros((cameras, config.history, *shape.shape[1:]), shape.dtype)
    tick = {k: batch[k] for k in ("flows", "target_frame", "target_flow")}
    tick["push"] = np.ones(cameras, bool)
    stream = jax.jit(functools.partial(inference.stream_step, graphdef=graphdef))
    window = jax.jit(functools.partial(inference.error_step, graphdef=graphdef, maps=False))
    stream_c = stream.lower(params, cache, tick).compile()
    window_c = window.lower(params, full).compile()
    return (
        (_flops(stream_c), _time(lambda: stream_c(params, cache, tick), repeats)),
        (_flops(window_c), _time(lambda: window_c(params, full), repeats)),
    )


def live(config, cameras: int, frames: int, net, params, graphdef) -> float:
    """Ticks/s of the whole per-frame path for `cameras` synthetic 240×360 cameras."""
    mesh = distributed.make_mesh(config.mesh.fsdp)
    settings = scoring.ScoreSettings("error", 1.0, "train", 0.0, 0.99)
    ones = np.ones(8)  # Unit normal statistics: the arithmetic of scores, not their values.
    normal = scoring.SplitErrors(
        ["n"], np.zeros(8, np.int32), np.arange(8, dtype=np.int32), ones > 0, ones, ones
    )
    scoring_stream = stream_lib.StreamScorer(
        graphdef,
        params,
        history=config.history,
        sharding=distributed.batch_sharding(mesh, config.mesh.rules),
        scores=lambda errors: scoring.frame_scores(errors, settings, normal),
        cameras=[f"cam{i}" for i in range(cameras)],
    )
    data = config.data
    windows = [
        stream_lib.CameraWindow(
            size=data.size, history=config.history, channels=data.channels, flow=data.flow
        )
        for _ in range(cameras)
    ]
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (240, 360, 1), dtype=np.uint8)
    rows = list(range(cameras))
    with concurrent.futures.ThreadPoolExecutor(cameras) as pool:

        def tick(k: int) -> None:
            image = np.roll(base, 2 * k, axis=1)  # Something moves: the flow has work to do.
            list(pool.map(lambda w: w.push(k + 1, image), windows))
            scoring_stream.score(windows, rows)

        for k in range(config.history + 2):  # Fill the windows, compile.
            tick(k)
        start = time.perf_counter()
        for k in range(frames):
            tick(config.history + 2 + k)
        return frames / (time.perf_counter() - start)


def benchmark(config: ml_collections.ConfigDict, cameras: list[int], frames: int, fps: float):
    device = jax.devices()[0]
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, {jax.device_count()} × "
        f"{device.device_kind}; model {config.model.name}, {model.image_size(config)}², "
        f"T = {config.history}, flow {config.data.flow}; {allocator.describe()}"
    )
    net = model.make_model(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(net, nnx.Param)
    for b in cameras:
        (sf, st), (wf, wt) = steps(config, b, 10, net, params, graphdef)
        print(
            f"B = {b}: streaming step {sf / b / 1e9:.3f} GFLOP/frame, {b / st:.1f} frames/s; "
            f"full-window step {wf / b / 1e9:.3f} GFLOP/frame, {b / wt:.1f} frames/s; "
            f"FLOPs ratio {wf / sf:.2f}×, speed ratio {wt / st:.2f}×"
        )
    for b in cameras:
        rate = live(config, b, frames, net, params, graphdef)
        verdict = "keeps up" if rate >= fps else "falls behind"
        print(
            f"watching {b} camera(s), 240×360 → {config.data.size}², flow included: "
            f"{rate:.1f} ticks/s = {rate * b:.1f} frames/s; at {fps:g} fps per camera it "
            f"{verdict}"
        )


def main() -> None:
    config = cli.define_config_flag()
    cameras = flags.DEFINE_list("cameras", ["1", "4", "8"], "cameras (batch rows) to measure")
    frames = flags.DEFINE_integer("frames", 60, "ticks of the live measurement")
    fps = flags.DEFINE_float("fps", 10.0, "each camera's frame rate to keep up with")
    cli.run(
        lambda: benchmark(config.value, [int(c) for c in cameras.value], frames.value, fps.value),
        config=config,
        usage="python -m jaxvad.bench.watch --config=FILE [--cameras=1,4,8] [--frames=60]",
    )


if __name__ == "__main__":
    main()
