"""`jaxvad.explain` on a weakly supervised run: alarms named by their category with its text
similarity, and a description of every video (`jaxvad.explain.weak_alarms`, `description`)."""

from __future__ import annotations

import json
import shutil
import types

import numpy as np
import pytest
from conftest import load_config, open_page, require_chromium

from jaxvad import config as config_lib
from jaxvad import weak_scoring
from jaxvad.data import weak
from jaxvad.explain import command, description, weak_alarms


def test_alarms_are_runs_above_the_threshold_named_by_the_most_similar_anomaly_class():
    scores = np.array([0.1, 0.6, 0.9, 0.2, 0.7, 0.4, 0.8])
    similarity = np.zeros((7, 3))
    similarity[:, 0] = 0.9  # The normal class is the most similar everywhere, and never named.
    similarity[1:3, 1], similarity[1:3, 2] = [0.3, 0.5], [0.6, 0.1]  # Means 0.40 and 0.35.
    similarity[4, 1], similarity[4, 2] = 0.1, 0.2
    similarity[6, 1], similarity[6, 2] = -0.3, -0.5
    alarms = weak_alarms.find_alarms(3, scores, similarity, 0.5)
    assert [(a.first, a.last, a.peak) for a in alarms] == [(1, 3, 2), (4, 5, 4), (6, 7, 6)]
    assert [a.category for a in alarms] == [1, 2, 1] and {a.video for a in alarms} == {3}
    np.testing.assert_allclose([a.similarity for a in alarms], [0.4, 0.2, -0.3])
    np.testing.assert_allclose([a.peak_score for a in alarms], [0.9, 0.7, 0.8])
    np.testing.assert_allclose(alarms[0].similarities, [0.9, 0.4, 0.35])
    assert weak_alarms.find_alarms(0, scores, similarity, 0.95) == []

    # Snippet s covers frames [16 s, 16 s + 16), cut at the video's end; the peak frame is the
    # centre of the peak snippet.
    last = weak_alarms.segment_facts(alarms[2], ("normal", "a", "b"), 100, 16)
    assert (last.start, last.end, last.peak_frame, last.category) == (96, 100, 99, "a")
    first = weak_alarms.segment_facts(alarms[0], ("normal", "a", "b"), 100, 16)
    assert (first.start, first.end, first.peak_frame) == (16, 48, 40)


FACTS = description.VideoFacts(
    "Test004",
    25.0,
    0.93,
    0.5,
    (
        description.SegmentFacts(50, 100, "rider", 0.31, 75, 0.93, "a man riding a bike"),
        description.SegmentFacts(200, 210, "against_the_flow", 0.12, 205, 0.61),
    ),
)


def test_the_template_says_the_verdict_and_each_segment_with_times():
    text = description.template(FACTS)
    assert text.startswith("Test004: abnormal, 2 anomalous segments.")
    assert "2.00–4.00 s (frames 50–99): rider (text similarity 0.31)" in text
    assert 'peak score 0.93 at 3.00 s; the peak frame shows "a man riding a bike".' in text
    assert "8.00–8.40 s (frames 200–209): against the flow (text similarity 0.12)" in text
    no_rate = description.VideoFacts("Test004", 0.0, 0.93, 0.5, FACTS.segments[:1])
    assert "frames 50–99: rider" in description.template(no_rate)
    assert "at frame 75" in description.template(no_rate)
    normal = description.VideoFacts("Test001", 25.0, 0.21, 0.5, ())
    assert description.template(normal) == (
        "Test001: normal (highest snippet score 0.21, below the alarm threshold 0.50)."
    )
    record = FACTS.record()
    assert record["verdict"] == "abnormal" and record["segments"][1]["end_s"] == 8.4
    assert record["segments"][0]["caption"] == "a man riding a bike"
    assert no_rate.record()["segments"][0]["start_s"] is None


def test_a_language_model_describes_from_the_facts_it_is_given():
    seen = []

    def generate(prompt: str) -> str:
        seen.append(prompt)
        return "  A cyclist rides through the crowd.\n"

    describer = description.language_model(generate)
    assert describer(FACTS) == "A cyclist rides through the crowd."
    instruction, facts = seen[0].split("\n\n", 1)
    assert instruction == description.INSTRUCTION
    assert json.loads(facts) == FACTS.record()


