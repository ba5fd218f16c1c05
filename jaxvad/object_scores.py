"""Object scores: each object's attributes scored by their density among the training objects,
and a frame's score the maximum over its objects (AI-VAD's idea; DESIGN.md, "Objects").

An object (a box of `jaxvad.data.objects`, stored per frame in a dataset prepared with
`--objects`) has attribute groups:

- `velocity`: its magnitude-weighted histogram of flow orientation `[8]`, px/frame;
- `speed`: the histogram's sum, the object's mean speed (px/frame) `[1]`;
- `size`: log width and log height of its box `[2]`;
- `position`: its box's centre (x, y) in pixels `[2]`, for perspective;
- `deep` (object samples only): the model's pooled latent of the object's sample `[D]`
  (`VadModel.features`: for the predictor the fused tokens' mean, for motion_mae and mdsf the
  deepest encoder stage's mean over space), computed in the pass that gives its model error
  (`SplitObjects.deep`; the training objects' are stored with their errors).

A component (an entry of `config.score.components`) is one group, or groups joined by "+"
("speed+size") whose features are concatenated, so their joint density is scored. Per
component:

1. the deep group's features are whitened (`whitening`: PCA on the training objects' deep
   features, so that their covariance becomes the identity; the other groups are not), then
   every feature is divided by its standard deviation over the training objects;
2. an object's distance is the mean Euclidean distance to its k nearest training objects
   (`jaxvad.knn`; the memory bank is every training object);
3. calibration (`config.score.calibration`, `calibration`): z = (d − shift) / spread, from
   the training objects' own distances, each computed leave-one-video-out (its own video's
   objects are not in its bank), so that a training object is scored as a test object is.
   "zscore": shift and spread are their mean and standard deviation; "range" (AI-VAD's
   calibration): their minimum, and the distance from it to their 99.9th percentile, so a
   component whose training values have a long tail weighs less in the sum.

One more component, `faster`, is not a density: it is how much faster an object moves than
the training objects near its place, the statistic of the explanation's sentence ("99.8 % of
training objects near this place move slower"). Its raw value is (s − μ) / σ of the object's
speed s against the speeds of the `nearby` training objects whose box centres are nearest to
its own (pixels; `config.objects.nearby`), one-sided by design: an object slower than its
neighbours scores low. It is calibrated as the densities are, leave-one-video-out. Perspective
is why it is conditioned on place: the same walker moves fewer pixels far from the camera.

With object samples (`config.objects.samples`: the model trained on objects' crops) the
component "error" is each object's model error (`ErrorComponent`): its E_rgb and E_flow
z-scored with the training objects' mean and standard deviation, summed as a frame's are
(n(E_rgb) + α·n(E_flow), `jaxvad.scoring`), then calibrated like a bank's distance over the
training objects. Its statistics are those of the training videos held out of the
model's training (`config.objects.holdout`, `held_out_videos`): a model's errors on the videos
it was trained on are lower than on any other normal video, so calibrated on them every new
object's error would look high, and the sum of components would lean on "error". A run without
held-out videos calibrates on every training object, in-sample, as the frames' "train"
normalisation is.
An object of a frame t ≤ T has no full history, hence no model error and no deep feature: its
"error" and "deep" components and score are NaN (it is left out of the deep bank), and its
frame (unscored, as every frame t ≤ T is) takes the floor.

An object's score is the sum of its components' z; a frame's score is the maximum of its
objects' scores, and a frame with no object gets the training objects' minimum (`floor`).
The banks and the training objects' errors (with their deep features) are stored with the
checkpoint (`jaxvad.detector`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from jaxvad import knn, scoring
from jaxvad.data import pipeline

DEEP = "deep"  # The group of the model's deep feature of each object's sample.
GROUPS = ("velocity", "speed", "size", "position", DEEP)
ERROR = "error"  # The component of each object's model error (object samples).
DETAIL = 0.5  # Calibrated units: the most an object's error map moves a pixel of its box.
_LEAST_SPREAD = 1e-3  # px/frame: the least σ of a place's speeds (identical speeds).
# `whitening`: eigenvalues of the deep features' covariance floored at this share of their mean.
EIGEN_FLOOR = 1e-6
FASTER = "faster"  # The component that compares an object's speed with its place's objects'.
CALIBRATIONS = ("zscore", "range")  # config.score.calibration: see the module docstring.
ZSCORE = CALIBRATIONS[0]  # The default calibration, and the one stored under plain names.
RANGE_TOP = 99.9  # "range": the percentile of the training values that calibrates to 1.
OBJECT_FIELDS = ("boxes", "tracks", "velocity")


@dataclasses.dataclass(frozen=True)
class SplitObjects:
    """The objects of a split, M of them, in (video, frame, box) order, for the N frames of
    the split's `FrameTable` order: `frame_position` `[M]` int64 (the object's frame, 0-based
    into those N), `video` `[M]` int32, `boxes` `[M, 4]` float32, `tracks` `[M]` int32,
    `velocity` `[M, B]` float32; `num_frames` N; `deep` `[M, D]` float32 or None: the model's
    deep feature of each object's sample (`inference.ErrorScorer.split_errors(features=True)`),
    which the `DEEP` group needs."""

    frame_position: np.ndarray
    video: np.ndarray
    boxes: np.ndarray
    tracks: np.ndarray
    velocity: np.ndarray
    num_frames: int
    deep: np.ndarray | None = None

    def counts(self) -> np.ndarray:
        """`[N]` objects per frame."""
        return np.bincount(self.frame_position, minlength=self.num_frames)

    def take(self, index: np.ndarray) -> SplitObjects:
        """The objects at `index` `[M']`, on the same frames."""
        return dataclasses.replace(
            self,
            frame_position=self.frame_position[index],
            video=self.video[index],
            boxes=self.boxes[index],
            tracks=self.tracks[index],
            velocity=self.velocity[index],
            deep=None if self.deep is None else self.deep[index],
        )

    @classmethod
    def from_frames(
        cls,
        boxes: Sequence[np.ndarray],
        tracks: Sequence[np.ndarray],
        velocity: Sequence[np.ndarray],
        video_lengths: Sequence[int],
    ) -> SplitObjects:
        """The objects of per-frame arrays (`[K, 4]`, `[K]`, `[K, B]`, frames in video order)
        of videos with `video_lengths` frames each."""
        counts = np.array([len(b) for b in boxes], np.int64)
        videos = np.repeat(np.arange(len(video_lengths)), video_lengths)
        return cls(
            frame_position=np.repeat(np.arange(len(boxes)), counts),
            video=np.repeat(videos, counts).astype(np.int32),
            boxes=np.concatenate(boxes).reshape(-1, 4).astype(np.float32),
            tracks=np.concatenate(tracks).astype(np.int32),
            velocity=np.concatenate(velocity).astype(np.float32),
            num_frames=len(boxes),
        )


def held_out_videos(
    num_videos: int, fraction: float, seed: int, *, field: str = "objects.holdout"
) -> np.ndarray:
    """`[H]` sorted indices of the training videos held out of the model's training
    (`config.objects.holdout`, or the config `field` named, = `fraction`): round(fraction · V)
    of the `num_videos`, at least one, drawn with `seed`; none when `fraction` is 0. ValueError
    when no video would be left to train on."""
    if fraction <= 0:
        return np.zeros(0, np.int64)
    count = max(1, round(fraction * num_videos))
    if count >= num_videos:
        raise ValueError(
            f"{field}={fraction} holds out {count} of {num_videos} training videos: "
            "none is left to train the model on (set it to 0 or lower)"
        )
    return np.sort(np.random.default_rng(seed).choice(num_videos, count, replace=False))


def read_objects(table: pipeline.FrameTable) -> SplitObjects:
    """Every frame's objects of a split prepared with `--objects` (ValueError otherwise)."""
    first = table.source[int(table.frame_ids[0])]
    if "boxes" not in first:
        raise ValueError(
            f"{table.name}: prepared without objects; prepare it with --objects=auto "
            "(or mot:DIR) and set config.data.objects to match"
        )
    per_frame: dict[str, list[np.ndarray]] = {key: [] for key in OBJECT_FIELDS}
    for record_id in table.frame_ids:
        record = table.source[int(record_id)]
        for key in OBJECT_FIELDS:
            per_frame[key].append(np.asarray(record[key]))
    return SplitObjects.from_frames(**per_frame, video_lengths=table.video_lengths)


