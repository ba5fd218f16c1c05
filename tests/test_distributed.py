"""Multi-process training and evaluation through `launch/local_multiprocess.sh` (2 processes × 4
fake CPU devices, gloo collectives): training compared with the same run in this test process
(one CPU device), evaluation (of frames scored from the model's errors, and in object mode)
with one process of 8 fake devices.

The tiny config with a constant learning rate (so a run of 4 steps resumed to 6 follows the same
schedule as a run of 6) and a global batch of 8: every process reads its half of each batch, so
the global batch holds the same windows as the single process's, in another order; the loss (a
mean) agrees up to summation order.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import socket
import subprocess
import sys
import types
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, copy_run, load_config, run_module

from jaxvad import config as config_lib
from jaxvad import train as train_lib
from jaxvad.data import builder
from jaxvad.metric_writer import read_jsonl

pytestmark = pytest.mark.slow

LAUNCH = ROOT / "launch" / "local_multiprocess.sh"
# A line of the launcher's output: "[process i] " + what process i printed up to a newline
# (progress-bar redraws with carriage returns, then a log line "... step N: loss X").
LOSS = re.compile(r"^\[process (\d+)\] .*step (\d+): loss (\S+)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The tiny synthetic dataset, prepared once (by one process) for every run."""
    root = tmp_path_factory.mktemp("data")
    vad = builder.VadConfig.make("synthetic", size=32, synthetic="tiny")
    builder.prepare("synthetic", vad, output=root, source=builder.synthetic_source(root, vad))
    return root


def fields(data_root: Path, steps: int) -> dict[str, object]:
    return {
        "data.root": str(data_root),
        "optimizer.schedule": "constant",
        "train.batch_size": 8,
        "train.num_steps": steps,
        "train.checkpoint_every": 2,
    }


def command_flags(changed: Mapping[str, object], workdir: Path) -> list[str]:
    """The command-line flags of the tiny synthetic config with `changed` fields."""
    values = [
        f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
        for k, v in changed.items()
    ]
    return ["--config=configs/synthetic.py:tiny", *values, f"--workdir={workdir}"]


def flags(data_root: Path, workdir: Path, steps: int) -> list[str]:
    """The command-line flags of `fields` on the tiny synthetic config."""
    return command_flags(fields(data_root, steps), workdir)


def run_two(module: str, *args: str) -> str:
    """Two processes × 4 fake CPU devices through the launch script; returns its output (bytes
    decoded as they are: text mode would turn progress bars' "\r" into line breaks)."""
    command = [str(LAUNCH), "--processes", "2", "--devices", "4", "--port", str(free_port())]
    result = subprocess.run(
        [*command, "--", sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        timeout=900,
    )
    output = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, output[-4000:]
    return output


def losses_by_process(output: str) -> dict[int, dict[int, float]]:
    """process → step → loss, from the "[process i] ... step N: loss X" lines."""
    found: dict[int, dict[int, float]] = {}
    for line in output.split("\n"):  # Not splitlines(): it also splits at "\r".
        if match := LOSS.match(line.rstrip()):
            process, step, loss = match.groups()
            found.setdefault(int(process), {})[int(step)] = float(loss)
    return found


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory) -> tuple[Path, dict[int, float]]:
    """The same run in this process (one device), 6 steps."""
    workdir = tmp_path_factory.mktemp("one") / "run"
    train_lib.train(load_config("synthetic", **fields(data_root, 6)), workdir)
    losses = {r["step"]: r["loss"] for r in read_jsonl(workdir / "metrics.jsonl")}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    return workdir, losses


def test_two_processes_train_resume_and_match_one(data_root, reference, tmp_path):
    _, expected = reference
    workdir = tmp_path / "run"
    first = run_two("jaxvad.train", *flags(data_root, workdir, 4))
    assert "process 1 of 2 (explicit); devices: 4 local, 8 global (cpu)" in first
    logged = losses_by_process(first)
    assert sorted(logged) == [0, 1] and sorted(logged[0]) == [1, 2, 3, 4]
    assert logged[0] == logged[1]  # Both processes log the same (global) loss.
    for step, loss in logged[0].items():
        assert loss == pytest.approx(expected[step], rel=1e-5), step
    # One checkpoint per step, written collectively; metrics written by process 0 only.
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]

    resumed = run_two("jaxvad.train", *flags(data_root, workdir, 6))
    assert "resumed from" in resumed and "at step 4" in resumed
    logged = losses_by_process(resumed)
    assert sorted(logged[0]) == sorted(logged[1]) == [5, 6]
    for step in (5, 6):
        assert logged[0][step] == logged[1][step] == pytest.approx(expected[step], rel=1e-5)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4", "6"]


