"""Tests of `jaxvad.metrics`: hand-computed cases (the arithmetic is in the comments) and the real
label files under `../shared/data` (skipped with a reason where that folder is missing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from jaxvad import metrics
from jaxvad.data import readers

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(*parts: str) -> Path:
    """A path under `../shared/data`; skips the test when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available here: {path} is missing (see its README)")
    return path


# ----------------------------------------------------------------------------- frame level


def test_perfect_reversed_and_tied_scores():
    labels = [0, 0, 1, 1]
    perfect = [0.1, 0.2, 0.8, 0.9]
    assert metrics.roc_auc_micro(perfect, labels) == 1.0
    assert metrics.pr_auc(perfect, labels) == 1.0
    # ROC points (FPR, TPR) per threshold ≥ t: inf (0,0), 0.9 (0,½), 0.8 (0,1), 0.2 (½,1),
    # 0.1 (1,1); FPR + TPR − 1 first reaches 0 exactly at t = 0.8, so EER = 0 with threshold
    # midway to the next lower score: (0.8 + 0.2) / 2 = 0.5.
    eer, threshold = metrics.equal_error_rate(perfect, labels)
    assert eer == 0.0
    assert threshold == pytest.approx(0.5)
    assert metrics.threshold_metrics(perfect, labels, threshold)["accuracy"] == 1.0

    reversed_scores = [0.9, 0.8, 0.2, 0.1]
    assert metrics.roc_auc_micro(reversed_scores, labels) == 0.0
    # Every pair tied: each of the 4 (anomalous, normal) pairs counts ½.
    assert metrics.roc_auc_micro([0.5] * 4, labels) == 0.5


def test_one_tie_by_counting_pairs():
    scores = [0.1, 0.4, 0.4, 0.6, 0.8]
    labels = [0, 0, 1, 0, 1]
    # Anomalous {0.4, 0.8} × normal {0.1, 0.4, 0.6} = 6 pairs:
    # 0.4 vs 0.1 → 1, 0.4 vs 0.4 → ½ (tie), 0.4 vs 0.6 → 0, 0.8 vs each → 3. AUC = 4.5 / 6.
    assert metrics.roc_auc_micro(scores, labels) == pytest.approx(0.75)
    # AP over distinct thresholds (score ≥ t): 0.8 → P 1, R ½; 0.6 → P ½, R ½; 0.4 → the tie
    # enters together: tp 2, fp 2, P ½, R 1. AP = ½·1 + 0·½ + ½·½ = 0.75.
    assert metrics.pr_auc(scores, labels) == pytest.approx(0.75)
    # ROC points: inf (0,0), 0.8 (0,½), 0.6 (⅓,½), 0.4 (⅔,1), 0.1 (1,1); FPR + TPR − 1 =
    # −1, −½, −⅙, ⅔, 1 → crossing on the segment 0.6 → 0.4 at f = (1/6) / (2/3 + 1/6) = 0.2:
    # EER = ⅓ + 0.2·⅓ = 0.4 (check: TPR = ½ + 0.2·½ = 0.6, 1 − TPR = 0.4); threshold =
    # 0.6 + 0.2·(0.4 − 0.6) = 0.56.
    eer, threshold = metrics.equal_error_rate(scores, labels)
    assert eer == pytest.approx(0.4)
    assert threshold == pytest.approx(0.56)


def test_macro_auc_pads_one_class_videos():
    scores = [0.3, 0.2, 0.6, 0.7, 0.4, 0.9, 0.5, 1.0]
    labels = [1, 0, 0, 1, 1, 1, 0, 0]
    videos = ["a", "b", "b", "a", "b", "b", "c", "c"]
    result = metrics.roc_auc_macro(scores, labels, videos)
    # a: all anomalous → scores [0, 0.3, 0.7, 1], labels [0, 1, 1, 1]: the pad 0 is below the
    #    three anomalous scores → AUC 1.
    # b: anomalous {0.4, 0.9} × normal {0.2, 0.6}: 0.4 beats 0.2 only, 0.9 beats both → 3/4.
    # c: all normal → scores [0, 0.5, 1.0, 1], labels [0, 0, 0, 1]: the pad 1 beats 0 and 0.5
    #    and ties the video's 1.0 → (1 + 1 + ½) / 3 = 5/6.
    assert list(result.per_video) == ["a", "b", "c"]
    assert result.per_video["a"] == 1.0
    assert result.per_video["b"] == pytest.approx(0.75)
    assert result.per_video["c"] == pytest.approx(5 / 6)
    assert result.padded == ("a", "c")
    assert result.value == pytest.approx((1 + 0.75 + 5 / 6) / 3)
    # Other pad values: a's anomalous scores now tie the low pad 0.3 once → (1 + 1 + ½) / 3.
    padded_high = metrics.roc_auc_macro(scores, labels, videos, pad_low=0.3, pad_high=2.0)
    assert padded_high.per_video["a"] == pytest.approx(5 / 6)


