"""The launch scripts (dry runs, usage errors, a real local run) and how `jaxvad.distributed`
reads who started the processes from the environment."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import ROOT

from jaxvad import distributed
from jaxvad.config import ConfigError

LAUNCH = ROOT / "launch"
TRAIN = ["python", "-m", "jaxvad.train", "--config=configs/ped2.py", "--workdir=runs/ped2"]


def run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=60, env=os.environ | (env or {})
    )


def test_local_multiprocess_dry_run_prints_one_command_per_process():
    result = run(
        str(LAUNCH / "local_multiprocess.sh"),
        "--dry-run",
        "--processes",
        "3",
        "--devices",
        "2",
        "--port",
        "23456",
        "--",
        *TRAIN,
        env={"XLA_FLAGS": ""},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.startswith(
            f"JAXVAD_COORDINATOR=127.0.0.1:23456 JAXVAD_NUM_PROCESSES=3 JAXVAD_PROCESS_ID={i} "
            "JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 "
        )
        assert line.endswith(" ".join(TRAIN))


def test_local_multiprocess_runs_and_reports_the_first_failure():
    ok = run(
        str(LAUNCH / "local_multiprocess.sh"),
        "--processes",
        "2",
        "--",
        "bash",
        "-c",
        'echo "id $JAXVAD_PROCESS_ID of $JAXVAD_NUM_PROCESSES"',
    )
    assert ok.returncode == 0
    lines = sorted(ok.stdout.strip().splitlines())
    assert lines == ["[process 0] id 0 of 2", "[process 1] id 1 of 2"]
    failed = run(str(LAUNCH / "local_multiprocess.sh"), "--", "bash", "-c", "exit 3")
    assert failed.returncode == 3
    assert run(str(LAUNCH / "local_multiprocess.sh"), "--processes", "2").returncode == 2


def test_slurm_dry_run_prints_the_srun_line():
    for args, env in (
        (("--dry-run", *TRAIN[3:]), {}),
        (tuple(TRAIN[3:]), {"DRY_RUN": "1", "JAXVAD_ENTRY": "jaxvad.evaluate"}),
    ):
        result = run("bash", str(LAUNCH / "slurm_gpu.sbatch"), *args, env=env)
        assert result.returncode == 0, result.stderr
        srun = result.stdout.strip().splitlines()[-1]
        entry = env.get("JAXVAD_ENTRY", "jaxvad.train")
        assert srun.startswith("srun --kill-on-bad-exit=1 ")
        assert srun.endswith(f"-m {entry} --config=configs/ped2.py --workdir=runs/ped2")


def test_tpu_dry_run_prints_the_gcloud_line():
    result = run(
        str(LAUNCH / "tpu_vm.sh"), "--dry-run", "--tpu", "pod", "--zone", "z", "--", *TRAIN
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "gcloud compute tpus tpu-vm ssh pod --zone z --worker=all --command "
        f"'cd jaxvad && {' '.join(TRAIN)}'"
    )
    assert run(str(LAUNCH / "tpu_vm.sh"), "--dry-run", "--", *TRAIN).returncode == 2


def test_the_environment_says_who_started_the_processes(monkeypatch):
    cases = [
        ({}, "single"),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, "single"),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, "slurm"),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "1"}, "single"),
        ({"TPU_WORKER_HOSTNAMES": "w0"}, "single"),
        ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, "tpu"),
        ({"JAXVAD_PROCESS_ID": "1", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, "explicit"),
    ]
    names = (*distributed.EXPLICIT, "SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS")
    for env, expected in cases:
        for name in (*names, "TPU_WORKER_HOSTNAMES"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert distributed.launcher() == expected, env
    # Explicit but incomplete: a clear error before anything starts.
    with pytest.raises(ConfigError, match="missing: JAXVAD_COORDINATOR, JAXVAD_NUM_PROCESSES"):
        distributed.initialize()
