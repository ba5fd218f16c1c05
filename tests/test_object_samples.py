"""Object samples: the model trains and scores on each object's box cut from its window
(`config.objects.samples`): the crops and their windows, exact resume, and the error component
through training and evaluation (on `object_run`'s prepared data)."""

from __future__ import annotations

import json

import cv2
import jax
import numpy as np
import pytest
from conftest import (
    HELD_OUT,
    assert_frames_score_their_objects_maximum,
    assert_resumes_exactly_after_sigkill,
    copy_run,
    load_config,
    object_samples_config,
)
from flax import nnx
from sklearn.neighbors import NearestNeighbors

from jaxvad import component_choice, detector, evaluate, model, object_scores, train
from jaxvad import config as config_lib
from jaxvad.data import builder, pipeline
from jaxvad.explain import box_quality

SIZE, MARGIN = 16, 0.25


def object_table(run, split: str):
    """`object_run`'s prepared `split`, its objects and their crops (SIZE, MARGIN)."""
    table = pipeline.open_prepared(config_lib.dataset_dir(run.config), split)
    found = object_scores.read_objects(table)
    crops = pipeline.object_crops(
        table, found.frame_position, found.boxes, size=SIZE, margin=MARGIN
    )
    return table, found, crops


def expected_regions(table, found) -> np.ndarray:
    """`[M, 4]` each box grown by MARGIN of its side, in stored pixels, floor/ceil (the
    metadata's original frame sizes)."""
    directory = table.name
    videos = builder.read_metadata(directory)["splits"][table.split]["videos"]
    stored = builder.read_metadata(directory)["size"]
    out = []
    for box, video in zip(found.boxes.astype(np.float64), found.video, strict=True):
        w, h = box[2] - box[0], box[3] - box[1]
        sx, sy = stored / videos[video]["width"], stored / videos[video]["height"]
        x0, y0 = np.floor((box[0] - MARGIN * w) * sx), np.floor((box[1] - MARGIN * h) * sy)
        x1, y1 = np.ceil((box[2] + MARGIN * w) * sx), np.ceil((box[3] + MARGIN * h) * sy)
        out.append([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)])
    return np.array(out, np.int64)


