"""Frame- and pixel-level anomaly detection metrics: pure numpy, scipy and scikit-learn.

Conventions (every function follows them; report them beside the numbers):

- Positive class = anomalous (label 1). A higher score means more anomalous. Frame-level inputs
  are `scores [N] float`, `labels [N] 0/1` and, where videos matter, `videos [N]` (any hashable
  id per frame), holding only the frames that were scored: the caller drops the frames without
  a prediction (e.g. the first T frames of each video) and says so.
- ROC and PR come from scikit-learn. Ties: `roc_auc_score` groups tied scores into one ROC point
  and joins the points by straight lines, so a tied (anomalous, normal) pair counts ½ (the AUC is
  P(s⁺ > s⁻) + ½·P(s⁺ = s⁻)); `average_precision_score` groups tied scores into one threshold and
  takes AP = Σ_k (R_k − R_{k−1})·P_k over those thresholds (a step sum, no interpolation), so
  `pr_auc` is average precision, not a trapezoid under the PR curve. AUC-type metrics need both
  classes and raise ValueError otherwise.
- Thresholds: scikit-learn's curves call a frame anomalous when score ≥ threshold;
  `threshold_metrics` uses score > threshold; `oracle_threshold` returns a value for the ">"
  rule (a midpoint between two distinct scores), and the EER threshold lies between two adjacent
  scores, where ">" and "≥" agree (one exception, in `equal_error_rate`).
- Macro AUC: the mean of per-video ROC-AUCs. A video whose frames are all one class gets the
  field's padding: a normal frame with score `pad_low` (0) is prepended and an anomalous frame
  with score `pad_high` (1) is appended to that video's scores and labels before its AUC. It only
  makes sense for scores in [pad_low, pad_high] (e.g. per-video min-max normalised); such a video
  then scores AUC 1 (less where its scores tie a pad value), which raises the mean.
- Pixel level: `pixel_scores` pools every pixel of every frame (anomalous pixel = positive) and
  hands scikit-learn an exact weighted summary of them (see `_normal_runs_collapsed`), as the
  plain call would need ~50 bytes per pixel.
- RBDC / TBDC (Ramachandra & Jones, WACV 2020), written from the definition:
  ground-truth (GT) regions are the 8-connected components of each frame's mask; GT tracks join
  GT regions of consecutive frames of one video that share a pixel, transitively (connected
  components of that graph, i.e. union-find); detected regions at threshold θ are the 8-connected
  components of `map > θ` in each frame. A GT region is detected when some detected region of its
  frame has IoU ≥ β with it; a detected region whose IoU is < β with every GT region of its frame
  is a false positive; FPR(θ) = false positives / N (all frames, with or without GT). A track is
  detected when a fraction ≥ α of its regions are detected. RBDR(θ) = detected GT regions / GT
  regions; TBDR(θ) = detected tracks / tracks. RBDC (TBDC) is the area under RBDR (TBDR) against
  FPR for FPR in [0, 1], by the trapezoid rule: thresholds with equal FPR become one point with
  the best of their rates; the points are sorted by FPR; if the smallest FPR is above 0 the curve
  starts with the point (0, rate at the smallest FPR); at FPR 1 the curve is cut, its rate
  interpolated linearly between the two points around 1; if no threshold reaches FPR 1 the curve
  ends with (1, rate at the largest FPR). A detector that never fires has rate 0 at FPR 0 and
  scores 0; a perfect one scores 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

import numpy as np
import scipy.ndimage
import scipy.sparse
import scipy.sparse.csgraph
from numpy.typing import ArrayLike
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

# Connects the 8 neighbours within a frame and nothing across frames, so one `ndimage.label`
# call over an `[N, H, W]` stack labels every frame on its own with ids unique over the stack.
IN_FRAME_8_CONNECTED = np.zeros((3, 3, 3), bool)
IN_FRAME_8_CONNECTED[1] = True

PIXELS_PER_CHUNK = 1 << 21  # RBDC works on ~2M-pixel blocks of whole frames to bound memory.


# ----------------------------------------------------------------------------- frame level


def roc_auc_micro(scores: ArrayLike, labels: ArrayLike) -> float:
    """ROC-AUC over all frames pooled. `scores [N] float`, `labels [N] 0/1`."""
    scores, labels = _frame_arrays(scores, labels, need_both_classes=True)
    return float(roc_auc_score(labels, scores))


@dataclasses.dataclass(frozen=True)
class MacroAuc:
    """Macro ROC-AUC: `value` = mean of `per_video` (video id → AUC, in order of first
    appearance); `padded` = the one-class videos that got the padding frames."""

    value: float
    per_video: dict[Hashable, float]
    padded: tuple[Hashable, ...]


def roc_auc_macro(
    scores: ArrayLike,
    labels: ArrayLike,
    videos: ArrayLike | Sequence[Hashable],
    *,
    pad_low: float = 0.0,
    pad_high: float = 1.0,
) -> MacroAuc:
    """Mean of per-video ROC-AUCs. `scores [N] float`, `labels [N] 0/1`, `videos [N]` ids.

    A video whose labels are all 0 or all 1 gets the field's padding before its AUC: its scores
    become `[pad_low, *scores, pad_high]` and its labels `[0, *labels, 1]` (a normal frame
    prepended, an anomalous frame appended). This is meaningful only when scores lie in
    [pad_low, pad_high], e.g. per-video min-max normalised to [0, 1]; such a video then has AUC 1,
    or less where its scores tie a pad value (ties count ½).
    """
    scores, labels = _frame_arrays(scores, labels)
    codes, names = _factorize(videos, len(scores))
    per_video, padded = {}, []
    for code, name in enumerate(names):
        video_scores, video_labels = scores[codes == code], labels[codes == code]
        if video_labels.min() == video_labels.max():
            video_scores = np.concatenate([[pad_low], video_scores, [pad_high]])
            video_labels = np.concatenate([[0], video_labels, [1]])
            padded.append(name)
        per_video[name] = float(roc_auc_score(video_labels, video_scores))
    return MacroAuc(float(np.mean(list(per_video.values()))), per_video, tuple(padded))


def pr_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Average precision with anomalous frames as the positive class (scikit-learn's step sum
    Σ (R_k − R_{k−1})·P_k; the chance level is the fraction of anomalous frames).
    `scores [N] float`, `labels [N] 0/1`."""
    scores, labels = _frame_arrays(scores, labels, need_both_classes=True)
    return float(average_precision_score(labels, scores))


