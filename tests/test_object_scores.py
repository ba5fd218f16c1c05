"""Object mode: velocity attributes, memory banks calibrated leave-one-video-out, frame scores
as the maximum over objects, and the whole path through data_prep --objects, training and
evaluation (`object_run`)."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
from conftest import copy_run, load_config
from sklearn.neighbors import NearestNeighbors

from jaxvad import config as config_lib
from jaxvad import detector, evaluate, object_scores, scoring
from jaxvad.data import builder, objects, pipeline, readers


def split_objects(frames: list[list[list[float]]], videos: list[int], velocity=None):
    """SplitObjects of per-frame box lists (frames' videos `videos`); velocity `[M, 8]`."""
    boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in frames]
    counts = np.array([len(b) for b in boxes])
    m = int(counts.sum())
    return object_scores.SplitObjects(
        frame_position=np.repeat(np.arange(len(frames)), counts),
        video=np.repeat(np.asarray(videos, np.int32), counts),
        boxes=np.concatenate(boxes),
        tracks=np.zeros(m, np.int32),
        velocity=np.zeros((m, 8), np.float32) if velocity is None else np.asarray(velocity),
        num_frames=len(frames),
    )


def speeds(values) -> np.ndarray:
    """`[M, 8]` velocity histograms whose rows sum to `values` (all in bin 0)."""
    velocity = np.zeros((len(values), 8), np.float32)
    velocity[:, 0] = values
    return velocity


BOX = [0, 0, 10, 20]


def test_a_frame_scores_the_maximum_of_its_objects_and_an_empty_frame_the_training_minimum():
    rng = np.random.default_rng(0)
    train_speeds = rng.uniform(1, 2, 30)
    train = split_objects([[BOX] * 3] * 10, [0] * 5 + [1] * 5, speeds(train_speeds))
    model = object_scores.ObjectModel({"speed": object_scores.fit_bank(train, "speed", 1)})
    test_speeds = [1.5, 9.0, 1.2, 3.0]
    test = split_objects([[BOX, BOX], [], [BOX, BOX]], [0, 0, 0], speeds(test_speeds))
    found = object_scores.score(test, model)

    bank = model.banks["speed"]
    nearest = [np.abs(train_speeds - s).min() / bank.scale[0] for s in test_speeds]
    own = (np.array(nearest) - bank.shift) / bank.spread
    np.testing.assert_allclose(found.score, own, rtol=1e-5)
    assert found.frame[0] == found.score[:2].max() == found.score[1]  # The fast one.
    assert found.frame[2] == found.score[2:].max() == found.score[3]
    assert found.frame[1] == model.floor == bank.train_scores.min()
    assert model.floor < found.frame[0]
    np.testing.assert_array_equal(found.has_objects, [True, False, True])


