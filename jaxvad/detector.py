"""A trained run as a detector, read from its workdir alone: no prepared dataset is needed to
score video.

    detector = jaxvad.detector.load("runs/synthetic")
    errors, seconds = detector.errors(table, labels=False, maps=False)  # a FrameTable
    scores = detector.scores(errors)
    alarms = scores.score > detector.threshold

A workdir holds the run's checkpoints (`jaxvad.checkpoint`); the latest one holds the run's
config, the model parameters and the training split's per-frame errors: the normal statistics
that scores are normalised and thresholded with (`jaxvad.scoring`), stored by `jaxvad.train`
after its last step. `load` reads them, builds the model on a mesh of every device and jits its
error step (`jaxvad.inference`).

A model of object samples (`config.objects.samples`) scores objects, not frames: its
checkpoint holds the training objects' errors (`object_errors`), the frames' normal statistics
hold no model error (`inference.frames_only`: which training frames are scored), `errors`
gives a split's frames without errors, and `score_objects` runs the model on the objects'
samples when "error" or "deep" (the model's pooled latent of each sample) is a component: one
pass gives both. The training objects' deep features are stored with their errors.

Components `("auto",)` (`component_choice.AUTO`, the object configs' default) are chosen on
the training split's objects, without test labels (`jaxvad.component_choice`), the first time
a step is loaded with those settings; the choice is stored with the checkpoint, and the
detector's config and `settings` carry the chosen components (`choice`: the whole table).

`overrides` ("a.b" → value; the commands pass their whole config, flattened) set the fields of
scoring, evaluation, explanation, the data root, the mesh. The fields that fix what the model
was trained on (`TRAINED_FIELDS`: the dataset and its preparation, T) must keep the run's values
(DatasetMismatchError), the model name too, and the model's settings must describe parameters
of the stored shapes (CheckpointMismatchError); other model settings (e.g. `model.dtype`) may
change.

A checkpoint without normal statistics (a run from before they were stored) gets them once:
the training split is scored and they are stored with the checkpoint, with the training
split's median frame (`background`; a run that has the statistics but not it gets it alone).
That is the only case in which the training dataset is read; when it is not prepared,
MissingNormalStatisticsError gives the commands that add them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxvad import component_choice, distributed, inference, model, object_scores, scoring
from jaxvad import config as config_lib
from jaxvad.checkpoint import CheckpointMismatchError, Checkpoints, changed
from jaxvad.data import builder, pipeline

log = logging.getLogger("jaxvad.detector")

# What the model was trained on, so what it must score (dataset-specific fields: when used).
TRAINED_FIELDS = (
    "data.dataset",
    "data.size",
    "data.flow",
    "data.channels",
    "data.objects",
    "history",
    "objects.samples",
)
TRAINED_FIELDS_OF = {
    "avenue": ("data.label_version",),
    "synthetic": ("data.synthetic", "data.synthetic_seed"),
}
SAMPLE_FIELDS = ("objects.size", "objects.margin")  # How object samples are cut: when used.


class NoCheckpointError(FileNotFoundError):
    """The workdir holds no checkpoint."""


class DatasetMismatchError(ValueError):
    """The config's dataset settings differ from those the checkpoint was trained with."""


class MissingNormalStatisticsError(FileNotFoundError):
    """An old checkpoint lacks its normal statistics and the training split is not prepared."""


# What `load` raises for a workdir or config that does not fit (one line each).
LOAD_ERRORS = (
    NoCheckpointError,
    DatasetMismatchError,
    MissingNormalStatisticsError,
    CheckpointMismatchError,
    config_lib.ConfigError,
)


