"""Tests of the trainer (`jaxvad.train`) and the configs, on the tiny synthetic dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import (
    ROOT,
    assert_resumes_exactly_after_sigkill,
    copy_run,
    load_config,
    run_module,
)

from jaxvad import config as config_lib
from jaxvad import distributed, model
from jaxvad import train as train_lib
from jaxvad.checkpoint import CheckpointMismatchError, Checkpoints
from jaxvad.data import builder
from jaxvad.metric_writer import read_jsonl

CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py"))


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_module("jaxvad.train", *args, timeout=timeout)


def test_configs_build_and_are_locked():
    assert {"synthetic", "ped2", "ped2_cpu", "ped2_paper", "avenue", "shanghaitech"} <= set(CONFIGS)
    for name in CONFIGS:
        config = load_config(name, variant=None)
        assert config.is_locked
        with pytest.raises(AttributeError, match="widht"):
            config.model.widht = 8
    paper = load_config("ped2_paper", variant=None)
    assert (paper.optimizer.name, paper.optimizer.learning_rate) == ("adam", 1e-4)
    assert (paper.train.batch_size, paper.train.num_epochs, paper.history) == (4, 50, 4)
    assert paper.data.size == 224


def test_every_config_validates_as_written():
    """Each config file as shipped (no variant) passes validation; the real weakly labelled
    datasets' once given the paths their docstrings say come from the command line."""
    for name in CONFIGS:
        config = load_config(name, variant=None)
        if config_lib.is_weak(config) and config.data.dataset != "synthetic_weak":
            with config.unlocked():
                config.model.clip, config.data.features = "clip", "features"
        config_lib.validate(config)


def test_a_config_survives_the_checkpoints_json():
    """What a checkpoint stores (JSON: tuples become lists) reads back as the same config."""
    for name in CONFIGS:
        for variant in (None, "mdsf", "motion_mae,tiny"):
            config = load_config(name, variant=variant)
            again = config_lib.from_dict(json.loads(config.to_json_best_effort()))
            assert again.to_dict() == config.to_dict(), (name, variant)
            assert again.is_locked and isinstance(again.mesh.rules[0][1], tuple)
    config = load_config("synthetic")
    with pytest.raises(config_lib.ConfigError, match=r"config\.model\.widht: no such field"):
        config_lib.override(config, {"model.widht": 8})
    config_lib.override(config, {"model.motion_channels": [4, 8, 16], "score.alpha": 2})
    assert config.model.motion_channels == (4, 8, 16) and config.score.alpha == 2.0


# The tiny variants of the real weakly labelled datasets' configs are synthetic_weak's (traced
# below); the configs themselves train and evaluate in tests/test_aadc.py.
SAME_TINY = ("ucf_crime", "xd_violence", "shanghaitech_weak")


@pytest.mark.parametrize("name", [c for c in CONFIGS if c not in SAME_TINY])
def test_tiny_variant_of_every_config_traces_a_train_step(name, synthetic_root):
    """Every config's tiny variant validates, builds its model, optimizer and shardings, reads a
    batch from its input pipeline and traces the whole train step to the right shapes (no XLA
    compilation: that costs ~35 s a config on 2 cores). Each model trains for real in other
    tests (`tiny_run`, test_detectors' losses-fall tests), and colour input below."""
    config = load_config(name, **{"data.root": str(synthetic_root)})
    config_lib.validate(config)
    data = train_lib.training_dataset(config)  # First: a weak config's CLIP is written there.
    run = train_lib.build(config, distributed.make_mesh(config.mesh.fsdp), steps=2)
    loader = train_lib.training_input(config, data).dataset
    batch = next(iter(loader))
    if config_lib.is_weak(config):  # Snippet features of whole videos (test_aadc).
        assert batch["features"].shape[:2] == (config.train.batch_size, config.data.snippets)
    else:
        t, s, c = config.history, model.image_size(config), config.data.channels
        assert batch["frames"].shape == (config.train.batch_size, t, s, s, c)
    state, metrics = jax.eval_shape(run.step, run.abstract, batch, jax.random.key(0))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), state) == jax.tree.map(
        lambda a: (a.shape, a.dtype), run.abstract
    )
    terms = {f"loss_{t}" for t in model.MODELS[config.model.name].LOSS_TERMS} - {"loss_perceptual"}
    assert terms <= set(metrics) and all(m.shape == () for m in metrics.values())


def test_initialiser_compiled_at_o2_gives_the_parameters_of_o3():
    """`train.build`'s initialiser is compiled at LLVM -O2 on CPU (fast to compile); XLA's
    default -O3 must give the same parameters, bit for bit."""
    config = load_config("synthetic")
    mesh = distributed.make_mesh(1)
    assert train_lib.init_compiler_options(mesh) == {"xla_backend_optimization_level": 2}
    run = train_lib.build(config, mesh, steps=10)
    fast = run.init()
    default = run.init.lower().compile(compiler_options={"xla_backend_optimization_level": 3})()
    leaves = jax.tree.leaves(fast["params"])
    assert len(leaves) == len(jax.tree.leaves(default["params"])) > 10
    jax.tree.map(np.testing.assert_array_equal, fast, default)