def test_object_samples_are_their_box_cut_from_their_own_videos_window(object_run):
    """Every training sample is one object of a frame t > T: its T + 1 frames are t−T..t of
    the object's video, each the box region (grown by the margin) resized; an epoch holds each
    such object once. Evaluation: every object in order, its frame's `scored`."""
    T = object_run.config.history
    table, found, crops = object_table(object_run, "train")
    regions = expected_regions(table, found)
    np.testing.assert_array_equal(crops.boxes, regions)
    frame_number = table.frame_index[table.frame_ids[found.frame_position]]
    frames = table.read(table.frame_ids, ["frame", "flow"])  # [N, S, S, C], [N, S, S, 2]
    S = frames["frame"].shape[1]
    inside = (regions[:, :2] >= 0).all(1) & (regions[:, 2:] <= S).all(1)
    assert inside.sum() > 10 and (~inside).sum() > 0  # Both kinds are in the data.

    def direct(m: int, position: int, key: str) -> np.ndarray:
        """The region of object m cut straight from a stored frame and resized."""
        x0, y0, x1, y1 = regions[m]
        region = frames[key][position, y0:y1, x0:x1]
        region = region.astype(np.float32) if key == "flow" else region
        out = cv2.resize(region, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        return out.reshape(SIZE, SIZE, -1)

    ds = pipeline.train_dataset(
        table, history=T, batch_size=1, seed=3, num_epochs=1, read_threads=0, objects=crops
    )
    samples, matched = 0, []
    for batch in ds:
        samples += 1
        video, t = int(batch["video_index"][0]), int(batch["frame_index"][0])
        assert t > T
        position = table.video_starts[video] + t - 1
        window = position - T + np.arange(T + 1)  # Frames t−T..t of the object's video.
        stacked = np.concatenate([batch["frames"][0], batch["target_frame"]])
        flows = np.concatenate([batch["flows"][0], batch["target_flow"]])
        assert stacked.shape == (T + 1, SIZE, SIZE, 1) and flows.dtype == np.float16
        for m in np.flatnonzero((found.frame_position == position) & inside):
            if all(np.array_equal(stacked[k], direct(m, p, "frame")) for k, p in enumerate(window)):
                matched.append(m)
                for k, p in enumerate(window):
                    np.testing.assert_allclose(flows[k], direct(m, p, "flow"), atol=2e-3)
    assert samples == (frame_number > T).sum()  # One sample per object of a frame t > T.
    assert sorted(matched) == np.flatnonzero(inside & (frame_number > T)).tolist()

    evaluation = list(
        pipeline.eval_dataset(table, history=T, batch_size=8, read_threads=0, objects=crops)
    )
    valid = np.concatenate([b["valid"] for b in evaluation])
    videos = np.concatenate([b["video_index"] for b in evaluation])[valid]
    numbers = np.concatenate([b["frame_index"] for b in evaluation])[valid]
    np.testing.assert_array_equal(videos, found.video)
    np.testing.assert_array_equal(numbers, frame_number)
    np.testing.assert_array_equal(
        np.concatenate([b["scored"] for b in evaluation])[valid], frame_number > T
    )
    assert evaluation[0]["mask"].shape == (8, SIZE, SIZE)


def test_a_region_past_the_border_repeats_the_border_pixels():
    images = np.arange(2 * 6 * 8 * 3, dtype=np.float32).reshape(2, 6, 8, 3)
    box = np.array([-2, 3, 5, 9])  # Left of and below the frame.
    padded = np.pad(images[:, 3:, 0:5], ((0, 0), (0, 3), (2, 0), (0, 0)), mode="edge")
    expected = np.stack([cv2.resize(p, (4, 4), interpolation=cv2.INTER_LINEAR) for p in padded])
    np.testing.assert_allclose(pipeline.crop(images, box, 4), expected, rtol=1e-6)
    assert pipeline.crop(images.astype(np.float16), box, 4).dtype == np.float16


def test_object_sample_settings_are_config_errors():
    def validate(**fields):
        config_lib.validate(load_config("synthetic", **fields))

    validate(**{"data.objects": "auto", "objects.samples": True, "score.components": ("error",)})
    bad = [
        ({"objects.samples": True}, "objects.samples: object samples need objects"),
        (
            {"data.objects": "auto", "score.components": ("error", "speed")},
            "objects.samples=True",
        ),
        (
            {"data.objects": "auto", "objects.samples": True, "objects.size": 20},
            r"objects.size: the 'predictor' model takes sides divisible by 8",
        ),
        ({"objects.margin": -0.1}, "objects.margin"),
        ({"objects.holdout": 1.0}, "objects.holdout: a fraction of the training videos"),
        ({"data.objects": "auto", "score.components": ("faster", "deep")}, "'deep': the deep"),
        ({"data.objects": "auto", "score.components": ("deep+size",)}, "objects.samples=True"),
    ]
    for fields, message in bad:
        with pytest.raises(config_lib.ConfigError, match=message):
            validate(**fields)


@pytest.mark.slow
def test_object_sample_training_resumes_exactly_after_sigkill(object_run, tmp_path):
    """N steps on object samples uninterrupted == the same run SIGKILLed after its checkpoint
    at N/2, resumed: the same losses bit for bit and the same parameters."""
    n = 40
    config = object_samples_config(object_run)
    args = [
        "--config=configs/synthetic.py:tiny",
        *(f"--config.data.{k}={config.data[k]}" for k in ("dataset", "root", "objects")),
        "--config.objects.samples=True",
        "--config.score.components=('speed',)",  # The run's end: banks, no error component.
        f"--config.train.num_steps={n}",
        f"--config.train.checkpoint_every={n // 2}",
        "--config.train.log_every=1",
        "--config.model.width=64",  # Slow enough steps that the kill lands mid-run.
        "--config.train.batch_size=8",
    ]
    last = assert_resumes_exactly_after_sigkill(args, tmp_path, n)
    assert (last / "object_errors.npz").is_file()


def test_object_samples_train_and_evaluate_with_the_error_component(object_samples_run, tmp_path):
    """A model trained on object samples scores each object's error beside its speed: the
    frame score is the maximum over its objects of the summed components, and the workdir
    alone is the detector."""
    config = object_samples_run.config
    workdir = copy_run(object_samples_run, tmp_path / "run")
    step = workdir / "checkpoints" / str(config.train.num_steps)
    assert (step / "object_errors.npz").is_file()
    result = evaluate.evaluate(config, workdir)
    assert result["objects"]["components"] == ["error", "speed"]
    assert result["objects"]["samples"] is True
    assert {"auc", "rbdc"} <= result["pixel"].keys()

    empty = tmp_path / "empty"
    empty.mkdir()
    found = detector.load(workdir, {"data.root": str(empty)})  # No dataset needed.
    assert found.objects.error is not None and list(found.objects.banks) == ["speed"]
    train_error = found.objects.error.train_scores
    scored_train = np.isfinite(train_error)
    assert train_error[scored_train].mean() == pytest.approx(0, abs=1e-9)
    assert train_error[scored_train].std() == pytest.approx(1, rel=1e-6)

    table = pipeline.open_prepared(config_lib.dataset_dir(config), "test")
    objects = object_scores.read_objects(table)
    scored = found.score_objects(objects, table)
    assert set(scored.components) == {"error", "speed"}
    total = scored.components["error"] + scored.components["speed"]
    np.testing.assert_allclose(scored.score, total)
    number = table.frame_index[table.frame_ids[objects.frame_position]]
    assert np.isnan(scored.components["error"][number <= config.history]).all()
    assert np.isfinite(scored.components["error"][number > config.history]).all()
    assert_frames_score_their_objects_maximum(found, table, objects, total, scored, workdir)
    # The pixel maps' pattern inside each box: the crop's calibrated error map less its mean,
    # scaled so that its largest deviation is DETAIL.
    o = config.objects
    errors = detector.object_errors(
        found.scorer, found.params, table, objects, size=o.size, margin=o.margin, maps=True
    )
    detail = found.objects.error.detail(errors)
    maps = found.objects.error.maps(errors)
    deviation = maps - maps.mean(axis=(1, 2), keepdims=True)
    largest = np.abs(deviation).max(axis=(1, 2), keepdims=True)
    has = (number > config.history) & (largest[:, 0, 0] > 0)
    assert has.sum() > 0.5 * len(has)
    np.testing.assert_allclose(np.abs(detail[has]).max(axis=(1, 2)), object_scores.DETAIL, 1e-5)
    expected = deviation[has] * object_scores.DETAIL / largest[has]
    np.testing.assert_allclose(detail[has], expected, rtol=1e-4, atol=1e-6)
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert metrics["objects"]["training_objects"] == len(train_error)

    with pytest.raises(detector.DatasetMismatchError, match=r"objects\.samples"):
        detector.load(workdir, {"objects.samples": False, "score.components": ("speed",)})
    with pytest.raises(detector.DatasetMismatchError, match=r"objects\.margin"):
        detector.load(workdir, {"objects.margin": 0.5})


def direct_features(found: detector.Detector, table, objects) -> np.ndarray:
    """`[M, D]` the deep features (`VadModel.features`) of `objects`' samples of `table`,
    computed with the model on the crops (not through the error step); NaN for the objects of
    frames t ≤ T (no full history)."""
    o = found.config.objects
    crops = pipeline.object_crops(
        table, objects.frame_position, objects.boxes, size=o.size, margin=o.margin
    )
    run = jax.jit(lambda p, b: nnx.merge(found.graphdef, p).features(model.model_inputs(b)))
    keys = ("frames", "flows", "target_frame", "target_flow")
    parts = [
        np.where(b["scored"][:, None], run(found.params, {k: b[k] for k in keys}), np.nan)[
            b["valid"]
        ]
        for b in pipeline.eval_dataset(
            table, history=found.config.history, batch_size=8, read_threads=0, objects=crops
        )
    ]
    return np.concatenate(parts)


def test_the_deep_bank_scores_training_objects_leave_one_video_out(object_samples_run, tmp_path):
    """The "deep" component's bank holds the model's pooled latent of each training object's
    sample, whitened (identity covariance) and over its standard deviation; a training
    object's score is the mean distance to its k nearest objects of the other videos,
    z-scored over the training objects (as sklearn finds them, on features computed with the
    model itself and whitened another way: by the inverse Cholesky factor of their
    covariance, the same Mahalanobis distances). The features are stored
    with the training objects' errors at the end of training; a run scored before they were
    gets them added on first use, its errors kept."""
    config = object_samples_run.config
    workdir = copy_run(object_samples_run, tmp_path / "run")
    step = workdir / "checkpoints" / str(config.train.num_steps)
    with np.load(step / "object_errors.npz") as stored:
        trained = dict(stored)
    np.savez(step / "object_errors.npz", **{k: v for k, v in trained.items() if k != "features"})
    found = detector.load(workdir, {"score.components": ("deep",)})
    with np.load(step / "object_errors.npz") as stored:
        added = dict(stored)
    assert added.keys() == trained.keys()
    for key in trained.keys() - {"features"}:
        np.testing.assert_array_equal(added[key], trained[key])
    np.testing.assert_allclose(added["features"], trained["features"], rtol=1e-5, atol=1e-6)
    assert (step / "object_bank_deep_k1_whitened.npz").is_file()

    table = pipeline.open_prepared(config_lib.dataset_dir(config), "train")
    train = object_scores.read_objects(table)
    x = direct_features(found, table, train)
    has = np.isfinite(x).all(axis=1)
    number = table.frame_index[table.frame_ids[train.frame_position]]
    np.testing.assert_array_equal(has, number > config.history)
    np.testing.assert_allclose(added["features"], x, rtol=1e-4, atol=1e-5)
    bank = found.objects.banks["deep"]
    assert bank.bank.shape == (has.sum(), config.model.width)  # The predictor's F: [N, D].
    whitened = x[has] @ bank.whiten
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(x.shape[1]), atol=1e-6)
    np.testing.assert_allclose(bank.bank, whitened / bank.scale, rtol=1e-4, atol=1e-4)
    cholesky = np.linalg.cholesky(np.cov(x[has], rowvar=False))
    y = np.full_like(x, np.nan)
    y[has] = np.linalg.solve(cholesky, x[has].T).T
    y /= np.nanstd(y, axis=0)
    d = np.full(len(x), np.nan)
    for video in np.unique(train.video):
        mine, others = has & (train.video == video), has & (train.video != video)
        nn = NearestNeighbors(n_neighbors=config.objects.k).fit(y[others])
        d[mine] = nn.kneighbors(y[mine])[0].mean(axis=1)
    expected = (d - np.nanmean(d)) / np.nanstd(d)
    np.testing.assert_allclose(bank.train_scores, expected, rtol=1e-3, atol=1e-3)
    assert np.isnan(bank.train_scores[~has]).all()