@dataclasses.dataclass(frozen=True)
class Detector:
    """A run's latest checkpoint, ready to score.

    `config`: the run's config with the overrides (locked); `step`: the checkpoint's step;
    `graphdef`, `params`: the model, parameters sharded on the mesh; `normal`: the training
    split's errors (the normal statistics); `settings`: `config.score` as `ScoreSettings`;
    `threshold`: the alarm threshold of those settings (`scoring.training_threshold`);
    `scorer`: the jitted error step on the mesh; `objects`: in object mode (`settings.
    object_mode`) the components' banks (`jaxvad.object_scores`), else None; `choice`: how
    components `("auto",)` were chosen (`jaxvad.component_choice`), else None; `background`:
    the training split's per-pixel median frame `[S, S, C]` float32 in [0, 255] (the
    foreground of the explanations' `anomaly_foreground` map, `jaxvad.explain.maps`).
    """

    config: ml_collections.ConfigDict
    workdir: Path
    step: int
    graphdef: nnx.GraphDef
    params: nnx.State
    normal: scoring.SplitErrors
    settings: scoring.ScoreSettings
    threshold: float
    scorer: inference.ErrorScorer
    objects: object_scores.ObjectModel | None = None
    choice: component_choice.Choice | None = None
    background: np.ndarray | None = None

    @property
    def threshold_rule(self) -> str:
        """How `threshold` was set, in the words metrics.json and explanations state it."""
        held_out = np.zeros(0) if self.objects is None else self.objects.held_out
        frames = (
            f"the scored frames of the {len(held_out)} training videos held out of the "
            "model's training"
            if len(held_out)
            else "the training split's scored frames"
        )
        return (
            f"quantile {self.settings.threshold_quantile} of the scores of {frames} (same "
            "score pipeline)"
        )

    def errors(
        self, table: pipeline.FrameTable, *, labels: bool, maps: bool, desc: str = "score"
    ) -> tuple[scoring.SplitErrors, float]:
        """The errors of every frame of `table` (see `ErrorScorer.split_errors`) and the
        seconds they took; a model of object samples gives the frames without errors
        (`inference.frames_only`: its errors are its objects', `score_objects`)."""
        if self.config.objects.samples:
            started = time.perf_counter()
            errors = inference.frames_only(
                table, history=self.config.history, labels=labels, masks=maps
            )
            return errors, time.perf_counter() - started
        return self.scorer.split_errors(self.params, table, labels=labels, maps=maps, desc=desc)

    def scores(
        self, errors: scoring.SplitErrors, objects: object_scores.ObjectScores | None = None
    ) -> scoring.Scores:
        """The scores of `errors` under the detector's settings and normal statistics; in
        object mode `score` is the frames' object score (`objects`: `score_objects` of the same
        frames, required then) through the same normalisation and smoothing."""
        scores = scoring.frame_scores(errors, self.settings, self.normal)
        if self.objects is None:
            return scores
        if objects is None:
            raise ValueError("object mode scores frames from their objects: pass them")
        frame = objects.frame
        train = self.objects.train_frame_scores()
        reference = reference_frames(self.normal, self.objects.held_out)
        value = scoring.settle(frame, errors, self.settings, train[reference])
        return dataclasses.replace(scores, score=value)

    def score_objects(
        self,
        objects: object_scores.SplitObjects,
        table: pipeline.FrameTable | None = None,
        *,
        maps: bool = False,
        changed_inputs: Collection[str] | None = None,
        progress: bool = True,
    ) -> object_scores.ObjectScores:
        """Every object's score and components, and the frames' maxima (object mode). With the
        error or a deep component the model scores the objects' samples, cut from `table` (the
        split `objects` were read from; with `maps`, the error maps give `detail`), in one pass
        that gives the errors and the deep features (`SplitObjects.deep` of the result's
        objects); without the error component it runs only as far as the deep features.

        `changed_inputs`: the model inputs (of `frames`, `flows`, `target_frame`, `target_flow`)
        in which `table`'s samples differ from those `objects.deep` was computed from. The
        model does not run when the score reads it only through the deep features and
        `features` reads none of them (`VadModel.FEATURE_INPUTS`): `objects.deep` stands.
        `progress`: show the model's progress bar."""
        found = self.objects
        if found is None:
            raise ValueError("this detector scores frames, not objects (config.score.components)")
        errors = None
        deep = found.deep and not self._deep_stands(objects, changed_inputs)
        if found.error is not None or deep:
            if table is None:
                raise ValueError(
                    "the error and deep components need the objects' table (their frames)"
                )
            o = self.config.objects
            errors = object_errors(
                self.scorer,
                self.params,
                table,
                objects,
                size=o.size,
                margin=o.margin,
                maps=maps and found.error is not None,
                features=found.deep,
                errors=found.error is not None,
                progress=progress,
            )
            objects = dataclasses.replace(objects, deep=errors.features)
        return object_scores.score(objects, found, errors)

    def _deep_stands(
        self, objects: object_scores.SplitObjects, changed_inputs: Collection[str] | None
    ) -> bool:
        """Whether `objects.deep` is still their deep features after `changed_inputs`
        (`score_objects`)."""
        if changed_inputs is None or objects.deep is None:
            return False
        reads = model.MODELS[self.config.model.name].FEATURE_INPUTS
        return not set(changed_inputs) & set(reads)