@pytest.mark.slow
def test_colour_config_trains_two_steps(synthetic_root, tmp_path):
    config = load_config("avenue", **{"data.root": str(synthetic_root), "train.num_steps": 2})
    assert config.data.channels == 3
    metrics = train_lib.train(config, tmp_path)
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
    assert Checkpoints(tmp_path).latest_step() == 2


@pytest.mark.slow
def test_training_lowers_the_loss_and_writes_logs(synthetic_root, tmp_path):
    config = load_config(
        "synthetic",
        **{"data.root": str(synthetic_root), "train.num_steps": 40, "train.log_every": 1},
    )
    train_lib.train(config, tmp_path)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 41))
    for key in ("loss", "loss_rgb", "loss_flow", "loss_ssim", "loss_gradient", "grad_norm"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert "loss_perceptual" not in records[0]  # No VGG16 weights configured: off.
    first = np.mean([r["loss"] for r in records[:5]])
    last = np.mean([r["loss"] for r in records[-5:]])
    assert last < 0.8 * first, (first, last)
    for key in ("loss_rgb", "loss_flow"):  # The predictor's two terms fall by ≥ 10 % each.
        values = np.array([r[key] for r in records])
        assert values[-5:].mean() < 0.9 * values[:5].mean(), (key, values)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert '"num_steps": 40' in (tmp_path / "config.json").read_text()


@pytest.mark.slow
def test_exact_resume_after_sigkill(synthetic_root, tmp_path):
    """N steps uninterrupted == the same run SIGKILLed after its checkpoint at N/2, resumed."""
    n = 40
    args = [
        "--config=configs/synthetic.py:tiny",
        f"--config.data.root={synthetic_root}",
        f"--config.train.num_steps={n}",
        f"--config.train.checkpoint_every={n // 2}",
        "--config.train.log_every=1",
        "--config.model.width=64",  # Slow enough steps that the kill lands mid-run.
        "--config.train.batch_size=8",
    ]
    assert_resumes_exactly_after_sigkill(args, tmp_path, n)


@pytest.mark.slow
def test_a_run_resumes_on_another_device_count(synthetic_root, tmp_path):
    """Trained on 2 CPU devices to step 2, resumed on 1 to step 4: the checkpoint is restored
    into the new layout and the run goes on as the run of 4 steps on 2 devices does (up to the
    summation order of the gradients over devices)."""
    args = [
        "--config=configs/synthetic.py:tiny",
        f"--config.data.root={synthetic_root}",
        "--config.train.checkpoint_every=2",
        "--config.train.log_every=1",
        "--config.train.batch_size=8",
        "--config.optimizer.schedule=constant",  # Runs of 2 and 4 steps: the same schedule.
    ]

    def train(workdir, steps: int, devices: int) -> str:
        flags = [f"--config.train.num_steps={steps}", f"--config.mesh.cpu_devices={devices}"]
        result = run_module("jaxvad.train", *args, *flags, f"--workdir={workdir}")
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"devices: {devices} local, {devices} global (cpu)" in result.stderr
        return result.stderr

    train(tmp_path / "whole", 4, 2)
    train(tmp_path / "moved", 2, 2)
    assert "resumed from" in train(tmp_path / "moved", 4, 1)
    whole, moved = (
        {r["step"]: r["loss"] for r in read_jsonl(tmp_path / name / "metrics.jsonl")}
        for name in ("whole", "moved")
    )
    assert sorted(moved) == sorted(whole) == [1, 2, 3, 4]
    for step in (3, 4):
        assert moved[step] == pytest.approx(whole[step], rel=1e-4), step
    assert moved[4] != pytest.approx(moved[1], rel=1e-3)  # The steps did train.


@pytest.mark.slow
def test_checkpoint_of_a_different_model_is_refused(tiny_run, tmp_path):
    workdir = copy_run(tiny_run, tmp_path / "run")
    wider = load_config(
        "synthetic",
        **{"data.root": tiny_run.config.data.root, "train.num_steps": 8, "model.width": 48},
    )
    with pytest.raises(
        CheckpointMismatchError, match=r"model\.width: 32 in the checkpoint, 48 now"
    ):
        train_lib.train(wider, workdir)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_run, tmp_path):
    workdir = copy_run(tiny_run, tmp_path / "run")  # Checkpoints at steps 3 and 6.
    diverging = {"train.num_steps": 16, "train.checkpoint_every": 2}
    diverging = load_config(
        "synthetic",
        **{"data.root": tiny_run.config.data.root, "optimizer.learning_rate": 1e30, **diverging},
    )
    with pytest.raises(train_lib.NonFiniteLossError, match="last good checkpoint, step 6"):
        train_lib.train(diverging, workdir)
    assert Checkpoints(workdir).latest_step() == 6


