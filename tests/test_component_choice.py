"""Components chosen without test labels (`jaxvad.component_choice`): the pseudo-anomalies
(objects and samples), the frame AUC ranking, the choice following its prior, and
`score.components=("auto",)` through the detector and the evaluator."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from conftest import copy_run, load_config

from jaxvad import component_choice, detector, evaluate, object_scores
from jaxvad import config as config_lib
from jaxvad.bench import choice as choice_bench
from jaxvad.data import pipeline

SIZE = 16


def eligible_objects(run):
    """`object_run`'s training table, its objects and the indices of the eligible ones."""
    table = pipeline.open_prepared(config_lib.dataset_dir(run.config), "train")
    train = object_scores.read_objects(table)
    t = table.frame_index[table.frame_ids[train.frame_position]]
    usable = component_choice.eligible(t, table.video_lengths[train.video], run.config.history)
    return table, train, np.flatnonzero(usable)


def record_images(table, video: int, frames) -> tuple[np.ndarray, np.ndarray]:
    """The stored frames `[n, S, S, C]` and flows `[n, S, S, 2]` float32 of 1-based `frames`
    of `video`, read record by record."""
    ids = table.video_records(video)[np.asarray(frames) - 1]
    images = np.stack([np.asarray(table.source[int(i)]["frame"]) for i in ids])
    flows = np.stack([np.asarray(table.source[int(i)]["flow"], np.float32) for i in ids])
    return images, flows