def test_threshold_metrics_and_oracle_threshold():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.5])
    labels = np.array([0, 0, 1, 1, 0])
    # score > 0.4 flags 0.8 (anomalous: tp) and 0.5 (normal: fp); 0.4 itself is not flagged.
    # tp 1, fp 1, fn 1 (0.35), tn 2 (0.1, 0.4): accuracy 3/5, precision ½, recall ½,
    # F1 = 2·1 / (2·1 + 1 + 1) = ½.
    assert metrics.threshold_metrics(scores, labels, 0.4) == {
        "accuracy": pytest.approx(0.6),
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "tp": 1,
        "fp": 1,
        "tn": 2,
        "fn": 1,
    }
    # Nothing flagged: tp = fp = 0, so precision (0/0), recall and F1 are 0.0 by convention.
    nothing = metrics.threshold_metrics(scores, labels, 1.0)
    assert (nothing["precision"], nothing["recall"], nothing["f1"]) == (0.0, 0.0, 0.0)
    assert (nothing["tn"], nothing["fn"]) == (3, 2)

    # F1 when flagging score ≥ s: 0.8 → 2/3; 0.5 → ½; 0.4 → 2/5; 0.35 → tp 2, fp 2 → 2/3;
    # 0.1 → 4/7. Best 2/3 at 0.8 and 0.35: the higher (0.8) wins, returned as the midpoint to
    # the next lower score for the ">" rule: (0.8 + 0.5) / 2 = 0.65.
    oracle = metrics.oracle_threshold(scores, labels)
    assert oracle == pytest.approx(0.65)
    best = metrics.threshold_metrics(scores, labels, oracle)["f1"]
    assert best == pytest.approx(2 / 3)
    candidates = [-1.0, 0.2, 0.36, 0.45, 0.6, 0.9]  # Every gap between distinct scores.
    assert all(metrics.threshold_metrics(scores, labels, t)["f1"] <= best for t in candidates)


