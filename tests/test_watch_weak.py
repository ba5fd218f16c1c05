"""`jaxvad.watch` on a weakly supervised run (`jaxvad.watch.weak`): snippet features computed
from the stream as the features command computes them, each new snippet scored from the
snippets up to it, and events that name their category."""

from __future__ import annotations

import csv
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, write_images

from jaxvad import weak_scoring
from jaxvad.data import weak, weak_input
from jaxvad.watch.command import UsageError, watch


def causal_reference(data, graphdef, params, features):
    """Per snippet i of `features` `[t, D]` (the feature file's): the model's score and
    similarities of i as the newest of the snippets [i − L + 1, i]."""
    length = data.snippets
    scores, similarity = [], []
    for i in range(len(features)):
        window = features[max(0, i - length + 1) : i + 1]
        padded = np.zeros((1, length, features.shape[1]), np.float32)
        padded[0, : len(window)] = window
        s, sim = weak_scoring.forward(
            graphdef, params, jnp.asarray(padded), jnp.asarray([len(window)])
        )
        scores.append(float(s[0, len(window) - 1]))
        similarity.append(np.asarray(sim[0, len(window) - 1]))
    return np.array(scores), np.stack(similarity)


@pytest.fixture(scope="module")
def watched(weak_run, tmp_path_factory):
    """The last synthetic test video (anomalous) written as a folder of frames and watched with
    the alarm threshold near its reference scores' median, the model seeing 8 snippets (fewer
    than the video's); the reference of `causal_reference`."""
    tmp = tmp_path_factory.mktemp("watch_weak")
    workdir = tmp / "run"
    shutil.copytree(weak_run.workdir, workdir)
    config = load_config("synthetic_weak", **{"data.root": str(weak_run.root), "data.snippets": 8})
    _, data, graphdef, params, _ = weak_scoring.load(config, workdir)
    split = data.split("test")
    video, frames = weak.synthetic_weak_videos(data.spec, "test")[-1]
    assert video.label == 1 and split.videos[-1].name == video.name
    features = weak_input._load(split.features[-1].files)[0]
    assert len(features) > data.snippets == 8
    scores, similarity = causal_reference(data, graphdef, params, features)
    folder = tmp / video.name
    write_images(folder, frames, [f"{i:04d}.png" for i in range(len(frames))])
    # The threshold: midway across the widest of the gaps around the reference scores' median,
    # so that no score (streamed ones equal these within 1e-5) lies on it.
    ordered, middle = np.sort(scores), len(scores) // 2
    gap = middle - 2 + int(np.argmax(np.diff(ordered)[middle - 2 : middle + 2]))
    assert ordered[gap + 1] - ordered[gap] > 1e-4
    with config.unlocked():
        config.explain.alarm_score = float(ordered[gap] + ordered[gap + 1]) / 2
        config.watch.open_after = 1
        config.watch.close_after = 1
    out = tmp / "out"
    watch(
        config,
        workdir,
        [f"cam={folder}"],
        scores=str(out / "scores.csv"),
        events=str(out / "events.jsonl"),
    )
    rows = list(csv.DictReader((out / "scores.csv").open()))
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    return {
        "rows": rows,
        "events": events,
        "scores": scores,
        "similarity": similarity,
        "classes": split.classes,
        "frames": len(frames),
        "per_snippet": data.snippet_frames,
        "threshold": config.explain.alarm_score,
        "config": config,
        "workdir": workdir,
        "folder": folder,
    }


def test_each_frame_gets_its_snippets_score_from_the_features_and_snippets_up_to_it(watched):
    rows, per_snippet = watched["rows"], watched["per_snippet"]
    assert [int(r["frame"]) for r in rows] == list(range(1, watched["frames"] + 1))
    expected = np.repeat(watched["scores"], per_snippet)[: watched["frames"]]
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, atol=1e-5)
    assert all(r["score_rgb"] == r["score_flow"] == "nan" for r in rows)


def test_events_name_the_category_of_their_peak_with_its_text_similarity(watched):
    scores, similarity, classes = watched["scores"], watched["similarity"], watched["classes"]
    opened = [e for e in watched["events"] if e["type"] == "open"]
    closed = [e for e in watched["events"] if e["type"] == "close"]
    runs = weak.label_segments(scores > watched["threshold"])
    assert len(opened) == len(closed) == len(runs) > 0
    for event, (first, last) in zip(closed, runs, strict=True):
        peak = (event["peak_frame"] - 1) // watched["per_snippet"]
        assert first <= peak < last and event["peak_score"] == pytest.approx(scores[peak], abs=1e-5)
        category = 1 + int(np.argmax(similarity[peak, 1:]))
        assert event["category"] == classes[category] != classes[0]
        assert event["similarity"] == pytest.approx(similarity[peak, category], abs=1e-4)
        assert event["modality"] == "n/a"


def test_a_weak_run_does_not_explain_peaks(watched):
    with pytest.raises(UsageError, match="category"):
        watch(None, watched["workdir"], [f"cam={watched['folder']}"], explain=True)
