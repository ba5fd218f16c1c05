"""On CPU every command splits JAX's CPU backend into `config.mesh.cpu_devices` devices (0: one
per core, as many as divide the batch sizes) before it runs (`jaxvad.distributed.use_cpu_cores`,
called by `jaxvad.cli.run`), unless the layout is already set: by the environment, by a
multi-process launcher, or by a backend that has started."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import pytest
from conftest import ROOT, load_config

from jaxvad import distributed

# A command with the config flag that prints how many devices JAX has once it runs.
PRINT_DEVICES = (
    "from jaxvad import cli; import jax; config = cli.define_config_flag(); "
    "cli.run(lambda: print('devices', jax.device_count(), jax.devices()[0].platform), "
    "config=config, usage='')"
)


@pytest.mark.parametrize(
    ("requested", "cores", "batches", "expected"),
    [
        (0, 2, (16, 32, 8), 2),  # The CI machine with the synthetic config.
        (0, 16, (16, 32, 8), 8),  # At most the largest count dividing every batch.
        (0, 3, (16, 32, 8), 2),  # 3 cores: 3 divides no batch.
        (0, 6, (12, 36, 24), 6),
        (0, 7, (12, 36, 24), 6),
        (0, 1, (16, 32, 8), 1),
        (0, 4, (5, 32, 8), 1),  # An odd batch: one device.
        (3, 2, (16, 32, 8), 3),  # Asked for: as asked (the mesh then checks the batches).
        (1, 16, (16, 32, 8), 1),
    ],
)
def test_cpu_device_count(requested, cores, batches, expected):
    assert distributed.cpu_device_count(requested, cores, batches) == expected


def test_a_started_backend_keeps_its_devices():
    count = jax.device_count()  # Starts the backend, if no test did before.
    assert distributed.use_cpu_cores(count + 1, (16,)) is None
    assert jax.device_count() == count


@pytest.mark.parametrize(
    "env",
    [
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"},
        {"JAX_NUM_CPU_DEVICES": "3"},
        {"JAXVAD_COORDINATOR": "localhost:1", "JAXVAD_NUM_PROCESSES": "2"},
    ],
)
def test_a_layout_set_elsewhere_is_left_alone(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    before = jax.config.jax_num_cpu_devices
    assert distributed.use_cpu_cores(0, (16,)) is None
    assert jax.config.jax_num_cpu_devices == before


def devices_of(*flags: str, env: dict[str, str]) -> str:
    command = [sys.executable, "-c", PRINT_DEVICES, "--config=configs/synthetic.py:tiny", *flags]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ | env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def test_commands_split_the_cpu_as_the_config_says():
    config = load_config("synthetic", "tiny")
    batches = (config.train.batch_size, config.eval.batch_size, config.explain.batch_size)
    auto = distributed.cpu_device_count(0, len(os.sched_getaffinity(0)), batches)
    cpu = {"JAX_PLATFORMS": "cpu"}
    assert devices_of(env=cpu) == f"devices {auto} cpu"
    assert devices_of("--config.mesh.cpu_devices=3", env=cpu) == "devices 3 cpu"
    assert devices_of("--config.mesh.cpu_devices=1", env=cpu) == "devices 1 cpu"
    # The environment's count wins over the config's.
    forced = cpu | {"XLA_FLAGS": "--xla_force_host_platform_device_count=5"}
    assert devices_of("--config.mesh.cpu_devices=3", env=forced) == "devices 5 cpu"
