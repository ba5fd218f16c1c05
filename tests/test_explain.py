"""End-to-end tests of `jaxvad.explain` on a small run trained on synthetic Ped2-like video.

The run (`explain_run`, conftest.py): 6 normal clips of 120 frames (64×96, prepared as Ped2 at
64×64), the tiny model trained for 600 steps. The video handed to the command: test clip 9 of
the same synthetic scene (a folder of PNG frames), where frames 1–34 are normal and a walker
crosses the lawns in frames 35–120; its masks are known.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import subprocess
import types
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest
from conftest import copy_run, open_page, require_chromium, run_module

from jaxvad import config as config_lib
from jaxvad import detector, object_scores
from jaxvad.data import objects, pipeline, preprocess, synthetic
from jaxvad.data.video_io import DataError, read_frames, resize_masks
from jaxvad.explain import command, images, maps, measure, report
from jaxvad.explain import objects as object_explain
from jaxvad.explain.video import VideoFrames, open_video
from jaxvad.vlm import blip

pytestmark = pytest.mark.slow

CLIP = 9  # Normal walkers only in frames 1–34, then a walker crossing the lawns.


@pytest.fixture(scope="module")
def root(explain_run) -> Path:
    return explain_run.root


@pytest.fixture(scope="module")
def config(explain_run):
    return explain_run.config


@pytest.fixture(scope="module")
def workdir(explain_run) -> Path:
    return explain_run.workdir


@pytest.fixture(scope="module")
def clip(explain_run, root) -> dict:
    """The test clip as a folder of PNG frames, its masks at the run's size and its anomaly
    span."""
    frames, masks, anomalies = synthetic.generate_clip(explain_run.spec, "test", CLIP)
    assert [a["kind"] for a in anomalies] == ["lawn_crossing"]
    folder = root / "clip"
    folder.mkdir()
    for k, frame in enumerate(frames, start=1):
        cv2.imwrite(str(folder / f"{k:03d}.png"), frame)
    span = range(anomalies[0]["first_frame"], anomalies[0]["last_frame"] + 1)
    size = explain_run.config.data.size
    return {"folder": folder, "frames": frames, "masks": resize_masks(masks, size), "span": span}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_module("jaxvad.explain", *args, timeout=600)


def config_flags(config) -> list[str]:
    return [
        "--config=configs/synthetic.py:tiny",
        "--config.data.dataset=ped2",
        f"--config.data.size={config.data.size}",
        f"--config.data.root={config.data.root}",
    ]


def read_records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def explained(config, workdir, clip) -> Path:
    """`python -m jaxvad.explain --video=<the clip's folder>` (no BLIP)."""
    result = run_cli(*config_flags(config), f"--workdir={workdir}", f"--video={clip['folder']}")
    assert result.returncode == 0, result.stderr[-3000:]
    out = workdir / "explain" / "clip"
    assert "written:" in result.stderr and str(out / "report.html") in result.stderr
    return out


def test_records_of_a_video_cover_its_anomaly_and_point_at_it(explained, clip):
    records = read_records(explained)
    summary = json.loads((explained / "summary.json").read_text())
    assert records and summary["explained"] == len(records) == summary["anomalies"]
    for r in records:
        assert tuple(r) == command.RECORD_FIELDS
        assert r["video"] == "clip" and r["label"] is None and r["pointing"] is None
        assert r["score"] > r["threshold"] == summary["threshold"]
        assert r["caption"] is None and r["caption_source"] is None
        assert r["caption_note"] == command.NO_BLIP
        assert r["modality"] in ("appearance", "motion")
        assert r["explanation"].startswith(
            "Abnormal motion" if r["modality"] == "motion" else "Unusual appearance"
        )
        # The "where" map is the anomaly map with its motion term on the frame's foreground
        # by default (explain.where).
        assert r["heatmap"] == r["images"]["anomaly_foreground"]
        assert r["overlay"] == r["images"]["overlay"]
        for path in r["images"].values():
            assert cv2.imread(str(explained / path)) is not None, path
    inside = [r for r in records if r["frame"] in clip["span"]]
    assert len(inside) > len(records) / 2, "most records should lie inside the anomaly span"
    hits = {
        kind: np.mean([clip["masks"][r["frame"] - 1][tuple(r["peaks"][kind])] > 0 for r in inside])
        for kind in ("gradcam", "anomaly_map", "anomaly_foreground")
    }
    print(
        f"\n{len(records)} records, {len(inside)} inside the anomaly span "
        f"{clip['span'].start}-{clip['span'].stop - 1} ({len(inside) / len(records):.2f}); "
        f"pointing game (peak inside the mask): Grad-CAM {hits['gradcam']:.3f}, "
        f"anomaly map {hits['anomaly_map']:.3f}, "
        f"anomaly × foreground {hits['anomaly_foreground']:.3f}"
    )
    # The default "where" map points at the crossing walker.
    assert hits["anomaly_foreground"] > 0.5


def test_a_video_is_read_as_the_data_preparation_reads_it(config, clip):
    """Same frames and the same flow as `preprocess.frames_and_flow` on the decoded video."""
    size = config.data.size
    table = open_video(clip["folder"], size=size, history=config.history, flow="farneback")
    expected_frames, expected_flow = preprocess.frames_and_flow(
        read_frames(clip["folder"]), size=size, channels=1, flow_method="farneback"
    )
    source = table.source
    assert isinstance(source, VideoFrames) and len(source) == len(expected_frames)
    for k in (0, 1, 60, len(source) - 1):
        np.testing.assert_array_equal(source[k]["frame"], expected_frames[k])
        np.testing.assert_array_equal(source[k]["flow"], expected_flow[k])


def test_split_with_top_explains_the_highest_scores_with_labels(config, workdir):
    out = command.explain(config, workdir, split="test", top=3)
    records = read_records(out)
    summary = json.loads((out / "summary.json").read_text())
    assert len(records) == 3 < summary["anomalies"]
    assert [(r["video"], r["frame"]) for r in records] == sorted(
        (r["video"], r["frame"]) for r in records
    )
    scores = sorted((r["score"] for r in records), reverse=True)
    assert all(r["label"] in (0, 1) for r in records)
    with (workdir / "explain" / "test" / "summary.json").open() as f:
        assert json.load(f)["explained"] == 3
    # The 3 highest of all scores above the threshold: none of the others is higher.
    again = command.explain(config, workdir, split="test", top=4)
    assert sorted((r["score"] for r in read_records(again)), reverse=True)[:3] == scores
    with_masks = [r for r in records if r["pointing"] is not None]
    for r in with_masks:
        assert set(r["pointing"]) == {"gradcam", "anomaly_map", "anomaly_foreground"}


def test_report_opens_in_chromium_and_shows_a_hostile_name_as_text(config, workdir, clip, root):
    require_chromium()
    name = "<script>alert(1)</script>.mp4"
    path = root / "hostile" / name  # A folder "<script>alert(1)<" holding "script>.mp4".
    path.parent.mkdir(parents=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64), False)
    for frame in clip["frames"][30:90]:  # Frames 31–90: the lawn crossing starts at 35.
        writer.write(frame)
    writer.release()
    out = command.explain(config, workdir, video=path, top=4)
    records = read_records(out)
    assert len(records) == 4 <= json.loads((out / "summary.json").read_text())["anomalies"]
    page = open_page(out / "report.html")
    assert page["errors"] == [] and page["dialogs"] == [] and page["scripts"] == 0
    assert [m for m in page["console"] if m[0] in ("error", "warning")] == []
    expected = 1 + sum(len(r["images"]) for r in records)  # The score curve, then each record.
    assert len(page["images"]) == expected
    assert all(width > 0 for _, width in page["images"]), page["images"]
    assert f"Anomalies of {path}" in page["text"]
    assert "<script>alert(1)</script>" in (out / "report.html").read_text().replace(
        "&lt;", "<"
    ).replace("&gt;", ">")


def test_captions_with_blip(config, workdir, clip, blip_saved):
    blip_folder = blip_saved["small"].folder
    out = command.explain(config, workdir, video=clip["folder"], top=2, blip=blip_folder)
    records = read_records(out)
    assert len(records) == 2
    captioner = blip.Captioner.load(blip_folder)
    crops = np.stack([cv2.imread(str(out / r["images"]["crop"]))[..., ::-1] for r in records])
    expected = captioner.caption(
        crops,
        beams=config.explain.caption_beams,
        max_new_tokens=config.explain.caption_tokens,
    )
    for r, text in zip(records, expected, strict=True):
        assert isinstance(r["caption"], str) and r["caption"] == text
        assert r["caption_source"] == "crop" and r["caption_note"] is None
    assert "BLIP on the crop" in (out / "report.html").read_text()


def test_bad_input_is_one_clear_line(config, workdir, root, tmp_path):
    flags = [*config_flags(config), f"--workdir={workdir}"]
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video")
    short = tmp_path / "short"
    short.mkdir()
    for k in range(1, config.history + 1):  # T frames: one too few.
        images.write_png(short / f"{k:02d}.png", np.zeros((8, 8, 3), np.uint8))
    empty_blip = tmp_path / "blip"
    empty_blip.mkdir()
    cases = {
        "unreadable": ([f"--video={bad}"], f"error: {bad}:"),
        "short": ([f"--video={short}"], f"error: {short}: 4 frame(s): too short"),
        "no checkpoint": (
            [f"--video={short}", f"--workdir={tmp_path / 'none'}"],
            "no checkpoints/ folder",
        ),
        "blip": ([f"--video={bad}", f"--blip={empty_blip}"], f"error: {empty_blip}"),
        "both inputs": ([f"--video={bad}", "--split=test"], "error: give exactly one of"),
    }
    for case, (args, message) in cases.items():
        result = run_cli(*flags, *args)
        assert result.returncode == 1, (case, result.stderr[-2000:])
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, (case, last)
    for name in ("bad", "short"):
        assert not (workdir / "explain" / name).exists()


def test_quality_measures_every_map_and_agrees_with_the_records(config, workdir, tmp_path):
    """`--quality`: quality.json holds every map of the model × every metric, each a mean
    inside its bootstrap interval over the measured anomalies (evenly spaced among the
    explained); the pointing game of Grad-CAM and of the error map is the records' own, frame
    by frame; the mean deletion curves fall from 1 to 0 and insertion rises from 0 to 1; every
    top-level parameter group is randomised; the report shows the table and the curves."""

    run = copy_run(types.SimpleNamespace(workdir=workdir), tmp_path / "run")
    quick = config.copy_and_resolve_references()
    with quick.unlocked():
        quick.explain.update(
            quality_anomalies=5, quality_steps=4, quality_draws=1, quality_randomised=2
        )
    out = command.explain(quick, run, split="test", quality=True, top=12)
    quality = json.loads((out / "quality.json").read_text())
    records = read_records(out)
    rows = measure.measured(len(records), 5)
    assert quality["anomalies_measured"] == len(rows) == 5 < len(records) == 12
    names = maps.names(config.model.name)
    assert list(quality["maps"]) == list(names)
    assert names == ("gradcam", "hirescam", "gradcam_fine", "anomaly_map", "anomaly_foreground")
    for name in names:
        assert list(quality["maps"][name]) == list(measure.METRICS)
        for metric, value in quality["maps"][name].items():
            if value["n"]:
                assert value["low"] <= value["mean"] <= value["high"], (name, metric)
        curve = quality["curves"][name]
        np.testing.assert_allclose(curve["fractions"], [0, 0.25, 0.5, 0.75, 1.0])
        np.testing.assert_allclose([curve["deletion"][0], curve["deletion"][-1]], [1, 0], atol=1e-5)
        np.testing.assert_allclose(
            [curve["insertion"][0], curve["insertion"][-1]], [0, 1], atol=1e-5
        )
    games = [records[r]["pointing"] for r in rows]
    with_mask = [g for g in games if g is not None]
    assert quality["maps"]["gradcam"]["pointing_strict"]["n"] == len(with_mask) > 0
    for name in ("gradcam", "anomaly_map", "anomaly_foreground"):
        inside = np.mean([g[name]["inside"] for g in with_mask])
        assert quality["maps"][name]["pointing_strict"]["mean"] == pytest.approx(inside)
    groups = quality["randomisation"]["groups"]
    found = detector.load(run)
    assert sorted(groups) == sorted(str(k) for k in found.params)
    for name in names:
        assert len(quality["randomisation"]["maps"][name]["correlation_by_step"]) == len(groups)
    assert quality["modality_check"]["n"] == 5
    page = (out / "report.html").read_text()
    assert "How good each map is" in page and (out / "images" / "deletion.png").is_file()


def test_quality_needs_a_split(config, workdir, tmp_path):
    with pytest.raises(command.UsageError, match="use --split"):
        command.explain(config, workdir, video=tmp_path, quality=True)
    assert not (workdir / "explain" / tmp_path.name).exists()


def test_quality_of_object_samples_is_measured_on_the_top_crops(object_samples_run, tmp_path):
    """A model of object samples: its maps are measured on each anomaly's top object's crop
    (the anomalies without an object are left out), the near distance is a fraction of the
    crop's side, and the crops' deletion curves run from the full score to the reference."""

    run = copy_run(object_samples_run, tmp_path / "run")
    quick = object_samples_run.config.copy_and_resolve_references()
    with quick.unlocked():
        quick.explain.update(
            quality_anomalies=4, quality_steps=2, quality_draws=1, quality_randomised=1
        )
    out = command.explain(quick, run, split="test", quality=True)
    quality = json.loads((out / "quality.json").read_text())
    records = read_records(out)
    with_object = [r for r in records if r["objects"]]
    assert quality["anomalies_explained"] == len(with_object) <= len(records)
    assert quality["anomalies_measured"] == min(4, len(with_object)) > 0
    side = quick.objects.size
    assert quality["settings"]["tolerance"] == pytest.approx(
        quick.explain.pointing_tolerance * side
    )
    assert list(quality["maps"]) == [*maps.names(quick.model.name), measure.IN_BOX]
    measured = quality["anomalies_measured"]
    for name, curve in quality["curves"].items():
        np.testing.assert_allclose([curve["deletion"][0], curve["deletion"][-1]], [1, 0], atol=1e-5)
        assert quality["maps"][name]["max_sensitivity"]["n"] == measured
    found = detector.load(run)
    assert sorted(quality["randomisation"]["groups"]) == sorted(str(k) for k in found.params)
    assert quality["modality_check"]["n"] == measured
    boxes = quality["object_randomisation"]
    assert boxes["groups"] == [f"model/{k}" for k in reversed(list(found.params))] + ["banks"]
    assert set(boxes["maps"]) == {"anomaly_map", "anomaly_foreground"} and boxes["anomalies"] == 1
    for m in boxes["maps"].values():
        assert len(m["correlation_by_step"]) == len(boxes["groups"]) and m["passes"]["n"] == 1
    in_frame = quality["object_frame"]
    assert in_frame["anomalies"] == measured and set(in_frame["maps"]) == set(command.BOX_MAPS)
    # Measured again from its unchanged inputs (velocities through DIS at the original
    # resolution, crops from the stored frames), each frame's object score is the record's.
    assert in_frame["score_reproduced_within"] == 0
    for name, curve in in_frame["curves"].items():
        ends = [curve[k][i] for k in ("deletion", "insertion") for i in (0, -1)]
        np.testing.assert_allclose(ends, [1, 0, 0, 1], atol=1e-5)
        assert in_frame["maps"][name]["max_sensitivity"]["n"] == measured
    assert (
        "box maps in the frame, against the frame's object score"
        in (out / "report.html").read_text()
    )


def test_box_maps_randomisation_rescores_the_objects_and_reexplains_the_top_crop(
    object_samples_run, samples_explained
):
    """With a score that reads no model (`speed`), randomising the crop model leaves the box
    map without a pattern (`anomaly_map`) exactly as it was, and changes the box map with
    the crop's foreground pattern; `with_region` keeps the crop's anomaly_foreground inside the
    object's own box only."""
    config = object_samples_run.config
    overrides = config_lib.flatten(config) | {"score.components": ("speed",)}
    found = detector.load(samples_explained.workdir, overrides)
    table = pipeline.open_prepared(config_lib.dataset_dir(config), "test")
    scored = found.score_objects(object_scores.read_objects(table), table)
    records = [r for r in samples_explained.records if r["objects"]][:2]
    positions = record_positions(table, records)
    result = command.object_randomisation(
        found,
        table,
        found.errors(table, labels=False, maps=False)[0],
        positions,
        scored,
        batch_size=config.explain.batch_size,
        key=jax.random.key(0),
    )
    steps = len(found.params)
    box, pattern = (result["maps"][k]["correlation_by_step"] for k in command.BOX_MAPS)
    assert box[:steps] == pytest.approx([1.0] * steps, abs=1e-6), "the boxes read no model"
    # The pattern moves only the box's few pixels' ranks (the rest is the floor, tied in
    # both maps); unchanged maps would correlate to 1 within float rounding (< 1e-7).
    assert min(pattern[:steps]) < 1 - 1e-6, "the crop's pattern follows the model"
    region = np.zeros((1, 4, 4), bool)
    region[0, 1:3, 1:3] = True
    inside = measure.with_region({"anomaly_foreground": np.ones((1, 4, 4))}, region)
    np.testing.assert_array_equal(inside[measure.IN_BOX], region.astype(float))


