"""Tests of `jaxvad.weak_metrics`: hand-computed cases (the arithmetic is in the comments),
scikit-learn for the frame metrics, and a loop-by-loop re-statement of VadCLIP's detection mAP
(`getLocMAP` in its `src/utils/*_detectionMAP.py`) on random scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from jaxvad import weak_metrics as wm
from jaxvad.weak_metrics import Segments

# ----------------------------------------------------------------------------- frame level


def test_frame_auc_and_ap_equal_sklearn_on_pooled_repeated_frames():
    rng = np.random.default_rng(0)
    snippets = [7, 3, 12, 5]
    scores = [rng.random(t) for t in snippets]
    labels = [rng.integers(0, 2, 16 * t) for t in snippets]
    pooled_scores = np.concatenate([np.repeat(s, 16) for s in scores])
    pooled_labels = np.concatenate(labels)
    assert wm.frame_auc(scores, labels, frames_per_snippet=16) == pytest.approx(
        roc_auc_score(pooled_labels, pooled_scores), abs=1e-12
    )
    assert wm.frame_ap(scores, labels, frames_per_snippet=16) == pytest.approx(
        average_precision_score(pooled_labels, pooled_scores), abs=1e-12
    )


def test_frame_auc_pools_videos_rather_than_averaging_them():
    # Each video alone is ranked perfectly (AUC 1), but video 2's normal frame (0.8) outscores
    # video 1's anomalous frame (0.6): pooled, 1 of the 4 (anomalous, normal) pairs is wrong.
    scores = [[0.1, 0.6], [0.8, 0.9]]
    labels = [[0, 1], [0, 1]]
    assert wm.frame_auc(scores, labels) == pytest.approx(0.75)


def test_frame_labels_must_cover_the_repeated_snippets():
    with pytest.raises(ValueError, match="frame labels"):
        wm.frame_auc([[0.1, 0.9]], [[0, 1] * 15], frames_per_snippet=16)  # 30 labels, 32 frames.


def test_category_accuracy_counts_anomalous_videos_only():
    true = [0, 0, 1, 2, 2, 3]
    predicted = [1, 0, 1, 2, 0, 1]
    # Anomalous videos: classes 1, 2, 2, 3 → predicted 1 ✓, 2 ✓, 0 ✗, 1 ✗ → 2/4. The normal
    # videos (one of them misclassified) do not count.
    assert wm.category_accuracy(predicted, true) == 0.5
    assert wm.category_accuracy(predicted, true, normal_class=None) == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="no anomalous video"):
        wm.category_accuracy([0, 1], [0, 0])


# ----------------------------------------------------------------------------- segments


def test_segments_from_scores_by_hand():
    # 4 snippets × 4 frames = 16 frames, so the video class score is the top 16 // 16 = 1 frame.
    # Class 0: 0.1 0.9 0.8 0.2 → threshold 0.9 − 0.6·0.8 = 0.42 → snippets 1–2 = frames [4, 12),
    # score 0.9 + 0.7·0.9 = 1.53. Class 1 (= 1 − class 0): snippets 0 and 3 → [0, 4) scored
    # 0.9 + 0.63 = 1.53 and [12, 16) scored 0.8 + 0.63 = 1.43.
    probs = np.array([[0.1, 0.9], [0.9, 0.1], [0.8, 0.2], [0.2, 0.8]])
    segments = wm.segments_from_scores(probs, frames_per_snippet=4)
    np.testing.assert_array_equal(segments.start, [4, 0, 12])
    np.testing.assert_array_equal(segments.end, [12, 4, 16])
    np.testing.assert_array_equal(segments.label, [0, 1, 1])
    np.testing.assert_allclose(segments.score, [1.53, 1.53, 1.43])


def test_segment_builder_top_mean_and_short_runs():
    # 32 frames, one per snippet: the class score is the mean of the top 32 // 16 = 2 frames,
    # (1.0 + 0.8) / 2 = 0.9. Threshold 1.0 − 0.6·1.0 = 0.4: the run [3, 4) is 1 frame (dropped),
    # [10, 14) stays, scored 0.8 + 0.7·0.9 = 1.43.
    column = np.zeros(32)
    column[3], column[10:14] = 1.0, 0.8
    segments = wm.segments_from_scores(column[:, None], frames_per_snippet=1)
    assert (segments.start.tolist(), segments.end.tolist()) == ([10], [14])
    np.testing.assert_allclose(segments.score, [1.43])


def test_no_segments_from_short_videos_or_flat_columns():
    assert wm.segments_from_scores(np.full((15, 1), 0.5), frames_per_snippet=1).start.size == 0
    flat = np.tile([0.3, 0.7], (20, 1))  # Every frame equals the column maximum: none is above.
    assert wm.segments_from_scores(flat, frames_per_snippet=16).start.size == 0


def test_vadclip_ground_truth_files():
    segments = [[["157", "180"], ["185", "244"]], [[0, 3728]]]
    labels = [["B2", "G"], ["A"]]
    truth = wm.vadclip_ground_truth(segments, labels, ["A", "B1", "B2", "G"])
    assert truth[0].start.tolist() == [157, 185] and truth[0].end.tolist() == [180, 244]
    assert truth[0].label.tolist() == [2, 3] and truth[1].label.tolist() == [0]
    # UCF-Crime's list names the normal class "Normal", its files say "A".
    ucf = wm.vadclip_ground_truth(segments[1:], labels[1:], ["Normal"], ignore_labels=("A",))
    assert ucf[0].start.size == 0
    with pytest.raises(ValueError, match="'A' is not in class_names"):
        wm.vadclip_ground_truth(segments[1:], labels[1:], ["Normal"])


# ----------------------------------------------------------------------------- detection mAP


def test_perfect_predictions_give_map_one():
    truth = [Segments.of([(0, 32, 1), (48, 80, 2)]), Segments.of([(16, 64, 0)])]
    predictions = [
        Segments.of([(0, 32, 1), (48, 80, 2)], [0.9, 0.8]),
        Segments.of([(16, 64, 0)], [0.7]),
    ]
    result = wm.detection_map(predictions, truth, num_classes=3)
    assert result.map_per_iou == dict.fromkeys(wm.DEFAULT_IOU_THRESHOLDS, 1.0)
    assert result.average == 1.0
    assert result.ap.shape == (5, 3)


def test_iou_exactly_point_four_counts_up_to_point_four():
    # [0, 4) against [0, 10): 4 shared frames of 10 → IoU 4/10 = 0.4 exactly.
    truth = [Segments.of([(0, 10, 0)])]
    predictions = [Segments.of([(0, 4, 0)], [1.0])]
    result = wm.detection_map(predictions, truth, num_classes=1)
    assert list(result.map_per_iou.values()) == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert result.average == pytest.approx(0.8)


def test_wrong_class_or_wrong_video_gives_zero():
    truth = [Segments.of([(0, 10, 0)]), Segments.of([])]
    wrong_class = [Segments.of([(0, 10, 1)], [1.0]), Segments.of([])]
    wrong_video = [Segments.of([]), Segments.of([(0, 10, 0)], [1.0])]
    for predictions in (wrong_class, wrong_video):
        result = wm.detection_map(predictions, truth, num_classes=2)
        assert result.average == 0.0


def test_ap_of_a_ranked_list_by_hand():
    # Class 0 has 3 ground-truth segments. Ranked predictions: 0.9 a false positive, 0.8 a hit,
    # 0.7 a second hit on the same segment (used up: false positive), 0.6 a hit.
    # AP = (P_2 + P_4) / 3 = (1/2 + 2/4) / 3 = 1/3.
    truth = [Segments.of([(0, 10, 0), (20, 30, 0)]), Segments.of([(5, 15, 0)])]
    predictions = [
        Segments.of([(40, 50, 0), (0, 10, 0), (1, 10, 0)], [0.9, 0.8, 0.7]),
        Segments.of([(5, 15, 0)], [0.6]),
    ]
    result = wm.detection_map(predictions, truth, iou_thresholds=(0.5,), num_classes=1)
    assert result.map_per_iou[0.5] == pytest.approx(1 / 3)


def test_map_averages_over_classes_without_ground_truth():
    # Class 1 has predictions but no ground truth: AP 0, still in the mean (as in VadCLIP).
    truth = [Segments.of([(0, 10, 0)])]
    predictions = [Segments.of([(0, 10, 0), (20, 30, 1)], [1.0, 0.5])]
    result = wm.detection_map(predictions, truth, num_classes=2)
    np.testing.assert_array_equal(result.ap[:, 1], 0.0)
    assert result.average == 0.5


def vadclip_restated(
    probs_per_video: list[np.ndarray],
    truth: list[list[tuple[int, int, int]]],
    num_classes: int,
    iou_threshold: float,
) -> float:
    """VadCLIP's `getLocMAP` written out with plain loops (one threshold ratio, so no NMS)."""
    aps = []
    for c in range(num_classes):
        found = []  # (score, video, start, end)
        for v, probs in enumerate(probs_per_video):
            frames = np.repeat(probs, 16, axis=0)
            column = list(frames[:, c])
            k = len(column) // 16
            top = sorted(column, reverse=True)[:k]
            class_score = sum(top) / k
            if class_score <= 0:
                continue
            cut = max(column) - (max(column) - min(column)) * 0.6
            flags = [0] + [int(x > cut) for x in column] + [0]
            starts = [i for i in range(1, len(flags)) if flags[i] - flags[i - 1] == 1]
            ends = [i for i in range(1, len(flags)) if flags[i] - flags[i - 1] == -1]
            for s, e in zip(starts, ends, strict=True):
                s, e = s - 1, e - 1
                if e - s >= 2:
                    found.append((max(column[s:e]) + 0.7 * class_score, v, s, e))
        found.sort(key=lambda row: -row[0])
        left = [(v, s, e) for v, rows in enumerate(truth) for s, e, label in rows if label == c]
        total = len(left)
        tp = []
        for _, v, s, e in found:
            best, best_j = 0.0, None
            for j, (gv, gs, ge) in enumerate(left):
                if gv != v:
                    continue
                a, b = set(range(s, e)), set(range(gs, ge))
                iou = len(a & b) / len(a | b)
                if iou >= iou_threshold and iou > best:
                    best, best_j = iou, j
            if best_j is not None:
                del left[best_j]
            tp.append(best_j is not None)
        hits = sum(tp)
        precision_sum = sum(sum(tp[: i + 1]) / (i + 1) for i, t in enumerate(tp) if t)
        aps.append(precision_sum / total if hits else 0.0)
    return sum(aps) / num_classes


def test_parity_with_vadclip_restated_on_random_scores():
    rng = np.random.default_rng(1)
    num_classes, probs_per_video, truth = 4, [], []
    for _ in range(10):
        snippets = int(rng.integers(8, 40))
        logits = 2 * rng.normal(size=(snippets, num_classes))
        probs_per_video.append(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))
        rows = []
        for _ in range(int(rng.integers(1, 4))):
            s = int(rng.integers(0, 16 * snippets - 20))
            rows.append((s, int(s + rng.integers(10, 16 * snippets - s + 1)), int(rng.integers(4))))
        truth.append(rows)
    predictions = [wm.segments_from_scores(p) for p in probs_per_video]
    result = wm.detection_map(predictions, [Segments.of(r) for r in truth], num_classes=4)
    expected = [vadclip_restated(probs_per_video, truth, 4, t) for t in wm.DEFAULT_IOU_THRESHOLDS]
    np.testing.assert_allclose(list(result.map_per_iou.values()), expected, atol=1e-12)
    assert 0 < result.average < 1  # Neither trivially perfect nor empty.
    assert len(set(expected)) > 1  # The thresholds matter on this data.