def group_features(objects: SplitObjects, group: str) -> np.ndarray:
    """`[M, D]` float64 features of one attribute group (see the module docstring)."""
    boxes = objects.boxes.astype(np.float64)
    if group == "velocity":
        return objects.velocity.astype(np.float64)
    if group == "speed":
        return speeds(objects)[:, None]
    if group == "size":
        return np.log(np.maximum(boxes[:, 2:] - boxes[:, :2], 1.0))
    if group == "position":
        return (boxes[:, :2] + boxes[:, 2:]) / 2
    if group == DEEP:
        if objects.deep is None:
            raise ValueError("the deep group needs the model's features of the objects' samples")
        return objects.deep.astype(np.float64)
    raise ValueError(f"unknown attribute group {group!r}: one of {GROUPS}")


ATTRIBUTES = ("speed", "width", "height", "x", "y")  # What an explanation says of an object.


def attributes(objects: SplitObjects) -> np.ndarray:
    """`[M, 5]` float64 per object its `ATTRIBUTES`: mean speed (px/frame), box width and
    height (px), box centre x and y (px), all at the original resolution."""
    boxes = objects.boxes.astype(np.float64)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    return np.column_stack([speeds(objects), boxes[:, 2:] - boxes[:, :2], centre])


def component_groups(component: str) -> list[str]:
    """The groups of a component name ("speed+size" → ["speed", "size"]); ValueError when one
    is not a group. `FASTER` has none (see the module docstring)."""
    if component == FASTER:
        return []
    groups = component.split("+")
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or len(set(groups)) != len(groups):
        raise ValueError(
            f"component {component!r}: {FASTER!r}, or groups joined by '+', each once, from "
            f"{GROUPS}"
        )
    return groups