def test_missing_real_dataset_names_the_prepare_command(tmp_path):
    config = load_config("ped2", variant=None, **{"data.root": str(tmp_path / "data")})
    with pytest.raises(builder.DatasetNotPreparedError) as error:
        train_lib.train(config, tmp_path / "run")
    assert (
        "python -m jaxvad.data_prep --dataset=ped2 --source=../shared/data/ped2 "
        f"--output={tmp_path / 'data'} --size=224 --flow=farneback"
    ) in str(error.value)


def test_cli_errors(tmp_path):
    unknown = run_cli(
        "--config=configs/synthetic.py:tiny", "--config.model.widht=8", f"--workdir={tmp_path}"
    )
    assert unknown.returncode == 2, unknown.stderr
    assert 'Did you mean "width" instead of "widht"?' in unknown.stderr
    assert "Traceback" not in unknown.stderr
    # Another model's name on this config's model fields: a config error, not a traceback.
    other_model = run_cli(
        "--config=configs/synthetic.py:tiny",
        "--config.model.name=motion_mae",
        f"--workdir={tmp_path}",
    )
    assert other_model.returncode == 2, other_model.stderr
    first = other_model.stderr.strip().splitlines()[0]
    assert first.startswith("error: config.model.name: 'motion_mae' takes the fields"), first
    assert "--config=FILE:motion_mae" in first and "Traceback" not in other_model.stderr
    assert not (tmp_path / "checkpoints").exists()
    missing = run_cli(
        "--config=configs/ped2.py", f"--config.data.root={tmp_path}", f"--workdir={tmp_path}/run"
    )
    assert missing.returncode == 1
    assert (
        "error:" in missing.stderr and "python -m jaxvad.data_prep --dataset=ped2" in missing.stderr
    )
    assert "Traceback" not in missing.stderr


_SHARDING_SCRIPT = """
import sys
sys.path.insert(0, "tests")
import jax, numpy as np
from conftest import load_config
from jaxvad import distributed, train as train_lib
from jaxvad.bench.train import random_batch
from jaxvad.config import ConfigError

assert jax.device_count() == 8
config = load_config("synthetic", **{"train.batch_size": 8})
batch = random_batch(config, 8)
key = jax.random.key(1)
results = {}
# Data parallelism (4) and parameter sharding (fsdp 2) against one device; 8-way data parallelism
# over 2 processes is test_distributed's.
layouts = (("one", 1, jax.devices()[:1]), ("data4fsdp2", 2, None))
for name, fsdp, devices in layouts:
    config.mesh.fsdp = fsdp
    mesh = distributed.make_mesh(fsdp, devices)
    run = train_lib.build(config, mesh, steps=10)
    state = run.init()
    losses = []
    for _ in range(3):  # The first step's learning rate is 0 (warm-up): take three.
        state, metrics = run.step(state, distributed.global_batch(batch, run.data_sharding), key)
        losses.append(float(metrics["loss"]))
    kernels = [x for x in jax.tree.leaves(state["params"]) if x.ndim >= 2]
    sharded = sum(x.addressable_shards[0].data.size < x.size for x in kernels)
    results[name] = losses
    print(name, losses, "sharded kernels", sharded, "of", len(kernels))
    if name == "data4fsdp2":
        assert sharded >= len(kernels) // 2, sharded
    else:
        assert sharded == 0
np.testing.assert_allclose(results["data4fsdp2"], results["one"], rtol=2e-5)
config.mesh.fsdp = 1
config.train.batch_size = 4
try:
    train_lib.build(config, distributed.make_mesh(1), steps=10)
except ConfigError as e:
    assert "batch_size=4 is not divisible by the 8 batch shards" in str(e), e
else:
    raise AssertionError("batch 4 on 8 devices was accepted")
print("ok")
"""


@pytest.mark.slow
def test_sharded_step_on_8_fake_devices_matches_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run(
        [sys.executable, "-c", _SHARDING_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")


def test_a_selecting_checkpoint_manager_keeps_the_latest_and_the_best_step(tmp_path):
    import grain
    import jax.numpy as jnp

    data_iter = iter(grain.MapDataset.range(4).to_iter_dataset())
    chosen = Checkpoints(tmp_path / "selected", keep=2, select=True)
    for step, auc in enumerate([0.5, 0.9, 0.6, 0.7, 0.9, 0.1], start=1):
        chosen.save(step, {"x": jnp.full(2, step)}, data_iter, {}, auc)
        chosen.manager.wait_until_finished()
    # Steps 2 and 5 tie at 0.9: the later one is chosen and kept, with the 2 latest.
    assert chosen.manager.all_steps() == [5, 6]
    assert chosen.selection() == {5: 0.9, 6: 0.1}
    assert (chosen.selected_step(), chosen.latest_step()) == (5, 6)
    chosen.close()
    assert Checkpoints(tmp_path / "selected").selected_step() == 5  # As a reader opens it.
    plain = Checkpoints(tmp_path / "plain", keep=2)
    for step in range(1, 5):
        plain.save(step, {"x": jnp.full(2, step)}, data_iter, {})
        plain.manager.wait_until_finished()
    assert plain.manager.all_steps() == [3, 4]
    assert (plain.selection(), plain.selected_step()) == ({}, 4)
