"""Alarms of a weakly supervised model (`aadc`), each named by its category, and a description
of every video.

    python -m jaxvad.explain --config=configs/synthetic_weak.py --workdir=runs/synthetic_weak \
        --split=test [--top=K] [--blip=BLIP_DIR]

Every video of the split is scored snippet by snippet with the run's checkpoint
(`detector.run_checkpoint`; `weak_scoring.predict`, as `jaxvad.evaluate` scores it). An alarm
is a run of consecutive snippets whose anomaly score is at least `config.explain.alarm_score`
(`find_alarms`); `--top=K` keeps the K alarms of highest peak score. Each alarm gets:

- its frames [start, end) (snippet s covers frames [s·F, (s + 1)·F), F = `data.snippet_frames`,
  cut at the video's end) and its peak: the centre frame of its highest-scoring snippet;
- its category: the anomaly class (every class but the normal one) whose text embedding is
  most similar to the alarm's snippets, with that mean cosine similarity, and the similarity
  of every class (`similarities`) for comparison;
- with `--blip=DIR`, the BLIP caption of its peak frame, where the source frames can be read:
  the synthetic set's are generated, a real dataset's are decoded from `config.data.source`
  (`weak_sources`; a video with an alarm is decoded whole); otherwise the caption is null,
  with the reason.

Every video then gets a description (`description.template` from its `VideoFacts`: normal or
abnormal, each segment's category, start and end, and its peak frame's caption; times in
seconds when `config.data.fps` is set).

Writes `WORKDIR/explain/<split>/`, replacing an earlier one only once complete:
`records.jsonl` (one line per alarm), `descriptions.jsonl` (per video: the facts and the
description), `summary.json`, `images/` (each video's score curve with its alarms' peaks
marked, each alarm's peak frame) and `report.html`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from jaxvad import atomic, plots, weak_scoring
from jaxvad.data import weak, weak_input, weak_sources
from jaxvad.data.clip_features import rgb
from jaxvad.data.video_io import DataError
from jaxvad.explain import description, images, report
from jaxvad.vlm import blip as blip_lib

log = logging.getLogger("jaxvad.explain")

NO_FRAMES = "no source frames: config.data.source does not hold the dataset's videos ({})"


@dataclasses.dataclass(frozen=True)
class Alarm:
    """One alarm of video `video` (index into the split): snippets [first, last), the peak
    snippet and its score, the category (class index, never the normal class 0), its mean
    cosine similarity over the alarm's snippets and every class's (`similarities` `[C]`)."""

    video: int
    first: int
    last: int
    peak: int
    peak_score: float
    category: int
    similarity: float
    similarities: np.ndarray


def find_alarms(
    video: int, scores: np.ndarray, similarity: np.ndarray, threshold: float
) -> list[Alarm]:
    """The alarms of one video: runs of snippets with `scores` `[t]` ≥ `threshold`, each
    named by the anomaly class of highest mean `similarity` `[t, C]` (class 0, normal,
    excluded) over the run."""
    alarms = []
    for first, last in weak.label_segments(scores >= threshold):
        mean = similarity[first:last].mean(axis=0)
        category = 1 + int(np.argmax(mean[1:]))
        peak = first + int(np.argmax(scores[first:last]))
        alarms.append(
            Alarm(
                video, first, last, peak, float(scores[peak]), category, float(mean[category]), mean
            )
        )
    return alarms


def _frames(video: weak.WeakVideo, snippets: int, per_snippet: int) -> int:
    """The video's frame count: known, or what its snippets cover."""
    return video.frames or snippets * per_snippet


