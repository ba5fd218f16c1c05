"""Objects (`jaxvad.data.objects`): the automatic detector on synthetic clips at full size
(240×360), MOTChallenge box files and IoU tracks.

The true box of an actor (walker or anomaly) in a frame is the bounding box of its own mask: the
clip's plan rendered with that actor alone, as its only anomaly, so actors that touch or occlude
each other still have one box each. Two kinds of object-frames cannot be asked of a
background-subtraction detector and are counted apart, not asserted:
- `near`: another actor covers a pixel within `close_kernel` px of the box, so closing may join
  both into one foreground component (one box for the two);
- `partial`: the box touches the image border and the mask shows fewer than twice `min_area`
  pixels (an actor mostly out of view).
Every other ("clear") object-frame must be found: a detected box with IoU ≥ 0.5.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from jaxvad.data import flow, objects, synthetic
from jaxvad.data.video_io import DataError

SETTINGS = objects.BoxSettings()
# Test clips 0–4 are those of the full synthetic dataset (each clip has its own generator) and,
# being 5 consecutive clips, hold every anomaly kind.
SPEC = dataclasses.replace(synthetic.FULL, train_clips=1, test_clips=5)
H, W = SPEC.height, SPEC.width
NEAR = SETTINGS.close_kernel
PARTIAL_AREA = 2 * SETTINGS.min_area


@dataclass(frozen=True)
class Truth:
    """One actor in one frame: its true box `[4]` and whether it is clear, near or partial."""

    frame: int
    box: np.ndarray
    kind: str
    category: str  # "clear", "near" or "partial"


def _alone(plan: synthetic.ClipPlan, actors: tuple[synthetic.Actor, ...]) -> np.ndarray:
    """`[N, H, W]` bool: the pixels `actors` cover, drawn without the rest of the clip."""
    alone = dataclasses.replace(plan, split="test", walkers=(), anomalies=actors)
    return synthetic.render_clip(SPEC, alone)[1] > 0


def _truths(plan: synthetic.ClipPlan, targets: tuple[synthetic.Actor, ...]) -> list[Truth]:
    """The true boxes of `targets` in every frame where they show, with their category."""
    everyone = _alone(plan, plan.walkers + plan.anomalies)
    truths = []
    for actor in targets:
        own = _alone(plan, (actor,))
        for t in np.flatnonzero(own.any(axis=(1, 2))):
            ys, xs = np.nonzero(own[t])
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            around = (slice(max(y0 - NEAR, 0), y1 + NEAR), slice(max(x0 - NEAR, 0), x1 + NEAR))
            near = (everyone[t] & ~own[t])[around].any()
            edge = x0 == 0 or y0 == 0 or x1 == W or y1 == H
            category = "near" if near else "partial" if edge and len(xs) < PARTIAL_AREA else "clear"
            box = np.array([x0, y0, x1, y1], np.float32)
            truths.append(Truth(int(t), box, actor.kind, category))
    return truths


def _found(truth: Truth, boxes: list[np.ndarray]) -> bool:
    return bool(objects.box_iou(truth.box, boxes[truth.frame]).max(initial=0) >= 0.5)


def _report(name: str, truths: list[Truth], boxes: list[np.ndarray]) -> dict[str, float]:
    """Found fraction per category (printed) and the clear object-frames that were missed."""
    fractions = {}
    for category in ("clear", "near", "partial"):
        hits = [_found(t, boxes) for t in truths if t.category == category]
        fractions[category] = float(np.mean(hits)) if hits else float("nan")
        print(f"{name}: {category} {sum(hits)}/{len(hits)} found ({fractions[category]:.3f})")
    return fractions


@dataclass(frozen=True)
class Clip:
    plan: synthetic.ClipPlan
    frames: np.ndarray  # [N, H, W] uint8
    masks: np.ndarray | None  # [N, H, W] uint8 (None for train clips)
    boxes: list[np.ndarray]
    seconds: float  # detection time


def _clip(split: str, index: int) -> Clip:
    plan = synthetic.plan_clip(SPEC, split, index)
    frames, masks, _ = synthetic.render_clip(SPEC, plan)
    start = time.perf_counter()
    boxes = objects.detect_boxes(frames)
    return Clip(plan, frames, masks, boxes, time.perf_counter() - start)


@pytest.fixture(scope="module")
def anomaly_clips() -> list[Clip]:
    return [_clip("test", i) for i in range(SPEC.test_clips)]


@pytest.fixture(scope="module")
def train_clip() -> Clip:
    return _clip("train", 0)


# --- the automatic detector ---------------------------------------------------------------------


def test_every_clear_anomalous_object_is_found(anomaly_clips):
    kinds = {a.kind for clip in anomaly_clips for a in clip.plan.anomalies}
    assert kinds == set(synthetic.ANOMALY_KINDS)
    truths, boxes = [], []
    for clip in anomaly_clips:
        # The anomalies drawn alone cover exactly the clip's anomaly mask.
        np.testing.assert_array_equal(_alone(clip.plan, clip.plan.anomalies), clip.masks > 0)
        offset = len(boxes)
        truths += [
            dataclasses.replace(t, frame=t.frame + offset)
            for t in _truths(clip.plan, clip.plan.anomalies)
        ]
        boxes += clip.boxes
    fractions = _report("anomalies", truths, boxes)
    missed = [
        (t.kind, t.frame, t.box.tolist())
        for t in truths
        if t.category == "clear" and not _found(t, boxes)
    ]
    clear = sum(t.category == "clear" for t in truths)
    assert clear >= 400, "too few clear anomalous object-frames for a meaningful test"
    assert not missed, f"{len(missed)}/{clear} clear anomalous objects missed: {missed[:5]}"
    assert {t.kind for t in truths if t.category == "clear"} == kinds
    # Excluded object-frames are still mostly found: no category is ignored altogether.
    assert np.mean([_found(t, boxes) for t in truths]) >= 0.85
    assert fractions["near"] >= 0.4
    frames = sum(len(c.frames) for c in anomaly_clips)
    print(
        f"boxes per test frame {np.mean([len(b) for b in boxes]):.2f}, "
        f"{frames / sum(c.seconds for c in anomaly_clips):.0f} frames/s at {H}×{W}"
    )


def test_boxes_lie_on_actors(anomaly_clips, train_clip):
    """Precision: boxes cover actors. (Measured: the few boxes on no actor are all in test clip
    3, ghosts that a slow vehicle in view throughout leaves where its body was most of the time.)"""

    def empty_boxes(clip: Clip) -> tuple[int, int, float]:
        everyone = _alone(clip.plan, clip.plan.walkers + clip.plan.anomalies)
        covers = [
            everyone[t, y0:y1, x0:x1].mean()
            for t, frame_boxes in enumerate(clip.boxes)
            for x0, y0, x1, y1 in frame_boxes.astype(int)
        ]
        return sum(c == 0 for c in covers), len(covers), min(covers)

    empty, total, least = empty_boxes(train_clip)
    assert total > len(train_clip.frames)
    assert empty == 0 and least >= 0.25, (empty, least)
    counts = np.array([empty_boxes(clip)[:2] for clip in anomaly_clips])
    print(f"test boxes on no actor: {counts[:, 0].tolist()} of {counts[:, 1].tolist()}")
    assert counts[:, 0].sum() <= 0.03 * counts[:, 1].sum()


def test_normal_walkers_are_found(train_clip):
    truths = _truths(train_clip.plan, train_clip.plan.walkers)
    _report("walkers", truths, train_clip.boxes)
    clear = [t for t in truths if t.category == "clear"]
    missed = [(t.frame, t.box.tolist()) for t in clear if not _found(t, train_clip.boxes)]
    assert len(clear) >= 300 and not missed, missed[:5]
    in_view = {t.frame for t in truths if t.category != "partial"}
    empty = [t for t in range(len(train_clip.frames)) if len(train_clip.boxes[t]) == 0]
    print(f"train frames with no box: {len(empty)}/{len(train_clip.frames)}")
    assert not in_view & set(empty)


def test_static_scene_gives_no_boxes():
    plan = synthetic.plan_clip(SPEC, "train", 0)
    frames, _, _ = synthetic.render_clip(SPEC, dataclasses.replace(plan, walkers=(), n_frames=60))
    assert frames.std(axis=0).mean() > 2  # sensor noise and flicker are there
    assert all(len(b) == 0 for b in objects.detect_boxes(frames))


def _rider_window(anomaly_clips: list[Clip], length: int = 40) -> tuple[Clip, slice]:
    """The test clip with the fast rider, and the `length` frames after it enters."""
    clip = next(c for c in anomaly_clips if c.plan.anomalies[0].kind == "fast_rider")
    first = int(np.flatnonzero(_alone(clip.plan, clip.plan.anomalies[:1]).any(axis=(1, 2)))[0])
    return clip, slice(first, first + length)


def test_motion_is_required_and_flow_supplies_it(anomaly_clips):
    clip, window = _rider_window(anomaly_clips)
    frames = clip.frames[window]
    rider = clip.plan.anomalies[0]
    truths = [t for t in _truths(clip.plan, (rider,)) if window.start <= t.frame < window.stop]
    truths = [dataclasses.replace(t, frame=t.frame - window.start) for t in truths]
    clear = [t for t in truths if t.category == "clear"]
    assert len(clear) >= 15
    no_difference = dataclasses.replace(SETTINGS, diff_threshold=255)
    # Without motion no component is an object.
    assert all(len(b) == 0 for b in objects.detect_boxes(frames, None, no_difference))
    pixels = flow.video_flow(frames) * flow.flow_scale(W)  # px/frame at the original size
    boxes = objects.detect_boxes(frames, pixels, no_difference)
    assert all(_found(t, boxes) for t in clear)
    both = objects.detect_boxes(frames, pixels)  # frame difference or flow
    assert all(_found(t, both) for t in clear)


def test_detector_output_is_deterministic_sorted_and_colour_blind(anomaly_clips):
    clip, window = _rider_window(anomaly_clips)
    frames = clip.frames[window]
    boxes = objects.detect_boxes(frames)
    rgb = objects.detect_boxes(np.repeat(frames[..., None], 3, axis=-1))
    assert sum(len(b) for b in boxes) >= len(frames)
    for ours, again, colour in zip(boxes, objects.detect_boxes(frames), rgb, strict=True):
        assert ours.dtype == np.float32 and ours.shape[1] == 4
        np.testing.assert_array_equal(ours, again)
        np.testing.assert_array_equal(ours, colour)
        np.testing.assert_array_equal(ours, ours[np.lexsort(ours.T[::-1])])
        assert (ours[:, :2] >= 0).all() and (ours[:, 2] <= W).all() and (ours[:, 3] <= H).all()
        assert (ours[:, 2:] > ours[:, :2]).all()
    with pytest.raises(ValueError, match="flows"):
        objects.detect_boxes(frames, np.zeros((len(frames), H, W // 2, 2), np.float32))


def test_boxes_that_cover_each_other_merge():
    """A ring with a separate disc inside: two components, one object, one box."""
    rng = np.random.default_rng(0)
    background = synthetic.render_background(SPEC).astype(np.float32)
    frames, rings = [], []
    for t in range(30):
        shape = np.zeros((H, W), np.uint8)
        centre = (60 + 4 * t, 150)
        cv2.circle(shape, centre, 20, 1, -1)
        cv2.circle(shape, centre, 13, 0, -1)
        ring = np.array([centre[0] - 20, centre[1] - 20, centre[0] + 21, centre[1] + 21])
        cv2.circle(shape, centre, 7, 1, -1)
        frame = np.where(shape > 0, 40.0, background) + rng.normal(0, 2.5, (H, W))
        frames.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
        rings.append(ring)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (SETTINGS.close_kernel,) * 2)
    closed = cv2.morphologyEx(shape, cv2.MORPH_CLOSE, kernel)
    assert cv2.connectedComponents(closed)[0] == 3  # background, ring, disc
    for ring, boxes in zip(rings, objects.detect_boxes(np.stack(frames)), strict=True):
        assert len(boxes) == 1
        assert objects.box_iou(ring, boxes)[0, 0] >= 0.9


def test_settings_are_checked():
    for bad in ({"merge_overlap": 0}, {"background_ratio": 1.5}, {"min_area": 0}):
        with pytest.raises(ValueError):
            objects.BoxSettings(**bad)


# --- MOTChallenge files -------------------------------------------------------------------------


def test_mot_file_round_trips(tmp_path):
    path = tmp_path / "Test001.txt"
    path.write_text(
        "1,-1,10,20,30,40,0.9,-1,-1,-1\n"
        "\n"
        "3,7,100.5,50,20.25,10,0.5\n"
        "1,2,5,5,10,10\n"
        "3,8,350,230,20,20,1\n"  # clipped to the 360×240 image
        "  \n"
        "3,9,-4,-6,10,10,1\n"  # clipped at the top-left corner
    )
    boxes = objects.read_mot(objects.mot_path(tmp_path, "Test001"), 4, W, H)
    assert len(boxes) == 4 and all(b.dtype == np.float32 for b in boxes)
    np.testing.assert_array_equal(boxes[0], [[5, 5, 15, 15], [10, 20, 40, 60]])
    assert boxes[1].shape == (0, 4) and boxes[3].shape == (0, 4)
    np.testing.assert_array_equal(
        boxes[2], [[0, 0, 6, 4], [100.5, 50, 120.75, 60], [350, 230, 360, 240]]
    )


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("2,1,10,10,5", "at least 6"),
        ("2,1,10,ten,5,5", "must be numbers"),
        ("2,1,10,nan,5,5", "must be numbers"),
        ("0,1,10,10,5,5", "1..4"),
        ("5,1,10,10,5,5", "1..4"),
        ("2.5,1,10,10,5,5", "1..4"),
        ("2,1,10,10,0,5", "positive"),
        ("2,1,10,10,5,-3", "positive"),
        ("2,1,360,10,5,5", "outside"),
        ("2,1,-20,10,20,5", "outside"),
    ],
)
def test_bad_mot_line_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "video.txt"
    path.write_text(f"1,1,0,0,10,10,1\n\n{line}\n")
    with pytest.raises(DataError, match=problem) as error:
        objects.read_mot(path, 4, W, H)
    assert str(path) in str(error.value) and "line 3:" in str(error.value)


def test_missing_mot_file(tmp_path):
    with pytest.raises(DataError, match="Test002") as error:
        objects.mot_path(tmp_path, "Test002")
    assert str(tmp_path / "Test002.txt") in str(error.value)
    with pytest.raises(DataError, match="unreadable"):
        objects.read_mot(tmp_path / "Test002.txt", 4, W, H)


# --- tracks -------------------------------------------------------------------------------------


def test_box_iou_matches_its_definition():
    a = np.array([[0, 0, 4, 4], [10, 10, 12, 12]], np.float32)
    b = np.array([[2, 2, 6, 8], [0, 0, 4, 4], [20, 20, 30, 30]], np.float32)
    inter = (4 - 2) * (4 - 2)
    expected = inter / (4 * 4 + 4 * 6 - inter)
    iou = objects.box_iou(a, b)
    assert iou.shape == (2, 3) and iou.dtype == np.float32
    np.testing.assert_allclose(iou[0], [expected, 1, 0], rtol=1e-6)
    np.testing.assert_array_equal(iou[1], [0, 0, 0])
    assert objects.box_iou(a, np.zeros((0, 4))).shape == (2, 0)


def test_tracks_keep_ids_and_start_new_ones():
    def box(x, y):
        return [x, y, x + 10, y + 20]

    frames = [
        np.array([box(0, 0), box(100, 0)], np.float32),  # A, B
        np.array([box(2, 0), box(97, 0)], np.float32),  # both moved a little
        np.array([box(4, 0), box(50, 50), box(94, 0)], np.float32),  # C appears between them
        np.array([box(53, 50), box(91, 0)], np.float32),  # A left the scene
        np.zeros((0, 4), np.float32),
        np.array([box(91, 0)], np.float32),  # after a gap, a box is a new track
    ]
    tracks = objects.link_tracks(frames)
    assert [t.tolist() for t in tracks] == [[0, 1], [0, 1], [0, 2, 1], [2, 1], [], [3]]
    assert all(t.dtype == np.int32 for t in tracks)


def test_each_previous_box_continues_one_track():
    frames = [
        np.array([[0, 0, 10, 10]], np.float32),
        np.array([[0, 0, 10, 9], [1, 0, 11, 10]], np.float32),  # IoU 0.9 and 9/11 with it
    ]
    assert [t.tolist() for t in objects.link_tracks(frames)] == [[0], [0, 1]]
    assert [t.tolist() for t in objects.link_tracks(frames, iou_threshold=0.95)] == [[0], [1, 2]]
    with pytest.raises(ValueError):
        objects.link_tracks(frames, iou_threshold=0)