def test_box_maps_are_not_measured_in_the_frame_without_the_original_frames(
    object_samples_run, samples_explained, caplog
):
    """The source folder unreadable: `object_frame` says why, naming the folder, and measures
    nothing; no original frames at all: it says so."""
    config = object_samples_run.config
    found = detector.load(samples_explained.workdir)
    table = pipeline.open_prepared(config_lib.dataset_dir(config), "test")
    scored = found.score_objects(object_scores.read_objects(table), table)
    records = [r for r in samples_explained.records if r["objects"]][:1]
    positions = record_positions(table, records)
    maps = {name: np.zeros((1, 4, 4)) for name in command.BOX_MAPS}

    def unreadable(video: int) -> np.ndarray:
        raise DataError("/nowhere/ped2", "cannot list the source videos")

    errors = found.errors(table, labels=False, maps=False)[0]

    def measured(originals) -> dict:
        source = command.Input(table, "test", "test", True, frozenset(), originals)
        references = measure.deletion_references(found, table)
        return command.object_frame(found, source, errors, positions, scored, maps, references)

    with caplog.at_level(logging.WARNING):
        assert measured(unreadable) == {"skipped": "/nowhere/ped2: cannot list the source videos"}
    assert "not measured in the frame: /nowhere/ped2" in caplog.text
    assert measured(None) == {"skipped": "no original frames for this input"}
    quality = {
        "anomalies_measured": 1,
        "anomalies_explained": 1,
        "reference": "",
        "maps": {},
        "randomisation": {"anomalies": 0, "maps": {}},
        "modality_check": {"mean": 1.0},
        "object_frame": measured(None),
    }
    page = report.render(
        summary=samples_explained.summary, records=[], curves={}, extra_titles={}, quality=quality
    )
    assert "Box maps in the frame not measured: no original frames for this input" in page


