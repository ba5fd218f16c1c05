"""Weakly supervised VAD metrics: frame AUC / AP over concatenated test frames, video category
accuracy, and the fine-grained detection mAP of VadCLIP (Wu et al., AAAI 2024). Pure numpy; the
frame-level score curves come from `jaxvad.metrics` (scikit-learn), as everywhere in jaxvad.

Conventions:

- Snippets: weakly supervised models score one feature snippet of `frames_per_snippet` frames
  (16 for the C3D/I3D/CLIP features of UCF-Crime and XD-Violence). The protocols spread a
  snippet's score over its frames by repetition (`np.repeat`), so a video of T snippets has
  F = 16·T scored frames, and its frame labels must be given for exactly those F frames (the
  benchmarks' label files are built that way: frames past 16·T are dropped, missing ones are
  normal).
- Segments are half-open frame ranges [start, end) of integer frame indices, after the snippet
  repetition; the temporal IoU of two segments is |A ∩ B| / |A ∪ B| over their sets of frames.
- Classes are integer indices 0 … C−1 into the model's class list; index 0 is the normal class in
  both VadCLIP class lists (UCF-Crime: Normal + 13 crimes; XD-Violence: A = normal, B1, B2, B4,
  B5, B6, G). Results are fractions in [0, 1] (VadCLIP prints the mAPs ×100).

The detection mAP follows VadCLIP's `src/utils/{ucf,xd}_detectionMAP.py` (`getLocMAP`,
`getDetectionMAP`), the script its `ucf_test.py` / `xd_test.py` call with the per-snippet softmax
over the C classes repeated 16× per video; each step and constant is in the docstrings of
`segments_from_scores` and `detection_map`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

import numpy as np
from numpy.typing import ArrayLike

from jaxvad import metrics

DEFAULT_IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
FRAMES_PER_SNIPPET = 16  # One feature per 16 frames on UCF-Crime and XD-Violence.

# VadCLIP's segment builder (see `segments_from_scores`).
TOP_FRACTION = 16  # The video class score is the mean of the top 1/16 of a class's frame scores.
THRESHOLD_RATIO = 0.6  # A frame is in a segment when its score > max − 0.6·(max − min).
MIN_SEGMENT_FRAMES = 2  # Shorter runs are dropped (never happens once snippets are repeated).
CLASS_SCORE_WEIGHT = 0.7  # Segment score = max inside the segment + 0.7·video class score.


# ----------------------------------------------------------------------------- frame level


def frame_auc(
    scores_per_video: Sequence[ArrayLike],
    labels_per_video: Sequence[ArrayLike],
    *,
    frames_per_snippet: int = 1,
) -> float:
    """Frame-level ROC-AUC, the UCF-Crime protocol: every test frame of every video pooled.

    `scores_per_video`: V arrays `[T_v] float` (per snippet, or per frame when
    `frames_per_snippet` is 1), higher = more anomalous; `labels_per_video`: V arrays
    `[T_v·frames_per_snippet] 0/1` frame labels. Each snippet score is repeated
    `frames_per_snippet` times, the videos are concatenated in order, and the AUC is
    P(s⁺ > s⁻) + ½·P(s⁺ = s⁻) over (anomalous, normal) frame pairs (`metrics.roc_auc_micro`).
    """
    scores, labels = _pooled_frames(scores_per_video, labels_per_video, frames_per_snippet)
    return metrics.roc_auc_micro(scores, labels)


def frame_ap(
    scores_per_video: Sequence[ArrayLike],
    labels_per_video: Sequence[ArrayLike],
    *,
    frames_per_snippet: int = 1,
) -> float:
    """Frame-level average precision, the XD-Violence protocol: frames pooled as in `frame_auc`,
    anomalous frames positive, AP = Σ_k (R_k − R_{k−1})·P_k over the distinct score thresholds
    (scikit-learn's step sum, `metrics.pr_auc`). Shapes as in `frame_auc`."""
    scores, labels = _pooled_frames(scores_per_video, labels_per_video, frames_per_snippet)
    return metrics.pr_auc(scores, labels)


def _pooled_frames(
    scores_per_video: Sequence[ArrayLike],
    labels_per_video: Sequence[ArrayLike],
    frames_per_snippet: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated `scores [F]` (snippets repeated to frames) and `labels [F]`."""
    if len(scores_per_video) != len(labels_per_video) or not scores_per_video:
        raise ValueError(
            f"need one label array per score array, got {len(scores_per_video)} score and "
            f"{len(labels_per_video)} label arrays"
        )
    if frames_per_snippet < 1:
        raise ValueError(f"frames_per_snippet must be ≥ 1, got {frames_per_snippet}")
    scores, labels = [], []
    for v, (video_scores, video_labels) in enumerate(
        zip(scores_per_video, labels_per_video, strict=True)
    ):
        video_scores = np.repeat(np.asarray(video_scores, np.float64), frames_per_snippet)
        video_labels = np.asarray(video_labels)
        if video_scores.ndim != 1 or video_labels.shape != video_scores.shape:
            raise ValueError(
                f"video {v}: {np.size(video_scores) // frames_per_snippet} scores × "
                f"{frames_per_snippet} frames need as many 1-d frame labels, got shape "
                f"{video_labels.shape}"
            )
        scores.append(video_scores)
        labels.append(video_labels)
    return np.concatenate(scores), np.concatenate(labels)


# ----------------------------------------------------------------------------- video level


def category_accuracy(
    predicted: ArrayLike, true: ArrayLike, *, normal_class: int | None = 0
) -> float:
    """Anomaly category accuracy: the share of anomalous videos whose predicted class is their
    true class. `predicted [V]`, `true [V]` integer class indices.

    Normal videos do not count (videos whose true class is `normal_class` are left out; a
    normal video predicted as a crime is a detection error, measured by the frame metrics, not
    a categorisation error); an anomalous video predicted normal counts as wrong.
    `normal_class=None` counts every video. VadCLIP itself reports no category accuracy; its
    fine-grained metric is `detection_map`.
    """
    predicted, true = np.asarray(predicted), np.asarray(true)
    if predicted.ndim != 1 or predicted.shape != true.shape:
        raise ValueError(
            f"predicted and true must be 1-d arrays of one length, got shapes {predicted.shape} "
            f"and {true.shape}"
        )
    counted = np.ones(true.shape, bool) if normal_class is None else true != normal_class
    if not counted.any():
        raise ValueError("no anomalous video: category accuracy is undefined")
    return float(np.mean(predicted[counted] == true[counted]))


# ----------------------------------------------------------------------------- segments


@dataclasses.dataclass(frozen=True)
class Segments:
    """The temporal segments of one video: `start [S]`, `end [S]` int frame indices
    (half-open [start, end)), `label [S]` int class indices and, for predictions, `score [S]`
    float (`None` for ground truth, and allowed for a prediction without segments)."""

    start: np.ndarray
    end: np.ndarray
    label: np.ndarray
    score: np.ndarray | None = None

    @classmethod
    def of(
        cls, rows: Sequence[tuple[int, int, int]], scores: Sequence[float] | None = None
    ) -> Segments:
        """Segments from `(start, end, label)` rows and optional scores."""
        table = np.asarray(rows, np.int64).reshape(-1, 3)
        score = None if scores is None else np.asarray(scores, np.float64).reshape(-1)
        if score is not None and score.size != len(table):
            raise ValueError(f"{score.size} scores for {len(table)} segments")
        return cls(table[:, 0], table[:, 1], table[:, 2], score)


def segments_from_scores(
    class_probs: ArrayLike, *, frames_per_snippet: int = FRAMES_PER_SNIPPET
) -> Segments:
    """Predicted segments of one video, built as VadCLIP's `getLocMAP` builds them.

    `class_probs [T, C] float`: per-snippet class probabilities (VadCLIP: the softmax over the C
    classes, normal included, of the alignment branch). Steps, per class c:

    1. Frames: each snippet row is repeated `frames_per_snippet` times → `p [F, C]`, F = 16·T.
    2. Video class score: `v_c` = mean of the top ⌊F / 16⌋ values of `p[:, c]` (`TOP_FRACTION`;
       the top 1/16 of the frames). A video with F < 16 has no top frames (VadCLIP's mean of
       nothing is NaN) and gets no segment.
    3. Classes with v_c ≤ 0 get no segment (VadCLIP zeroes their column; softmax outputs are
       positive, so this only drops all-zero columns).
    4. No smoothing (VadCLIP's `smooth` returns its input; the Savitzky–Golay filter is
       commented out).
    5. Threshold: frames with p > max − 0.6·(max − min) of `p[:, c]` are above
       (`THRESHOLD_RATIO`; VadCLIP's threshold list `np.arange(0.6, 0.7, 0.1)` is [0.6]).
       A constant column has no frame above.
    6. Segments: each maximal run [s, e) of above frames with e − s ≥ 2
       (`MIN_SEGMENT_FRAMES`).
    7. Score: max of `p[s:e, c]` + 0.7·v_c (`CLASS_SCORE_WEIGHT`).
    8. VadCLIP then runs a 1-d NMS (IoU > 0.6 suppressed) over the video's segments of class c;
       with one threshold the runs are disjoint (IoU 0), so it removes nothing and is left out.

    Returns the video's segments of every class, in class then start order.
    """
    probs = np.asarray(class_probs, np.float64)
    if probs.ndim != 2 or not np.isfinite(probs).all():
        raise ValueError(f"class_probs must be a finite [T, C] array, got shape {probs.shape}")
    if frames_per_snippet < 1:
        raise ValueError(f"frames_per_snippet must be ≥ 1, got {frames_per_snippet}")
    frames = np.repeat(probs, frames_per_snippet, axis=0)  # [F, C]
    top = len(frames) // TOP_FRACTION
    rows, scores = [], []
    if top == 0:
        return Segments.of(rows, scores)
    video_score = np.sort(frames, axis=0)[-top:].mean(axis=0)  # [C]
    for c in np.flatnonzero(video_score > 0):
        column = frames[:, c]
        high, low = column.max(), column.min()
        above = column > high - THRESHOLD_RATIO * (high - low)
        for start, end in _runs(above):
            if end - start >= MIN_SEGMENT_FRAMES:
                rows.append((start, end, c))
                scores.append(column[start:end].max() + CLASS_SCORE_WEIGHT * video_score[c])
    return Segments.of(rows, scores)


def _runs(mask: np.ndarray) -> np.ndarray:
    """`[R, 2]` half-open (start, end) of the maximal runs of True in `mask [F] bool`."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], axis=1)


def vadclip_ground_truth(
    segments_per_video: Sequence[Sequence[Sequence[int | str]]],
    labels_per_video: Sequence[Sequence[str]],
    class_names: Sequence[str],
    *,
    ignore_labels: Collection[str] = (),
) -> list[Segments]:
    """Ground truth from the contents of VadCLIP's `list/gt_segment*.npy` and
    `list/gt_label*.npy` (object arrays: per test video, `[start, end]` frame pairs, as strings
    for annotated videos, and one class name per pair; a normal video has one segment
    [0, 16·T) labelled "A").

    Each name becomes its index in `class_names`; names in `ignore_labels` are dropped and any
    other unknown name raises. VadCLIP's UCF-Crime class list starts with "Normal" while its
    normal videos are labelled "A", so its Normal class never has ground truth (AP 0, still in
    the mean): `ignore_labels=("A",)` reproduces that.
    """
    index = {name: c for c, name in enumerate(class_names)}
    videos = []
    for v, (pairs, names) in enumerate(zip(segments_per_video, labels_per_video, strict=True)):
        if len(pairs) != len(names):
            raise ValueError(f"video {v}: {len(pairs)} segments and {len(names)} labels")
        rows = []
        for (start, end), name in zip(pairs, names, strict=True):
            if name in ignore_labels:
                continue
            if name not in index:
                raise ValueError(f"video {v}: label {name!r} is not in class_names")
            rows.append((int(start), int(end), index[name]))
        videos.append(Segments.of(rows))
    return videos


# ----------------------------------------------------------------------------- detection mAP


@dataclasses.dataclass(frozen=True)
class DetectionMap:
    """`map_per_iou`: IoU threshold → mAP (mean over classes of `ap`); `average`: the mean of
    those mAPs; `ap [len(iou_thresholds), C]`: AP per threshold and class."""

    map_per_iou: dict[float, float]
    average: float
    ap: np.ndarray


def detection_map(
    predictions: Sequence[Segments],
    ground_truth: Sequence[Segments],
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    *,
    num_classes: int,
) -> DetectionMap:
    """Temporal detection mAP at each IoU threshold, as VadCLIP's `getLocMAP` computes it.

    `predictions`, `ground_truth`: V `Segments` each, video v of one matched with video v of
    the other (predictions need scores, e.g. from `segments_from_scores`). For each IoU
    threshold θ and class c in 0 … C−1 (`num_classes`; VadCLIP: 14 on UCF-Crime, 7 on
    XD-Violence, the normal class included):

    1. The predicted segments of class c from all videos, by score descending (ties: video,
       then the order within the video; VadCLIP's unstable sort leaves ties in no set order).
    2. Greedy matching: each prediction in turn takes the still unmatched ground-truth segment
       of class c in its video with the highest temporal IoU (the first on a tie); it is a true
       positive when that IoU ≥ θ (the segment is then used up), else a false positive.
    3. AP_c = Σ_k P_k·tp_k / G_c, with P_k the precision of the first k predictions and G_c the
       number of ground-truth segments of class c: the ranked-list AP, whose recall reaches 1
       only if every segment is found (not scikit-learn's AP, which groups tied scores and
       knows no missed positives). AP_c = 0 without a true positive, so also without ground
       truth or without predictions (where VadCLIP returns 0 for the whole mAP at θ).

    mAP@θ = mean over the C classes of AP_c; `average` = mean over the thresholds.
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(
            f"{len(predictions)} predicted and {len(ground_truth)} ground-truth videos"
        )
    if any(p.score is None and p.start.size for p in predictions):
        raise ValueError("predicted segments need scores")
    thresholds = tuple(float(t) for t in iou_thresholds)
    ap = np.array(
        [
            [_class_ap(predictions, ground_truth, c, t) for c in range(num_classes)]
            for t in thresholds
        ]
    ).reshape(len(thresholds), num_classes)
    per_iou = ap.mean(axis=1)
    return DetectionMap(
        dict(zip(thresholds, per_iou.tolist(), strict=True)), float(per_iou.mean()), ap
    )


def _class_ap(
    predictions: Sequence[Segments], ground_truth: Sequence[Segments], c: int, threshold: float
) -> float:
    """AP of class `c` at IoU `threshold` (steps 1–3 of `detection_map`)."""
    # One row per predicted segment of class c: (video, start, end, score).
    rows = [
        (np.full(mine.sum(), v), p.start[mine], p.end[mine], p.score[mine])
        for v, p in enumerate(predictions)
        if p.start.size and (mine := p.label == c).any()
    ]
    if not rows:
        return 0.0
    video, start, end, score = (np.concatenate(column) for column in zip(*rows, strict=True))
    order = np.argsort(-score, kind="stable")
    truth = [(g.start[g.label == c], g.end[g.label == c]) for g in ground_truth]
    unmatched = [np.ones(len(s), bool) for s, _ in truth]
    num_truth = sum(len(s) for s, _ in truth)

    hits = np.zeros(len(order))
    for k, i in enumerate(order):
        truth_start, truth_end = truth[video[i]]
        iou = np.where(unmatched[video[i]], _iou(start[i], end[i], truth_start, truth_end), -1.0)
        if iou.size and iou.max() >= threshold:
            unmatched[video[i]][np.argmax(iou)] = False
            hits[k] = 1.0
    if not hits.any():
        return 0.0
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(np.sum(precision * hits) / num_truth)


def _iou(start: int, end: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Temporal IoU `[G]` of the frame range [start, end) with each of [starts, ends)."""
    inter = np.maximum(0, np.minimum(end, ends) - np.maximum(start, starts))
    union = max(end - start, 0) + np.maximum(ends - starts, 0) - inter
    return np.divide(inter, union, out=np.zeros(len(starts)), where=union > 0)