def equal_error_rate(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Equal error rate and its threshold: the point of the ROC curve where FPR = FNR = 1 − TPR.

    On scikit-learn's ROC points (FPR_k, TPR_k) with thresholds t_k, g_k = FPR_k + TPR_k − 1
    rises from −1 at (0, 0) to 1 at (1, 1) (one point per distinct score, t_k descending). With i
    the first point where g_i ≥ 0:
    - g_i = 0: the EER is FPR_i, and the threshold is the midpoint between t_i and the next lower
      score t_{i+1}, so that "score > threshold" flags what "score ≥ t_i" flags;
    - g_i > 0: the EER is where g = 0 on the straight segment from point i−1 to point i, at the
      fraction f = −g_{i−1} / (g_i − g_{i−1}) of the way: EER = FPR_{i−1} + f·(FPR_i − FPR_{i−1})
      and threshold = t_{i−1} + f·(t_i − t_{i−1}), between two adjacent scores; on the first
      segment, whose start is scikit-learn's t_0 = +inf (nothing flagged), the threshold is t_1.
    `scores [N] float`, `labels [N] 0/1` → (eer, threshold).
    """
    scores, labels = _frame_arrays(scores, labels, need_both_classes=True)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    gap = fpr + tpr - 1.0
    i = int(np.argmax(gap >= 0))  # gap[0] = -1 and gap[-1] = 1, so 1 <= i.
    if gap[i] == 0:  # i < last, as the last point has gap 1.
        return float(fpr[i]), float((thresholds[i] + thresholds[i + 1]) / 2)
    fraction = -gap[i - 1] / (gap[i] - gap[i - 1])
    eer = fpr[i - 1] + fraction * (fpr[i] - fpr[i - 1])
    if i == 1:
        return float(eer), float(thresholds[1])
    return float(eer), float(thresholds[i - 1] + fraction * (thresholds[i] - thresholds[i - 1]))


def threshold_metrics(
    scores: ArrayLike, labels: ArrayLike, threshold: float
) -> dict[str, float | int]:
    """Confusion counts and rates when a frame is called anomalous if its score > `threshold`.

    Returns accuracy, precision = tp / (tp + fp), recall = tp / (tp + fn),
    f1 = 2·tp / (2·tp + fp + fn), and the counts tp, fp, tn, fn; a ratio whose denominator is 0
    is 0.0. `scores [N] float`, `labels [N] 0/1`.
    """
    scores, labels = _frame_arrays(scores, labels)
    predicted = (scores > threshold).astype(np.int8)
    tn, fp, fn, tp = (int(c) for c in confusion_matrix(labels, predicted, labels=[0, 1]).ravel())
    return {
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def oracle_threshold(scores: ArrayLike, labels: ArrayLike) -> float:
    """The threshold that maximises F1 on these labels; report it (and metrics at it) as "oracle".

    scikit-learn's PR curve gives F1 at each distinct score s (anomalous when score ≥ s); among
    the best, the highest s is taken (fewest alarms). The returned value is for the "score >
    threshold" rule of `threshold_metrics`: the midpoint between s and the next lower distinct
    score (just below s when s is the lowest score). `scores [N] float`, `labels [N] 0/1`.
    """
    scores, labels = _frame_arrays(scores, labels, need_both_classes=True)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]  # The last point (P=1, R=0) has no threshold.
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    best = thresholds[np.flatnonzero(f1 == f1.max())[-1]]
    below = scores[scores < best]
    return float((best + below.max()) / 2 if below.size else np.nextafter(best, -np.inf))


# ----------------------------------------------------------------------------- pixel level


def pixel_scores(maps: ArrayLike, masks: ArrayLike) -> dict[str, float]:
    """Pixel-level ROC-AUC and average precision, all pixels of all frames pooled.

    `maps [N, H, W] float` (used as float32; no copy when already float32),
    `masks [N, H, W] 0/1` (any integer or bool dtype). scikit-learn needs ~50 bytes per sample
    (Ped2 at 224×224 is 1e8 pixels), so it gets an exact, weighted summary instead
    (`_normal_runs_collapsed`, ~9 bytes per pixel at its peak): the same ROC-AUC and AP as
    scikit-learn gives on all pixels, up to float rounding.
    """
    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks)
    _check_maps(maps, masks)
    scores, labels, weights = _normal_runs_collapsed(maps.reshape(-1), masks.reshape(-1) != 0)
    return {
        "roc_auc": float(roc_auc_score(labels, scores, sample_weight=weights)),
        "average_precision": float(average_precision_score(labels, scores, sample_weight=weights)),
    }


def _normal_runs_collapsed(
    scores: np.ndarray, anomalous: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A weighted sample with the ROC-AUC and AP of `scores [P]` / `anomalous [P] bool`.

    Anomalous pixels are kept as their distinct scores v_1 < … < v_K with counts. Normal pixels
    tied with some v_k are kept as one normal sample at v_k weighted by their number; every run
    of normal pixels strictly between consecutive v's (and below v_1, above v_K) becomes one
    normal sample at the run's highest score, weighted by the run's length. Lossless: at every
    threshold where recall changes (an anomalous score) the weighted counts of normal and
    anomalous samples at or above it are the originals; a collapsed run only removes ROC points
    inside a horizontal segment (same area) and PR points where recall does not change (no AP
    term). → (`scores [M]`, `labels [M]` 0/1, `weights [M]`), M ≤ 3K + 1.
    """
    normal = np.sort(scores[~anomalous])
    values, counts = np.unique(scores[anomalous], return_counts=True)
    below = np.searchsorted(normal, values, side="left")  # Normal pixels < v_k.
    not_above = np.searchsorted(normal, values, side="right")  # Normal pixels ≤ v_k.
    ties = not_above - below
    run_starts = np.concatenate([[0], not_above])
    run_ends = np.concatenate([below, [normal.size]])
    runs = run_ends - run_starts
    tied, nonempty = ties > 0, runs > 0
    return (
        np.concatenate([values, values[tied], normal[run_ends[nonempty] - 1]]),
        np.concatenate([np.ones(values.size), np.zeros(tied.sum() + nonempty.sum())]),
        np.concatenate([counts, ties[tied], runs[nonempty]]).astype(np.float64),
    )


def rbdc_tbdc(
    maps: ArrayLike,
    masks: ArrayLike,
    videos: ArrayLike | Sequence[Hashable],
    *,
    thresholds: int | Sequence[float] = 50,
    beta: float = 0.1,
    alpha: float = 0.1,
) -> dict[str, float | int | dict[str, np.ndarray]]:
    """Region- and track-based detection criteria (Ramachandra & Jones, WACV 2020).

    `maps [N, H, W] float` (compared in float32), `masks [N, H, W] 0/1`, `videos [N]` ids; the
    frames of a video must be adjacent and in temporal order (tracks link adjacent frames with
    the same id). `thresholds`: an int k → the quantiles of all P map values at the levels
    1 − f for k fractions f geometrically spaced from 1/P to 1 (dense where few pixels fire,
    the part of the curve with FPR ≤ 1; actual map values, `method="lower"`; repeated values
    kept once), or all distinct map values when there are at most k of them; or an explicit
    sequence. The definitions and the
    area convention are in the module docstring.

    Returns `rbdc`, `tbdc` (floats in [0, 1]), `regions` and `tracks` (the GT counts) and
    `curve`: `thresholds [K]` (ascending, float32 values), `fp_per_frame [K]`, `rbdr [K]`,
    `tbdr [K]`.
    """
    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks)
    _check_maps(maps, masks)
    num_frames, height, width = maps.shape
    codes, _ = _factorize(videos, num_frames)
    levels = _rbdc_thresholds(maps, thresholds)

    frames_per_chunk = max(1, PIXELS_PER_CHUNK // (height * width))
    chunk_shape = (min(frames_per_chunk, num_frames), height, width)
    fires, detected_ids = np.empty(chunk_shape, bool), np.empty(chunk_shape, np.int32)
    gt_pixels, gt_regions = [], []  # Flat pixel index over the stack, and GT region id.
    region_hits = []  # Per chunk: [K, regions of the chunk] bool.
    false_positives = np.zeros(len(levels), np.int64)
    num_regions = 0
    for start in range(0, num_frames, frames_per_chunk):
        stop = min(start + frames_per_chunk, num_frames)
        gt_ids, chunk_regions = scipy.ndimage.label(masks[start:stop] != 0, IN_FRAME_8_CONNECTED)
        pixels = np.flatnonzero(gt_ids)
        regions = gt_ids.reshape(-1)[pixels] - 1  # Region ids within this chunk, from 0.
        region_area = np.bincount(regions, minlength=chunk_regions)
        gt_pixels.append(pixels + start * height * width)
        gt_regions.append(regions + num_regions)
        num_regions += chunk_regions

        n = stop - start
        hits = np.zeros((len(levels), chunk_regions), bool)
        for k, level in enumerate(levels):
            np.greater(maps[start:stop], level, out=fires[:n])
            num_detected = scipy.ndimage.label(
                fires[:n], IN_FRAME_8_CONNECTED, output=detected_ids[:n]
            )
            if num_detected == 0:
                continue
            detected_at_gt = detected_ids[:n].reshape(-1)[pixels]
            overlap = detected_at_gt > 0
            # Intersections: pixel counts of each (detected region, GT region) pair that meet.
            pairs, intersection = np.unique(
                detected_at_gt[overlap].astype(np.int64) * chunk_regions + regions[overlap],
                return_counts=True,
            )
            detected, region = np.divmod(pairs, chunk_regions)
            detected_area = np.bincount(detected_ids[:n].reshape(-1), minlength=num_detected + 1)
            iou = intersection / (detected_area[detected] + region_area[region] - intersection)
            matched = iou >= beta
            hits[k, region[matched]] = True
            false_positives[k] += num_detected - np.unique(detected[matched]).size
        region_hits.append(hits)

    if num_regions == 0:
        raise ValueError("the masks have no anomalous pixel: RBDC/TBDC are undefined")
    hits = np.concatenate(region_hits, axis=1)  # [K, GT regions]
    track = _gt_tracks(
        np.concatenate(gt_pixels), np.concatenate(gt_regions), num_regions, codes, height * width
    )
    track_length = np.bincount(track)
    track_hits = np.stack(
        [np.bincount(track, weights=row, minlength=track_length.size) for row in hits]
    )
    fp_per_frame = false_positives / num_frames
    rbdr = hits.mean(axis=1)
    tbdr = (track_hits / track_length >= alpha).mean(axis=1)
    return {
        "rbdc": _area_up_to_one_fp(fp_per_frame, rbdr),
        "tbdc": _area_up_to_one_fp(fp_per_frame, tbdr),
        "regions": num_regions,
        "tracks": int(track_length.size),
        "curve": {
            "thresholds": levels,
            "fp_per_frame": fp_per_frame,
            "rbdr": rbdr,
            "tbdr": tbdr,
        },
    }


def _rbdc_thresholds(maps: np.ndarray, thresholds: int | Sequence[float]) -> np.ndarray:
    """`[K]` ascending distinct float32 thresholds (see `rbdc_tbdc`)."""
    if isinstance(thresholds, int | np.integer):
        if thresholds < 1:
            raise ValueError(f"thresholds must be a positive count, got {thresholds}")
        above = np.geomspace(1 / maps.size, 1, thresholds)  # Fraction of pixels above.
        values = np.unique(np.quantile(maps, 1 - above, method="lower"))
        if values.size < thresholds:  # Repeated quantiles: the map may have ≤ k distinct values.
            distinct = np.unique(maps)
            if distinct.size <= thresholds:
                values = distinct
    else:
        values = np.asarray(thresholds, dtype=np.float64)
        if values.ndim != 1 or values.size == 0:
            raise ValueError("thresholds must be a count or a non-empty sequence of numbers")
    return np.unique(values.astype(np.float32))


def _gt_tracks(
    pixels: np.ndarray, regions: np.ndarray, num_regions: int, codes: np.ndarray, plane: int
) -> np.ndarray:
    """Track id `[regions]` of each GT region: regions of adjacent frames of one video that share
    a pixel are joined, transitively. `pixels [P]` sorted flat indices into the `[N, H, W]` stack,
    `regions [P]` their region ids, `codes [N]` video code per frame, `plane` = H·W."""
    below = pixels + plane  # The same (y, x) in the next frame.
    position = np.minimum(np.searchsorted(pixels, below), pixels.size - 1)
    shared = pixels[position] == below
    frame = pixels[shared] // plane
    same_video = codes[frame] == codes[frame + 1]
    first = regions[shared][same_video]
    second = regions[position[shared]][same_video]
    graph = scipy.sparse.coo_matrix(
        (np.ones(first.size, bool), (first, second)), shape=(num_regions, num_regions)
    )
    _, track = scipy.sparse.csgraph.connected_components(graph, directed=False)
    return track


def _area_up_to_one_fp(fp_per_frame: np.ndarray, rate: np.ndarray) -> float:
    """Area under rate against false positives per frame over [0, 1] (module docstring)."""
    fpr, index = np.unique(fp_per_frame, return_inverse=True)
    best = np.zeros(fpr.size)
    np.maximum.at(best, index, rate)
    if fpr[0] > 0:
        fpr, best = np.concatenate([[0.0], fpr]), np.concatenate([[best[0]], best])
    if fpr[-1] < 1:
        fpr, best = np.concatenate([fpr, [1.0]]), np.concatenate([best, [best[-1]]])
    elif fpr[-1] > 1:
        inside = int(np.searchsorted(fpr, 1.0, side="right"))  # fpr[inside - 1] <= 1 < fpr[inside]
        at_one = np.interp(1.0, fpr[inside - 1 : inside + 1], best[inside - 1 : inside + 1])
        fpr = np.concatenate([fpr[:inside], [1.0]])
        best = np.concatenate([best[:inside], [at_one]])
    return float(np.trapezoid(best, fpr))


# ----------------------------------------------------------------------------- input checks


def _frame_arrays(
    scores: ArrayLike, labels: ArrayLike, need_both_classes: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """`scores [N]` as float64 and `labels [N]` as int8, checked: 1-d, same length, N > 0,
    finite scores, 0/1 labels (and both present when asked)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or scores.shape != labels.shape or scores.size == 0:
        raise ValueError(
            f"scores and labels must be non-empty 1-d arrays of one length, got shapes "
            f"{scores.shape} and {labels.shape}"
        )
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (anomalous)")
    labels = labels.astype(np.int8)
    if need_both_classes and labels.min() == labels.max():
        raise ValueError(f"all {labels.size} frames have label {labels[0]}: needs both classes")
    return scores, labels


def _check_maps(maps: np.ndarray, masks: np.ndarray) -> None:
    if maps.ndim != 3 or maps.shape != masks.shape or maps.size == 0:
        raise ValueError(
            f"maps and masks must be non-empty [N, H, W] arrays of one shape, got {maps.shape} "
            f"and {masks.shape}"
        )
    if not np.isfinite(maps).all():
        raise ValueError("maps must be finite")


def _factorize(videos: ArrayLike | Sequence[Hashable], n: int) -> tuple[np.ndarray, list]:
    """Video ids `[n]` → (`codes [n]` int64, ids in order of first appearance)."""
    codes_of: dict[Hashable, int] = {}
    codes = [codes_of.setdefault(_plain(v), len(codes_of)) for v in videos]
    if len(codes) != n:
        raise ValueError(f"{len(codes)} video ids for {n} frames")
    return np.asarray(codes, np.int64), list(codes_of)


def _plain(value: Hashable) -> Hashable:
    """numpy scalars (e.g. `np.str_` from an array of names) → Python values for dict keys."""
    return value.item() if isinstance(value, np.generic) else value


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def region_recall(inside: ArrayLike, masks: ArrayLike) -> dict[str, float | int]:
    """The share of ground-truth regions (8-connected components of each frame's mask) that
    overlap a detection: `inside [N, H, W]` bool (pixels inside a box), `masks [N, H, W]` 0/1.
    Returns `recall` (0 without regions), `regions`, `found`."""
    inside, masks = np.asarray(inside, bool), np.asarray(masks) != 0
    if inside.shape != masks.shape:
        raise ValueError(f"detections {inside.shape} and masks {masks.shape} differ in shape")
    ids, count = scipy.ndimage.label(masks, IN_FRAME_8_CONNECTED)
    found = np.unique(ids[inside & masks])
    found = int((found > 0).sum())
    return {"recall": _ratio(found, count), "regions": int(count), "found": found}


def box_pointing(top_box: ArrayLike, masks: ArrayLike) -> dict[str, float | int]:
    """The object pointing game: the share of frames whose top object's box (`top_box
    [N, H, W]` bool, its pixels) holds ground-truth mask pixels (`masks [N, H, W]` 0/1).
    Returns `hit_rate` (0 without frames), `frames`, `hits`."""
    top_box, masks = np.asarray(top_box, bool), np.asarray(masks) != 0
    hits = int((top_box & masks).any(axis=(1, 2)).sum())
    return {"hit_rate": _ratio(hits, len(top_box)), "frames": len(top_box), "hits": hits}