def test_the_deep_component_evaluates_alone_and_beside_faster(object_samples_run, tmp_path):
    """Evaluating with ("deep",) and ("deep", "faster") reports frame metrics and the
    components in metrics.json's objects; an object's deep score is its distance to the
    training bank, calibrated; the frame score is the maximum over the frame's objects of the
    summed components (one model pass gives the error step's deep features)."""
    workdir = copy_run(object_samples_run, tmp_path / "run")
    config = config_lib.from_dict(object_samples_run.config.to_dict())
    table = pipeline.open_prepared(config_lib.dataset_dir(config), "test")
    objects = object_scores.read_objects(table)
    number = table.frame_index[table.frame_ids[objects.frame_position]]
    for components in (("deep",), ("deep", "faster")):
        config_lib.override(config, {"score.components": components})
        result = evaluate.evaluate(config, workdir)
        assert result["objects"]["components"] == list(components)
        assert 0 <= result["frame"]["auc_micro"] <= 1 and 0 <= result["frame"]["auc_macro"] <= 1

        found = detector.load(workdir, {"score.components": components})
        scored = found.score_objects(objects, table)
        assert set(scored.components) == set(components)
        bank = found.objects.banks["deep"]
        x = scored.objects.deep
        has = number > config.history
        assert np.isfinite(x[has]).all() and np.isnan(x[~has]).all()
        nn = NearestNeighbors(n_neighbors=config.objects.k).fit(bank.bank)
        d = nn.kneighbors((x[has] @ bank.whiten) / bank.scale)[0].mean(axis=1)
        deep = scored.components["deep"]
        np.testing.assert_allclose(deep[has], (d - bank.shift) / bank.spread, rtol=1e-4, atol=1e-4)
        total = sum(scored.components[c] for c in components)
        np.testing.assert_allclose(scored.score, total)
        assert_frames_score_their_objects_maximum(found, table, objects, total, scored, workdir)