def test_explain_settings_hold_exactly_the_configs_explain_fields():
    config = config_lib.base_config()
    settings = command.ExplainSettings(**config.explain)  # A field missing on either side fails.
    assert dataclasses.asdict(settings) == config.explain.to_dict()


# --- Object mode: `object_run` (synthetic clips at 240×360 prepared at 32×32 with --objects=auto,
# scored by the objects' speed).


@pytest.fixture(scope="module")
def object_config(object_run):
    """`object_run`'s config with BLIP captioning the top object."""
    config = object_run.config.copy_and_resolve_references()
    config.explain.caption_source = "object"
    return config


def explained_output(out: Path) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        out=out,
        records=read_records(out),
        summary=json.loads((out / "summary.json").read_text()),
    )


@pytest.fixture(scope="module")
def object_explained(object_run, object_config, blip_saved, tmp_path_factory):
    """Every anomaly of `object_run`'s test split explained, BLIP (tiny, random) captioning the
    top object: `out`, `records`, `summary`, `workdir` (a copy of the run's)."""
    workdir = copy_run(object_run, tmp_path_factory.mktemp("object_explain") / "run")
    folder = blip_saved["small"].folder
    found = explained_output(command.explain(object_config, workdir, split="test", blip=folder))
    found.workdir = workdir
    return found