def segment_facts(
    alarm: Alarm, classes: Sequence[str], frames: int, per_snippet: int
) -> description.SegmentFacts:
    """The alarm as a description's `SegmentFacts` (caption None)."""
    return description.SegmentFacts(
        start=alarm.first * per_snippet,
        end=min(alarm.last * per_snippet, frames),
        category=classes[alarm.category],
        similarity=alarm.similarity,
        peak_frame=min(alarm.peak * per_snippet + per_snippet // 2, frames - 1),
        peak_score=alarm.peak_score,
    )


def _truth(video: weak.WeakVideo, segment: description.SegmentFacts) -> dict[str, bool | None]:
    """Where the split has labels: whether the alarm overlaps an anomalous segment of the
    video, and whether its category is one of the video's (None without labels)."""
    if video.segments is None:
        return {"on_anomaly": None, "category_right": None}
    on = any(s < segment.end and segment.start < e for s, e in video.segments)
    return {"on_anomaly": on, "category_right": on and segment.category in video.categories}


def _against_labels(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The alarms checked against the split's labels (None without labels): the share that
    overlap an anomalous segment, and of those the share whose category is right."""
    known = [r for r in records if r["on_anomaly"] is not None]
    if not known:
        return None
    on = [r for r in known if r["on_anomaly"]]
    return {
        "alarms": len(known),
        "on_anomaly": len(on) / len(known),
        "category_right_on_anomaly": sum(r["category_right"] for r in on) / len(on) if on else None,
    }


def source_frames(
    config: ml_collections.ConfigDict, data: weak_input.WeakData, split: str
) -> tuple[Callable[[str], np.ndarray] | None, str | None]:
    """name → the video's frames `[N, H, W, 3]` uint8 RGB, or (None, why not)."""
    if data.spec is not None:
        videos = {v.name: f for v, f in weak.synthetic_weak_videos(data.spec, split)}
        return (lambda name: rgb(videos[name])), None
    try:
        source = Path(config.data.source) if config.data.source else None
        found = weak_sources.dataset_videos(data.dataset, source)
    except DataError as e:
        return None, NO_FRAMES.format(e)
    videos = {s.video.name: s.frames for s in found if s.split == split}
    return (lambda name: videos[name]()), None


def explain_weak(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    split: str,
    top: int = 0,
    captioner: blip_lib.Captioner | None = None,
    started: float | None = None,
) -> Path:
    """Explains the alarms of `split` (module docstring); writes the outputs (process 0) and
    returns their folder."""
    started = time.perf_counter() if started is None else started
    workdir = Path(workdir)
    config, data, graphdef, params, step = weak_scoring.load(config, workdir)
    e, per_snippet = config.explain, data.snippet_frames
    found = data.split(split)
    predictions = weak_scoring.predict(
        graphdef, params, found, snippets=data.snippets, batch_size=config.eval.batch_size
    )
    alarms = [
        a
        for v, (s, sim) in enumerate(zip(predictions.scores, predictions.similarity, strict=True))
        for a in find_alarms(v, s, sim, e.alarm_score)
    ]
    if top:
        alarms = sorted(
            sorted(alarms, key=lambda a: -a.peak_score)[:top], key=lambda a: (a.video, a.first)
        )
    frames = [
        _frames(v, len(s), per_snippet)
        for v, s in zip(found.videos, predictions.scores, strict=True)
    ]
    segments = [segment_facts(a, found.classes, frames[a.video], per_snippet) for a in alarms]

    # Pictures and captions of the peak frames.
    read, note = source_frames(config, data, split)
    peaks: list[np.ndarray | None] = [None] * len(alarms)
    if read is not None:
        for v in sorted({a.video for a in alarms}):
            video = read(found.videos[v].name)
            for i, a in enumerate(alarms):
                if a.video == v:
                    peaks[i] = video[min(segments[i].peak_frame, len(video) - 1)]
    captions: list[str | None] = [None] * len(alarms)
    if captioner is None:
        note = note or "no captioner: run with --blip=DIR"
    elif read is not None:
        b = e.batch_size
        for i in tqdm(range(0, len(peaks), b), desc="caption", unit="batch"):
            captions[i : i + b] = captioner.caption(
                peaks[i : i + b], beams=e.caption_beams, max_new_tokens=e.caption_tokens, pad_to=b
            )
    segments = [dataclasses.replace(s, caption=c) for s, c in zip(segments, captions, strict=True)]

    fps = float(config.data.fps)
    facts = []
    for v, video in enumerate(found.videos):
        mine = tuple(s for s, a in zip(segments, alarms, strict=True) if a.video == v)
        peak = float(predictions.scores[v].max(initial=0.0))
        facts.append(description.VideoFacts(video.name, fps, peak, e.alarm_score, mine))
    texts = [description.template(f) for f in facts]
    records = []
    for i, (a, s) in enumerate(zip(alarms, segments, strict=True)):
        video = found.videos[a.video]
        similarities = zip(found.classes, a.similarities.tolist(), strict=True)
        records.append(
            {"video": video.name, "alarm": i}
            | s.record(fps)
            | {
                "snippets": [a.first, a.last],
                "similarities": {c: round(x, 4) for c, x in similarities},
                "caption_note": None if s.caption else note,
                "image": f"images/{video.name}_alarm{i}.png" if peaks[i] is not None else None,
                **_truth(video, s),
            }
        )
    summary = {
        "input": f"split {split!r} of {config.data.dataset}",
        "model": config.model.name,
        "workdir": str(workdir),
        "checkpoint_step": step,
        "videos": len(found.videos),
        "abnormal_videos": sum(f.abnormal for f in facts),
        "alarms": len(records),
        "alarm_rule": f"runs of snippets with score ≥ {e.alarm_score} (config.explain.alarm_score)"
        + (f"; the {top} of highest peak score" if top else ""),
        "frames_per_snippet": per_snippet,
        "fps": fps or None,
        "classes": list(found.classes),
        "captions": (
            {"source": "peak frame", "beams": e.caption_beams, "max_new_tokens": e.caption_tokens}
            if captioner is not None and read is not None
            else {"note": note}
        ),
        "describer": "template (jaxvad/explain/description.py)",
        "against_labels": _against_labels(records),
    }
    out = workdir / "explain" / split
    if jax.process_index() == 0:
        summary["timing"] = {"total_seconds": round(time.perf_counter() - started, 2)}
        _write(out, summary, records, facts, texts, predictions, found, peaks, per_snippet)
        log.info(
            "%d alarms in %d of %d videos; written: %s, %s",
            len(records),
            summary["abnormal_videos"],
            len(found.videos),
            out / "report.html",
            out / "descriptions.jsonl",
        )
    return out


def _write(
    out: Path,
    summary: dict[str, Any],
    records: list[dict[str, Any]],
    facts: list[description.VideoFacts],
    texts: list[str],
    predictions: weak_scoring.Predictions,
    found: weak_input.WeakSplit,
    peaks: list[np.ndarray | None],
    per_snippet: int,
) -> None:
    with atomic.folder(out) as staging:
        for record, picture in zip(records, peaks, strict=True):
            if picture is not None:
                images.write_png(staging / record["image"], picture)
        curves = {}
        for v, video in enumerate(found.videos):
            scores = np.repeat(predictions.scores[v], per_snippet)
            labels = None
            if video.segments is not None:
                labels = weak.frame_labels(video.segments, max(len(scores), video.frames or 0))
                labels = labels[: len(scores)]
            marks = [r for r in records if r["video"] == video.name]
            path = plots.score_curve(
                staging / "images" / f"{video.name}_scores.png",
                video.name,
                np.arange(len(scores)),
                scores,
                labels,
                facts[v].threshold,
                marks=(
                    np.array([r["peak_frame"] for r in marks]),
                    np.array([r["peak_score"] for r in marks]),
                ),
            )
            curves[video.name] = str(path.relative_to(staging))
        videos = [f.record() | {"description": t} for f, t in zip(facts, texts, strict=True)]
        for name, rows in (("records", records), ("descriptions", videos)):
            (staging / f"{name}.jsonl").write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            )
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        report.write_weak(
            staging / "report.html", summary=summary, videos=videos, records=records, curves=curves
        )