def test_training_objects_are_calibrated_without_their_own_video():
    """Each training object's distance comes from the other videos' objects only: a video of
    copies of one value would score 0 against itself."""
    rng = np.random.default_rng(1)
    values = np.concatenate([np.full(4, 5.0), rng.uniform(0, 1, 8), rng.uniform(0, 1, 8)])
    videos = [0] * 2 + [1] * 4 + [2] * 4
    train = split_objects([[BOX, BOX]] * 10, videos, speeds(values))
    bank = object_scores.fit_bank(train, "speed", 2)
    x = values[:, None] / bank.scale
    expected = np.empty(len(values))
    for v in range(3):
        own = train.video == v
        nn = NearestNeighbors(n_neighbors=2).fit(x[~own])
        expected[own] = nn.kneighbors(x[own])[0].mean(axis=1)
    np.testing.assert_allclose(bank.shift, expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(bank.spread, expected.std(), rtol=1e-5)
    np.testing.assert_allclose(bank.train_scores, (expected - bank.shift) / bank.spread, rtol=1e-4)
    assert (bank.train_scores[:4] > 1).all()  # The 5.0 copies are far from the other videos.
    frames = object_scores.ObjectModel({"speed": bank}).train_frame_scores()
    np.testing.assert_allclose(frames, bank.train_scores.reshape(10, 2).max(axis=1))


def test_deep_features_are_whitened_so_a_linear_map_of_them_changes_no_score():
    """The deep bank whitens the latents (`object_scores.whitening`): the calibrated scores of
    training and new objects stay the same when every latent goes through one invertible
    linear map, where per-feature scaling alone changes the nearest neighbours; the whitened
    training features have identity covariance, and the joint group whitens only its deep
    columns."""
    rng = np.random.default_rng(3)
    frames, dim = 60, 6
    train = split_objects([[BOX, BOX]] * frames, [0] * 20 + [1] * 20 + [2] * 20)
    latent = rng.normal(size=(2 * frames, dim)) * np.array([30.0, 5, 1, 1, 0.2, 0.1])
    query = rng.normal(size=(40, dim)) * 3
    mix = rng.normal(size=(dim, dim))

    def scores(a):
        bank = object_scores.fit_bank(dataclasses.replace(train, deep=latent @ a), "deep", 3)
        return bank.train_scores, bank.scores(query @ a), bank

    first, new, bank = scores(np.eye(dim))
    mixed_train, mixed_new, _ = scores(mix)
    np.testing.assert_allclose(mixed_train, first, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mixed_new, new, rtol=1e-5, atol=1e-5)
    whitened = latent @ bank.whiten
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(dim), atol=1e-8)

    def plain_neighbours(x):
        x = x / x[: 2 * frames].std(axis=0)
        return NearestNeighbors(n_neighbors=3).fit(x[: 2 * frames]).kneighbors(x[2 * frames :])[1]

    stacked = np.concatenate([latent, query])
    assert (plain_neighbours(stacked) != plain_neighbours(stacked @ mix)).any()

    joint = object_scores.fit_bank(
        dataclasses.replace(train, deep=latent, velocity=speeds(rng.uniform(1, 2, 2 * frames))),
        "speed+deep",
        3,
    )
    np.testing.assert_array_equal(joint.whiten[0], np.eye(dim + 1)[0])
    np.testing.assert_allclose(joint.whiten[1:, 1:], bank.whiten)


def test_the_range_calibration_maps_the_training_minimum_to_0_and_the_top_percentile_to_1():
    """`score.calibration="range"` (AI-VAD's): (d − min) / (99.9th percentile − min) of the
    same leave-one-video-out distances; a long training tail stretches the spread, so the
    component weighs less in a sum than its z-score would. Stored under its own name."""
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.uniform(0, 1, 40), [30.0]])  # One far outlier in video 1.
    videos = [0] * 20 + [1] * 21
    train = split_objects([[BOX]] * 41, videos, speeds(values))
    zscore = object_scores.fit_bank(train, "speed", 1)
    ranged = object_scores.fit_bank(train, "speed", 1, "range")
    d = zscore.train_scores * zscore.spread + zscore.shift  # The raw distances.
    np.testing.assert_allclose(ranged.shift, d.min(), rtol=1e-6)
    np.testing.assert_allclose(ranged.spread, np.percentile(d, 99.9) - d.min(), rtol=1e-6)
    np.testing.assert_allclose(ranged.train_scores, (d - d.min()) / ranged.spread, rtol=1e-5)
    assert ranged.train_scores.min() == 0 and np.sort(ranged.train_scores)[-2] < 1
    query = np.array([[0.5], [5.0]])  # Speeds: the "speed" component's features.
    raw = zscore.scores(query) * zscore.spread + zscore.shift
    np.testing.assert_allclose(ranged.scores(query), (raw - d.min()) / ranged.spread, rtol=1e-5)
    # The outlier makes the spread about the outlier's distance, against about σ for z.
    assert ranged.spread > 3 * zscore.spread
    assert object_scores.bank_name("speed", 1, "range") != object_scores.bank_name("speed", 1)
    assert object_scores.bank_name("speed", 1) == "speed_k1"  # Banks stored before the rule.
    with pytest.raises(ValueError, match="unknown calibration 'max'"):
        object_scores.fit_bank(train, "speed", 1, "max")