def stored_pixels(box: list[float], size: int, height: int, width: int) -> tuple[slice, slice]:
    """(rows, columns) of an original-resolution box in the stored frame, rounded outwards."""
    x0, y0, x1, y1 = (v * size / s for v, s in zip(box, (width, height) * 2, strict=True))
    return slice(math.floor(y0), math.ceil(y1)), slice(math.floor(x0), math.ceil(x1))


def test_object_captions_are_blip_on_the_top_box_cut_from_the_original_frame(
    object_run, object_config, object_explained, blip_saved
):
    records = object_explained.records
    assert len(records) >= 2 and all(r["objects"] for r in records)
    crops = []
    for r in records:
        x0, y0, x1, y1 = r["objects"][0]["box"]
        frame = cv2.imread(
            str(object_run.source / "Test" / r["video"] / f"{r['frame']:03d}.tif"),
            cv2.IMREAD_UNCHANGED,
        )
        expected = frame[math.floor(y0) : math.ceil(y1), math.floor(x0) : math.ceil(x1)]
        crop = cv2.imread(str(object_explained.out / r["images"]["object_crop"]))[..., ::-1]
        np.testing.assert_array_equal(crop, np.repeat(expected[..., None], 3, axis=-1))
        assert r["caption_source"] == "object"
        assert r["caption_note"] == "the top object's box cut from the original 360×240 frame"
        crops.append(crop)
    captioner = blip.Captioner.load(blip_saved["small"].folder)
    settings = object_config.explain
    expected = captioner.caption(
        crops, beams=settings.caption_beams, max_new_tokens=settings.caption_tokens
    )
    assert [r["caption"] for r in records] == expected
    assert all(isinstance(text, str) for text in expected)
    assert "BLIP on the object" in (object_explained.out / "report.html").read_text()


