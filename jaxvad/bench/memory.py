"""Memory benchmark: the per-device memory of a config's compiled training step at given mesh
layouts, for the README's "Scaling" section.

    python -m jaxvad.bench.memory --config=configs/ped2.py --meshes=8x1,4x2 [--devices=8]

`--meshes` lists (data × fsdp) layouts whose product is the device count. `--devices=N` fakes N
host devices on CPU (`jax_num_cpu_devices`, set before JAX starts), so 8-device layouts can be
compiled on a laptop; on GPU/TPU it takes the first N devices. Nothing is materialised: for each
layout the trainer's step (`jaxvad.train.build`) is lowered on the abstract, sharded train state
and a batch of the config's shapes (the benchmarks' `random_batch` keys), then compiled.

Measured per device: the parameters, optimizer state and batch shard, exactly, from each leaf's
shard shape × itemsize (independent of XLA); XLA's memory analysis of the compiled step
(arguments, outputs, the donated state aliased between them, temporaries, i.e. activations and
intermediates, and their sum as a peak estimate); and XLA's cost analysis (FLOPs per device).
XLA's numbers are those of the backend it runs on: on CPU, the CPU compilation, whose fusion
and buffer assignment (hence temporaries) differ from a GPU's or TPU's.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags
from jax.sharding import NamedSharding, PartitionSpec

from jaxvad import cli, distributed, model
from jaxvad import train as train_lib
from jaxvad.bench.train import random_batch
from jaxvad.config import ConfigError
from jaxvad.losses import VggWeightsError

MIB = 2**20


class MeshSpecError(ValueError):
    """A `--meshes` entry is malformed or does not use every device."""


@dataclass(frozen=True)
class Bytes:
    """Bytes of a tree of sharded abstract arrays: globally, on one device, and the part of the
    per-device bytes in leaves that are not split (replicated on every device)."""

    elements: int
    total: int
    per_device: int
    replicated: int
    replicated_leaves: int
    leaves: int


@dataclass(frozen=True)
class Layout:
    data: int
    fsdp: int

    @property
    def name(self) -> str:
        return f"{self.data}x{self.fsdp}"


@dataclass(frozen=True)
class Result:
    layout: Layout
    params: Bytes
    opt_state: Bytes
    step: Bytes
    batch: Bytes
    vgg: int
    memory: Any  # jaxlib CompiledMemoryStats, or None where the backend has no analysis.
    flops: float | None
    seconds: float
    platform: str


def parse_meshes(specs: Iterable[str], devices: int) -> list[Layout]:
    """`["8x1", "4x2"]` → layouts; each must use all `devices`."""
    layouts = []
    for spec in specs:
        parts = spec.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise MeshSpecError(f"--meshes: {spec!r} is not DATAxFSDP, e.g. 4x2")
        layout = Layout(int(parts[0]), int(parts[1]))
        if layout.data * layout.fsdp != devices:
            raise MeshSpecError(
                f"--meshes: {spec} uses {layout.data * layout.fsdp} devices, not the {devices} "
                "there are (set --devices on CPU)"
            )
        layouts.append(layout)
    return layouts


def tree_bytes(tree: Any) -> Bytes:
    """Global, per-device and replicated bytes of sharded `jax.ShapeDtypeStruct` leaves."""
    elements = total = per_device = replicated = replicated_leaves = 0
    leaves = jax.tree.leaves(tree)
    for x in leaves:
        elements += math.prod(x.shape)
        itemsize = np.dtype(x.dtype).itemsize
        full = math.prod(x.shape) * itemsize
        shard = math.prod(x.sharding.shard_shape(x.shape)) * itemsize
        total += full
        per_device += shard
        if shard == full:
            replicated += shard
            replicated_leaves += 1
    return Bytes(elements, total, per_device, replicated, replicated_leaves, len(leaves))


def abstract_batch(
    config: ml_collections.ConfigDict, sharding: NamedSharding
) -> dict[str, jax.ShapeDtypeStruct]:
    """The global training batch of `config` as sharded shapes (keys and dtypes of
    `random_batch`)."""
    batch_size = config.train.batch_size
    return {
        k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype, sharding=sharding)
        for k, v in random_batch(config, 1).items()
    }


def measure(config: ml_collections.ConfigDict, layout: Layout, devices: Sequence) -> Result:
    """Builds the run of `config` on `layout`, lowers and compiles its step on abstract values."""
    start = time.perf_counter()
    config.mesh.fsdp = layout.fsdp
    mesh = distributed.make_mesh(layout.fsdp, devices)
    run = train_lib.build(config, mesh, steps=1000)
    state = run.abstract
    batch = abstract_batch(config, run.data_sharding)
    key = jax.ShapeDtypeStruct(
        (), jax.eval_shape(jax.random.key, 0).dtype, sharding=NamedSharding(mesh, PartitionSpec())
    )
    compiled = run.jitted_step.lower(state, batch, key, run.vgg).compile()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, list) else cost) or {}
    vgg = sum(x.nbytes for x in jax.tree.leaves(run.vgg)) if run.vgg is not None else 0
    return Result(
        layout=layout,
        params=tree_bytes(state["params"]),
        opt_state=tree_bytes(state["opt_state"]),
        step=tree_bytes(state["step"]),
        batch=tree_bytes(batch),
        vgg=vgg,
        memory=compiled.memory_analysis(),
        flops=cost.get("flops"),
        seconds=time.perf_counter() - start,
        platform=devices[0].platform,
    )


def _computed(r: Result) -> int:
    """Per-device bytes of the step's arguments, from the shardings."""
    state = r.params.per_device + r.opt_state.per_device + r.step.per_device
    return state + r.batch.per_device + r.vgg


