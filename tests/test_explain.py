"""End-to-end tests of `jaxvad.explain` on a small run trained on synthetic Ped2-like video.

The run (`explain_run`, conftest.py): 6 normal clips of 120 frames (64×96, prepared as Ped2 at
64×64), the tiny model trained for 600 steps. The video handed to the command: test clip 9 of
the same synthetic scene (a folder of PNG frames), where frames 1–34 are normal and a walker
crosses the lawns in frames 35–120; its masks are known.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import open_page, require_chromium, run_module

from jaxvad import config as config_lib
from jaxvad.data import preprocess, synthetic
from jaxvad.data.video_io import read_frames, resize_masks
from jaxvad.explain import blip, command, images
from jaxvad.explain.video import VideoFrames, open_video

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
        assert r["heatmap"] == r["images"]["gradcam"] and r["overlay"] == r["images"]["overlay"]
        for path in r["images"].values():
            assert cv2.imread(str(explained / path)) is not None, path
    inside = [r for r in records if r["frame"] in clip["span"]]
    assert len(inside) > len(records) / 2, "most records should lie inside the anomaly span"
    hits = {
        kind: np.mean([clip["masks"][r["frame"] - 1][tuple(r["peaks"][kind])] > 0 for r in inside])
        for kind in ("gradcam", "anomaly_map")
    }
    print(
        f"\n{len(records)} records, {len(inside)} inside the anomaly span "
        f"{clip['span'].start}-{clip['span'].stop - 1} ({len(inside) / len(records):.2f}); "
        f"pointing game (peak inside the mask): Grad-CAM {hits['gradcam']:.3f}, "
        f"anomaly map {hits['anomaly_map']:.3f}"
    )
    assert max(hits.values()) > 0.5


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
        assert set(r["pointing"]) == {"gradcam", "anomaly_map"}


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


def test_explain_settings_hold_exactly_the_configs_explain_fields():
    config = config_lib.base_config()
    settings = command.ExplainSettings(**config.explain)  # A field missing on either side fails.
    assert dataclasses.asdict(settings) == config.explain.to_dict()