def load(workdir: str | Path, overrides: Mapping[str, Any] | None = None) -> Detector:
    """The latest checkpoint of `workdir` as a Detector on a mesh of every device (see the
    module docstring for `overrides`)."""
    distributed.initialize()  # Before any other use of JAX.
    workdir = Path(workdir)
    checkpoints, step = run_checkpoint(workdir)
    try:
        where = checkpoints.directory / str(step)
        config = run_config(checkpoints.config(step), overrides or {}, where)
        mesh = distributed.setup(config.mesh.fsdp)
        graphdef, params = load_params(config, checkpoints, step, mesh)
        scorer = error_scorer(config, graphdef, mesh)
        normal = stored_normal_errors(checkpoints, step)
        if normal is None:
            data_dir = _training_data(config, where, workdir, NORMAL_STATISTICS)
            normal = store_normal_errors(
                checkpoints, step, scorer, params, data_dir, samples=config.objects.samples
            )
        background = checkpoints.background(step)
        if background is None:
            data_dir = _training_data(config, where, workdir, BACKGROUND)
            background = store_background(checkpoints, step, data_dir)
        settings = score_settings(config)
        objects = choice = None
        training_errors = _training_errors(checkpoints, step, config, scorer, params, workdir)
        if settings.components == (component_choice.AUTO,):
            choice = chosen_components(
                checkpoints,
                step,
                config,
                lambda: choice_inputs(
                    config,
                    scorer,
                    params,
                    normal,
                    lambda: _training_data(config, where, workdir, COMPONENT_CHOICE),
                    training_errors if config.objects.samples else None,
                ),
            )
            settings = dataclasses.replace(settings, components=choice.chosen)
            with config.unlocked():
                config.score.components = choice.chosen
        if settings.object_mode:
            what = OBJECT_BANKS.format(components=settings.components, k=config.objects.k)
            objects = object_model(
                checkpoints,
                step,
                settings,
                config.objects.k,
                config.objects.nearby,
                lambda: _training_data(config, where, workdir, what),
                training_errors,
            )
    finally:
        checkpoints.close()
    if objects is None:
        threshold = scoring.training_threshold(normal, settings)
    else:
        train = objects.train_frame_scores()
        reference = reference_frames(normal, objects.held_out)
        values = scoring.settle(train, normal, settings, train[reference])
        threshold = float(np.quantile(values[reference], settings.threshold_quantile))
    return Detector(
        config,
        workdir,
        step,
        graphdef,
        params,
        normal,
        settings,
        threshold,
        scorer,
        objects,
        choice,
        background,
    )


def _training_errors(
    checkpoints: Checkpoints,
    step: int,
    config: ml_collections.ConfigDict,
    scorer: inference.ErrorScorer,
    params: nnx.State,
    workdir: Path,
) -> Callable[..., Mapping[str, np.ndarray]]:
    """`training_object_errors` of `step` with the run's settings (`features=` still open)."""
    where = checkpoints.directory / str(step)
    return functools.partial(
        training_object_errors,
        checkpoints,
        step,
        scorer,
        params,
        lambda: _training_data(config, where, workdir, OBJECT_ERRORS),
        size=config.objects.size,
        margin=config.objects.margin,
        holdout=config.objects.holdout,
        seed=config.seed,
    )