def test_object_mode_heatmap_is_where_and_gradcam_is_shown_inside_the_top_box(
    object_explained,
):
    """The default "where" of object mode on a frame model (no object samples) is the frame
    model's anomaly_foreground; the Grad-CAM restricted to the top box is drawn beside it."""
    size = 32
    records, game = object_explained.records, object_explained.summary["pointing_game"]
    for r in records:
        rows, cols = stored_pixels(r["objects"][0]["box"], size, 240, 360)
        row, col = r["peaks"]["gradcam_in_box"]
        assert rows.start <= row < rows.stop and cols.start <= col < cols.stop, r["peaks"]
        assert r["heatmap"] == r["images"]["anomaly_foreground"]
        heat = cv2.imread(str(object_explained.out / r["images"]["gradcam_in_box"]))
        outside = np.ones((size, size), bool)
        outside[rows, cols] = False
        blue = images.colormap(np.zeros((1, 1)))[0, 0, ::-1]  # BGR of the map's 0.
        assert (heat[outside] == blue).all(), "the map is zero outside the box"
    games = [r["pointing"] for r in records if r["pointing"] is not None]
    assert games and game["frames_with_mask"] == len(games)
    for kind in ("gradcam", "anomaly_map", "anomaly_foreground", "gradcam_in_box"):
        assert game[f"{kind}_inside"] == np.mean([g[kind]["inside"] for g in games])
    assert game["object_box"] == np.mean([g["object_box"] for g in games])
    print(
        f"\n{len(games)} frames with masks: Grad-CAM {game['gradcam_inside']:.3f}, inside the "
        f"top box {game['gradcam_in_box_inside']:.3f}, the top box {game['object_box']:.3f}"
    )


def test_gradcam_in_the_top_object_box_peaks_on_the_mask_when_the_global_peak_is_elsewhere():
    """One frame, two objects; the top one's box (original 240×360, stored 32×32) holds the
    ground truth; the Grad-CAM's global peak lies outside it."""
    train_boxes = [[[0, 0, 10, 20]] * 3] * 4
    train = object_scores.SplitObjects.from_frames(
        [np.array(b, np.float32) for b in train_boxes],
        [np.zeros(3, np.int32)] * 4,
        [np.full((3, 8), 0.1, np.float32)] * 4,
        video_lengths=[2, 2],
    )
    model = object_scores.ObjectModel({"speed": object_scores.fit_bank(train, "speed", 1)})
    boxes = np.array([[180, 120, 270, 180], [0, 0, 45, 45]], np.float32)  # Top (fast) first.
    velocity = np.zeros((2, 8), np.float32)
    velocity[:, 0] = [5.0, 0.2]
    test = object_scores.SplitObjects.from_frames(
        [boxes], [np.arange(2, dtype=np.int32)], [velocity], video_lengths=[1]
    )
    scored = object_scores.score(test, model)
    gradcam = np.zeros((1, 32, 32), np.float32)
    gradcam[0, 2, 2] = 1.0  # The global peak, in the other object's box.
    gradcam[0, 20, 20] = 0.4  # The top box holds pixels 16–23 (rows and columns).
    mask = np.zeros((1, 32, 32), np.uint8)
    mask[0, 19:22, 19:22] = 1
    found = object_explain.explain_objects(
        model, scored, np.array([0]), gradcam, np.array([[240, 360]]), nearby=2
    )
    expected = np.zeros((32, 32), bool)
    expected[16:24, 16:24] = True
    np.testing.assert_array_equal(found.region[0], expected)
    assert found.gradcam_in_box[0].max() == 1.0 and not found.gradcam_in_box[0][~expected].any()
    explained = {"gradcam": gradcam, "anomaly_map": gradcam, "mask": mask}
    peaks, pointing = command.peaks_and_pointing(explained, 0, found, masked=True)
    assert peaks["gradcam"] == [2, 2] and peaks["gradcam_in_box"] == [20, 20]
    assert not pointing["gradcam"]["inside"] and pointing["gradcam_in_box"]["inside"]
    assert pointing["object_box"]
    game = command.pointing_game([{"pointing": pointing}], 2.0, objects=True)
    assert (game["gradcam_inside"], game["gradcam_in_box_inside"], game["object_box"]) == (0, 1, 1)