def uses_deep(component: str) -> bool:
    """Whether a component (an object one, or `ERROR`) reads the model's deep features."""
    return component not in (ERROR, FASTER) and DEEP in component_groups(component)


def features(objects: SplitObjects, component: str) -> np.ndarray:
    """`[M, D]` the concatenated features of a component's groups; for `FASTER` `[M, 3]` the
    box centre (x, y) and the speed."""
    if component == FASTER:
        return np.column_stack([group_features(objects, "position"), speeds(objects)])
    return np.concatenate([group_features(objects, g) for g in component_groups(component)], 1)


def whitening(x: np.ndarray) -> np.ndarray:
    """`[D, D]` float64 W whitening the rows of `x` `[M, D]`: the covariance of x W is the
    identity (PCA whitening: the covariance's eigenvectors over the square roots of their
    eigenvalues, floored at `EIGEN_FLOOR` × their mean, so directions without spread are not
    blown up). Distances between whitened rows are Mahalanobis distances, the same whatever
    invertible linear map the features went through; the model's pooled latents have no
    scale of their own, and a few directions of large spread would otherwise decide every
    nearest neighbour."""
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False))
    values = np.maximum(values, EIGEN_FLOOR * values.mean())
    return vectors / np.sqrt(values)


def deep_whitening(objects: SplitObjects, component: str, usable: np.ndarray) -> np.ndarray:
    """`[D, D]` the linear map of a component's features (`features`) that whitens its deep
    group's columns (`whitening` over the `usable` objects `[M]` bool) and keeps the others."""
    groups = component_groups(component)
    parts = [group_features(objects, g) for g in groups]
    widths = [part.shape[1] for part in parts]
    at = groups.index(DEEP)
    deep = slice(sum(widths[:at]), sum(widths[: at + 1]))
    matrix = np.eye(sum(widths))
    matrix[deep, deep] = whitening(parts[at][usable])
    return matrix