def loaded_choice_inputs(found: Detector) -> ChoiceInputs:
    """`choice_inputs` of a loaded object-mode run (`found`; its training split prepared):
    what its `("auto",)` choice was, or would be, made on."""
    config, workdir = found.config, found.workdir
    checkpoints, step = run_checkpoint(workdir)
    try:
        where = checkpoints.directory / str(step)
        training_errors = None
        if config.objects.samples:
            training_errors = _training_errors(
                checkpoints, step, config, found.scorer, found.params, workdir
            )
        return choice_inputs(
            config,
            found.scorer,
            found.params,
            found.normal,
            lambda: _training_data(config, where, workdir, COMPONENT_CHOICE),
            training_errors,
        )
    finally:
        checkpoints.close()


def run_checkpoint(workdir: Path) -> tuple[Checkpoints, int]:
    """The workdir's checkpoints and the step a run is loaded from: the selected one where
    its steps carry a selection metric (a weak run's held-out training videos,
    `Checkpoints.selected_step`), else the latest (NoCheckpointError when none)."""
    if not (workdir / "checkpoints").is_dir():
        raise NoCheckpointError(
            f"{workdir}: no checkpoints/ folder: nothing to load. Train first, e.g. "
            f"python -m jaxvad.train --config=CONFIG --workdir={workdir}"
        )
    checkpoints = Checkpoints(workdir)
    step = checkpoints.selected_step()
    if step is None:
        checkpoints.close()
        raise NoCheckpointError(f"{checkpoints.directory}: no complete checkpoint to load")
    return checkpoints, step


def run_config(
    stored: Mapping[str, Any], overrides: Mapping[str, Any], where: Path
) -> ml_collections.ConfigDict:
    """The checkpoint's config `stored` with `overrides` applied and checked (validated; the
    trained fields and the model name unchanged). `where`: the checkpoint, for errors."""
    name = stored["model"]["name"]
    if overrides.get("model.name", name) != name:
        raise CheckpointMismatchError(
            f"{where}: the checkpoint holds a {name!r} model, the config a "
            f"{overrides['model.name']!r} one. Use the run's model: --config=FILE:{name}"
        )
    config = config_lib.from_dict(stored)
    trained = config.to_dict()  # On today's schema: fields added since keep their defaults.
    config_lib.override(config, overrides)
    config_lib.validate(config)
    fields = TRAINED_FIELDS + TRAINED_FIELDS_OF.get(config.data.dataset, ())
    fields += SAMPLE_FIELDS if trained["objects"]["samples"] else ()
    differ = changed(trained, config.to_dict(), fields)
    if differ:
        raise DatasetMismatchError(
            f"{where} was trained on other data than the config names: {'; '.join(differ)}. "
            f"Use the run's own data settings ({where.parents[1] / 'config.json'} lists them)."
        )
    return config