def test_object_captions_fall_back_to_the_stored_frame_without_the_source_videos(
    object_run, object_config, blip_saved, tmp_path, caplog
):
    config = object_config.copy_and_resolve_references()
    config.data.source = str(tmp_path / "moved")
    workdir = copy_run(object_run, tmp_path / "run")
    with caplog.at_level(logging.WARNING, "jaxvad.explain"):
        out = command.explain(config, workdir, split="test", top=1, blip=blip_saved["small"].folder)
    (record,) = read_records(out)
    assert record["caption_note"].startswith(
        "the top object's box cut from the stored 32×32 frame (box scaled): the original frames "
        f"could not be read ({tmp_path / 'moved'}"
    )
    assert "cutting boxes from the stored frames" in caplog.text
    frame = cv2.imread(str(out / record["images"]["frame"]))
    rows, cols = stored_pixels(record["objects"][0]["box"], 32, 240, 360)
    crop = cv2.imread(str(out / record["images"]["object_crop"]))
    np.testing.assert_array_equal(crop, frame[rows, cols])


def test_object_mode_explains_a_video_finding_its_objects_on_the_fly(
    object_run, object_explained, tmp_path
):
    """A video file written from test clip 2 (the one with anomalies): its objects found as the
    preparation finds them; the clip's own folder of frames explained as the prepared split
    explains that video."""
    folder = object_run.source / "Test" / "Test002"
    frames = read_frames(folder)
    path = tmp_path / "clip.mp4"
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (width, height), False)
    for frame in frames:
        writer.write(frame[..., 0])
    writer.release()
    workdir = copy_run(object_run, tmp_path / "run")
    config = object_run.config.copy_and_resolve_references()
    with config.unlocked():
        config.explain.where = "gradcam"  # In object mode: Grad-CAM inside the top box.
    records = read_records(command.explain(config, workdir, video=path))
    assert records
    decoded = read_frames(path)
    found = objects.video_objects(decoded)
    for r in records:
        boxes = sorted(list(map(float, b)) for b in found.boxes[r["frame"] - 1])
        assert sorted(o["box"] for o in r["objects"]) == boxes
        assert r["explanation"].startswith("the object in box") and r["label"] is None
        assert r["heatmap"] == r["images"]["gradcam_in_box"]

    again = read_records(command.explain(object_run.config, workdir, video=folder))
    split = [r for r in object_explained.records if r["video"] == "Test002"]
    assert split
    assert [(r["frame"], r["objects"]) for r in again] == [
        (r["frame"], r["objects"]) for r in split
    ]
    assert [r["score"] for r in again] == pytest.approx([r["score"] for r in split])


# --- Object samples: `object_samples_run` (a model of `SAMPLE_SIZE` crops on `object_run`'s data,
# score components ("error", "speed")).


@pytest.fixture(scope="module")
def samples_explained(object_samples_run, tmp_path_factory) -> types.SimpleNamespace:
    """Every anomaly of the test split explained by the model of object samples: `out`,
    `records`, `summary`, `workdir` (a copy of the run's)."""
    workdir = copy_run(object_samples_run, tmp_path_factory.mktemp("samples_explain") / "run")
    found = explained_output(command.explain(object_samples_run.config, workdir, split="test"))
    found.workdir = workdir
    return found


def record_positions(table, records: list[dict]) -> np.ndarray:
    """`[R]` the positions in `table` of the records' frames (1-based per video)."""
    starts = [table.video_starts[table.video_names.index(r["video"])] for r in records]
    return np.array([s + r["frame"] - 1 for s, r in zip(starts, records, strict=True)])


def crop_maps(
    found: detector.Detector, table, position: int, region: np.ndarray
) -> dict[str, np.ndarray]:
    """`maps.map_step`'s maps `[s, s]` of the frame at `position`'s sample cut at `region`
    (stored pixels; the training background cut the same way), normalised with the training
    objects' errors: computed here, step by step."""
    o = found.config.objects
    sample = pipeline.eval_samples(
        table, np.array([position]), history=found.config.history, channels=found.scorer.channels
    )
    sample = pipeline.crop_samples(sample, region[None], o.size)
    background = pipeline.crop_samples(
        {"target_frame": found.background[None]}, region[None], o.size
    )["target_frame"]
    train = found.objects.attribution.train
    shift = [[train.rgb[train.scored].mean(), train.flow[train.scored].mean()]]
    scale = [[train.rgb[train.scored].std(), train.flow[train.scored].std()]]
    step = jax.jit(
        functools.partial(
            maps.map_step,
            graphdef=found.graphdef,
            alpha=found.settings.alpha,
            sigma=found.config.eval.map_sigma * o.size,
        )
    )
    batch = {k: np.asarray(sample[k], np.float32) for k in pipeline.TRAIN_KEYS}
    out = step(found.params, batch, np.float32(shift), np.float32(scale), background)
    return {k: np.asarray(v[0]) for k, v in out.items()}