@pytest.fixture(scope="module")
def explained(weak_run, blip_saved, tmp_path_factory):
    """The tiny weak run explained with a random BLIP, its alarm threshold the median snippet
    score (alarms in some videos, not all), and the predictions it explained."""
    workdir = tmp_path_factory.mktemp("weak_explain") / "run"
    shutil.copytree(weak_run.workdir, workdir)
    config = load_config("synthetic_weak", **{"data.root": str(weak_run.root)})
    _, data, graphdef, params, _ = weak_scoring.load(config, workdir)
    split = data.split("test")
    predictions = weak_scoring.predict(
        graphdef, params, split, snippets=data.snippets, batch_size=config.eval.batch_size
    )
    threshold = float(np.median(np.concatenate(predictions.scores)))
    with config.unlocked():
        config.explain.alarm_score = threshold
        config.explain.caption_beams = 1  # Greedy: one small program to compile.
    out = command.explain(config, workdir, split="test", blip=blip_saved["small"].folder)
    read = lambda name: [json.loads(line) for line in (out / name).read_text().splitlines()]  # noqa: E731
    return types.SimpleNamespace(
        out=out,
        records=read("records.jsonl"),
        descriptions=read("descriptions.jsonl"),
        summary=json.loads((out / "summary.json").read_text()),
        predictions=predictions,
        split=split,
        threshold=threshold,
        config=config,
        workdir=workdir,
    )


def test_each_alarm_is_a_run_of_snippets_above_the_threshold_named_by_its_category(explained):
    split, predictions, records = explained.split, explained.predictions, explained.records
    per_snippet = explained.config.data.snippet_frames
    expected = []
    for v, scores in enumerate(predictions.scores):
        flags = scores >= explained.threshold
        for first, last in weak.label_segments(flags):
            mean = predictions.similarity[v][first:last].mean(axis=0)
            expected.append((split.videos[v].name, first, last, int(np.argmax(mean[1:])) + 1))
    assert 0 < len(expected) < sum(len(s) for s in predictions.scores)
    assert [(r["video"], *r["snippets"]) for r in records] == [e[:3] for e in expected]
    for r, (name, first, last, category) in zip(records, expected, strict=True):
        v = [video.name for video in split.videos].index(name)
        assert r["category"] == split.classes[category] != split.classes[0]
        assert r["similarity"] == pytest.approx(r["similarities"][r["category"]], abs=1e-4)
        assert r["peak_score"] == pytest.approx(predictions.scores[v][first:last].max(), abs=1e-4)
        assert r["start"] == first * per_snippet and r["peak_frame"] < split.videos[v].frames
        assert isinstance(r["caption"], str) and r["caption_note"] is None
        assert (explained.out / r["image"]).is_file()
    assert explained.summary["captions"]["source"] == "peak frame"
    assert explained.summary["alarms"] == len(records)


def test_every_video_is_described_and_the_alarms_are_checked_against_the_labels(explained):
    split, records = explained.split, explained.records
    descriptions = {d["video"]: d for d in explained.descriptions}
    assert list(descriptions) == [v.name for v in split.videos]
    for video in split.videos:
        mine = [r for r in records if r["video"] == video.name]
        d = descriptions[video.name]
        assert d["verdict"] == ("abnormal" if mine else "normal")
        assert [s["start"] for s in d["segments"]] == [r["start"] for r in mine]
        assert d["description"].startswith(f"{video.name}: {d['verdict']}")
        for r in mine:
            on = any(s < r["end"] and r["start"] < e for s, e in video.segments)
            assert r["on_anomaly"] == on
            assert r["category_right"] == (on and r["category"] in video.categories)
    checked = explained.summary["against_labels"]
    assert checked["on_anomaly"] == pytest.approx(np.mean([r["on_anomaly"] for r in records]))


def test_the_weak_report_opens_offline_with_every_picture(explained):
    require_chromium()
    page = open_page(explained.out / "report.html")
    assert not page["errors"] and page["scripts"] == 0
    assert len(page["images"]) == len(explained.split.videos) + len(explained.records)
    assert all(width > 0 for _, width in page["images"]), page["images"]
    assert explained.descriptions[0]["description"] in page["text"]


def test_a_weak_run_explains_splits_only(explained, tmp_path):
    with pytest.raises(command.UsageError, match="--split"):
        command.explain(explained.config, explained.workdir, video=tmp_path / "clip.avi")
    with pytest.raises(config_lib.ConfigError, match=r"explain\.alarm_score"):
        config = load_config("synthetic_weak", **{"explain.alarm_score": 1.0})
        config_lib.validate(config)


def test_top_keeps_the_alarms_of_highest_peak_score(explained, tmp_path):
    workdir = shutil.copytree(explained.workdir, tmp_path / "run")
    out = command.explain(explained.config, workdir, split="test", top=2)
    kept = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    highest = sorted(explained.records, key=lambda r: -r["peak_score"])[:2]
    assert sorted((r["video"], r["start"]) for r in kept) == sorted(
        (r["video"], r["start"]) for r in highest
    )
    assert all(r["caption"] is None and "no captioner" in r["caption_note"] for r in kept)