def test_frame_inputs_are_checked():
    with pytest.raises(ValueError, match="both classes"):
        metrics.roc_auc_micro([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        metrics.pr_auc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="one length"):
        metrics.threshold_metrics([0.1, 0.2], [0, 1, 1], 0.5)
    with pytest.raises(ValueError, match="video ids"):
        metrics.roc_auc_macro([0.1, 0.2], [0, 1], ["a"])


# ----------------------------------------------------------------------------- pixel level


def test_pixel_scores_pool_all_pixels():
    maps = np.array([[[0.1, 0.4]], [[0.35, 0.8]]], np.float32)  # [2, 1, 2]
    masks = np.array([[[0, 0]], [[1, 1]]], np.uint8)
    result = metrics.pixel_scores(maps, masks)
    # Pooled: anomalous {0.35, 0.8} × normal {0.1, 0.4}: 0.35 beats 0.1, 0.8 beats both → 3/4.
    # AP: 0.8 → P 1, R ½; 0.4 → P ½, R ½; 0.35 → P ⅔, R 1 → ½·1 + 0 + ½·⅔ = 5/6.
    assert result["roc_auc"] == pytest.approx(0.75)
    assert result["average_precision"] == pytest.approx(5 / 6)


@pytest.mark.parametrize("levels", [5, 50, None])
def test_pixel_scores_summary_equals_sklearn_on_all_pixels(levels):
    # The weighted summary must give what scikit-learn gives on every pixel, with many ties
    # (5 or 50 score levels, so normal and anomalous pixels share scores) and without.
    rng = np.random.default_rng(levels)
    masks = rng.random((6, 20, 30)) < 0.1
    maps = rng.random((6, 20, 30)) + 0.3 * masks
    if levels is not None:
        maps = np.round(maps * levels) / levels
    maps = maps.astype(np.float32)
    result = metrics.pixel_scores(maps, masks.astype(np.uint8))
    labels, scores = masks.reshape(-1), maps.reshape(-1)
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    ap = average_precision_score(labels, scores)
    assert result["average_precision"] == pytest.approx(ap, abs=1e-12)


def square(mask: np.ndarray, frame: int, row: int, col: int, size: int = 2) -> None:
    mask[frame, row : row + size, col : col + size] = 1


@pytest.fixture(params=[1, 2, None], ids=["chunk1", "chunk2", "one_chunk"])
def frames_per_chunk(request, monkeypatch) -> None:
    """Runs a test with RBDC's frame blocks of 1, 2 or all 8×8 frames, so GT tracks and
    detections cross block boundaries."""
    if request.param is not None:
        monkeypatch.setattr(metrics, "PIXELS_PER_CHUNK", request.param * 8 * 8)


@pytest.mark.usefixtures("frames_per_chunk")
def test_rbdc_tbdc_perfect_when_maps_equal_masks():
    masks = np.zeros((6, 8, 8), np.uint8)
    for frame, col in enumerate((1, 2, 3)):  # Video v1: A moves right 1 px a frame → one track.
        square(masks, frame, 1, col)
    square(masks, 1, 5, 5)  # B: one frame only → its own track.
    square(masks, 3, 1, 3)  # Video v2 starts: P is where A was in frame 2, but another video.
    square(masks, 3, 5, 4)  # Q, apart from P in frame 3 ...
    masks[4, 1:7, 3:5] = 1  # ... and R in frame 4 touches both: P, Q, R form one track.
    videos = ["v1"] * 3 + ["v2"] * 3  # Frame 5 has no anomaly.
    result = metrics.rbdc_tbdc(masks.astype(np.float32), masks, videos)
    # Regions A0, A1, A2, B, P, Q, R; tracks {A0, A1, A2}, {B}, {P, Q, R}.
    assert (result["regions"], result["tracks"]) == (7, 3)
    # Two distinct map values ≤ 50 → thresholds {0, 1}: map > 0 is the mask itself (all regions
    # found with IoU 1, no false positive: point (0, 1)); map > 1 finds nothing (0, 0). Equal FPR
    # keeps the best rate: (0, 1), held to FPR 1 → area 1.
    np.testing.assert_array_equal(result["curve"]["thresholds"], [0.0, 1.0])
    assert result["rbdc"] == 1.0
    assert result["tbdc"] == 1.0


def test_rbdc_tbdc_zero_when_detections_miss():
    masks = np.zeros((3, 8, 8), np.uint8)
    square(masks, 0, 1, 1)
    square(masks, 1, 1, 2)
    maps = np.zeros((3, 8, 8), np.float32)
    maps[:, 6:, 6:] = 1.0  # One detected region per frame, disjoint from the ground truth.
    result = metrics.rbdc_tbdc(maps, masks, ["v"] * 3)
    # map > 0: 3 false positives in 3 frames, nothing detected → (1, 0); map > 1: (0, 0).
    np.testing.assert_allclose(result["curve"]["fp_per_frame"], [1.0, 0.0])
    assert result["rbdc"] == 0.0
    assert result["tbdc"] == 0.0


def partial_case() -> tuple[np.ndarray, np.ndarray]:
    """One video of 10 frames of 8×8: track T1 (2×2 square at rows 1-2, cols 1-2, frames 0-9)
    and track T2 (rows 5-6, cols 5-6, frames 0-4): 15 GT regions, 2 tracks."""
    masks = np.zeros((10, 8, 8), np.uint8)
    maps = np.zeros((10, 8, 8), np.float32)
    for frame in range(10):
        square(masks, frame, 1, 1)
    for frame in range(5):
        square(masks, frame, 5, 5)
    maps[0:2, 1:3, 1:3] = 1.0  # T1 found exactly in frames 0 and 1 (IoU 1).
    maps[2, :, 0] = 1.0  # Frame 2: column 0 (8 px) plus (1, 1), one 8-connected region of 9 px:
    maps[2, 1, 1] = 1.0  # IoU with T1 = 1 / (9 + 4 − 1) = 1/12 < 0.1 → a false positive.
    maps[3, 0:6, 0] = 1.0  # Frame 3: rows 0-5 of column 0 plus (1, 1), 7 px:
    maps[3, 1, 1] = 1.0  # IoU = 1 / (7 + 4 − 1) = 0.1 ≥ β → T1 found in frame 3.
    maps[0, 5:7, 5:7] = 0.5  # T2 found in frame 0 only, at the lower level.
    maps[5:10, 7, 7] = 0.5  # One-pixel false positives in frames 5-9, at the lower level.
    return maps, masks


@pytest.mark.usefixtures("frames_per_chunk")
def test_rbdc_tbdc_partial_by_hand():
    maps, masks = partial_case()
    result = metrics.rbdc_tbdc(maps, masks, ["v"] * 10, thresholds=[0.25, 0.75])
    # θ = 0.75 (value-1 pixels): GT regions found: T1 in frames 0, 1, 3 → RBDR 3/15 = 0.2;
    #   T1 3/10 ≥ α = 0.1 detected, T2 0/5 not → TBDR ½; false positives: frame 2 → FPR 1/10.
    # θ = 0.25 (adds the 0.5 pixels): T2 in frame 0 → RBDR 4/15, T2 1/5 ≥ 0.1 → TBDR 1;
    #   false positives 1 + 5 → FPR 0.6.
    assert (result["regions"], result["tracks"]) == (15, 2)
    curve = result["curve"]
    np.testing.assert_allclose(curve["fp_per_frame"], [0.6, 0.1])
    np.testing.assert_allclose(curve["rbdr"], [4 / 15, 0.2])
    np.testing.assert_allclose(curve["tbdr"], [1.0, 0.5])
    # Curve (0, 0.2) [start held at the rate of the smallest FPR], (0.1, 0.2), (0.6, 4/15),
    # (1, 4/15) [held to FPR 1]: 0.1·0.2 + 0.5·(0.2 + 4/15)/2 + 0.4·4/15
    # = 6/300 + 35/300 + 32/300 = 73/300.
    assert result["rbdc"] == pytest.approx(73 / 300)
    # (0, ½), (0.1, ½), (0.6, 1), (1, 1): 0.05 + 0.5·1.5/2 + 0.4 = 0.825.
    assert result["tbdc"] == pytest.approx(0.825)

    # Default thresholds: 3 distinct values ≤ 50 → {0, 0.5, 1}: map > 0 and map > 0.5 are the
    # two levels above; map > 1 fires nowhere, the point (0, 0), which now starts the curve:
    # RBDC = 0.1·(0 + 0.2)/2 + 35/300 + 32/300 = 3/300 + 67/300 = 7/30;
    # TBDC = 0.1·(0 + ½)/2 + 0.375 + 0.4 = 0.8.
    default = metrics.rbdc_tbdc(maps, masks, ["v"] * 10)
    np.testing.assert_array_equal(default["curve"]["thresholds"], [0.0, 0.5, 1.0])
    assert default["rbdc"] == pytest.approx(7 / 30)
    assert default["tbdc"] == pytest.approx(0.8)


def test_rbdc_alpha_and_beta_change_the_decisions():
    maps, masks = partial_case()
    # β = 0.2: frame 3's IoU 0.1 no longer counts, and that region becomes a false positive:
    # θ = 0.75 → RBDR 2/15, FPR 0.2. α = 0.25: T1's 2/10 and T2's 1/5 fall short → TBDR 0.
    result = metrics.rbdc_tbdc(maps, masks, ["v"] * 10, thresholds=[0.75], beta=0.2, alpha=0.25)
    np.testing.assert_allclose(result["curve"]["fp_per_frame"], [0.2])
    np.testing.assert_allclose(result["curve"]["rbdr"], [2 / 15])
    # One point: held flat from FPR 0 to 1 → the area is the rate itself.
    assert result["rbdc"] == pytest.approx(2 / 15)
    assert result["tbdc"] == 0.0


def test_area_cut_at_one_false_positive_per_frame():
    # Points (0, 0.2), (0.5, 0.6), (0.5, 0.1) [same FPR: the best rate 0.6 stays], (2, 0.9).
    # At FPR 1: 0.6 + (0.5 / 1.5)·0.3 = 0.7. Area = 0.5·(0.2 + 0.6)/2 + 0.5·(0.6 + 0.7)/2
    # = 0.2 + 0.325 = 0.525.
    fpr = np.array([0.0, 0.5, 0.5, 2.0])
    rate = np.array([0.2, 0.6, 0.1, 0.9])
    assert metrics._area_up_to_one_fp(fpr, rate) == pytest.approx(0.525)
    # Only FPR above 1: held at its rate from 0 and cut at 1 → the rate.
    assert metrics._area_up_to_one_fp(np.array([3.0]), np.array([0.4])) == pytest.approx(0.4)


def test_rbdc_needs_ground_truth():
    with pytest.raises(ValueError, match="no anomalous pixel"):
        metrics.rbdc_tbdc(np.ones((2, 4, 4)), np.zeros((2, 4, 4)), [0, 0])


# ----------------------------------------------------------------------------- real labels


def test_real_ped2_frame_labels_micro_auc():
    labels = readers.load_npy(shared("labels", "concatenated", "frame_labels_ped2.npy"), 1)
    noise = np.random.default_rng(0).uniform(0, 0.1, labels.size)
    scores = labels + noise  # Every anomalous frame ≥ 1 > every normal frame's < 0.1.
    assert metrics.roc_auc_micro(scores, labels) == 1.0
    assert metrics.pr_auc(scores, labels) == pytest.approx(1.0)  # A sum of 1,648 steps.
    assert metrics.equal_error_rate(scores, labels)[0] == 0.0


def test_real_avenue_mask_labels_pad_entirely_abnormal_videos():
    per_video = readers.read_keyed_mat_labels(shared("labels", "avenue", "avenue_mask_derived.mat"))
    labels = np.concatenate(list(per_video.values()))
    videos = np.repeat(list(per_video), [len(v) for v in per_video.values()])
    # Scores in the open interval (0, 1), unrelated to the labels.
    scores = np.random.default_rng(0).uniform(0.01, 0.99, labels.size)
    result = metrics.roc_auc_macro(scores, labels, videos)
    assert result.padded == ("08", "18")
    assert list(result.per_video) == [f"{i:02d}" for i in range(1, 22)]
    # A padded all-anomalous video: the only normal frame is the pad 0, below all → AUC 1.
    assert result.per_video["08"] == result.per_video["18"] == 1.0
    others = [auc for name, auc in result.per_video.items() if name not in ("08", "18")]
    assert result.value == pytest.approx((2 + sum(others)) / 21)


def test_real_ped2_masks_rbdc_perfect():
    gt = shared("ped2", "Test", "Test001_gt")
    masks = readers.ImageMasks(gt).load()  # [180, 240, 360]
    result = metrics.rbdc_tbdc(masks.astype(np.float32), masks, ["Test001"] * len(masks))
    assert result["regions"] >= result["tracks"] >= 1
    assert result["rbdc"] == 1.0
    assert result["tbdc"] == 1.0


def test_region_recall_counts_the_mask_components_a_box_overlaps():
    masks = np.zeros((2, 10, 10), np.uint8)
    masks[0, 1:3, 1:3] = 1  # region A (frame 0)
    masks[0, 6:9, 6:9] = 1  # region B (frame 0)
    masks[1, 0:2, 8:10] = 1  # region C (frame 1)
    inside = np.zeros((2, 10, 10), bool)
    inside[0, 2:5, 2:5] = True  # overlaps A by one pixel
    inside[1, 0:2, 8:10] = True  # covers C
    inside[1, 6:9, 6:9] = True  # where B is, but in the other frame
    assert metrics.region_recall(inside, masks) == {"recall": 2 / 3, "regions": 3, "found": 2}


def test_box_pointing_asks_whether_the_top_box_holds_mask_pixels():
    masks = np.zeros((3, 10, 10), np.uint8)
    masks[:, 4:6, 4:6] = 1
    top = np.zeros((3, 10, 10), bool)
    top[0, 5:9, 5:9] = True  # touches the mask
    top[1, 0:3, 0:3] = True  # elsewhere; frame 2 has no box
    assert metrics.box_pointing(top, masks) == {"hit_rate": 1 / 3, "frames": 3, "hits": 1}
