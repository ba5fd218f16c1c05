"""Tests of the synthetic Ped2-like dataset: determinism, layout on disk, labels vs masks, scene
rules (walkers on the walkway, anomaly kinds and speeds) and the write-once behaviour."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from jaxvad.data import synthetic
from jaxvad.data.synthetic import FULL, TINY, SyntheticSpec

GT_LINE = re.compile(r"^TestVideoFile\{end\+1\}\.gt_frame = \[(.*)\];$")


def parse_m(path: Path) -> list[set[int]]:
    """Anomalous 1-based frame numbers per test clip, from a UCSDped2.m-style file."""
    lines = path.read_text().splitlines()
    assert lines[0] == "TestVideoFile = {};"
    clips = []
    for line in lines[1:]:
        match = GT_LINE.match(line)
        assert match, line
        frames: set[int] = set()
        for part in filter(None, (p.strip() for p in match.group(1).split(","))):
            first, last = (int(v) for v in part.split(":"))
            frames.update(range(first, last + 1))
        clips.append(frames)
    return clips


def read_images(folder: Path, suffix: str) -> np.ndarray:
    files = sorted(folder.glob(f"*{suffix}"))
    assert [f.name for f in files] == [f"{i:03d}{suffix}" for i in range(1, len(files) + 1)]
    return np.stack([cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in files])


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def solo_masks(spec: SyntheticSpec, plan: synthetic.ClipPlan, actors) -> np.ndarray:
    """`[N, H, W]` masks of exactly `actors`, drawn alone with the plan's timing."""
    solo = dataclasses.replace(plan, split="test", walkers=(), anomalies=tuple(actors))
    return synthetic.render_clip(spec, solo)[1]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return synthetic.write_ped2_layout(tmp_path_factory.mktemp("tiny") / "ped2", TINY)


@pytest.fixture(scope="module")
def full_test_clips():
    """FULL's 12 test clips in memory: (plan, frames, masks, records) each."""
    out = []
    for clip in range(FULL.test_clips):
        plan = synthetic.plan_clip(FULL, "test", clip)
        out.append((plan, *synthetic.render_clip(FULL, plan)))
    return out


def test_layout_on_disk(tiny_root):
    assert sorted(p.name for p in (tiny_root / "Train").iterdir()) == ["Train001", "Train002"]
    assert sorted(p.name for p in (tiny_root / "Test").iterdir()) == [
        "Test001",
        "Test001_gt",
        "Test002",
        "Test002_gt",
        "UCSDped2.m",
        "anomalies.json",
    ]
    for clip in ["Train/Train001", "Train/Train002", "Test/Test001", "Test/Test002"]:
        frames = read_images(tiny_root / clip, ".tif")
        assert frames.dtype == np.uint8
        assert frames.shape[1:] == (TINY.height, TINY.width)
        assert TINY.min_frames <= len(frames) <= TINY.max_frames
    for clip in ["Test001", "Test002"]:
        masks = read_images(tiny_root / "Test" / f"{clip}_gt", ".bmp")
        frames = read_images(tiny_root / "Test" / clip, ".tif")
        assert masks.shape == frames.shape and masks.dtype == np.uint8
        assert set(np.unique(masks)) <= {0, 255}


def test_written_files_equal_generated_clips(tiny_root):
    for split, clip in [("train", 1), ("test", 1), ("test", 0)]:
        frames, masks, _ = synthetic.generate_clip(TINY, split, clip)
        name = f"{split.capitalize()}{clip + 1:03d}"
        folder = tiny_root / split.capitalize()
        np.testing.assert_array_equal(read_images(folder / name, ".tif"), frames)
        if masks is not None:
            np.testing.assert_array_equal(read_images(folder / f"{name}_gt", ".bmp"), masks * 255)


def test_same_seed_gives_byte_identical_tree(tiny_root, tmp_path):
    again = synthetic.write_ped2_layout(tmp_path / "again", TINY)
    first, second = tree_bytes(tiny_root), tree_bytes(again)
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)