def calibration(values: np.ndarray, rule: str) -> tuple[float, float]:
    """(shift, spread) of the calibration z = (d − shift) / spread, by `rule` (one of
    `CALIBRATIONS`; the module docstring) from the training objects' finite values `values`
    `[M]`; a spread of 0 becomes 1."""
    if rule == ZSCORE:
        shift, spread = float(values.mean()), float(values.std())
    elif rule == "range":
        shift = float(values.min())
        spread = float(np.percentile(values, RANGE_TOP)) - shift
    else:
        raise ValueError(f"unknown calibration {rule!r}: one of {CALIBRATIONS}")
    return shift, spread if spread > 0 else 1.0


def speeds(objects: SplitObjects) -> np.ndarray:
    """`[M]` float64 each object's mean speed, px/frame (its velocity histogram's sum)."""
    return objects.velocity.sum(axis=1, dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class Bank:
    """One component's memory bank: the training objects' scaled features `bank` `[M, D]`
    float32, the per-feature `scale` `[D]`, k, the calibration `shift`, `spread`
    (`calibration`) of the training objects' leave-one-video-out distances, and those
    objects' calibrated scores
    `train_scores` `[M]` and frames `train_frame` `[M]` (positions among the training split's
    `num_train_frames` frames), and their `train_attributes` `[M, 5]` (`attributes`).
    `faster`: the bank of the `FASTER` component (rows: centre x, y and speed, unscaled; k
    is its `nearby`). `whiten` `[D, D]`: for a component with the deep group, the linear map
    (`deep_whitening`) applied to the features before the scale; None for the others."""

    bank: np.ndarray
    scale: np.ndarray
    k: int
    shift: float
    spread: float
    train_scores: np.ndarray
    train_frame: np.ndarray
    num_train_frames: int
    train_attributes: np.ndarray
    faster: bool = False
    whiten: np.ndarray | None = None

    def distances(
        self, x: np.ndarray, groups: np.ndarray | None = None, bank_groups: np.ndarray | None = None
    ) -> np.ndarray:
        """`[Q]` raw values of features `x` `[Q, D]` (unscaled): the mean distance to the k
        nearest rows, or for `faster` (s − μ) / σ of each speed against the speeds of the k
        rows nearest its place (rows of the query's own group left out, as in
        `knn.knn_distances`)."""
        if not self.faster:
            x = x if self.whiten is None else x @ self.whiten
            d, _ = knn.knn_distances(
                x / self.scale, self.bank, self.k, query_groups=groups, bank_groups=bank_groups
            )
            return d.mean(axis=1)
        d, index = knn.knn_distances(
            x[:, :2], self.bank[:, :2], self.k, query_groups=groups, bank_groups=bank_groups
        )
        near = self.bank[index, 2].astype(np.float64)  # [Q, k] the neighbours' speeds.
        value = (x[:, 2] - near.mean(axis=1)) / np.maximum(near.std(axis=1), _LEAST_SPREAD)
        return np.where(np.isfinite(d).all(axis=1), value, np.inf)  # Fewer than k neighbours.

    def scores(
        self, x: np.ndarray, groups: np.ndarray | None = None, bank_groups: np.ndarray | None = None
    ) -> np.ndarray:
        """`[Q]` calibrated scores (d − shift) / spread of features `x` `[Q, D]`; NaN for a row
        without features (NaN: `fit_bank`). `groups` `[Q]`, `bank_groups` (one per bank row):
        a query's own group's rows are left out (`distances`)."""
        d = np.full(len(x), np.nan)
        usable = np.isfinite(x).all(axis=1)
        d[usable] = self.distances(
            x[usable], None if groups is None else groups[usable], bank_groups
        )
        return (d - self.shift) / self.spread

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "bank": self.bank,
            "scale": self.scale,
            "calibration": np.array([self.k, self.shift, self.spread, self.num_train_frames]),
            "faster": np.array(self.faster),
            "train_scores": self.train_scores,
            "train_frame": self.train_frame,
            "train_attributes": self.train_attributes,
        } | ({} if self.whiten is None else {"whiten": self.whiten})

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Bank:
        k, shift, spread, num_train_frames = np.asarray(arrays["calibration"], np.float64)
        return cls(
            np.asarray(arrays["bank"], np.float32),
            np.asarray(arrays["scale"], np.float64),
            int(k),
            float(shift),
            float(spread),
            np.asarray(arrays["train_scores"], np.float64),
            np.asarray(arrays["train_frame"], np.int64),
            int(num_train_frames),
            np.asarray(arrays["train_attributes"], np.float64),
            bool(arrays["faster"]) if "faster" in arrays else False,  # Banks of stop 22.
            np.asarray(arrays["whiten"], np.float64) if "whiten" in arrays else None,
        )


