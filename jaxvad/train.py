"""Trains a detector.

    python -m jaxvad.train --config=configs/synthetic.py --workdir=runs/synthetic

Any config field can be overridden (`--config.train.batch_size=64`); `--config=FILE:tiny`
selects the config's tiny variant. The run resumes from the latest checkpoint in `--workdir`
(model, optimizer, data iterator: the resumed run sees exactly the batches it would have seen),
otherwise it starts from the config's seed.

The workdir receives `config.json` (the resolved config), `checkpoints/<step>/` (Orbax),
`metrics.jsonl` and `tensorboard/` (every loss term, gradient and parameter norms, learning rate,
steps/s). After the last step the final model scores the training split, and these per-frame
errors (the normal statistics that scores are normalised and thresholded with) are stored with
the last checkpoint: from then on the workdir alone is a detector (`jaxvad.detector`), which
`jaxvad.evaluate` and `jaxvad.explain` load. With `config.objects.samples` the model trains
on object samples (each object's box cut from its window, `jaxvad.data.pipeline`): steps and
epochs count object windows, and the training objects' errors are stored instead of frame
errors (`jaxvad.detector.training_object_errors`). The synthetic dataset is generated and prepared
under `config.data.root` when missing (the embedded default); a real one must be prepared
(`jaxvad.data_prep`), and the error says how. The loop reads top to bottom in
`train`: mesh, input, model, shard, step, restore, loop.

A model of weakly labelled videos (`config_lib.WEAK_MODELS`, e.g. `aadc`) goes through the
same loop on snippet features (`jaxvad.data.weak_input`: videos at a fixed length with their
labels; the synthetic set's features are computed under `config.data.root` when missing);
steps and epochs count videos (and crops), and there are no frame statistics to store. Its
frozen parameters (`FROZEN`, e.g. the CLIP text tower) are left unchanged by the optimizer.
With `config.train.holdout` a share of each label's training videos is held out (`weak_holdout`)
and scored at every checkpoint (`held_out_auc`, logged as `holdout_video_auc`); the best step
is kept and is the one the other commands load (`jaxvad.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import flags
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from jaxvad import (
    allocator,
    atomic,
    cli,
    component_choice,
    detector,
    distributed,
    losses,
    model,
    object_scores,
    weak_scoring,
)
from jaxvad import config as config_lib
from jaxvad.checkpoint import SELECTION_METRIC, CheckpointMismatchError, Checkpoints, changed
from jaxvad.data import builder, pipeline, weak_input
from jaxvad.data.video_io import DataError
from jaxvad.metric_writer import MetricWriter

log = logging.getLogger("jaxvad.train")

State = dict[str, Any]  # {"step": int32 [], "params": nnx.State, "opt_state": optax state}


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss or parameters."""


# ---------------------------------------------------------------------------------------------
# Pieces the loop is made of (each importable and tested on its own).


def training_dataset(config: ml_collections.ConfigDict) -> Path:
    """The prepared dataset of `config.data`; the synthetic one is prepared when missing (the
    embedded default), a real one is an error naming the command that prepares it. A weakly
    labelled dataset: its features folder (the synthetic set's is computed when missing)."""
    if config_lib.is_weak(config):
        data = config_lib.weak_data(config)
        if jax.process_index() == 0:
            data.ensure(seed=config.data.synthetic_seed)
        multihost_utils.sync_global_devices("weak features ready")
        return data.features
    try:
        return config_lib.dataset_dir(config, needed_for="training")
    except builder.DatasetNotPreparedError:
        if config.data.dataset != "synthetic":
            raise
    data, settings = config.data, config_lib.dataset_settings(config)
    if jax.process_index() == 0:
        log.info("synthetic dataset not prepared under %s: preparing it", data.root)
        source = builder.synthetic_source(data.root, settings)
        builder.prepare("synthetic", settings, output=data.root, source=source)
    multihost_utils.sync_global_devices("synthetic dataset prepared")
    return config_lib.dataset_dir(config)