def test_different_seed_gives_different_frames():
    other = dataclasses.replace(TINY, seed=1)
    assert not np.array_equal(synthetic.render_background(TINY), synthetic.render_background(other))
    a, b = synthetic.generate_clip(TINY, "test", 0)[0], synthetic.generate_clip(other, "test", 0)[0]
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_clip_does_not_depend_on_other_clips():
    alone = synthetic.generate_clip(FULL, "test", 3)[0]
    fewer_train = dataclasses.replace(FULL, train_clips=0)
    np.testing.assert_array_equal(synthetic.generate_clip(fewer_train, "test", 3)[0], alone)


def test_frame_labels_equal_nonempty_masks(tiny_root):
    labelled = parse_m(tiny_root / "Test" / "UCSDped2.m")
    events = json.loads((tiny_root / "Test" / "anomalies.json").read_text())
    assert len(labelled) == TINY.test_clips == len(events)
    for clip, frames in enumerate(labelled, start=1):
        masks = read_images(tiny_root / "Test" / f"Test{clip:03d}_gt", ".bmp")
        assert frames, "every test clip has an anomaly"
        assert frames == {i + 1 for i in np.flatnonzero(masks.any(axis=(1, 2)))}
        spans = set()
        for event in events[f"Test{clip:03d}"]:
            assert event["kind"] in synthetic.ANOMALY_KINDS
            spans |= set(range(event["first_frame"], event["last_frame"] + 1))
        assert spans == frames


def test_matlab_labels_list_disjoint_spans():
    flags = np.zeros(20, bool)
    flags[[0, 1, 2, 9, 10, 19]] = True
    text = synthetic._matlab_labels([flags, np.ones(5, bool)])
    assert text == (
        "TestVideoFile = {};\n"
        "TestVideoFile{end+1}.gt_frame = [1:3, 10:11, 20:20];\n"
        "TestVideoFile{end+1}.gt_frame = [1:5];\n"
    )


def test_generate_clip_shapes_and_train_has_no_anomalies():
    for clip in range(TINY.train_clips):
        frames, masks, records = synthetic.generate_clip(TINY, "train", clip)
        assert frames.dtype == np.uint8 and frames.shape[1:] == (TINY.height, TINY.width)
        assert masks is None and records == []
        assert synthetic.plan_clip(TINY, "train", clip).anomalies == ()
    frames, masks, records = synthetic.generate_clip(TINY, "test", 0)
    assert masks.shape == frames.shape and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1} and records


@pytest.mark.parametrize("seed", range(8))
def test_every_tiny_test_clip_has_an_anomaly(seed):
    spec = dataclasses.replace(TINY, seed=seed)
    for clip in range(spec.test_clips):
        _, masks, records = synthetic.generate_clip(spec, "test", clip)
        assert records and masks.any(axis=(1, 2)).any()


@pytest.mark.parametrize(("spec", "clips"), [(TINY, range(2)), (FULL, (0, 7, 15))])
def test_normal_walkers_stay_in_their_lanes_on_the_walkway(spec, clips):
    layout = synthetic.scene_layout(spec)
    top, bottom = layout.walkway
    for clip in clips:
        plan = synthetic.plan_clip(spec, "train", clip)
        assert plan.walkers
        covered = solo_masks(spec, plan, plan.walkers)
        assert covered.any()
        assert not covered[:, :top].any() and not covered[:, bottom:].any(), "walker on a lawn"
        for walker in plan.walkers:
            lane = next(ln for ln in layout.lanes if ln.rows[0] <= walker.origin[1] <= ln.rows[1])
            assert walker.velocity[1] == 0 and np.sign(walker.velocity[0]) == lane.direction
            assert walker.speed <= synthetic.WALK_SPEED[1] * layout.scale


def test_full_test_split_holds_every_kind_twice(full_test_clips):
    kinds = [r["kind"] for _, _, masks, records in full_test_clips for r in records]
    assert all(kinds.count(kind) >= 2 for kind in synthetic.ANOMALY_KINDS), kinds
    for plan, _, masks, records in full_test_clips:
        assert records and masks.any()
        assert plan.walkers, "normal walkers alongside the anomalies"