def fit_bank(train: SplitObjects, component: str, k: int, rule: str = ZSCORE) -> Bank:
    """The bank of `component` over the training objects (from at least two videos); k: the
    neighbours (for `FASTER`, its `nearby`); `rule`: its calibration (`calibration`)."""
    if len(np.unique(train.video)) < 2:
        raise ValueError("calibrating object scores needs training objects from ≥ 2 videos")
    x = features(train, component)
    # An object without features (NaN: the deep feature of an object of a frame t ≤ T, which
    # has no full history) is left out of the bank and scores NaN, as its error does.
    usable = np.isfinite(x).all(axis=1)
    whiten = deep_whitening(train, component, usable) if uses_deep(component) else None
    x, video = x[usable], train.video[usable]
    faster = component == FASTER
    projected = x if whiten is None else x @ whiten
    scale = np.ones(x.shape[1]) if faster else projected.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    bank = Bank(
        (projected / scale).astype(np.float32),
        scale,
        k,
        0.0,
        1.0,
        np.zeros(0),
        train.frame_position,
        train.num_frames,
        attributes(train),
        faster,
        whiten,
    )
    d = np.full(len(usable), np.nan)
    d[usable] = bank.distances(x, video, video)
    finite = np.isfinite(d)  # A video's objects may have fewer than k others (tiny sets).
    shift, spread = calibration(d[finite], rule)
    return dataclasses.replace(bank, shift=shift, spread=spread, train_scores=(d - shift) / spread)


def neighbours(component: str, k: int, nearby: int) -> int:
    """The neighbours a component's bank uses: `nearby` for `FASTER`, else k."""
    return nearby if component == FASTER else k


def calibrated_name(name: str, rule: str) -> str:
    """The stored `name` of something fitted with calibration `rule`: unchanged for "zscore"
    (what banks and choices stored before the rule are named), else suffixed with the rule."""
    return name if rule == ZSCORE else f"{name}_{rule}"


def bank_name(component: str, k: int, rule: str = ZSCORE) -> str:
    """The name a component's bank is stored under (`Checkpoints.save_object_bank`), with its
    calibration `rule` (`calibrated_name`); a component with the deep group is marked
    whitened (`whitening`), so that a bank stored before deep features were whitened is
    fitted again."""
    whitened = "_whitened" if uses_deep(component) else ""
    return calibrated_name(f"{component.replace('+', '_')}_k{k}{whitened}", rule)