def test_faster_compares_a_speed_with_the_training_objects_near_its_place():
    """`faster` = (s − μ) / σ of an object's speed against its `nearby` training objects'
    nearest by box centre (other videos only for a training object), calibrated like a
    density; one-sided: slower than the place's objects scores low."""
    rng = np.random.default_rng(2)
    centres = rng.uniform(0, 200, (60, 2))
    # Perspective: objects far up the frame (small y) move slower.
    values = 0.5 + centres[:, 1] / 100 + rng.normal(0, 0.05, 60)
    boxes = np.concatenate([centres - 5, centres + 5], axis=1)
    train = split_objects([[b] for b in boxes], [f % 3 for f in range(60)], speeds(values))
    nearby = 7
    bank = object_scores.fit_bank(train, object_scores.FASTER, nearby)

    def raw(centre, speed, candidates):
        near = np.argsort(((centres[candidates] - centre) ** 2).sum(axis=1))[:nearby]
        chosen = values[candidates][near]
        return (speed - chosen.mean()) / chosen.std()

    own = np.array([raw(centres[i], values[i], train.video != train.video[i]) for i in range(60)])
    np.testing.assert_allclose(bank.shift, own.mean(), rtol=1e-4)
    np.testing.assert_allclose(bank.train_scores, (own - own.mean()) / own.std(), rtol=1e-4)

    # The same speed is fast far from the camera and slow near it.
    test = split_objects([[[95, 5, 105, 15]], [[95, 185, 105, 195]]], [0, 0], speeds([1.5, 1.5]))
    found = object_scores.score(test, object_scores.ObjectModel({"faster": bank}))
    every = np.ones(60, bool)
    expected = [raw(np.array([100.0, y]), 1.5, every) for y in (10.0, 190.0)]
    np.testing.assert_allclose(
        found.score, (np.array(expected) - bank.shift) / bank.spread, rtol=1e-4
    )
    assert found.score[0] > 3 > -3 > found.score[1]
    stored = object_scores.Bank.from_arrays(bank.to_arrays())
    assert stored.faster and stored.k == nearby
    again = stored.scores(object_scores.features(test, "faster"))
    np.testing.assert_array_equal(again, found.score)


def test_components_join_groups_and_bad_ones_are_config_errors():
    objs = split_objects([[[2, 4, 12, 24]]], [0], speeds([3.0]))
    joined = object_scores.features(objs, "speed+size+position")
    np.testing.assert_allclose(joined, [[3.0, np.log(10), np.log(20), 7, 14]])

    def validate(**fields):
        config_lib.validate(load_config("synthetic", **fields))

    validate(**{"data.objects": "auto", "score.components": ("speed", "size+position")})
    bad = {
        ("speed",): "need objects stored with the dataset",
        ("error", "speed"): "do not mix",
        ("speed+colour",): "groups joined by",
        ("speed", "speed"): "each component once",
    }
    for components, message in bad.items():
        objects_setting = "none" if components == ("speed",) else "auto"
        with pytest.raises(config_lib.ConfigError, match=message):
            validate(**{"data.objects": objects_setting, "score.components": components})
    validate(**{"score.calibration": "range"})
    with pytest.raises(config_lib.ConfigError, match=r"score\.calibration.*one of"):
        validate(**{"score.calibration": "minmax"})


