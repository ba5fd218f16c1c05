"""Training benchmark: samples/s of the jitted train step, memory, MFU on accelerators, and the
input pipeline's windows/s for the same config.

    python -m jaxvad.bench.train --config=configs/synthetic.py [--steps=20] [--config.a.b=v]

The step runs on random batches of the config's shapes on every device (mesh from the config), timed
after two warm-up steps; the initialiser's and the step's compilation times come first. Memory:
XLA's compiled memory analysis of the step (arguments, outputs, temporaries) and, on GPU/TPU, the
device's peak bytes in use; on CPU the process's peak resident memory. MFU = model FLOPs of one step
(XLA's cost analysis of the compiled step, forward + backward + optimizer) × steps/s ÷ the chips'
peak FLOP/s (bf16 dense peaks of known chips). When the config's dataset is prepared, grain's
training windows/s for the same batch shape are measured too, so the loader's margin over training
is visible. With `config.objects.samples` the step runs at the crops' side (`objects.size`) and
the loader reads object samples (`jaxvad.bench.objects` adds the object evaluation).
"""

from __future__ import annotations

import os
import platform
import resource
import time

import jax
import ml_collections
import numpy as np
from absl import flags

from jaxvad import allocator, cli, distributed, model
from jaxvad import config as config_lib
from jaxvad import train as train_lib
from jaxvad.data import builder, pipeline

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5e": 197e12}


def random_batch(config, batch_size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t, s, c = config.history, model.image_size(config), config.data.channels
    return {
        "frames": rng.integers(0, 256, (batch_size, t, s, s, c), dtype=np.uint8),
        "flows": rng.normal(size=(batch_size, t, s, s, 2)).astype(np.float16),
        "target_frame": rng.integers(0, 256, (batch_size, s, s, c), dtype=np.uint8),
        "target_flow": rng.normal(size=(batch_size, s, s, 2)).astype(np.float16),
    }


def peak_flops(device: jax.Device) -> float | None:
    return next((v for k, v in PEAK_FLOPS.items() if k in device.device_kind), None)


def benchmark(config: ml_collections.ConfigDict, steps: int) -> None:
    """Prints the measurements of the module docstring for `config`."""
    mesh = distributed.make_mesh(config.mesh.fsdp)
    device = jax.devices()[0]
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, {jax.device_count()} × "
        f"{device.device_kind}; mesh {dict(mesh.shape)}; {allocator.describe()}"
    )
    run = train_lib.build(config, mesh, steps=1000)
    start = time.perf_counter()
    init = run.init.lower().compile()
    init_seconds = time.perf_counter() - start
    state = init()
    batch_size = config.train.batch_size
    batch = distributed.global_batch(
        random_batch(config, batch_size // jax.process_count()), run.data_sharding
    )
    key = jax.random.key(0)
    start = time.perf_counter()
    compiled = run.jitted_step.lower(state, batch, key, run.vgg).compile()
    print(
        f"compilation: initialiser {init_seconds:.1f} s, train step "
        f"{time.perf_counter() - start:.1f} s (cache hits if JAX_COMPILATION_CACHE_DIR is set)"
    )
    for _ in range(2):
        state, metrics = compiled(state, batch, key, run.vgg)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch, key, run.vgg)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    size = model.image_size(config)
    print(
        f"train step: {seconds * 1e3:.1f} ms, {batch_size / seconds:.1f} samples/s "
        f"(batch {batch_size}, {size}×{size}, T={config.history}, "
        f"{config.model.dtype})"
    )

    memory = compiled.memory_analysis()
    if memory is not None:
        print(
            f"XLA memory per device: arguments {memory.argument_size_in_bytes / 2**20:.0f} MiB,"
            f" outputs {memory.output_size_in_bytes / 2**20:.0f} MiB, temporaries "
            f"{memory.temp_size_in_bytes / 2**20:.0f} MiB"
        )
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats:
        print(f"device peak memory: {stats['peak_bytes_in_use'] / 2**30:.2f} GiB")
    else:
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
        print(f"process peak resident memory: {peak_rss:.2f} GiB")

    cost = compiled.cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost or {}).get("flops")
    peak = peak_flops(device)
    if flops:
        print(f"model FLOPs per step (XLA cost analysis, per device): {flops / 1e9:.1f} GFLOP")
        if peak:
            print(f"MFU: {flops / seconds / peak:.1%} of {peak / 1e12:.0f} TFLOP/s")

    try:
        dataset = config_lib.dataset_dir(config)
    except builder.DatasetNotPreparedError:
        print("loader: dataset not prepared; windows/s not measured")
        return
    table = pipeline.open_prepared(dataset, "train")
    crops = train_lib.training_crops(config, table)
    windows = pipeline.measure_windows_per_second(
        table,
        history=config.history,
        batch_size=batch_size,
        seconds=10.0,
        read_threads=config.data.read_threads,
        channels=config.data.channels,
        objects=crops,
    )
    what = "windows" if crops is None else f"object samples ({config.objects.size}²)"
    print(
        f"loader: {windows:.0f} {what}/s = {windows * seconds / batch_size:.1f}× what "
        "training consumes"
    )


def main() -> None:
    config = cli.define_config_flag()
    steps = flags.DEFINE_integer("steps", 20, "timed steps")
    cli.run(
        lambda: benchmark(config.value, steps.value),
        config=config,
        usage="python -m jaxvad.bench.train --config=FILE [--steps=N] [--config.a.b=v ...]",
    )


if __name__ == "__main__":
    main()