@dataclasses.dataclass(frozen=True)
class ErrorComponent:
    """The "error" component (see the module docstring) of a model of object samples.

    `train`: the training objects' errors, one row per object (`scoring.SplitErrors`, as
    `ErrorScorer.split_errors(objects=...)` gives them), `alpha` the flow term's weight,
    `shift`, `spread` the calibration (`calibration`); and, as a `Bank` has them,
    `train_scores` `[M]` (NaN for objects of frames t ≤ T), `train_frame` `[M]`,
    `num_train_frames`, `train_attributes` `[M, 5]`; `held_out` `[H]` the training videos
    the model was not trained on (`train`, `shift` and `spread` are then their objects'
    alone; empty: every training object's)."""

    train: scoring.SplitErrors
    alpha: float
    shift: float
    spread: float
    train_scores: np.ndarray
    train_frame: np.ndarray
    num_train_frames: int
    train_attributes: np.ndarray
    held_out: np.ndarray

    def _summed(self, errors: scoring.SplitErrors) -> scoring.Scores:
        """e = n(E_rgb) + α·n(E_flow) `[M]` of objects' `errors` (NaN where not scored)."""
        settings = scoring.ScoreSettings("error", self.alpha, "train", 0.0, 1.0)
        return scoring.frame_scores(errors, settings, self.train)

    def normalisation(self, count: int) -> dict[str, scoring.Affine]:
        """n(E) = (E − shift) / scale of `count` objects' E_rgb and E_flow (`[count]` each):
        the training objects' mean and standard deviation, as `scores` and `maps` apply it."""
        train = self.train
        return {
            c: scoring.normaliser(np.zeros(count), train, "train", getattr(train, c)[train.scored])
            for c in scoring.COMPONENTS
        }

    def scores(self, errors: scoring.SplitErrors) -> np.ndarray:
        """`[M]` calibrated scores of objects' `errors` (rows = objects; NaN where not scored)."""
        return (self._summed(errors).score - self.shift) / self.spread

    def maps(self, errors: scoring.SplitErrors) -> np.ndarray:
        """`[M, s, s]` float32 calibrated pixel maps of objects' `errors` (with maps): the
        error maps through the same arithmetic (`scoring.pixel_maps`), so a map's mean is
        its object's score."""
        affine = self._summed(errors).error_affine
        maps = scoring.pixel_maps(
            {c: errors.maps[c] for c in scoring.COMPONENTS},
            {c: affine[c].shift for c in scoring.COMPONENTS},
            {c: affine[c].scale for c in scoring.COMPONENTS},
            self.alpha,
        )
        return (maps - np.float32(self.shift)) / np.float32(self.spread)

    def detail(self, errors: scoring.SplitErrors) -> np.ndarray:
        """`[M, s, s]` float32 the pattern each object's error map adds to its score over its
        box: its calibrated map (`maps`) less the map's mean, scaled so that its largest
        deviation is `DETAIL` (a map without deviation adds 0). Unscaled, a map's pixels
        spread far more than the objects' scores, and its specks, not its boxes, would rank
        a frame's pixels; bounded, the boxes keep their objects' order and the map places
        the anomaly within its box."""
        return scaled_detail(self.maps(errors))

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], alpha: float, rule: str = ZSCORE
    ) -> ErrorComponent:
        """The component of the training objects' errors stored as `error_arrays` gives
        them, with weight `alpha`, calibrated by `rule` (`calibration`) on the held-out
        videos' objects when the model had some (the module docstring)."""
        errors = scoring.SplitErrors.from_arrays(arrays)
        held_out = np.asarray(arrays.get("held_out_videos", np.zeros(0)), np.int64)
        everyone = np.full(len(errors.video), True)
        reference = np.isin(errors.video, held_out) if len(held_out) else everyone
        fields = ("video", "frame", "scored", "rgb", "flow")
        train = scoring.SplitErrors.from_arrays(
            {k: np.asarray(arrays[k])[reference] for k in fields}
        )
        component = cls(
            train,
            alpha,
            0.0,
            1.0,
            np.zeros(0),
            np.asarray(arrays["object_frame"], np.int64),
            int(arrays["num_frames"]),
            np.asarray(arrays["attributes"], np.float64),
            held_out,
        )
        raw = component.scores(errors)  # Through shift 0, spread 1: not calibrated yet.
        shift, spread = calibration(raw[errors.scored & reference], rule)
        train_scores = (raw - shift) / spread
        return dataclasses.replace(component, shift=shift, spread=spread, train_scores=train_scores)