def make_optimizer(
    config: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and learning-rate schedule of `config.optimizer`."""
    opt = config.optimizer
    if opt.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            0.0,
            opt.learning_rate,
            warmup_steps=min(opt.warmup_steps, total_steps // 2),
            decay_steps=total_steps,
            end_value=opt.learning_rate * 0.01,
        )
    else:
        schedule = optax.constant_schedule(opt.learning_rate)
    if opt.name == "adamw":
        tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)
    else:
        tx = optax.adam(schedule, b1=opt.b1, b2=opt.b2)
    if opt.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
    return tx, schedule


def freeze(
    tx: optax.GradientTransformation, names: tuple[str, ...]
) -> optax.GradientTransformation:
    """`tx` for every parameter but those under an attribute in `names` (a model's `FROZEN`),
    whose updates are zero: no step, no weight decay, no optimizer state."""

    def labels(params: nnx.State) -> nnx.State:
        def label(path: tuple, _: Any) -> str:
            return "frozen" if any(getattr(k, "key", None) in names for k in path) else "trained"

        return jax.tree_util.tree_map_with_path(label, params)

    return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)


def train_step(
    state: State,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    vgg: losses.Vgg16Features | None,
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    weights: Mapping[str, float],
) -> tuple[State, dict[str, jax.Array]]:
    """One optimizer step on a global batch; a pure function of its arguments.

    `key` is the run's base key; the step's dropout key is `fold_in(key, step)`, so a resumed run
    draws the same randomness. `vgg`: the frozen perceptual-loss network, or None (term off).
    Returns the new state and scalar metrics.
    """
    inputs = model.model_inputs(batch)
    step_key = jax.random.fold_in(key, state["step"])
    # Training randomness: dropout, and any masking or pseudo-anomalies the model draws.
    rngs = {"dropout": step_key, "masking": jax.random.fold_in(step_key, 1)}

    def loss_fn(params: nnx.State) -> tuple[jax.Array, dict[str, jax.Array]]:
        terms = nnx.merge(graphdef, params).loss_terms(inputs, rngs=nnx.Rngs(**rngs), vgg=vgg)
        return losses.total_loss(terms, weights), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {
        "loss": loss,
        **{f"loss_{name}": value for name, value in terms.items()},
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
        "learning_rate": schedule(state["step"]),
    }
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics


# The settings that decide which training videos the run trains on: a resumed run must keep
# them, or its restored data iterator would walk another split.
SPLIT_FIELDS = ("train.holdout", "objects.holdout")


def check_same_videos(
    checkpoints: Checkpoints, step: int, config: ml_collections.ConfigDict
) -> None:
    """CheckpointMismatchError when `config` holds out other training videos than the run saved
    at `step` did (`SPLIT_FIELDS`; a run older than a field had its default)."""
    stored = config_lib.from_dict(checkpoints.config(step)).to_dict()
    differ = changed(stored, config.to_dict(), SPLIT_FIELDS)
    if differ:
        raise CheckpointMismatchError(
            f"{checkpoints.directory / str(step)}: the run trained on other videos than the "
            f"config names: {'; '.join(differ)}. Resume with the run's own setting, or use a "
            "new --workdir."
        )


def check_finite(
    metrics: Mapping[str, float], step: int, last_good: int | None, where: Path
) -> None:
    """Stops the run when the loss or the parameters stopped being finite."""
    bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
    if bad:
        kept = (
            f"the last good checkpoint, step {last_good}, is kept in {where}"
            if last_good is not None
            else "no checkpoint was written"
        )
        raise NonFiniteLossError(
            f"step {step}: non-finite {', '.join(f'{k}={v}' for k, v in bad.items())}; training "
            f"stopped and {kept}. Lower config.optimizer.learning_rate or set "
            "config.optimizer.grad_clip_norm, then rerun to resume from it."
        )


def training_crops(
    config: ml_collections.ConfigDict, table: pipeline.FrameTable
) -> pipeline.ObjectCrops | None:
    """The object samples of the training split `table` (`config.objects.samples`), but for
    the videos held out of the model's training (`config.objects.holdout`), else None (whole
    frames)."""
    if not config.objects.samples:
        return None
    objects = object_scores.read_objects(table)
    try:
        held_out = object_scores.held_out_videos(
            len(table.video_lengths), config.objects.holdout, config.seed
        )
    except ValueError as e:
        raise DataError(table.name, str(e)) from None
    if len(held_out):
        names = table.video_names or [str(v) for v in range(len(table.video_lengths))]
        log.info(
            "%d training videos held out of the model's training: %s",
            len(held_out),
            ", ".join(names[v] for v in held_out),
        )
        objects = objects.take(np.flatnonzero(~np.isin(objects.video, held_out)))
    return pipeline.object_crops(
        table,
        objects.frame_position,
        objects.boxes,
        size=config.objects.size,
        margin=config.objects.margin,
    )


@dataclasses.dataclass(frozen=True)
class TrainingInput:
    """What the loop reads. `table`: the training split (a frame table, or a weak split without
    its held-out videos); `dataset`: this process's shuffled batches of it; `crops`: the object
    samples' crops (None: whole frames, or a weak model); `held_out`: a weak model's training
    videos held out to choose the checkpoint with (None: none)."""

    table: pipeline.FrameTable | weak_input.WeakSplit
    dataset: Any
    crops: pipeline.ObjectCrops | None = None
    held_out: weak_input.WeakSplit | None = None


def weak_holdout(
    split: weak_input.WeakSplit, fraction: float, seed: int, where: Path
) -> tuple[weak_input.WeakSplit, weak_input.WeakSplit | None]:
    """The weak training `split` without its held-out videos (`config.train.holdout` =
    `fraction` of the normal and of the anomalous videos, drawn with `seed`), and those videos
    (None when `fraction` is 0). DataError naming `where` (the features) when a label has too
    few videos to hold some out and train on the rest."""
    if fraction == 0:
        return split, None
    labels = np.array([video.label for video in split.videos])
    held = []
    for label, name in ((0, "normal"), (1, "anomalous")):
        group = np.flatnonzero(labels == label)
        try:
            chosen = object_scores.held_out_videos(
                len(group), fraction, seed, field="train.holdout"
            )
        except ValueError as e:
            raise DataError(where, f"{name} training videos: {e}") from None
        held += group[chosen].tolist()
    held = sorted(held)
    log.info(
        "%d training videos held out to choose the checkpoint with: %s",
        len(held),
        ", ".join(split.videos[v].name for v in held),
    )
    return split.take(np.setdiff1d(np.arange(len(labels)), held)), split.take(held)


def training_input(config: ml_collections.ConfigDict, data_path: Path) -> TrainingInput:
    """The training split of the prepared dataset at `data_path` and this process's shuffled
    windows (object samples with `config.objects.samples`): batches of
    `config.train.batch_size / processes`. A weakly labelled dataset: its training split (less
    the held-out videos, `weak_holdout`) and this process's shuffled video batches."""
    if config_lib.is_weak(config):
        split, held_out = weak_holdout(
            config_lib.weak_data(config).split("train"),
            config.train.holdout,
            config.seed,
            data_path,
        )
        dataset = weak_input.train_dataset(
            split,
            snippets=config.data.snippets,
            batch_size=config.train.batch_size // jax.process_count(),
            seed=config.seed,
        )
        return TrainingInput(split, dataset, held_out=held_out)
    table = pipeline.open_prepared(data_path, "train")
    crops = training_crops(config, table)
    dataset = pipeline.train_dataset(
        table,
        history=config.history,
        batch_size=config.train.batch_size // jax.process_count(),
        seed=config.seed,
        channels=config.data.channels,
        read_threads=config.data.read_threads,
        objects=crops,
    )
    return TrainingInput(table, dataset, crops)


def total_steps(
    config: ml_collections.ConfigDict,
    table: pipeline.FrameTable | weak_input.WeakSplit,
    crops: pipeline.ObjectCrops | None = None,
) -> int:
    """`config.train.num_steps`, or its epochs' steps (of windows, of object `crops`, or of a
    weak split's videos)."""
    if config.train.num_steps > 0:
        return config.train.num_steps
    if isinstance(table, weak_input.WeakSplit):
        per_epoch = weak_input.steps_per_epoch(
            table,
            batch_size=config.train.batch_size // jax.process_count(),
            shard_count=jax.process_count(),
        )
        return config.train.num_epochs * per_epoch
    per_epoch = pipeline.steps_per_epoch(
        table,
        history=config.history,
        batch_size=config.train.batch_size // jax.process_count(),
        objects=crops,
    )
    return config.train.num_epochs * per_epoch


@dataclasses.dataclass(frozen=True)
class Run:
    """The jitted pieces of a run on a mesh.

    `abstract` is the train state's shapes, dtypes and shardings (what a checkpoint restores
    into), `init()` materialises the initial state sharded, and `jitted_step` is `train_step`
    jitted with the state donated; `step(state, batch, key)` calls it with the run's `vgg`.
    Batches go in with `data_sharding`.
    """

    graphdef: nnx.GraphDef
    abstract: State
    data_sharding: jax.sharding.NamedSharding
    init: Callable[[], State]
    jitted_step: Any
    vgg: losses.Vgg16Features | None

    def step(
        self, state: State, batch: Mapping[str, jax.Array], key: jax.Array
    ) -> tuple[State, dict[str, jax.Array]]:
        return self.jitted_step(state, batch, key, self.vgg)


def init_compiler_options(mesh: jax.sharding.Mesh) -> dict[str, int]:
    """XLA options of the jitted initialiser. On CPU it is compiled at LLVM -O2 instead of -O3:
    it runs once, its random draws (one threefry per parameter) make it as slow to compile as
    the train step (~17 s for the tiny model on 2 cores), and -O2 compiles it 2-4× faster with
    bit-identical parameters (checked on every config; tested in test_train)."""
    if mesh.devices.flat[0].platform == "cpu":
        return {"xla_backend_optimization_level": 2}
    return {}


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, steps: int) -> Run:
    """Model, optimizer, shardings and the jitted step of `config` on `mesh` (`steps` sets the
    learning-rate schedule's length)."""
    rules = tuple(tuple(rule) for rule in config.mesh.rules)
    distributed.check_batch_size(config.train.batch_size, mesh, rules)
    tx, schedule = make_optimizer(config, steps)
    if model.MODELS[config.model.name].FROZEN:
        tx = freeze(tx, model.MODELS[config.model.name].FROZEN)
    key_params = jax.random.fold_in(jax.random.key(config.seed), 0)  # Dropout: fold_in 1.

    def init() -> State:
        params = nnx.state(model.make_model(config, rngs=nnx.Rngs(params=key_params)), nnx.Param)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    graphdef = nnx.graphdef(nnx.eval_shape(lambda: model.make_model(config, rngs=nnx.Rngs(0))))
    abstract = jax.eval_shape(init)
    shardings = distributed.state_shardings(abstract, mesh, rules)
    abstract = distributed.with_shardings(abstract, shardings)

    terms = model.MODELS[config.model.name].LOSS_TERMS
    vgg = None
    if "perceptual" in terms and config.loss.vgg16:
        vgg = losses.load_vgg16_features(config.loss.vgg16, layers=config.loss.perceptual_layers)
    elif "perceptual" in terms:
        log.info("perceptual loss off: config.loss.vgg16 names no VGG16 weights file")
    weights = {k: config.loss[k] for k in terms}
    step = jax.jit(
        functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule, weights=weights),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )
    return Run(
        graphdef=graphdef,
        abstract=abstract,
        data_sharding=distributed.batch_sharding(mesh, rules),
        init=jax.jit(init, out_shardings=shardings, compiler_options=init_compiler_options(mesh)),
        jitted_step=step,
        vgg=vgg,
    )