def _table(results: Sequence[Result]) -> list[str]:
    """Rows of per-device MiB, one column per layout."""
    width = 12
    rows: list[tuple[str, list[str]]] = []

    def mib(label: str, values: Iterable[float | None]) -> None:
        rows.append((label, ["–" if v is None else f"{v / MIB:,.2f}" for v in values]))

    mib("parameters", (r.params.per_device for r in results))
    mib("optimizer state", (r.opt_state.per_device for r in results))
    if any(r.vgg for r in results):
        mib("frozen VGG16 (replicated)", (r.vgg for r in results))
    mib("batch shard", (r.batch.per_device for r in results))
    mib("= state + batch (+ step counter)", (_computed(r) for r in results))
    if all(r.memory is not None for r in results):
        ms = [r.memory for r in results]
        mib("XLA arguments", (m.argument_size_in_bytes for m in ms))
        mib("XLA outputs", (m.output_size_in_bytes for m in ms))
        mib("XLA aliased (donated state)", (m.alias_size_in_bytes for m in ms))
        mib("XLA temporaries (activations…)", (m.temp_size_in_bytes for m in ms))
        mib(
            "XLA peak est. (arg+out−alias+temp)",
            (
                m.argument_size_in_bytes
                + m.output_size_in_bytes
                - m.alias_size_in_bytes
                + m.temp_size_in_bytes
                for m in ms
            ),
        )
        # The CPU backend's "peak" counts only the arguments: shown for the other backends.
        if results[0].platform != "cpu" and any(getattr(m, "peak_memory_in_bytes", 0) for m in ms):
            mib("XLA peak memory (reported)", (getattr(m, "peak_memory_in_bytes", 0) for m in ms))
        mib("XLA generated code", (m.generated_code_size_in_bytes for m in ms))
    rows.append(
        (
            "GFLOP per device (cost analysis)",
            ["–" if r.flops is None else f"{r.flops / 1e9:,.1f}" for r in results],
        )
    )
    rows.append(("build + lower + compile, s", [f"{r.seconds:.1f}" for r in results]))
    header = "MiB per device; mesh data×fsdp"
    label_width = max(len(label) for label, _ in [*rows, (header, [])]) + 2
    header = header.ljust(label_width) + "".join(f"{r.layout.name:>{width}}" for r in results)
    lines = [header]
    lines += [label.ljust(label_width) + "".join(f"{v:>{width}}" for v in vs) for label, vs in rows]
    return lines


