"""Choosing an object score's components without test labels: pseudo-anomalies of the
training objects (`config.score.components = ("auto",)`, the object configs' default).

No test label may pick a default. What is known without them is how a normal object would
look were it abnormal in one of the ways an explanation names (speed, direction, size, place,
appearance), so each of the `KINDS` turns a training object into a pseudo-anomaly, changing
everything every component reads of it (its box, its velocity histogram and, for a model of
object samples, its sample; `jaxvad.data.pipeline.pseudo_samples`):

- `skip` (twice as fast; the motion irregularity of Georgescu et al.'s SSMTL): the velocity
  histogram ×2, the sample every second past frame with two-frame flows;
- `reverse` (played backwards; SSMTL's arrow of time): the histogram turned by half a turn
  (the opposite direction), the sample's frames in reverse order with negated flows;
- `grown`: the box's sides ×1.5 about its centre; the sample unchanged (a crop is resized to
  a fixed side, so the same object seen larger gives the same sample);
- `moved`: the box moved, same size, to a place drawn uniformly in the frame; sample unchanged;
- `shuffled` (appearance; SSMTL's jigsaw): the sample's quadrants swapped diagonally; box and
  histogram unchanged.

`count` training objects (`config.objects.pseudo_objects`), drawn with the run's seed among
those whose video holds every frame the pseudo samples read, become each kind. A pseudo
object is scored as a test object is, its own video left out of every bank (as the
calibration leaves it out), and it replaces its original in its frame, whose other objects
keep their leave-one-video-out scores; the frame's score is the maximum, as in evaluation.
Per candidate and kind: the ROC-AUC of these frames against the training frames (their
leave-one-video-out scores, `ObjectModel.train_frame_scores`, frames t > T). A candidate's
value is the mean over the kinds; the chosen one has the highest, the one with fewer
components on a tie. Candidates: every set of one to `MOST` of the single components
(`CANDIDATES`; "error" and "deep" only with object samples); groups joined by "+" are not.

With videos held out of the model's training (`config.objects.holdout`), the pseudo objects
are drawn from those videos and their frames are the normal ones (`detector.chosen_components`),
so the model's errors and deep features of both are out-of-sample, as a test video's are.
Without them the training objects' errors are in-sample while the pseudo samples' are not,
which lowers the normal errors and favours "error" and "deep".

What this does not remove: the kinds and their strengths are a prior (written here, fixed
before the choice was run on real data).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
from collections.abc import Callable, Sequence

import numpy as np

from jaxvad import metrics, object_scores, scoring

AUTO = "auto"  # config.score.components = (AUTO,): the components are chosen here.
KINDS = ("skip", "reverse", "grown", "moved", "shuffled")
SAMPLE_KINDS = ("skip", "reverse", "shuffled")  # The kinds that change an object's sample.
CANDIDATES = ("error", "velocity", "speed", "size", "position", "deep", "faster")
MOST = 3  # Components per candidate, at most.
SPEEDUP = 2.0  # `skip`: frames skipped, so motion this many times as fast.
GROWTH = 1.5  # `grown`: the box's sides this many times as long.
# How the deep component reads the model's latents (in the stored choice's name: a choice made
# before they were whitened, `object_scores.whitening`, is made again).
DEEP_FEATURES = "whitened"
# How a candidate's calibrated components make an object's score. "sum" is the object score
# (`object_scores.score`); "max" (an object is as unusual as its most unusual fact) is only
# measured beside it (`jaxvad.bench.choice`), not a setting.
COMBINE: dict[str, Callable[[list[np.ndarray]], np.ndarray]] = {
    "sum": lambda parts: sum(parts),
    "max": lambda parts: functools.reduce(np.fmax, parts),
}


def pseudo_objects(
    objects: object_scores.SplitObjects, kind: str, frame_sizes: np.ndarray, seed: int
) -> object_scores.SplitObjects:
    """The objects turned into pseudo-anomalies of `kind` (the module docstring), their
    attributes only (`deep`: unchanged; a model's features of changed samples come from its
    pass over them). `frame_sizes` `[V, 2]`: each video's original (height, width)."""
    if kind not in KINDS:
        raise ValueError(f"unknown pseudo-anomaly {kind!r}: one of {KINDS}")
    boxes = objects.boxes.astype(np.float64)
    centre, side = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
    velocity = objects.velocity
    if kind == "skip":
        velocity = velocity * SPEEDUP
    elif kind == "reverse":
        velocity = np.roll(velocity, velocity.shape[1] // 2, axis=1)  # Bins of 2π / B.
    elif kind == "grown":
        side = side * GROWTH
    elif kind == "moved":
        size = frame_sizes[objects.video][:, ::-1].astype(np.float64)  # (width, height)
        room = np.maximum(size - side, 0.0)
        centre = side / 2 + np.random.default_rng(seed).uniform(size=side.shape) * room
    boxes = np.concatenate([centre - side / 2, centre + side / 2], 1).astype(np.float32)
    return dataclasses.replace(objects, boxes=boxes, velocity=velocity.astype(np.float32))


def singles(samples: bool) -> list[str]:
    """The components of `CANDIDATES` a run can score ("error" and "deep" need a model of
    object `samples`)."""
    return [c for c in CANDIDATES if samples or c not in (object_scores.ERROR, object_scores.DEEP)]


def candidates(components: Sequence[str]) -> list[tuple[str, ...]]:
    """Every set of 1 to `MOST` of `components`, in their order."""
    return [combo for n in range(1, MOST + 1) for combo in itertools.combinations(components, n)]


def eligible(frame_number: np.ndarray, video_length: np.ndarray, history: int) -> np.ndarray:
    """`[M]` bool: the objects whose frame t (`frame_number`, 1-based) of a video of
    `video_length` frames has every frame the pseudo samples read (t > 2T, t + T ≤ length)."""
    return (frame_number > 2 * history) & (frame_number + history <= video_length)


def _others_maximum(
    total: np.ndarray, frame: np.ndarray, num_frames: int, which: np.ndarray
) -> np.ndarray:
    """`[len(which)]` per object `which` the maximum score (`total` `[M]`, NaN: none) of the
    other objects of its frame (−inf when it is alone)."""
    value = np.where(np.isfinite(total), total, -np.inf)
    order = np.lexsort((-value, frame))
    first = np.full(num_frames, -1)
    second = np.full(num_frames, -1)
    starts = np.r_[True, frame[order][1:] != frame[order][:-1]]
    first[frame[order][starts]] = order[starts]
    follows = np.r_[False, starts[:-1]] & ~starts  # The second of each frame.
    second[frame[order][follows]] = order[follows]
    f = frame[which]
    other = np.where(first[f] == which, second[f], first[f])
    return np.where(other >= 0, value[np.maximum(other, 0)], -np.inf)


@dataclasses.dataclass(frozen=True)
class Choice:
    """The components chosen (`chosen`) and every candidate's per-kind AUC (`table`: rows of
    (components, {kind: AUC}, mean), best first) over `objects` pseudo objects per kind."""

    chosen: tuple[str, ...]
    table: list[tuple[tuple[str, ...], dict[str, float], float]]
    objects: int

    def to_json(self) -> dict:
        return {
            "chosen": list(self.chosen),
            "objects_per_kind": self.objects,
            "kinds": list(self.table[0][1]),
            "rule": "each candidate: the mean over the pseudo-anomaly kinds of the frame "
            "ROC-AUC (frames with one training object turned into a pseudo-anomaly against "
            "the training frames, leave-one-video-out); the highest chosen, fewer components "
            "on a tie (jaxvad/component_choice.py)",
            "candidates": [
                {"components": list(c), "auc": auc, "mean": mean} for c, auc, mean in self.table
            ],
        }

    @classmethod
    def from_json(cls, record: dict) -> Choice:
        table = [
            (tuple(row["components"]), dict(row["auc"]), float(row["mean"]))
            for row in record["candidates"]
        ]
        return cls(tuple(record["chosen"]), table, int(record["objects_per_kind"]))


def choose(
    train: object_scores.SplitObjects,
    chosen: np.ndarray,
    *,
    frame_sizes: np.ndarray,
    scored_frames: np.ndarray,
    k: int,
    nearby: int,
    seed: int,
    attribution: object_scores.ErrorComponent | None = None,
    pseudo_errors: Callable[[str], scoring.SplitErrors] | None = None,
    kinds: Sequence[str] = KINDS,
    rule: str = object_scores.ZSCORE,
) -> Choice:
    """The components, among `candidates`, that best separate pseudo-anomalies from normal
    training frames (the module docstring).

    Args:
      train: the training split's objects (with `deep` for a model of object samples).
      chosen: `[P]` indices into them of the objects turned into pseudo-anomalies.
      frame_sizes: `[V, 2]` each training video's original (height, width).
      scored_frames: `[N]` bool, the training frames scored (t > T), the normal frames.
      k, nearby: the banks' neighbours (`nearby` for "faster").
      seed: draws the `moved` places.
      attribution: with object samples, the training objects' errors (the "error" component,
        `ObjectModel.attribution`); `pseudo_errors(kind)`: the model errors, with deep
        features, of the `chosen` objects' samples turned into `kind` (one of
        `SAMPLE_KINDS`; rows = `chosen`).
      kinds: the pseudo-anomalies to average over (`config.objects.pseudo_kinds`; a prior on
        what the anomalies will be: all `KINDS` by default).
      rule: the components' calibration (`object_scores.calibration`; `attribution` is
        calibrated by the same rule).
    """
    normal, scored = pseudo_scores(
        train,
        chosen,
        frame_sizes=frame_sizes,
        k=k,
        nearby=nearby,
        seed=seed,
        attribution=attribution,
        pseudo_errors=pseudo_errors,
        kinds=kinds,
        rule=rule,
    )
    table = rank(normal, scored, train, chosen, scored_frames)
    return Choice(table[0][0], table, len(chosen))


Scores = tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]