def error_arrays(
    train: SplitObjects, errors: scoring.SplitErrors, held_out: np.ndarray
) -> dict[str, np.ndarray]:
    """What a checkpoint stores of the training objects' `errors` (rows = the objects of
    `train`, in order): the errors, the objects' frames and attributes, the videos `held_out`
    of the model's training (`held_out_videos`), and their deep `features` `[M, D]` when
    `errors` has them (what `DEEP` banks are fitted from)."""
    if len(errors.video) != len(train.boxes):
        raise ValueError(f"{len(errors.video)} rows of errors for {len(train.boxes)} objects")
    arrays = errors.to_arrays() | {
        "object_frame": train.frame_position,
        "num_frames": np.array(train.num_frames),
        "attributes": attributes(train),
        "held_out_videos": np.asarray(held_out, np.int64),
    }
    return arrays if errors.features is None else arrays | {"features": errors.features}


@dataclasses.dataclass(frozen=True)
class ObjectModel:
    """The banks of a score's components and, with object samples and "error" among them,
    the `error` component; `floor`: the least training object score (finite ones: a training
    object with fewer than k neighbours outside its video, or of a frame t ≤ T for the error
    component, has none). `attribution`: with object samples, the training objects' errors
    whether or not "error" is a component, which explanations compare a crop's E_rgb and
    E_flow with (appearance or motion)."""

    banks: dict[str, Bank]
    error: ErrorComponent | None = None
    attribution: ErrorComponent | None = None

    @property
    def deep(self) -> bool:
        """Whether a component reads the objects' deep features (`SplitObjects.deep`)."""
        return any(uses_deep(name) for name in self.banks)

    @property
    def held_out(self) -> np.ndarray:
        """`[H]` the training videos held out of the model's training (none without object
        samples or for a run trained on every video)."""
        return np.zeros(0, np.int64) if self.attribution is None else self.attribution.held_out

    @property
    def _parts(self) -> list[Bank | ErrorComponent]:
        return [*self.banks.values(), *([] if self.error is None else [self.error])]

    @property
    def training_objects(self) -> int:
        return len(self._parts[0].train_frame)

    @property
    def _train_total(self) -> np.ndarray:
        return sum(part.train_scores for part in self._parts)

    @property
    def floor(self) -> float:
        return least_score(self._train_total)

    def slower_share(self, objects: SplitObjects, nearby: int) -> np.ndarray:
        """`[M]` per object the share of the `nearby` training objects closest to its place
        (box centre) that move slower than it."""
        train = self._parts[0].train_attributes
        mine = attributes(objects)
        nearby = min(nearby, len(train))
        _, index = knn.knn_distances(mine[:, 3:], train[:, 3:], nearby)
        return (train[index, 0] < mine[:, :1]).mean(axis=1)

    def train_frame_scores(self) -> np.ndarray:
        """`[N]` the training frames' scores, each object scored leave-one-video-out."""
        part = self._parts[0]
        total = np.where(np.isfinite(self._train_total), self._train_total, self.floor)
        return frame_maximum(total, part.train_frame, part.num_train_frames, self.floor)


@dataclasses.dataclass(frozen=True)
class ObjectScores:
    """The scored `objects`; per object `score` `[M]` and each component's calibrated score
    `components[name]` `[M]`; per frame `frame` `[N]` (the maximum over its objects, `floor`
    without one) and `has_objects` `[N]` bool; `detail` `[M, s, s]` float32 or None: per
    object the error component's pattern over its crop (`ErrorComponent.detail`), where the objects'
    error maps were computed."""

    objects: SplitObjects
    score: np.ndarray
    components: dict[str, np.ndarray]
    frame: np.ndarray
    has_objects: np.ndarray
    detail: np.ndarray | None = None