def _sharding_note(name: str, b: Bytes, fsdp: int) -> str:
    sharded = b.total - b.replicated
    on_device = b.per_device - b.replicated
    ratio = sharded / on_device if on_device else float("nan")
    return (
        f"  {name}: {b.leaves - b.replicated_leaves} of {b.leaves} leaves split, "
        f"{sharded / MIB:,.2f} MiB → {on_device / MIB:,.2f} MiB per device (÷{ratio:.2f}, "
        f"fsdp={fsdp}); {b.replicated_leaves} leaves stay replicated: "
        f"{b.replicated:,} bytes ({b.replicated / 2**10:,.1f} KiB) on every device"
    )


def benchmark(
    config: ml_collections.ConfigDict, meshes: Sequence[str] | None, devices: int | None
) -> None:
    """Prints the measurements of the module docstring for `config` on each of `meshes`."""
    if devices is not None:
        # Only the CPU backend reads this; it must precede JAX's first use of a backend.
        jax.config.update("jax_num_cpu_devices", devices)
    available = jax.devices()
    count = len(available) if devices is None else devices
    if count > len(available):
        raise MeshSpecError(
            f"--devices={count}: only {len(available)} {available[0].platform} devices"
        )
    used = available[:count]
    if meshes is None:
        meshes = [f"{count // config.mesh.fsdp}x{config.mesh.fsdp}"]
    layouts = parse_meshes(meshes, count)

    config = config.copy_and_resolve_references()  # A copy: fsdp changes per layout.
    logging.getLogger("jaxvad.train").setLevel(logging.WARNING)  # Once per layout: said below.
    device = used[0]
    print(
        f"machine: {platform.node()}, {count} × {device.device_kind} ({device.platform} backend, "
        f"jax {jax.__version__})"
    )
    results = []
    for layout in layouts:
        results.append(measure(config, layout, used))
        print(f"compiled {layout.name} in {results[-1].seconds:.1f} s", flush=True)

    first = results[0]
    s = model.image_size(config)  # The object crops' side with object samples.
    print(
        f"config: model {config.model.name}, {first.params.elements:,} parameters (float32, "
        f"{first.params.total / MIB:,.1f} MiB; optimizer state {first.opt_state.total / MIB:,.1f}"
        f" MiB, {config.optimizer.name}); global batch {config.train.batch_size} × "
        f"T={config.history} frames of {s}×{s}×{config.data.channels} "
        f"({first.batch.total / MIB:,.1f} MiB); compute dtype {config.model.dtype}; perceptual "
        f"loss {'on (VGG16 passed replicated)' if first.vgg else 'off'}"
    )
    print()
    print("\n".join(_table(results)))
    print()
    print(
        f"XLA's numbers are from the {device.platform.upper()} backend's compilation; GPU/TPU "
        "compilations fuse differently, so their temporaries differ (parameters, optimizer "
        "state and batch do not)."
    )
    for r in results:
        if r.layout.fsdp > 1:
            print(f"sharding at {r.layout.name}:")
            print(_sharding_note("parameters", r.params, r.layout.fsdp))
            print(_sharding_note("optimizer state", r.opt_state, r.layout.fsdp))
    differences = [
        f"{r.layout.name} {r.memory.argument_size_in_bytes - _computed(r):+,} bytes"
        for r in results
        if r.memory is not None
    ]
    if differences:
        print(f"XLA arguments − computed state + batch: {', '.join(differences)}")


def main() -> None:
    config = cli.define_config_flag()
    meshes = flags.DEFINE_list(
        "meshes", None, "DATAxFSDP layouts, e.g. 8x1,4x2 (default: the config's mesh.fsdp)"
    )
    devices = flags.DEFINE_integer(
        "devices", None, "devices to use; on CPU, fakes this many host devices", lower_bound=1
    )
    cli.run(
        lambda: benchmark(config.value, meshes.value, devices.value),
        config=config,
        usage="python -m jaxvad.bench.memory --config=FILE [--meshes=8x1,4x2] [--devices=8]",
        user_errors=(MeshSpecError, ConfigError, VggWeightsError),
    )


if __name__ == "__main__":
    main()