def test_velocity_is_measured_on_the_fastest_object_sized_part_of_a_box():
    """One box holds a slow blob moving right and a fast one moving up: the histogram is the
    fast blob's, its mass in the upward bin; a box without object pixels uses all of its own."""
    fg = np.zeros((60, 100), np.uint8)
    flow = np.zeros((60, 100, 2), np.float32)
    fg[10:30, 10:30], flow[10:30, 10:30] = 1, (1.0, 0.0)  # right at 1 px/frame
    fg[10:30, 60:80], flow[10:30, 60:80] = 1, (0.0, -4.0)  # up at 4 px/frame
    flow[40:60, 0:20] = (0.0, 2.0)  # no object pixels there
    boxes = np.array([[10, 10, 80, 30], [10, 10, 30, 30], [0, 40, 20, 60]], np.float32)
    hist = objects.velocity_histograms(flow, fg, boxes, window=15)
    up = int((np.arctan2(-1, 0) + np.pi) / (2 * np.pi) * 8)  # bin of atan2(dy, dx) = −π/2
    down = int((np.arctan2(1, 0) + np.pi) / (2 * np.pi) * 8)
    right = int((np.arctan2(0, 1) + np.pi) / (2 * np.pi) * 8)
    np.testing.assert_allclose(hist[0], np.eye(8)[up] * 4.0, atol=1e-6)
    np.testing.assert_allclose(hist[1], np.eye(8)[right] * 1.0, atol=1e-6)
    np.testing.assert_allclose(hist[2], np.eye(8)[down] * 2.0, atol=1e-6)


def test_box_maps_put_each_objects_score_over_its_box():
    objs = split_objects([[[0, 0, 50, 100], [25, 50, 100, 200]], []], [0, 0])
    maps = object_scores.box_maps(objs, np.array([1.0, 3.0]), -1.0, np.array([[200, 100]]), 8)
    expected = np.full((2, 8, 8), -1.0, np.float32)
    expected[0, 0:4, 0:4] = 1.0  # x 0–50 of 100, y 0–100 of 200 → 4×4 of 8×8
    expected[0, 2:8, 2:8] = 3.0  # the larger score where the boxes overlap
    np.testing.assert_array_equal(maps, expected)


# --- the whole path ---------------------------------------------------------------------------