def load_params(
    config: ml_collections.ConfigDict, checkpoints: Checkpoints, step: int, mesh: Mesh
) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's graphdef and the parameters of `step`, sharded on `mesh`
    (CheckpointMismatchError when the config's model does not fit them)."""
    abstract_model = nnx.eval_shape(lambda: model.make_model(config, rngs=nnx.Rngs(0)))
    graphdef, abstract = nnx.split(abstract_model, nnx.Param)
    checkpoints.check_fits(step, abstract, config.to_dict(), part="params")
    shardings = distributed.state_shardings(abstract, mesh, config.mesh.rules)
    abstract = distributed.with_shardings(abstract, shardings)
    return graphdef, checkpoints.params(step, abstract)


def error_scorer(
    config: ml_collections.ConfigDict, graphdef: nnx.GraphDef, mesh: Mesh
) -> inference.ErrorScorer:
    """The jitted error step of `graphdef` on `mesh`, with the config's evaluation batch and
    input settings."""
    return inference.ErrorScorer(
        graphdef,
        mesh,
        config.mesh.rules,
        batch_size=config.eval.batch_size,
        history=config.history,
        channels=config.data.channels,
        read_threads=config.data.read_threads,
    )


def score_settings(config: ml_collections.ConfigDict) -> scoring.ScoreSettings:
    """`config.score` (and whether the model scores object samples) as `ScoreSettings`."""
    return scoring.ScoreSettings(**config.score, object_samples=config.objects.samples)


def stored_normal_errors(checkpoints: Checkpoints, step: int) -> scoring.SplitErrors | None:
    """The training split's errors stored with `step`, or None (a run from before they were)."""
    arrays = checkpoints.normal_errors(step)
    return None if arrays is None else scoring.SplitErrors.from_arrays(arrays)


def store_normal_errors(
    checkpoints: Checkpoints,
    step: int,
    scorer: inference.ErrorScorer,
    params: nnx.State,
    dataset_dir: Path,
    *,
    samples: bool = False,
) -> scoring.SplitErrors:
    """Scores the training split of `dataset_dir` with the parameters of `step` (every process)
    and stores the errors with the checkpoint; returns them as `stored_normal_errors` would.
    A model of object `samples` stores the frames without errors (`inference.frames_only`)."""
    log.info("scoring the training split with step %d (stored with the checkpoint)", step)
    table = pipeline.open_prepared(dataset_dir, "train")
    if samples:
        errors = inference.frames_only(table, history=scorer.history, labels=False, masks=False)
    else:
        errors, _ = scorer.split_errors(params, table, labels=False, maps=False, desc="train")
    arrays = errors.to_arrays()
    checkpoints.save_normal_errors(step, arrays)
    store_background(checkpoints, step, dataset_dir, table)
    return scoring.SplitErrors.from_arrays(arrays)


def store_background(
    checkpoints: Checkpoints,
    step: int,
    dataset_dir: Path,
    table: pipeline.FrameTable | None = None,
) -> np.ndarray:
    """Stores the training split's median frame (`pipeline.median_frame`) of `dataset_dir`
    (or of its opened training split `table`) with `step`, and returns it."""
    table = pipeline.open_prepared(dataset_dir, "train") if table is None else table
    background = pipeline.median_frame(table, "frame")
    checkpoints.save_background(step, background)
    return background


def object_errors(
    scorer: inference.ErrorScorer,
    params: nnx.State,
    table: pipeline.FrameTable,
    objects: object_scores.SplitObjects,
    *,
    size: int,
    margin: float,
    maps: bool,
    features: bool = False,
    pseudo: str = "",
    errors: bool = True,
    progress: bool = True,
) -> scoring.SplitErrors:
    """The model errors of `objects` of `table` (rows = objects; their samples cut with
    `margin`, resized to `size`: `pipeline.object_crops`; `pseudo`: turned into that
    pseudo-anomaly, `pipeline.pseudo_samples`), with their maps when `maps` and their deep
    features when `features`; without `errors` the features alone (`split_errors`);
    `progress`: show the progress bar."""
    crops = pipeline.object_crops(
        table, objects.frame_position, objects.boxes, size=size, margin=margin
    )
    split, _ = scorer.split_errors(
        params,
        table,
        labels=False,
        maps=maps,
        desc=f"objects {table.split}" + (f" ({pseudo})" if pseudo else ""),
        objects=dataclasses.replace(crops, pseudo=pseudo),
        features=features,
        errors=errors,
        progress=progress,
    )
    return split


def training_object_errors(
    checkpoints: Checkpoints,
    step: int,
    scorer: inference.ErrorScorer,
    params: nnx.State,
    training_data: Callable[[], Path],
    *,
    size: int,
    margin: float,
    holdout: float,
    seed: int,
    features: bool = False,
) -> dict[str, np.ndarray]:
    """The training objects' errors stored with `step` (`object_scores.error_arrays`); when
    not stored yet, or stored without the deep `features` asked for (a run scored before
    they were), the training split's objects (`training_data()`: its prepared dataset) are
    scored with `params` (every process; samples as `object_errors` cuts them; errors and
    deep features in one pass) and stored with the videos held out of the model's training
    (`object_scores.held_out_videos(V, holdout, seed)`), errors already stored kept as they
    are."""
    arrays = checkpoints.object_errors(step)
    if arrays is None or (features and "features" not in arrays):
        table = pipeline.open_prepared(training_data(), "train")
        train = object_scores.read_objects(table)
        log.info("scoring the %d training objects with step %d", len(train.boxes), step)
        errors = object_errors(
            scorer, params, table, train, size=size, margin=margin, maps=False, features=True
        )
        held_out = object_scores.held_out_videos(len(table.video_lengths), holdout, seed)
        scored = object_scores.error_arrays(train, errors, held_out)
        arrays = scored if arrays is None else arrays | {"features": scored["features"]}
        checkpoints.save_object_errors(step, arrays)
    return arrays


def object_model(
    checkpoints: Checkpoints,
    step: int,
    settings: scoring.ScoreSettings,
    k: int,
    nearby: int,
    training_data: Callable[[], Path],
    training_errors: Callable[..., Mapping[str, np.ndarray]],
) -> object_scores.ObjectModel:
    """The banks of `settings.components` stored with `step` (k neighbours; `nearby` for the
    `faster` component); one not stored yet is fitted on the training split's objects
    (`training_data()`: its prepared dataset) and stored (every process). With object
    samples, the training objects' errors (`training_errors(features=...)`, e.g.
    `training_object_errors`) are the model's `attribution` and, when "error" is a
    component, its error component; a "deep" bank is fitted on their deep features."""
    banks, train, attribution = {}, None, None
    if settings.object_samples:
        arrays = training_errors(features=False)
        attribution = object_scores.ErrorComponent.from_arrays(
            arrays, settings.alpha, settings.calibration
        )
    for component in settings.components:
        if component == object_scores.ERROR:
            continue
        n = object_scores.neighbours(component, k, nearby)
        name = object_scores.bank_name(component, n, settings.calibration)
        arrays = checkpoints.object_bank(step, name)
        if arrays is None:
            if train is None:
                train = object_scores.read_objects(pipeline.open_prepared(training_data(), "train"))
            if object_scores.uses_deep(component) and train.deep is None:
                deep = np.asarray(training_errors(features=True)["features"], np.float32)
                train = dataclasses.replace(train, deep=deep)
            log.info("fitting the %s bank (k=%d) on %d objects", component, n, len(train.boxes))
            arrays = object_scores.fit_bank(train, component, n, settings.calibration).to_arrays()
            checkpoints.save_object_bank(step, name, arrays)
        banks[component] = object_scores.Bank.from_arrays(arrays)
    error = attribution if object_scores.ERROR in settings.components else None
    return object_scores.ObjectModel(banks, error, attribution)


def reference_frames(normal: scoring.SplitErrors, held_out: np.ndarray) -> np.ndarray:
    """`[N]` bool: the training frames (`normal`'s) that object scores are normalised,
    thresholded and chosen with: the scored frames of the videos `held_out` of the model's
    training (`object_scores.held_out_videos`), or every scored frame when none was."""
    if not len(held_out):
        return normal.scored
    return normal.scored & np.isin(normal.video, held_out)


@dataclasses.dataclass(frozen=True)
class ChoiceInputs:
    """What `component_choice.choose` reads of a run (its arguments of the same names):
    the training split's objects `train` (with `deep` for a model of object samples), the
    indices `picked` of those turned into pseudo-anomalies, the videos' `frame_sizes`, the
    normal frames `scored_frames`, and with object samples the training objects' errors
    `attribution` and the pseudo samples' `pseudo_errors(kind)`."""

    train: object_scores.SplitObjects
    picked: np.ndarray
    frame_sizes: np.ndarray
    scored_frames: np.ndarray
    attribution: object_scores.ErrorComponent | None
    pseudo_errors: Callable[[str], scoring.SplitErrors] | None


def choice_inputs(
    config: ml_collections.ConfigDict,
    scorer: inference.ErrorScorer,
    params: nnx.State,
    normal: scoring.SplitErrors,
    training_data: Callable[[], Path],
    training_errors: Callable[..., Mapping[str, np.ndarray]] | None,
) -> ChoiceInputs:
    """The pseudo objects and normal frames of the choice (`chosen_components`): with object
    samples (`training_errors`) drawn from the videos held out of the model's training."""
    o = config.objects
    table = pipeline.open_prepared(training_data(), "train")
    train = object_scores.read_objects(table)
    frame_number = table.frame_index[table.frame_ids[train.frame_position]]
    usable = component_choice.eligible(
        frame_number, table.video_lengths[train.video], config.history
    )
    attribution = pseudo_errors = None
    held_out = np.zeros(0, np.int64)
    if training_errors is not None:
        arrays = training_errors(features=True)
        rule = config.score.calibration
        attribution = object_scores.ErrorComponent.from_arrays(arrays, config.score.alpha, rule)
        train = dataclasses.replace(train, deep=np.asarray(arrays["features"], np.float32))
        held_out = attribution.held_out
    if len(held_out):  # Chosen on the videos the model never saw.
        usable &= np.isin(train.video, held_out)
    picked = component_choice.draw(usable, o.pseudo_objects, config.seed)
    if training_errors is not None:
        objects = train.take(picked)

        def pseudo_errors(kind: str) -> scoring.SplitErrors:
            return object_errors(
                scorer, params, table, objects, size=o.size, margin=o.margin, maps=False,
                features=True, pseudo=kind,
            )  # fmt: skip

    log.info(
        "choosing the components on %d of %d eligible training objects%s turned into "
        "pseudo-anomalies",
        len(picked),
        usable.sum(),
        " (of the videos held out of the model's training)" if len(held_out) else "",
    )
    return ChoiceInputs(
        train,
        picked,
        table.frame_sizes,
        reference_frames(normal, held_out),
        attribution,
        pseudo_errors,
    )


def chosen_components(
    checkpoints: Checkpoints,
    step: int,
    config: ml_collections.ConfigDict,
    inputs: Callable[[], ChoiceInputs],
) -> component_choice.Choice:
    """The components chosen without test labels (`component_choice.choose`) for the
    config's object settings, stored with `step`; when not stored yet, chosen on what
    `inputs()` gives (`choice_inputs`: the training split's objects, its normal frames and,
    with object samples, "error" and "deep" among the candidates and the model scoring the
    pseudo samples) and stored (every process chooses the same)."""
    o = config.objects
    kinds = tuple(o.pseudo_kinds)
    rule = config.score.calibration
    name = component_choice.stored_name(o.k, o.nearby, o.pseudo_objects, config.seed, kinds, rule)
    record = checkpoints.component_choice(step, name)
    if record is not None:
        return component_choice.Choice.from_json(record)
    made = inputs()
    choice = component_choice.choose(
        made.train,
        made.picked,
        frame_sizes=made.frame_sizes,
        scored_frames=made.scored_frames,
        k=o.k,
        nearby=o.nearby,
        seed=config.seed,
        attribution=made.attribution,
        pseudo_errors=made.pseudo_errors,
        kinds=kinds,
        rule=rule,
    )
    best = choice.table[0]
    log.info("chose components %s (mean pseudo-anomaly AUC %.4f)", best[0], best[2])
    checkpoints.save_component_choice(step, name, choice.to_json())
    return choice


NORMAL_STATISTICS = (
    "normal statistics (the training split's per-frame errors, which scores are normalised and "
    "thresholded with; runs trained before they were stored lack them)"
)
OBJECT_BANKS = (
    "object banks for config.score.components={components} with k={k} (the training objects' "
    "attributes, fitted the first time a run is scored with a component)"
)
BACKGROUND = (
    "background (the training split's median frame, which the explanations' foreground is "
    "measured against; runs trained before it was stored lack it)"
)
OBJECT_ERRORS = "training objects' errors (the error component's statistics)"
COMPONENT_CHOICE = (
    "choice of components for config.score.components=('auto',) (made on the training "
    "objects the first time a run is scored with those settings)"
)


def _training_data(
    config: ml_collections.ConfigDict, where: Path, workdir: Path, what: str
) -> Path:
    """The prepared dataset whose training split gives a checkpoint `what` it lacks
    (MissingNormalStatisticsError, with the commands that add them, when it is not there)."""
    data = config.data
    settings = config_lib.dataset_settings(config)
    path = builder.prepared_dir(data.root, data.dataset, settings)
    if builder.is_complete(path):
        return path
    prepare = builder.prepare_command(data.dataset, settings, data.root, data.source)
    raise MissingNormalStatisticsError(
        f"{where}: the checkpoint holds no {what}, and the training split they are computed "
        f"from is not prepared at {path}. Add them where the dataset is, with: {prepare} && "
        f"python -m jaxvad.evaluate --config=CONFIG --workdir={workdir} "
        f"--config.data.root={data.root} "
        "(the first command that loads the run with its dataset stores them)"
    )