def held_out_auc(
    config: ml_collections.ConfigDict, run: Run, params: nnx.State, held_out: weak_input.WeakSplit
) -> float:
    """The video AUC of `params` on the `held_out` training videos (`weak_scoring.video_auc`)."""
    predictions = weak_scoring.predict(
        run.graphdef,
        params,
        held_out,
        snippets=config.data.snippets,
        batch_size=config.eval.batch_size,
    )
    return weak_scoring.video_auc(predictions, held_out)


def store_statistics(
    config: ml_collections.ConfigDict,
    checkpoints: Checkpoints,
    steps: int,
    run: Run,
    mesh: jax.sharding.Mesh,
    params: nnx.State,
    data_path: Path,
) -> None:
    """What a frame model's detector needs beside its parameters, stored with the last
    checkpoint (`steps`): the training split's errors, and the object banks in object mode."""
    # The final model's errors on the training split: what scores are normalised and
    # thresholded with (stored with the last checkpoint; kept when already there). A
    # model of object samples: its training objects' errors (and frames without errors).
    scorer = detector.error_scorer(config, run.graphdef, mesh)
    if not checkpoints.has_normal_errors(steps):
        detector.store_normal_errors(
            checkpoints,
            steps,
            scorer,
            params,
            data_path,
            samples=config.objects.samples,
        )
    training_errors = functools.partial(
        detector.training_object_errors,
        checkpoints,
        steps,
        scorer,
        params,
        lambda: data_path,
        size=config.objects.size,
        margin=config.objects.margin,
        holdout=config.objects.holdout,
        seed=config.seed,
    )
    if config.objects.samples:
        training_errors()
    settings = detector.score_settings(config)
    # The memory banks of the object components; ("auto",) chooses the components, and
    # fits their banks, at the run's first load (`detector.load`).
    if settings.object_mode and settings.components != (component_choice.AUTO,):
        detector.object_model(
            checkpoints,
            steps,
            settings,
            config.objects.k,
            config.objects.nearby,
            lambda: data_path,
            training_errors,
        )