def test_pseudo_samples_are_the_objects_window_sped_up_reversed_or_shuffled(object_run):
    """`skip`: every second past frame, flows summed over the two frames they span;
    `reverse`: frames t+T..t+1 then target t, flows −flow(τ+1); `shuffled`: the sample with
    its quadrants swapped; each cut at the object's region, as a frame sample is."""
    T = object_run.config.history
    table, train, usable = eligible_objects(object_run)
    m = usable[len(usable) // 2]
    position = train.frame_position[m : m + 1]
    region = pipeline.object_crops(table, position, train.boxes[m : m + 1], size=SIZE, margin=0.25)
    box = region.boxes[0]
    video = int(train.video[m])
    t = int(table.frame_index[table.frame_ids[position[0]]])

    def cut(x):
        return pipeline.crop(x.astype(np.float32), box, SIZE)

    def sample(pseudo):
        return pipeline.pseudo_samples(
            table, position, region.boxes, pseudo=pseudo, history=T, size=SIZE, channels=1
        )

    first = t - 2 * T  # The earliest frame a pseudo sample reads (skip); the latest t + T.
    images, flows = record_images(table, video, range(first, t + T + 1))
    frame = {f: images[f - first] for f in range(first, t + T + 1)}
    flow = {f: flows[f - first] for f in range(first, t + T + 1)}
    atol = 0.02  # float16 flows, summed.

    skip = sample("skip")
    past = list(range(t - 2 * T, t, 2))
    np.testing.assert_allclose(skip["frames"][0], cut(np.stack([frame[f] for f in past])), atol=1)
    spans = [flow[f] + (flow[f - 1] if j else flow[f]) for j, f in enumerate(past)]
    np.testing.assert_allclose(skip["flows"][0], cut(np.stack(spans)), atol=atol)
    np.testing.assert_allclose(skip["target_flow"][0], cut(flow[t] + flow[t - 1]), atol=atol)
    np.testing.assert_allclose(skip["target_frame"][0], cut(frame[t]), atol=1)

    reverse = sample("reverse")
    past = list(range(t + T, t, -1))
    np.testing.assert_allclose(
        reverse["frames"][0], cut(np.stack([frame[f] for f in past])), atol=1
    )
    into = [-flow[min(f + 1, t + T)] for f in past]
    np.testing.assert_allclose(reverse["flows"][0], cut(np.stack(into)), atol=atol)
    np.testing.assert_allclose(reverse["target_frame"][0], cut(frame[t]), atol=1)
    np.testing.assert_allclose(reverse["target_flow"][0], cut(-flow[t + 1]), atol=atol)
    assert reverse["frame_index"][0] == t and reverse["video_index"][0] == video

    plain = pipeline.crop_samples(
        pipeline.eval_samples(table, position, history=T, channels=1), region.boxes, SIZE
    )
    shuffled = sample("shuffled")
    half = SIZE // 2
    for key in ("frames", "flows", "target_frame", "target_flow"):
        assert shuffled[key].shape == plain[key].shape
        np.testing.assert_array_equal(
            shuffled[key][..., :half, :half, :], plain[key][..., half:, half:, :]
        )
        assert not np.array_equal(shuffled[key], plain[key]) or not plain[key].any()


def test_a_pseudo_sample_without_its_frames_is_an_error_naming_the_split(object_run):
    T = object_run.config.history
    table, train, _ = eligible_objects(object_run)
    first = np.flatnonzero(table.frame_index[table.frame_ids[train.frame_position]] <= 2 * T)[0]
    region = pipeline.object_crops(
        table, train.frame_position[[first]], train.boxes[[first]], size=SIZE, margin=0.25
    )
    with pytest.raises(ValueError, match=rf"{table.split}.*'skip' sample of frame t reads"):
        pipeline.pseudo_samples(
            table, region.position, region.boxes, pseudo="skip", history=T, size=SIZE
        )
    with pytest.raises(ValueError, match="unknown pseudo-anomaly 'fast'"):
        pipeline.pseudo_samples(
            table, region.position, region.boxes, pseudo="fast", history=T, size=SIZE
        )


def walkway_objects(seed: int = 0, videos: int = 4, frames: int = 40, per_frame: int = 3):
    """Constructed training objects: walkers in a band (y 100..140 of a 240×360 frame),
    similar sizes, speeds about 1 px/frame in either direction along x."""
    rng = np.random.default_rng(seed)
    n = videos * frames
    boxes, velocity = [], []
    for _ in range(n):
        w = np.exp(rng.normal(np.log(20), 0.1, per_frame))
        h = 2.5 * w * np.exp(rng.normal(0, 0.05, per_frame))
        cx = rng.uniform(40, 320, per_frame)
        cy = rng.uniform(100, 140, per_frame)
        boxes.append(np.column_stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
        hist = np.zeros((per_frame, 8))
        right = rng.random(per_frame) < 0.5
        hist[np.arange(per_frame), np.where(right, 4, 0)] = rng.normal(1.0, 0.15, per_frame)
        velocity.append(np.abs(hist))
    tracks = [np.zeros(per_frame, np.int32)] * n
    return object_scores.SplitObjects.from_frames(boxes, tracks, velocity, [frames] * videos)


@pytest.mark.parametrize(
    "kind, needs", [("skip", {"speed", "velocity", "faster"}), ("grown", {"size"}),
                    ("moved", {"position"})]
)  # fmt: skip
def test_the_choice_follows_its_prior(kind, needs):
    """With one kind of pseudo-anomaly the chosen components include one that sees it, its
    AUC is high, and a component blind to it scores near chance."""
    train = walkway_objects()
    chosen = np.arange(0, len(train.boxes), 3)
    choice = component_choice.choose(
        train,
        chosen,
        frame_sizes=np.array([[240, 360]] * 4),
        scored_frames=np.ones(train.num_frames, bool),
        k=1,
        nearby=20,
        seed=0,
        kinds=(kind,),
    )
    assert set(choice.chosen) & needs, choice.table[:3]
    auc = {combo: a[kind] for combo, a, _ in choice.table}
    assert auc[choice.chosen] > 0.8  # "moved": a share lands back on the walkway.
    blind = {"skip": ("size",), "grown": ("speed",), "moved": ("size",)}[kind]
    assert auc[blind] < 0.65
    assert len(choice.table) == sum(
        1 for n in (1, 2, 3) for _ in itertools.combinations(range(5), n)
    )
    means = [round(row[2], 6) for row in choice.table]  # Ties within 1e-6: fewer first.
    assert means == sorted(means, reverse=True)


def test_max_finds_a_fact_that_the_sum_cancels():
    """Pseudo objects unusual in one component and as usual the other way in another: summed
    they look normal, their maximum finds them; a single component ranks the same by both
    rules."""
    train = walkway_objects()
    rng = np.random.default_rng(2)
    chosen = np.arange(0, len(train.boxes), 3)
    normal = {"speed": rng.normal(size=len(train.boxes)), "size": rng.normal(size=len(train.boxes))}
    pseudo = {
        "speed": {"skip": np.full(len(chosen), 5.0)},
        "size": {"skip": np.full(len(chosen), -5.0)},
    }
    tables = {
        rule: {
            combo: auc["skip"]
            for combo, auc, _ in component_choice.rank(
                normal, pseudo, train, chosen, np.ones(train.num_frames, bool), combine=rule
            )
        }
        for rule in component_choice.COMBINE
    }
    assert tables["max"][("speed", "size")] > 0.99
    assert tables["sum"][("speed", "size")] < 0.75
    for single in [("speed",), ("size",)]:
        assert tables["max"][single] == tables["sum"][single]


def test_pseudo_objects_change_what_their_kind_names():
    train = walkway_objects()
    sizes = np.array([[240, 360]] * 4)

    def side(o):
        return o.boxes[:, 2:] - o.boxes[:, :2]

    def centre(o):
        return (o.boxes[:, :2] + o.boxes[:, 2:]) / 2

    skip = component_choice.pseudo_objects(train, "skip", sizes, 0)
    np.testing.assert_allclose(
        object_scores.speeds(skip), 2 * object_scores.speeds(train), rtol=1e-6
    )
    reverse = component_choice.pseudo_objects(train, "reverse", sizes, 0)
    np.testing.assert_array_equal(reverse.velocity.argmax(1), (train.velocity.argmax(1) + 4) % 8)
    grown = component_choice.pseudo_objects(train, "grown", sizes, 0)
    np.testing.assert_allclose(side(grown), 1.5 * side(train), rtol=1e-5)
    np.testing.assert_allclose(centre(grown), centre(train), atol=1e-3)
    moved = component_choice.pseudo_objects(train, "moved", sizes, 0)
    np.testing.assert_allclose(side(moved), side(train), atol=1e-3)
    assert (moved.boxes[:, :2] >= -1e-3).all() and (moved.boxes[:, 2:] <= [360, 240]).all()
    assert (np.abs(centre(moved)[:, 1] - 120) > 20).mean() > 0.5  # Mostly off the walkway.
    shuffled = component_choice.pseudo_objects(train, "shuffled", sizes, 0)
    np.testing.assert_array_equal(shuffled.boxes, train.boxes)
    np.testing.assert_array_equal(shuffled.velocity, train.velocity)


def test_the_other_objects_maximum_leaves_the_object_out():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 6, 40)
    total = rng.normal(size=40)
    total[[3, 7]] = np.nan
    which = np.arange(40)
    got = component_choice._others_maximum(total, frame, 7, which)
    for m in which:
        others = [total[j] for j in range(40) if frame[j] == frame[m] and j != m]
        others = [v for v in others if np.isfinite(v)]
        assert got[m] == (max(others) if others else -np.inf)


def test_auto_components_are_chosen_once_stored_and_reported(
    object_samples_run, tmp_path, monkeypatch
):
    """("auto",) on a model of object samples: every set of ≤ 3 of the 7 components is
    ranked, the choice is stored with the checkpoint and becomes the detector's components,
    a second load reads it back without choosing again, and metrics.json reports it."""
    workdir = copy_run(object_samples_run, tmp_path / "run")
    config = object_samples_run.config
    overrides = {"score.components": ("auto",), "objects.pseudo_objects": 60}
    found = detector.load(workdir, overrides)
    step = workdir / "checkpoints" / str(config.train.num_steps)
    stored = list(step.glob("component_choice_*.json"))
    assert len(stored) == 1
    record = json.loads(stored[0].read_text())
    assert len(record["candidates"]) == 7 + 21 + 35 and record["kinds"] == list(
        component_choice.KINDS
    )
    assert tuple(record["chosen"]) == found.choice.chosen == found.settings.components
    assert tuple(found.config.score.components) == found.choice.chosen
    assert set(found.objects.banks) | ({"error"} if found.objects.error else set()) == set(
        found.choice.chosen
    )

    def refuse(*args, **kwargs):
        raise AssertionError("chose again")

    monkeypatch.setattr(component_choice, "choose", refuse)
    again = detector.load(workdir, overrides)
    assert again.choice.chosen == found.choice.chosen
    fields = dict(config.to_dict())
    run_config = config_lib.from_dict(fields)
    with run_config.unlocked():
        run_config.score.components = ("auto",)
        run_config.objects.pseudo_objects = 60
    result = evaluate.evaluate(run_config, workdir)
    summary = result["objects"]["component_choice"]
    assert summary["chosen"] == list(found.choice.chosen)
    assert set(summary["pseudo_auc"]) == set(component_choice.KINDS)
    assert result["objects"]["components"] == list(found.choice.chosen)


def test_a_frame_model_chooses_among_the_attribute_components(object_run, tmp_path):
    workdir = copy_run(object_run, tmp_path / "run")
    found = detector.load(
        workdir, {"score.components": ("auto",), "objects.pseudo_kinds": ("skip", "moved")}
    )
    combos = [row[0] for row in found.choice.table]
    assert len(combos) == 5 + 10 + 10
    assert not {"error", "deep"} & {c for combo in combos for c in combo}
    assert set(found.choice.table[0][1]) == {"skip", "moved"}


def test_auto_settings_are_config_errors():
    def validate(**fields):
        config_lib.validate(load_config("synthetic", **{"data.objects": "auto", **fields}))

    validate(**{"score.components": ("auto",)})
    with pytest.raises(config_lib.ConfigError, match=r"'auto'.*stands alone"):
        validate(**{"score.components": ("auto", "speed")})
    with pytest.raises(config_lib.ConfigError, match=r"objects\.pseudo_kinds"):
        validate(**{"score.components": ("auto",), "objects.pseudo_kinds": ("fast",)})
    with pytest.raises(config_lib.ConfigError, match=r"objects\.pseudo_objects"):
        validate(**{"score.components": ("auto",), "objects.pseudo_objects": 0})


def test_the_choice_bench_ranks_as_the_choice_and_scores_as_the_evaluator(held_out_run, tmp_path):
    """`jaxvad.bench.choice` on a run with held-out videos: its "sum" table is the run's own
    ("auto",) choice, row for row, and its test AUC of the chosen components is the
    evaluator's micro AUC with them; "max" ranks the same candidates."""
    workdir = copy_run(held_out_run, tmp_path / "run")
    measured = choice_bench.measure(held_out_run.config, workdir, draws=10)
    found = detector.load(workdir)
    assert measured.tables["sum"] == found.choice.table
    assert measured.normal_frames > 0 and measured.pseudo_objects == 30
    assert sorted(c for c, _, _ in measured.tables["max"]) == sorted(
        c for c, _, _ in found.choice.table
    )
    chosen = found.choice.chosen
    config = held_out_run.config.copy_and_resolve_references()
    with config.unlocked():
        config.score.components = chosen
    result = evaluate.evaluate(config, workdir)
    assert measured.tests[("sum", *chosen)] == pytest.approx(result["frame"]["auc_micro"], abs=1e-9)
    point, low, high = measured.differences["max"]
    assert low <= point <= high
