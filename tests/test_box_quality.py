"""Object mode's box maps measured in the frame (`jaxvad.explain.box_quality`): what the
frame's score is measured again from (re-measured velocities, changed records) and how the
anomalies are batched."""

from __future__ import annotations

import numpy as np

from jaxvad import object_scores
from jaxvad.data import objects, pipeline
from jaxvad.explain import box_quality


def test_batches_keep_anomalies_that_share_frames_apart():
    video = np.array([0, 0, 0, 1, 0, 1])
    frame = np.array([10, 12, 20, 11, 30, 14])
    batches = box_quality.separate_batches(video, frame, reach=4, size=3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    assert all(len(b) <= 3 for b in batches)
    for b in batches:
        for i in b:
            for j in b:
                if i != j and video[i] == video[j]:
                    assert abs(frame[i] - frame[j]) > 4, (i, j)
    # 10 and 12 of video 0 conflict; 11 and 14 of video 1 too: first fit splits each pair.
    assert [b.tolist() for b in batches] == [[0, 2, 3], [1, 4, 5]]


def test_changed_table_shows_the_changed_samples_and_leaves_the_table_alone():
    """Two videos of 4 frames; frame 4 of video 1 changed with its T = 2 past frames."""
    frames = np.arange(8 * 2 * 2 * 3, dtype=np.uint8).reshape(8, 2, 2, 3)
    source = [
        {"frame": f, "flow": np.full((2, 2, 2), k, np.float16), "label": k, "mask": f[..., 0]}
        for k, f in enumerate(frames)
    ]
    table = pipeline.FrameTable(source, np.repeat([0, 1], 4), np.tile([1, 2, 3, 4], 2))
    changed = {
        "target_frame": np.full((1, 2, 2, 3), 300.6),  # rounded and clipped into uint8
        "target_flow": np.full((1, 2, 2, 2), 0.25),
    }
    view = box_quality.changed_table(table, np.array([7]), 2, changed)
    target = view.source[int(table.frame_ids[7])]
    assert target["frame"].dtype == np.uint8 and (target["frame"] == 255).all()
    assert target["flow"].dtype == np.float16 and (target["flow"] == 0.25).all()
    assert target["label"] == 7
    for k in range(7):
        assert view.source[int(table.frame_ids[k])] is source[int(table.frame_ids[k])]
    assert (table.source[int(table.frame_ids[7])]["frame"] == frames[7]).all()
    past = {
        "frames": np.stack([np.full((1, 2, 2, 3), 10.0), np.full((1, 2, 2, 3), 20.0)], 1),
        "flows": np.full((1, 2, 2, 2, 2), -1.0),
    }
    both = box_quality.changed_table(table, np.array([7]), 2, changed | past)
    samples = pipeline.eval_samples(both, np.array([7]), history=2)
    np.testing.assert_array_equal(samples["frames"], past["frames"].astype(np.uint8))
    np.testing.assert_array_equal(samples["flows"], past["flows"])
    assert (samples["target_frame"] == 255).all()
    assert both.source[int(table.frame_ids[4])] is source[int(table.frame_ids[4])]


def test_velocities_are_measured_again_with_the_deleted_pixels_still():
    """Kept everywhere, the velocities are the ones measured from the attribute inputs; the
    pixels of one box deleted (no motion there), that box's velocity is 0 and the other box's
    is unchanged."""
    height, width, size = 60, 120, 12
    mask = np.zeros((height, width), np.uint8)
    flow = np.zeros((height, width, 2), np.float32)
    mask[10:30, 10:30], flow[10:30, 10:30] = 1, (2.0, 0.0)
    mask[20:50, 70:100], flow[20:50, 70:100] = 1, (0.0, 3.0)
    boxes = np.array([[10, 10, 30, 30], [70, 20, 100, 50]], np.float32)
    window = objects.velocity_window(height)
    measured = objects.velocity_histograms(flow, mask, boxes, window)
    split = object_scores.SplitObjects(
        frame_position=np.array([4, 4]),
        video=np.zeros(2, np.int32),
        boxes=boxes,
        tracks=np.zeros(2, np.int32),
        velocity=np.full((2, objects.VELOCITY_BINS), 7.0, np.float32),
        num_frames=5,
    )
    attribute = {4: (mask, flow)}
    kept = box_quality.remeasured_velocity(split, attribute, np.ones((1, size, size)), [4])
    np.testing.assert_array_equal(kept, measured)
    keep = np.ones((1, size, size))
    keep[0, 1:7, 0:4] = 0  # rows 5–35 px, columns 0–40 px of the frame: the first box
    deleted = box_quality.remeasured_velocity(split, attribute, keep, [4])
    np.testing.assert_array_equal(deleted[0], 0)
    np.testing.assert_array_equal(deleted[1], measured[1])
    assert measured[0].sum() == 2.0 and measured[1].sum() == 3.0
    # Noise in normalised flow units becomes pixels of the original frame: +0.5 in x is
    # 0.5 · FLOW_UNIT · 120 = 1.2 px/frame, so the first box moves right at 3.2 px/frame.
    noise = np.zeros((1, size, size, 2))
    noise[..., 0] = 0.5
    noisy = box_quality.remeasured_velocity(split, attribute, np.ones((1, size, size)), [4], noise)
    expected = objects.velocity_histograms(flow + np.float32([1.2, 0.0]), mask, boxes, window)
    np.testing.assert_allclose(noisy, expected, rtol=1e-6)
    np.testing.assert_allclose(noisy[0].sum(), 3.2, rtol=1e-6)