def read_scores(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def same_numbers(a, b, path: str = "") -> None:
    """Equal structure; floats equal to 1e-6 relative (device layouts sum in other orders)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            same_numbers(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9), path
    else:
        assert a == b, path


@pytest.fixture(params=["frames", "objects"])
def evaluated(request, tmp_path) -> types.SimpleNamespace:
    """A trained run to evaluate: `workdir`, its command-line `flags` and the metrics.json
    `sections` its evaluation must write. "frames": the 6-step run of `reference` (every test
    frame of the tiny synthetic clips is anomalous: the metrics are skipped, scores compared);
    "objects": a copy of `object_run` (frames scored from their objects, with both classes,
    masks, detection and pointing)."""
    if request.param == "frames":
        data_root = request.getfixturevalue("data_root")
        workdir, _ = request.getfixturevalue("reference")
        return types.SimpleNamespace(
            workdir=workdir, flags=flags(data_root, workdir, 6), sections=("metrics_skipped",)
        )
    run = request.getfixturevalue("object_run")
    workdir = copy_run(run, tmp_path / "run")
    tiny = config_lib.flatten(load_config("synthetic"))
    changed = {k: v for k, v in config_lib.flatten(run.config).items() if tiny[k] != v}
    return types.SimpleNamespace(
        workdir=workdir,
        flags=command_flags(changed, workdir),
        sections=("frame", "pixel", "objects"),
    )


def evaluation_outputs(workdir: Path) -> dict[str, object]:
    return {
        "csv": read_scores(workdir / "eval" / "frame_scores.csv"),
        "metrics": json.loads((workdir / "eval" / "metrics.json").read_text()),
    }


def test_two_process_evaluation_writes_what_one_process_writes(evaluated):
    # One process of 8 fake devices: the same per-device batches as 2 × 4 (one device's batch
    # of 8 takes other convolution paths, whose last digits the normalised scores magnify).
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = run_module("jaxvad.evaluate", *evaluated.flags, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    one = evaluation_outputs(evaluated.workdir)
    shutil.rmtree(evaluated.workdir / "eval")  # What is compared next is the 2 processes' own.
    run_two("jaxvad.evaluate", *evaluated.flags)
    two = evaluation_outputs(evaluated.workdir)
    assert set(evaluated.sections) <= one["metrics"].keys()
    if "objects" in evaluated.sections:
        # Not vacuous: objects were found and scored, and localisation was measured. Objects a
        # process dropped or counted twice change `objects` and `boxes_per_frame` (and dropped
        # ones the frame scores, detection and pointing), compared below.
        found = one["metrics"]["objects"]
        assert found["objects"] > 0 and found["detection"]["regions"] > 0
        assert found["pointing"]["frames"] > 0
    assert len(one["csv"]) == len(two["csv"]) > 0
    # Scores to 1e-5 of their column's spread over the split: the layouts sum in other orders
    # (up to 6e-7 of it seen), and a normalised score near 0 has no last digits of its own to
    # compare; a dropped, doubled or misplaced object or frame moves a score by far more.
    spread = {
        key: np.ptp([float(row[key]) for row in one["csv"] if row[key]])
        for key in one["csv"][0]
        if key.startswith("score")
    }
    for row_one, row_two in zip(one["csv"], two["csv"], strict=True):
        assert row_one.keys() == row_two.keys()
        for key, value in row_one.items():
            if key in spread and value:
                tolerance = 1e-5 * spread[key] + 1e-9
                assert float(row_two[key]) == pytest.approx(float(value), abs=tolerance), key
            else:
                assert row_two[key] == value, key
    for metrics in (one["metrics"], two["metrics"]):
        metrics.pop("timing")
    same_numbers(one["metrics"], two["metrics"])