def pseudo_scores(
    train: object_scores.SplitObjects,
    chosen: np.ndarray,
    *,
    frame_sizes: np.ndarray,
    k: int,
    nearby: int,
    seed: int,
    attribution: object_scores.ErrorComponent | None = None,
    pseudo_errors: Callable[[str], scoring.SplitErrors] | None = None,
    kinds: Sequence[str] = KINDS,
    rule: str = object_scores.ZSCORE,
) -> Scores:
    """Per single component of the `candidates`: the training objects' leave-one-video-out
    calibrated scores `[M]` (`normal[c]`) and each kind's pseudo objects' `[P]`
    (`scored[c][kind]`), their own video left out of the banks (arguments: `choose`)."""
    samples = attribution is not None
    if samples and (pseudo_errors is None or train.deep is None):
        raise ValueError("with object samples the choice needs the pseudo samples' errors")
    picked = train.take(chosen)
    if not kinds or any(kind not in KINDS for kind in kinds):
        raise ValueError(f"pseudo-anomaly kinds {tuple(kinds)}: one or more of {KINDS}")
    pseudo = {kind: pseudo_objects(picked, kind, frame_sizes, seed) for kind in kinds}
    changed = [kind for kind in kinds if kind in SAMPLE_KINDS]
    model_out = {kind: pseudo_errors(kind) for kind in changed} if samples else {}
    for kind, errors in model_out.items():
        pseudo[kind] = dataclasses.replace(pseudo[kind], deep=errors.features)
    normal, scored = {}, {}
    for component in singles(samples):
        if component == object_scores.ERROR:
            normal[component] = attribution.train_scores
            scored[component] = {
                kind: attribution.scores(model_out[kind])
                if kind in model_out
                else attribution.train_scores[chosen]
                for kind in kinds
            }
            continue
        n = object_scores.neighbours(component, k, nearby)
        bank = object_scores.fit_bank(train, component, n, rule)
        usable = np.isfinite(object_scores.features(train, component)).all(axis=1)
        normal[component] = bank.train_scores
        scored[component] = {
            kind: bank.scores(
                object_scores.features(pseudo[kind], component), picked.video, train.video[usable]
            )
            for kind in kinds
        }
    return normal, scored