def test_deep_features_stand_where_only_inputs_they_do_not_read_change(
    object_samples_run, tmp_path, monkeypatch
):
    """`score_objects(changed_inputs=...)` with ("deep", "speed"): after the target frames
    and flows change (what deletion changes, `box_quality.DELETED`), the objects keep their
    deep features and the model does not run, and the scores are those the model gives on
    the changed table (the predictor's features read the past alone). A changed past input,
    or no `changed_inputs`, runs the model."""
    workdir = copy_run(object_samples_run, tmp_path / "run")
    config = object_samples_run.config
    found = detector.load(workdir, {"score.components": ("deep", "speed")})
    table = pipeline.open_prepared(config_lib.dataset_dir(config), "test")
    scored = found.score_objects(object_scores.read_objects(table), table)
    number = table.frame_index[table.frame_ids[scored.objects.frame_position]]
    candidates = np.unique(scored.objects.frame_position[number > config.history])
    ids = table.frame_ids[candidates]  # Three frames none of which is in another's past.
    first = box_quality.separate_batches(
        table.video_index[ids], table.frame_index[ids], config.history, 3
    )[0]
    positions = candidates[first]
    assert len(positions) == 3
    keep = np.flatnonzero(np.isin(scored.objects.frame_position, positions))
    objects = scored.objects.take(keep)
    rng = np.random.default_rng(0)
    stored = pipeline.eval_samples(table, positions, history=config.history)
    changed = box_quality.changed_table(
        table,
        positions,
        config.history,
        {
            "target_frame": rng.uniform(0, 255, stored["target_frame"].shape),
            "target_flow": rng.normal(0, 1, stored["target_flow"].shape),
        },
    )
    runs = []
    model_run = detector.object_errors
    monkeypatch.setattr(
        detector, "object_errors", lambda *a, **k: runs.append(1) or model_run(*a, **k)
    )

    kept = found.score_objects(objects, changed, changed_inputs=box_quality.DELETED)
    assert not runs
    np.testing.assert_array_equal(kept.objects.deep, objects.deep)
    again = found.score_objects(objects, changed)
    assert len(runs) == 1
    np.testing.assert_allclose(again.objects.deep, objects.deep, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(kept.score, again.score, rtol=1e-6, atol=1e-6)
    found.score_objects(objects, changed, changed_inputs=("frames", "target_frame"))
    assert len(runs) == 2
    with_error = detector.load(workdir, {"score.components": ("error", "deep")})
    with_error.score_objects(objects, changed, changed_inputs=box_quality.DELETED)
    assert len(runs) == 3


def test_held_out_videos_are_a_seeded_share_of_the_training_videos():
    got = object_scores.held_out_videos(16, 0.25, 0)
    assert len(set(got)) == 4 and list(got) == sorted(got) and 0 <= got.min() <= got.max() < 16
    np.testing.assert_array_equal(got, object_scores.held_out_videos(16, 0.25, 0))
    assert not np.array_equal(got, object_scores.held_out_videos(16, 0.25, 1))
    assert len(object_scores.held_out_videos(16, 0.0, 0)) == 0
    assert len(object_scores.held_out_videos(3, 0.1, 0)) == 1  # At least one.
    with pytest.raises(ValueError, match="none is left to train the model on"):
        object_scores.held_out_videos(1, 0.25, 0)


def test_held_out_videos_are_not_trained_on_and_calibrate_threshold_and_choose(
    held_out_run, tmp_path, monkeypatch
):
    """With objects.holdout the model never trains on the held-out video's objects; its
    errors alone calibrate the error component (the other video's are in-sample), its frames
    alone give the threshold, and ("auto",) chooses on its objects and frames."""
    config = held_out_run.config
    table = pipeline.open_prepared(config_lib.dataset_dir(config), "train")
    held = object_scores.held_out_videos(len(table.video_lengths), HELD_OUT, config.seed)
    assert len(held) == 1 and len(table.video_lengths) == 2
    objects = object_scores.read_objects(table)
    crops = train.training_crops(config, table)
    kept = ~np.isin(objects.video, held)
    assert 0 < kept.sum() < len(kept)
    np.testing.assert_array_equal(crops.position, objects.frame_position[kept])

    workdir = copy_run(held_out_run, tmp_path / "run")
    step = workdir / "checkpoints" / str(config.train.num_steps)
    assert not list(step.glob("object_bank_*")), "('auto',): banks come with the choice"
    arrays = dict(np.load(step / "object_errors.npz"))
    np.testing.assert_array_equal(arrays["held_out_videos"], held)
    scored = arrays["scored"].astype(bool)
    mine = scored & np.isin(arrays["video"], held)
    assert 0 < mine.sum() < scored.sum()
    n = {c: (arrays[c] - arrays[c][mine].mean()) / arrays[c][mine].std() for c in ("rgb", "flow")}
    raw = n["rgb"] + config.score.alpha * n["flow"]
    expected = (raw - raw[mine].mean()) / raw[mine].std()

    seen = {}
    choose = component_choice.choose

    def spy(train_objects, chosen, **kwargs):
        seen.update(video=train_objects.video[chosen], frames=kwargs["scored_frames"])
        return choose(train_objects, chosen, **kwargs)

    monkeypatch.setattr(component_choice, "choose", spy)
    found = detector.load(workdir)
    attribution = found.objects.attribution
    np.testing.assert_array_equal(attribution.held_out, held)
    np.testing.assert_allclose(attribution.train_scores[scored], expected[scored], rtol=1e-9)
    assert len(seen["video"]) == 30 and np.isin(seen["video"], held).all()
    reference = found.normal.scored & np.isin(found.normal.video, held)
    assert 0 < reference.sum() < found.normal.scored.sum()
    np.testing.assert_array_equal(seen["frames"], reference)

    frames = found.objects.train_frame_scores()
    values = (frames - frames[reference].mean()) / frames[reference].std()
    quantile = config.score.threshold_quantile
    assert found.threshold == pytest.approx(np.quantile(values[reference], quantile), rel=1e-9)