def test_data_prep_stores_each_frames_boxes_tracks_and_velocities(object_run):
    vad = config_lib.dataset_settings(object_run.config)
    assert vad.name == "32_farneback_objauto-vw20"
    assert "--objects=auto" in builder.prepare_command("ped2", vad, "data", "SRC")
    directory = builder.prepared_dir(object_run.config.data.root, "ped2", vad)
    metadata = builder.read_metadata(directory)
    assert metadata["objects"]["source"] == "auto"
    table = pipeline.open_prepared(directory, "test")
    stored = object_scores.read_objects(table)
    spec = readers.ped2_videos(object_run.source)["test"][0]
    expected = objects.video_objects(spec.load().frames)  # At the original 240×360.
    first = stored.video == 0
    np.testing.assert_array_equal(stored.boxes[first], np.concatenate(expected.boxes))
    np.testing.assert_array_equal(stored.tracks[first], np.concatenate(expected.tracks))
    np.testing.assert_allclose(stored.velocity[first], np.concatenate(expected.velocity))
    # What `--quality` measures the box maps' velocities from, frame by frame, gives them again.
    wanted = [0, 1, len(expected.boxes) // 2, len(expected.boxes) - 1]
    inputs = objects.attribute_inputs(spec.load().frames, wanted)
    assert sorted(inputs) == wanted
    for t, (mask, flow) in inputs.items():
        window = objects.velocity_window(mask.shape[0])
        again = objects.velocity_histograms(flow, mask, expected.boxes[t], window)
        np.testing.assert_array_equal(again, expected.velocity[t])
    video = metadata["splits"]["test"]["videos"][0]
    assert (video["height"], video["width"]) == (240, 360)
    assert video["objects"] == first.sum() > 0
    assert video["frames_without_objects"] == sum(len(b) == 0 for b in expected.boxes)


def test_object_mode_evaluation_scores_frames_by_their_objects(object_run, tmp_path):
    workdir = copy_run(object_run, tmp_path / "run")
    result = evaluate.evaluate(object_run.config, workdir)
    found = detector.load(workdir)
    table = pipeline.open_prepared(config_lib.dataset_dir(object_run.config), "test")
    scored = found.score_objects(object_scores.read_objects(table))
    per_frame = {}
    for position, value in zip(scored.objects.frame_position, scored.score, strict=True):
        per_frame[position] = max(per_frame.get(position, -np.inf), value)
    frame = np.array([per_frame.get(n, found.objects.floor) for n in range(table.num_frames)])
    train = found.objects.train_frame_scores()[found.normal.scored]
    expected = (frame - train.mean()) / train.std()  # "train" normalisation, no smoothing

    with (workdir / "eval" / "frame_scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    scored_rows = [(n, r) for n, r in enumerate(rows) if r["scored"] == "1"]
    assert scored_rows
    for n, row in scored_rows:
        assert float(row["score"]) == pytest.approx(expected[n], rel=1e-6, abs=1e-9)
    counts = scored.objects.counts()
    assert result["objects"]["components"] == ["speed"]
    assert result["objects"]["scored_frames_without_objects"] == int(
        sum(counts[n] == 0 for n, _ in scored_rows)
    )
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert metrics["objects"]["floor"] == pytest.approx(found.objects.floor)
    assert {"auc", "rbdc", "tbdc"} <= metrics["pixel"].keys()
    detection = metrics["objects"]["detection"]
    assert detection["regions"] > 0 and 0 <= detection["recall"] <= 1
    pointing = metrics["objects"]["pointing"]
    flagged = [
        r
        for r in rows
        if r["scored"] == "1"
        and r["label"] == "1"
        and float(r["score"]) > metrics["protocol"]["threshold"]["value"]
    ]
    assert pointing["frames"] == len(flagged)


def test_object_banks_live_in_the_checkpoint(object_run, tmp_path):
    """The run's banks load without any dataset; a component scored for the first time is
    fitted once from the training split, and stored; without the dataset the error says so."""
    workdir = copy_run(object_run, tmp_path / "run")
    step = workdir / "checkpoints" / "6"
    assert sorted(p.name for p in step.glob("object_bank_*")) == ["object_bank_speed_k1.npz"]
    empty = tmp_path / "empty"
    empty.mkdir()
    found = detector.load(workdir, {"data.root": str(empty)})
    assert list(found.objects.banks) == ["speed"]
    assert found.threshold == pytest.approx(
        np.quantile(
            scoring.settle(
                found.objects.train_frame_scores(),
                found.normal,
                found.settings,
                found.objects.train_frame_scores()[found.normal.scored],
            )[found.normal.scored],
            found.settings.threshold_quantile,
        )
    )
    size = {"score.components": ("speed", "size"), "data.root": str(empty)}
    with pytest.raises(detector.MissingNormalStatisticsError, match="object banks"):
        detector.load(workdir, size)
    size["data.root"] = object_run.config.data.root
    assert list(detector.load(workdir, size).objects.banks) == ["speed", "size"]
    stored = sorted(p.name for p in step.glob("object_bank_*"))
    assert stored == ["object_bank_size_k1.npz", "object_bank_speed_k1.npz"]
    shutil.rmtree(empty)


def test_object_mode_explanations_name_the_objects(object_run, tmp_path):
    from jaxvad.explain import command

    workdir = copy_run(object_run, tmp_path / "run")
    out = command.explain(object_run.config, workdir, split="test", top=2)
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        listed = record["objects"]
        assert listed, "the flagged frames hold objects"
        assert [o["score"] for o in listed] == sorted((o["score"] for o in listed), reverse=True)
        top = listed[0]
        assert set(top) == {"box", "track", "score", "components", "attributes"}
        assert top["components"]["speed"] == pytest.approx(top["score"])
        speed = top["attributes"]["speed"]
        assert f"moves {speed:.1f} px/frame" in record["explanation"]
        assert 0 <= top["attributes"]["slower_nearby"] <= 1
        assert (out / record["images"]["objects"]).is_file()