def candidate_frames(
    normal: list[np.ndarray],
    pseudo: dict[str, list[np.ndarray]],
    train: object_scores.SplitObjects,
    chosen: np.ndarray,
    combine: str = "sum",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One candidate's frame scores: the training frames' `[N]` (their objects' calibrated
    components `normal`, each `[M]`, made one score by the rule `combine` of `COMBINE`) and,
    per kind, the frames `[P]` of the pseudo objects (`pseudo[kind]`: their components, rows
    = `chosen`), each the maximum of its frame's objects (`floor` where a score is missing)."""
    together = COMBINE[combine]
    total = together(normal)
    floor = object_scores.least_score(total)  # What a frame without scores gets.
    frames = object_scores.frame_maximum(total, train.frame_position, train.num_frames, floor)
    others = _others_maximum(total, train.frame_position, train.num_frames, chosen)
    values = {}
    for kind, parts in pseudo.items():
        mine = together(parts)
        values[kind] = np.maximum(np.where(np.isfinite(mine), mine, floor), others)
    return frames, values


def kind_aucs(normal: np.ndarray, pseudo: dict[str, np.ndarray]) -> dict[str, float]:
    """Per kind the frame ROC-AUC of the pseudo frames `pseudo[kind]` `[P]` (positives)
    against the normal frames `normal` `[N]`."""
    return {
        kind: metrics.roc_auc_micro(
            np.r_[normal, value], np.r_[np.zeros(len(normal)), np.ones(len(value))]
        )
        for kind, value in pseudo.items()
    }


def rank(
    normal: dict[str, np.ndarray],
    scored: dict[str, dict[str, np.ndarray]],
    train: object_scores.SplitObjects,
    chosen: np.ndarray,
    scored_frames: np.ndarray,
    combine: str = "sum",
) -> list[tuple[tuple[str, ...], dict[str, float], float]]:
    """`Choice.table`: every candidate (the sets of 1 to `MOST` of `normal`'s components)
    with its per-kind frame AUC and their mean, best first (`pseudo_scores` gives `normal`
    and `scored`; `combine`: a rule of `COMBINE`; other arguments: `choose`)."""
    table = []
    for combo in candidates([c for c in CANDIDATES if c in normal]):
        frames, values = candidate_frames(
            [normal[c] for c in combo],
            {kind: [scored[c][kind] for c in combo] for kind in scored[combo[0]]},
            train,
            chosen,
            combine,
        )
        auc = kind_aucs(frames[scored_frames], values)
        table.append((combo, auc, float(np.mean(list(auc.values())))))
    table.sort(key=lambda row: (-round(row[2], 6), len(row[0])))
    return table


def stored_name(
    k: int,
    nearby: int,
    count: int,
    seed: int,
    kinds: Sequence[str],
    rule: str = object_scores.ZSCORE,
) -> str:
    """The name a choice is stored under: its settings, a digest of the kinds, of this
    module's candidates and strengths and of `DEEP_FEATURES` (a choice made with others is
    not reused), and the calibration `rule` (`object_scores.calibrated_name`)."""
    what = repr((tuple(kinds), CANDIDATES, MOST, SPEEDUP, GROWTH, DEEP_FEATURES)).encode()
    name = f"k{k}_nearby{nearby}_objects{count}_seed{seed}_{hashlib.sha1(what).hexdigest()[:10]}"
    return object_scores.calibrated_name(name, rule)


def draw(eligible_objects: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`[min(count, E)]` sorted indices of the objects drawn among `eligible_objects` `[M]`
    bool (ValueError when none is)."""
    where = np.flatnonzero(eligible_objects)
    if not len(where):
        raise ValueError(
            "no training object has the frames the pseudo-anomalies read (t > 2T and t + T "
            "within its video): the training videos are too short to choose components"
        )
    pick = np.random.default_rng(seed).choice(len(where), min(count, len(where)), replace=False)
    return np.sort(where[pick])
