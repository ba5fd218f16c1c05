"""Processes and device layout: JAX's multi-controller runtime started from the environment, one
`Mesh` with axes ("data", "fsdp") and the `NamedSharding`s derived from it.

`initialize` starts `jax.distributed` once per process, from (first match):
- `JAXVAD_COORDINATOR=host:port`, `JAXVAD_NUM_PROCESSES`, `JAXVAD_PROCESS_ID`: explicit (local
  multi-process runs, `launch/local_multiprocess.sh`, or any launcher); CPU collectives use gloo;
- SLURM with more than one task (`srun`, `launch/slurm_gpu.sbatch`): JAX's SLURM detection;
- a Cloud TPU VM pod (more than one worker in `TPU_WORKER_HOSTNAMES`, `launch/tpu_vm.sh`):
  JAX's TPU detection;
- otherwise one process: nothing to start.

The same code serves one CPU, eight GPUs and a multi-host pod: the batch is split over every
device (logical axis "batch" → ("data", "fsdp")), and parameters carry logical axis names
(`nnx.with_partitioning`) that one rules table (`config.mesh.rules`) maps to mesh axes, so
with fsdp > 1 each parameter is split along "fsdp" on its embedding / output-channel dimension.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvad.config import ConfigError

log = logging.getLogger("jaxvad.distributed")

AXES = ("data", "fsdp")
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]
EXPLICIT = ("JAXVAD_COORDINATOR", "JAXVAD_NUM_PROCESSES", "JAXVAD_PROCESS_ID")


def launcher() -> str:
    """Who started this process, from the environment: "explicit" (the JAXVAD_* variables),
    "slurm" (more than one task), "tpu" (a pod of more than one worker) or "single"."""
    if any(os.environ.get(name) for name in EXPLICIT):
        return "explicit"
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS") or "1"
    if int(tasks) > 1 and "SLURM_JOB_ID" in os.environ:
        return "slurm"
    if len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "tpu"
    return "single"


def initialize() -> None:
    """Starts `jax.distributed` as `launcher()` says (see the module docstring), once; call it
    before any other use of JAX. A single process starts nothing."""
    if jax.distributed.is_initialized():
        return
    how = launcher()
    if how == "explicit":
        values = {name: os.environ.get(name) for name in EXPLICIT}
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise ConfigError(f"set all of {', '.join(EXPLICIT)} (missing: {', '.join(missing)})")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=values["JAXVAD_COORDINATOR"],
            num_processes=int(values["JAXVAD_NUM_PROCESSES"]),
            process_id=int(values["JAXVAD_PROCESS_ID"]),
        )
    elif how == "slurm":
        jax.distributed.initialize(cluster_detection_method="slurm")
    elif how == "tpu":
        jax.distributed.initialize()


def cpu_device_count(requested: int, cores: int, batch_sizes: Sequence[int]) -> int:
    """The CPU devices to split `cores` into: `requested` if it is ≥ 1, else (0, "auto") the
    most devices, at most one per core, that divide every one of `batch_sizes` (each device
    then runs its part of every batch, as data parallelism does across accelerators)."""
    if requested >= 1:
        return requested
    return max(d for d in range(1, max(cores, 1) + 1) if all(b % d == 0 for b in batch_sizes))


def use_cpu_cores(requested: int, batch_sizes: Sequence[int]) -> int | None:
    """Makes JAX's CPU backend `cpu_device_count(requested, cores, batch_sizes)` devices
    (`jax_num_cpu_devices`), with `cores` the cores this process may run on. XLA:CPU runs
    many of a step's operations (convolutions, elementwise fusions) on one core, so a batch
    split over one device per core keeps every core busy.

    Returns the count set, or None where the layout is not this function's to choose: JAX's
    backends already started (the count must precede them), more than one process
    (`launcher()`), or the count already set by `XLA_FLAGS`
    (`--xla_force_host_platform_device_count`) or `JAX_NUM_CPU_DEVICES`. Other backends
    (GPU, TPU) are not affected."""
    forced = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    if forced or "JAX_NUM_CPU_DEVICES" in os.environ or launcher() != "single":
        return None
    count = cpu_device_count(requested, len(os.sched_getaffinity(0)), batch_sizes)
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX's backends have started: their devices stay as they are.
        return None
    return count


def setup(fsdp: int) -> Mesh:
    """`initialize`, then the (data, fsdp) mesh over every device of every process; logs one
    banner: processes, devices, mesh."""
    initialize()
    mesh = make_mesh(fsdp)
    log.info(
        "process %d of %d (%s); devices: %d local, %d global (%s); mesh %s",
        jax.process_index(),
        jax.process_count(),
        launcher(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
        dict(mesh.shape),
    )
    return mesh


def make_mesh(fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: all), data = devices // fsdp."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ConfigError(f"config.mesh.fsdp={fsdp} does not divide the {len(devices)} devices")
    return jax.make_mesh(
        (len(devices) // fsdp, fsdp),
        AXES,
        # Auto: XLA propagates the input and parameter shardings through the model.
        axis_types=(jax.sharding.AxisType.Auto,) * 2,
        devices=devices,
    )


def batch_axes(rules: Rules) -> tuple[str, ...]:
    """The mesh axes the batch dimension is split over."""
    axes = dict(rules)["batch"]
    return (axes,) if isinstance(axes, str) else tuple(axes or ())


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Leading (batch) dimension split over the batch axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(rules)))


def batch_shards(sharding: NamedSharding) -> int:
    """How many parts a batch laid out with `sharding` is split into: the product of the mesh
    axes its leading dimension is split over (a batch's size must be a multiple of it)."""
    first = sharding.spec[0] if len(sharding.spec) else None
    axes = () if first is None else (first,) if isinstance(first, str) else tuple(first)
    return int(np.prod([sharding.mesh.shape[a] for a in axes]))


def check_batch_size(
    batch_size: int, mesh: Mesh, rules: Rules, field: str = "train.batch_size"
) -> None:
    """The global batch (`config.<field>`) must split evenly over processes and over the
    batch's mesh axes."""
    shards = batch_shards(batch_sharding(mesh, rules))
    if batch_size % shards:
        raise ConfigError(
            f"config.{field}={batch_size} is not divisible by the {shards} batch shards "
            f"of the mesh {dict(mesh.shape)}"
        )
    if batch_size % jax.process_count():
        raise ConfigError(
            f"config.{field}={batch_size} is not divisible by the {jax.process_count()} processes"
        )


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Replicates the dimensions the mesh axes do not divide (e.g. a 2-channel flow head)."""

    def size(axes) -> int:
        axes = (axes,) if isinstance(axes, str) else axes or ()
        return int(np.prod([mesh.shape[a] for a in axes]))

    return PartitionSpec(
        *(axes if dim % size(axes) == 0 else None for axes, dim in zip(spec, shape, strict=False))
    )


def state_shardings(abstract_state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
    """NamedShardings for an (abstract) NNX state from its logical axis annotations."""
    with nnx.logical_axis_rules(tuple(rules)):
        specs = nnx.get_partition_spec(abstract_state)
    # A variable without arrays (optax's MaskedNode: the state of a frozen parameter) keeps
    # its empty value.
    return jax.tree.map(
        lambda spec, x: (
            NamedSharding(mesh, _fit(spec, x.shape, mesh)) if hasattr(x, "shape") else x
        ),
        specs,
        abstract_state,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def with_shardings(abstract: nnx.State, shardings: nnx.State) -> nnx.State:
    """Abstract arrays (shapes, dtypes) → the same with `shardings`: what Orbax restores into."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def global_batch(local: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's part of the batch (leading dim B / processes) → global arrays."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def to_host(tree: object) -> object:
    """Global arrays → numpy arrays holding every process's part, in global order (on every
    process); with one process, a plain device-to-host copy."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)