def least_score(scores: np.ndarray) -> float:
    """The least finite of `scores` `[M]` (0 when none is): the training objects' floor."""
    finite = np.isfinite(scores)
    return float(scores[finite].min()) if finite.any() else 0.0


def frame_maximum(
    scores: np.ndarray, frame_position: np.ndarray, num_frames: int, floor: float
) -> np.ndarray:
    """`[N]` per frame the maximum of its objects' `scores` `[M]` (objects' frames
    `frame_position` `[M]`), `floor` for a frame without objects (objects without a score,
    NaN, are left out)."""
    frame = np.full(num_frames, -np.inf)
    np.fmax.at(frame, frame_position, scores)
    return np.where(np.isfinite(frame), frame, floor)


def score(
    objects: SplitObjects, model: ObjectModel, errors: scoring.SplitErrors | None = None
) -> ObjectScores:
    """The object and frame scores of a split's objects (with `deep` for components of the
    `DEEP` group); `errors`: their model errors (rows = `objects`,
    `ErrorScorer.split_errors(objects=...)`; needed for the error component; with maps,
    `detail` is computed)."""
    components = {name: bank.scores(features(objects, name)) for name, bank in model.banks.items()}
    detail = None
    if model.error is not None:
        if errors is None or len(errors.video) != len(objects.boxes):
            raise ValueError("the error component scores objects from their model errors")
        error = model.error.scores(errors)
        components = {ERROR: error, **components}
        if errors.maps is not None:
            detail = model.error.detail(errors)
    total = sum(components.values(), np.zeros(len(objects.boxes)))
    frame = frame_maximum(total, objects.frame_position, objects.num_frames, model.floor)
    return ObjectScores(objects, total, components, frame, objects.counts() > 0, detail)


def scaled_detail(maps: np.ndarray) -> np.ndarray:
    """`[M, s, s]` float32: each map of `maps` `[M, s, s]` less its mean, scaled so that its
    largest deviation is `DETAIL` (a map without deviation gives 0): the pattern an object's
    map adds to its score over its box (`box_maps`)."""
    deviation = maps - maps.mean(axis=(1, 2), keepdims=True)
    largest = np.abs(deviation).max(axis=(1, 2), keepdims=True)
    scale = np.where(largest > 0, DETAIL / np.where(largest > 0, largest, 1.0), 0.0)
    return (deviation * scale).astype(np.float32)


def box_maps(
    objects: SplitObjects,
    scores: np.ndarray,
    floor: float,
    frame_sizes: np.ndarray,
    size: int,
    detail: np.ndarray | None = None,
    margin: float = 0.0,
) -> np.ndarray:
    """Pixel anomaly maps `[N, S, S]` float32: each object's score over its box (the larger
    where boxes overlap), `floor` elsewhere.

    Args:
      objects: the split's objects; scores: `[M]` their scores.
      floor: the value of pixels outside every box.
      frame_sizes: `[V, 2]` each video's original (height, width), the boxes' pixels.
      size: S, the side of the stored frames the maps are for.
      detail: `[M, s, s]` or None: per object a pattern added to its score, resized
        (bilinear) onto its box (`ObjectScores.detail`: the model's error map of its crop).
      margin: the boxes are grown by it first, as the crops were (`pipeline.stored_boxes`).
    """
    maps = np.full((objects.num_frames, size, size), floor, np.float32)
    regions = pipeline.stored_boxes(objects.boxes, frame_sizes[objects.video], size, margin)
    low, high = np.maximum(regions[:, :2], 0), np.minimum(regions[:, 2:], size)
    for m, frame in enumerate(objects.frame_position):
        region = maps[frame, low[m, 1] : high[m, 1], low[m, 0] : high[m, 0]]
        value = np.float32(scores[m])
        if detail is not None:
            value = value + pipeline.uncrop(detail[m], regions[m], size)[1]
        np.maximum(region, value, out=region)
    return maps