def centroid_speed(masks: np.ndarray) -> float:
    """Median centroid displacement (px/frame) over consecutive frames where the object is whole
    (its mask does not touch the image border)."""
    inside = masks.any(axis=(1, 2))
    inside &= ~(masks[:, 0].any(1) | masks[:, -1].any(1) | masks[:, :, 0].any(1))
    inside &= ~masks[:, :, -1].any(1)
    steps = []
    for t in np.flatnonzero(inside[:-1] & inside[1:]):
        (y0, x0), (y1, x1) = (np.argwhere(masks[i]).mean(0) for i in (t, t + 1))
        steps.append(np.hypot(x1 - x0, y1 - y0))
    assert len(steps) >= 3
    return float(np.median(steps))


def test_riders_and_runners_outpace_every_walker(full_test_clips):
    fastest_walker = max(w.speed for plan, *_ in full_test_clips for w in plan.walkers)
    assert fastest_walker <= synthetic.WALK_SPEED[1]
    checked = set()
    for plan, *_ in full_test_clips:
        for actor in plan.anomalies:
            if actor.kind not in ("fast_rider", "runner"):
                continue
            measured = centroid_speed(solo_masks(FULL, plan, [actor]))
            assert measured == pytest.approx(actor.speed, rel=0.15)
            factor = 3.0 if actor.kind == "fast_rider" else 2.5
            assert measured >= 0.9 * factor * fastest_walker
            assert actor.speed >= factor * fastest_walker
            checked.add(actor.kind)
    assert checked == {"fast_rider", "runner"}


def test_against_flow_and_lawn_crossing_break_the_lane_rules(full_test_clips):
    layout = synthetic.scene_layout(FULL)
    top, bottom = layout.walkway
    for plan, *_ in full_test_clips:
        for actor in plan.anomalies:
            if actor.kind == "against_flow":
                lane = next(
                    ln for ln in layout.lanes if ln.rows[0] <= actor.origin[1] <= ln.rows[1]
                )
                assert np.sign(actor.velocity[0]) == -lane.direction
            if actor.kind == "lawn_crossing":
                masks = solo_masks(FULL, plan, [actor])
                assert actor.velocity[0] == 0
                assert masks[:, :top].any() or masks[:, bottom:].any()


def test_rerun_on_complete_root_writes_nothing(tiny_root):
    before = {p: p.stat().st_mtime_ns for p in [tiny_root, *tiny_root.rglob("*")]}
    assert synthetic.write_ped2_layout(tiny_root, TINY) == tiny_root
    assert {p: p.stat().st_mtime_ns for p in [tiny_root, *tiny_root.rglob("*")]} == before


def test_existing_root_without_matching_marker_is_refused(tiny_root, tmp_path):
    partial = tmp_path / "partial"
    (partial / "Train" / "Train001").mkdir(parents=True)
    with pytest.raises(ValueError, match="partial"):
        synthetic.write_ped2_layout(partial, TINY)
    with pytest.raises(ValueError, match=tiny_root.name):
        synthetic.write_ped2_layout(tiny_root, dataclasses.replace(TINY, seed=5))


def test_interrupted_write_leaves_nothing_complete_looking(tmp_path, monkeypatch):
    root = tmp_path / "ped2"
    real = synthetic.generate_clip

    def fail_on_test_clips(spec, split, clip):
        if split == "test":
            raise KeyboardInterrupt
        return real(spec, split, clip)

    monkeypatch.setattr(synthetic, "generate_clip", fail_on_test_clips)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_ped2_layout(root, TINY)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    leftover = tmp_path / "ped2.incomplete"  # e.g. from a killed run of an older version
    (leftover / "Train").mkdir(parents=True)
    assert synthetic.write_ped2_layout(root, TINY) == root
    assert (root / synthetic.COMPLETE_MARKER).is_file()
    assert len(parse_m(root / "Test" / "UCSDped2.m")) == TINY.test_clips


def test_spec_validation_and_presets():
    assert synthetic.PRESETS == {"full": FULL, "tiny": TINY}
    with pytest.raises(ValueError):
        SyntheticSpec(1, 1, 30, 20, 64, 96)
    with pytest.raises(ValueError, match="split"):
        synthetic.generate_clip(TINY, "val", 0)
    with pytest.raises(ValueError, match="out of range"):
        synthetic.generate_clip(TINY, "test", TINY.test_clips)