# ---------------------------------------------------------------------------------------------
# The run.


def train(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Trains (or resumes) the run of `config` in `workdir`; returns the last step's metrics."""
    config_lib.validate(config)
    distributed.initialize()  # Before any other use of JAX.
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")

    # --- Mesh: every device in (data, fsdp); the batch is split over both axes.
    mesh = distributed.setup(config.mesh.fsdp)

    # --- Input: this process's shard of shuffled windows (or object samples), batches of
    # B / processes.
    data_path = training_dataset(config)
    inputs = training_input(config, data_path)
    steps = total_steps(config, inputs.table, inputs.crops)
    data_iter = iter(inputs.dataset)

    # --- Model, optimizer, step: shapes first, then shardings, then materialise sharded.
    run = build(config, mesh, steps)
    num_params = sum(x.size for x in jax.tree.leaves(run.abstract["params"]))
    log.info("model %s: %s parameters", config.model.name, f"{num_params:,}")
    log.info(allocator.describe())
    key_dropout = jax.random.fold_in(jax.random.key(config.seed), 1)

    # --- Restore: this workdir's latest checkpoint, else initialise from the seed.
    held_out = inputs.held_out  # Weak models: the videos that choose the checkpoint, or None.
    checkpoints = Checkpoints(
        workdir, keep=config.train.keep_checkpoints, select=held_out is not None
    )
    start = checkpoints.latest_step()
    if start is None:
        state = run.init()
        start = 0
    else:
        checkpoints.check_fits(start, run.abstract, config.to_dict())
        check_same_videos(checkpoints, start, config)
        state = checkpoints.restore(start, run.abstract, data_iter)
        log.info("resumed from %s at step %d", checkpoints.directory, start)
    last_good = None if start == 0 else start

    # --- Loop.
    writer = MetricWriter(workdir)
    metrics: dict[str, float] = {}
    bar = tqdm(total=steps, initial=start, desc="train", unit="step", disable=not is_main)
    tick, tick_step = time.perf_counter(), start
    previous = None  # The step before: waiting for it keeps one step queued on the devices.
    try:
        for step in range(start + 1, steps + 1):
            batch = distributed.global_batch(next(data_iter), run.data_sharding)
            state, device_metrics = run.step(state, batch, key_dropout)
            if previous is not None:
                jax.block_until_ready(previous["loss"])
                bar.update()  # Counts finished steps, so its rate and ETA are real.
            previous = device_metrics
            save = step % config.train.checkpoint_every == 0 or step == steps
            if step % config.train.log_every == 0 or save:
                metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
                now = time.perf_counter()
                metrics["steps_per_second"] = (step - tick_step) / (now - tick)
                # Scored when finite; a non-finite step stops at check_finite below.
                if save and held_out is not None and all(map(np.isfinite, metrics.values())):
                    metrics[SELECTION_METRIC] = held_out_auc(config, run, state["params"], held_out)
                tick, tick_step = time.perf_counter(), step
                writer.write(step, metrics)  # Files: process 0 only.
                log.info("step %d: loss %.9g", step, metrics["loss"])  # Every process.
                check_finite(metrics, step, last_good, checkpoints.directory)
                bar.set_postfix(loss=f"{metrics['loss']:.4g}")
            if save:
                checkpoints.save(
                    step, state, data_iter, config.to_dict(), metrics.get(SELECTION_METRIC)
                )
                last_good = step
        bar.update(steps - bar.n)
        bar.close()
        checkpoints.manager.wait_until_finished()
        if held_out is not None:
            chosen = checkpoints.selected_step()
            log.info(
                "chosen on %d held-out training videos: step %s (video AUC by step: %s)",
                len(held_out.videos),
                chosen,
                ", ".join(f"{k}: {v:.4f}" for k, v in sorted(checkpoints.selection().items())),
            )
        if not config_lib.is_weak(config):
            store_statistics(config, checkpoints, steps, run, mesh, state["params"], data_path)
    finally:
        bar.close()
        writer.close()
        checkpoints.close()
        data_iter.close()
    if start >= steps:
        log.info("nothing to do: the checkpoint at step %d is the last of %d steps", start, steps)
    else:
        log.info(
            "done: step %d, loss %.5g; checkpoints in %s",
            steps,
            metrics["loss"],
            checkpoints.directory,
        )
    return metrics


# ---------------------------------------------------------------------------------------------
# Command line.

USAGE = "python -m jaxvad.train --config=FILE[:<model>,tiny] --workdir=DIR [--config.a.b=v ...]"

# Errors whose message says all a user needs; anything else keeps its traceback.
USER_ERRORS = (
    builder.DatasetNotPreparedError,
    CheckpointMismatchError,
    NonFiniteLossError,
    DataError,
)


def main() -> None:
    config = cli.define_config_flag()
    workdir = flags.DEFINE_string("workdir", None, "checkpoints, logs, config", required=True)
    cli.run(
        lambda: train(config.value, workdir.value),
        config=config,
        usage=USAGE,
        user_errors=USER_ERRORS,
    )


if __name__ == "__main__":
    main()