def test_object_samples_heatmap_is_the_top_crops_gradcam_pasted_into_its_grown_box(
    object_samples_run, samples_explained
):
    """The model takes crops, so Grad-CAM is the top object's crop's: zero outside its box
    grown by the margin, the crop's own Grad-CAM resized into it; "where" is that map inside
    the object's own box."""
    config = object_samples_run.config
    found = detector.load(samples_explained.workdir, config_lib.flatten(config))
    table = pipeline.open_prepared(config_lib.dataset_dir(config), "test")
    found_objects = object_scores.read_objects(table)
    scored = found.score_objects(found_objects, table)
    records = [r for r in samples_explained.records if r["objects"]]
    assert records and samples_explained.summary["explained"] == len(records)
    size, margin = config.data.size, config.objects.margin
    picked = records[:: max(1, len(records) // 3)][:3]  # A few, spread over the split.
    positions = record_positions(table, picked)
    explained, z = command.explain_crops(
        found,
        table,
        found.errors(table, labels=False, maps=False)[0],
        positions,
        scored,
        batch_size=config.explain.batch_size,
    )
    for a, (r, position) in enumerate(zip(picked, positions, strict=True)):
        mine = np.flatnonzero(found_objects.frame_position == position)
        top = mine[np.argmax(scored.score[mine])]
        assert found_objects.boxes[top].tolist() == r["objects"][0]["box"]
        video = table.video_names.index(r["video"])
        region = pipeline.stored_boxes(
            found_objects.boxes[top : top + 1], table.frame_sizes[[video]], size, margin
        )[0]
        x0, y0, x1, y1 = region
        by_hand = crop_maps(found, table, position, region)
        grown = cv2.resize(by_hand["gradcam"], (x1 - x0, y1 - y0))
        expected = np.zeros((size, size), np.float32)
        top_, left = max(y0, 0), max(x0, 0)
        expected[top_:y1, left:x1] = grown[top_ - y0 :, left - x0 :][: size - top_, : size - left]
        assert expected.max() > 0.5, "the crop's Grad-CAM (max 1) is not empty"
        np.testing.assert_allclose(explained["gradcam"][a], expected, atol=1e-5)
        assert explained["gradcam"][a].shape == (size, size) != (config.objects.size,) * 2
        inside = np.zeros((size, size), bool)
        inside[top_:y1, left:x1] = True
        # The error maps are pasted the same way; the anomaly map is the floor outside.
        assert not explained["rgb_map"][a][~inside].any() and explained["rgb_map"][a][inside].any()
        floor = found.objects.floor
        np.testing.assert_array_equal(explained["anomaly_map"][a][~inside], np.float32(floor))
        # The record's heatmap ("where"), its peak and the pointing game: that map restricted
        # to the object's own box (the margin is the crop's context).
        bx0, by0, bx1, by1 = pipeline.stored_boxes(
            found_objects.boxes[top : top + 1], table.frame_sizes[[video]], size
        )[0]
        own = np.zeros((size, size), bool)
        own[max(by0, 0) : by1, max(bx0, 0) : bx1] = True
        assert own.sum() < inside.sum()
        where = images.restrict(expected, own)
        # "where" (anomaly_foreground): the top object's score plus its crop's foreground
        # pattern, the map of `maps.map_step`, over the object's own box; the floor elsewhere.
        pattern = object_scores.scaled_detail(by_hand["anomaly_foreground"][None])[0]
        assert np.abs(pattern).max() == pytest.approx(object_scores.DETAIL)
        grown_where = np.full((size, size), np.nan, np.float32)
        grown_where[top_:y1, left:x1] = (
            scored.score[top] + pipeline.uncrop(pattern, region, size)[1]
        )
        expected_where = np.where(own, np.maximum(grown_where, floor), np.float32(floor))
        np.testing.assert_allclose(explained["anomaly_foreground"][a], expected_where, atol=1e-4)
        assert r["heatmap"] == r["images"]["anomaly_foreground"]
        row, col = r["peaks"]["anomaly_foreground"]
        assert own[row, col], "the peak of 'where' is inside the object's own box"
        heat = cv2.imread(str(samples_explained.out / r["images"]["gradcam_in_box"]))[..., ::-1]
        np.testing.assert_allclose(heat, images.colormap(where), atol=8)
        assert (heat[~own] == images.colormap(np.zeros((1, 1)))[0, 0]).all()
        row, col = r["peaks"]["gradcam_in_box"]
        assert own[row, col] and expected[row, col] == pytest.approx(expected[own].max(), abs=1e-5)
        # The attribution compares the crop's errors with the training objects'.
        train = found.objects.attribution.train
        mean, std = train.rgb[train.scored].mean(), train.rgb[train.scored].std()
        assert z["rgb"][a] == pytest.approx((explained["rgb"][a] - mean) / std)
        assert r["z_rgb"] == pytest.approx(z["rgb"][a], rel=1e-4) and z["rgb"][a] != 0
    assert "object samples" in samples_explained.summary["pointing_game"]["rule"]
    # Without the error component the crops are compared with the same training errors.
    speed_only = detector.load(
        samples_explained.workdir, config_lib.flatten(config) | {"score.components": ("speed",)}
    )
    assert speed_only.objects.error is None and speed_only.objects.attribution is not None
    _, z_speed = command.explain_crops(
        speed_only,
        table,
        speed_only.errors(table, labels=False, maps=False)[0],
        positions,
        speed_only.score_objects(found_objects, table),
        batch_size=config.explain.batch_size,
    )
    for c in z:
        np.testing.assert_allclose(z_speed[c], z[c], rtol=1e-5)


def test_object_samples_explain_a_video_as_the_prepared_split(
    object_run, object_samples_run, samples_explained, tmp_path
):
    """`--video` of a test clip's frames: the video's own frame size places its objects'
    crops, and the same frames are flagged with the same scores as in the prepared split."""
    folder = object_run.source / "Test" / "Test002"
    workdir = copy_run(object_samples_run, tmp_path / "run")
    again = read_records(command.explain(object_samples_run.config, workdir, video=folder))
    split = [r for r in samples_explained.records if r["video"] == "Test002"]
    assert split and [r["frame"] for r in again] == [r["frame"] for r in split]
    assert [r["score"] for r in again] == pytest.approx([r["score"] for r in split], rel=1e-5)
    for r, s in zip(again, split, strict=True):
        assert [o["box"] for o in r["objects"]] == [o["box"] for o in s["objects"]]
        assert r["peaks"]["gradcam_in_box"] == s["peaks"]["gradcam_in_box"]
        assert r["z_rgb"] == pytest.approx(s["z_rgb"], rel=1e-4)


def test_object_samples_paste_crops_back_and_a_frame_without_objects_has_no_maps():
    """`paste` resizes each crop onto its region (cut at the frame's border), zeros elsewhere
    and for a frame without a crop; such a frame's peaks are None and every game a miss."""
    crops = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    regions = np.array([[-2, 4, 6, 12], [0, 0, 1, 1]])  # Past the left and bottom borders.
    pasted = object_explain.paste(crops, regions, np.array([True, False]), 10)
    expected = np.zeros((10, 10), np.float32)
    expected[4:10, 0:6] = cv2.resize(crops[0], (8, 8))[:6, 2:]
    np.testing.assert_allclose(pasted[0], expected, rtol=1e-6)
    assert not pasted[1].any()
    frames = np.stack([np.full((4, 4, 1), 200, np.uint8), np.zeros((4, 4, 1), np.uint8)])
    picture = object_explain.paste(frames, np.array([[1, 1, 3, 3]] * 2), np.array([True] * 2), 6)
    assert picture.dtype == np.uint8 and picture.shape == (2, 6, 6, 1)
    assert (picture[0, 1:3, 1:3] == 200).all() and picture[0].sum() == 4 * 200

    size = 8
    mask = np.zeros((1, size, size), np.uint8)
    none = np.zeros((1, size, size), bool)
    zero = np.zeros((1, size, size), np.float32)
    mask[0][images.peak(zero[0])] = 1  # The peak of an all-zero map would hit it.
    found = object_explain.AnomalyObjects([[]], np.array([-1]), none, zero, samples=True)
    explained = {"gradcam": zero, "anomaly_map": zero, "mask": mask}
    peaks, pointing = command.peaks_and_pointing(explained, 0, found, masked=True)
    assert peaks == {"gradcam": None, "anomaly_map": None, "gradcam_in_box": None}
    assert pointing == dict.fromkeys(("gradcam", "anomaly_map", "gradcam_in_box"), None) | {
        "object_box": False
    }
    game = command.pointing_game([{"pointing": pointing}], 2.0, objects=True, samples=True)
    assert (
        game["gradcam_inside"] == game["anomaly_map_inside"] == game["gradcam_in_box_inside"] == 0
    )


def test_the_peak_of_a_plateau_is_its_centre_and_of_a_single_maximum_that_pixel():
    """An object's score flat over its box peaks at the box's centre, not at its corner (the
    pointing game of a box map would otherwise test the corner)."""
    heat = np.zeros((20, 20), np.float32)
    heat[4:9, 10:17] = 3.0  # A box of rows 4–8, columns 10–16.
    assert images.peak(heat) == (6, 13)
    mask = np.zeros((20, 20), np.uint8)
    mask[5:8, 12:15] = 1  # The object inside the box, away from its corners.
    assert images.pointing(heat, mask)["inside"]
    heat[8, 16] = 4.0  # A single maximum wins wherever it is.
    assert images.peak(heat) == (8, 16)
    within = np.zeros((20, 20), bool)
    within[:, :12] = True
    assert images.peak(heat, within) == (6, 10)  # Columns 10–11 of the box: the first nearest.
