"""Scores a dataset's test split with a run's latest checkpoint and reports every metric.

    python -m jaxvad.evaluate --config=configs/ped2_cpu.py --workdir=runs/ped2_cpu

Writes `WORKDIR/eval/`:
- `metrics.json`: frame-level ROC-AUC (micro and macro), PR-AUC (average precision), EER,
  accuracy / precision / recall / F1 at the threshold from training statistics and at the best
  threshold on the test labels ("oracle", reported, never used); pixel-level ROC-AUC and AP and
  RBDC / TBDC where the split has masks; the protocol (score variant, α, normalisation,
  smoothing, threshold rule, how the frames without a prediction are counted, label version,
  checkpoint step, dataset, frames scored); a table of the other score variants for comparison.
- `frame_scores.csv`: `video,frame,score,score_rgb,score_flow,label,scored`, one row per frame
  (frame 1-based; `scored` 0 and empty scores for the first T frames of each video, which have
  no prediction; empty labels for an unlabeled split).
- `plots/`: `scores/<video>.png` (score curve, ground-truth spans shaded, threshold),
  `roc.png`, `pr.png`, `histogram.png`.

The run is loaded from the workdir alone (`jaxvad.detector`); the dataset is read for its test
split only. The default path needs no test labels: the checkpoint is the latest one, and the
normalisation and threshold come from the training split's errors stored with it
(`jaxvad.scoring`). Test labels are used only to compute the metrics. A test split without
labels is scored, and its metrics are skipped with a message.

A weakly supervised model (`aadc`) is evaluated by `jaxvad.weak_scoring`: `metrics.json` holds
frame AUC (UCF-Crime protocol), frame AP (XD-Violence protocol), category accuracy and
VadCLIP's detection mAP at IoU 0.1…0.5 with their average.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags

from jaxvad import (
    atomic,
    cli,
    component_choice,
    metrics,
    object_scores,
    plots,
    scoring,
    weak_scoring,
)
from jaxvad import config as config_lib
from jaxvad import detector as detector_lib
from jaxvad.data import builder, pipeline
from jaxvad.data.video_io import DataError

log = logging.getLogger("jaxvad.evaluate")

CSV_COLUMNS = ("video", "frame", "score", "score_rgb", "score_flow", "label", "scored")
COMPARED_SIGMAS = (0.0, 3.0)  # Smoothing of the variants table (plus the configured σ).


# ---------------------------------------------------------------------------------------------
# Metrics.


def frame_metrics(
    errors: scoring.SplitErrors, scores: scoring.Scores, threshold: float
) -> dict[str, Any]:
    """Frame-level metrics of the scored frames (labels must hold both classes)."""
    scored = errors.scored
    score, label = scores.score[scored], errors.label[scored]
    names = [errors.names[v] for v in errors.video[scored]]
    macro = metrics.roc_auc_macro(
        score, label, names, pad_low=float(score.min()), pad_high=float(score.max())
    )
    eer, eer_threshold = metrics.equal_error_rate(score, label)
    oracle = metrics.oracle_threshold(score, label)
    return {
        "auc_micro": metrics.roc_auc_micro(score, label),
        "auc_macro": macro.value,
        "pr_auc": metrics.pr_auc(score, label),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "at_training_threshold": {
            "threshold": threshold,
            **metrics.threshold_metrics(score, label, threshold),
        },
        "oracle": {
            "note": "best F1 threshold chosen on the test labels: an upper bound, not a result",
            "threshold": oracle,
            **metrics.threshold_metrics(score, label, oracle),
        },
        "auc_per_video": macro.per_video,
        "macro_padded_videos": list(macro.padded),
        "anomalous_frames": int(label.sum()),
    }


def pixel_metrics(
    errors: scoring.SplitErrors,
    maps: np.ndarray,
    masked_videos: list[int],
    *,
    rbdc_thresholds: int,
) -> dict[str, Any]:
    """Pixel AUC / AP and RBDC / TBDC of `maps` `[M, S, S]` (the M scored frames') over the
    frames of the videos with masks."""
    keep = np.isin(errors.video[errors.scored], masked_videos)
    maps, masks = maps[keep], errors.maps["mask"][errors.scored][keep]
    videos = errors.video[errors.scored][keep]
    pixel = metrics.pixel_scores(maps, masks)
    detection = metrics.rbdc_tbdc(maps, masks, videos, thresholds=rbdc_thresholds)
    return {
        "auc": pixel["roc_auc"],
        "ap": pixel["average_precision"],
        "rbdc": detection["rbdc"],
        "tbdc": detection["tbdc"],
        "gt_regions": detection["regions"],
        "gt_tracks": detection["tracks"],
        "frames": int(keep.sum()),
    }


def variants_table(
    errors: scoring.SplitErrors,
    found: detector_lib.Detector,
    objects: object_scores.ObjectScores | None = None,
) -> list[dict[str, Any]]:
    """Micro / macro AUC and PR-AUC of every score variant and normalisation, at the compared
    smoothings: for comparison with other papers' protocols (the configured one is marked).
    In object mode the variant (of the model's errors) does not enter the score: only the
    configured one is listed."""
    rows = []
    scored, score = errors.scored, found.settings
    variants = (score.variant,) if score.object_mode else config_lib.SCORE_VARIANTS
    for variant in variants:
        for normalisation in config_lib.NORMALISATIONS:
            for sigma in sorted({*COMPARED_SIGMAS, score.smoothing_sigma}):
                setting = dataclasses.replace(
                    score, variant=variant, normalisation=normalisation, smoothing_sigma=sigma
                )
                s = dataclasses.replace(found, settings=setting).scores(errors, objects)
                s = s.score[scored]
                label = errors.label[scored]
                rows.append(
                    {
                        "variant": variant,
                        "normalisation": normalisation,
                        "smoothing_sigma": sigma,
                        "configured": (variant, normalisation, sigma)
                        == (score.variant, score.normalisation, score.smoothing_sigma),
                        "auc_micro": metrics.roc_auc_micro(s, label),
                        "auc_macro": metrics.roc_auc_macro(
                            s, label, errors.video[scored], pad_low=s.min(), pad_high=s.max()
                        ).value,
                        "pr_auc": metrics.pr_auc(s, label),
                    }
                )
    return rows


# ---------------------------------------------------------------------------------------------
# Outputs.


def frame_scores_csv(errors: scoring.SplitErrors, scores: scoring.Scores) -> str:
    """The `frame_scores.csv` text (floats written exactly: shortest round-trip repr)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    number = lambda x: repr(float(x)) if np.isfinite(x) else ""  # noqa: E731
    for i in range(len(errors.video)):
        writer.writerow(
            (
                errors.names[errors.video[i]],
                int(errors.frame[i]),
                number(scores.score[i]),
                number(scores.rgb[i]),
                number(scores.flow[i]),
                "" if errors.label is None else int(errors.label[i]),
                int(errors.scored[i]),
            )
        )
    return out.getvalue()


def write_plots(
    folder: Path,
    errors: scoring.SplitErrors,
    scores: scoring.Scores,
    threshold: float,
    frame: dict | None,
) -> list[str]:
    """Every plot of the evaluation; returns their paths relative to `folder`'s parent."""
    paths = list(plots.score_curves(folder / "scores", errors, scores, threshold).values())
    scored = errors.scored
    score = scores.score[scored]
    label = None if errors.label is None else errors.label[scored]
    paths.append(
        plots.histogram(folder / "histogram.png", score, label if frame else None, threshold)
    )
    if frame:
        paths.append(plots.roc(folder / "roc.png", score, label, frame["auc_micro"]))
        paths.append(plots.precision_recall(folder / "pr.png", score, label, frame["pr_auc"]))
    return [str(p.relative_to(folder.parent)) for p in paths]


# ---------------------------------------------------------------------------------------------
# The command.


@dataclasses.dataclass(frozen=True)
class TestSplit:
    """The prepared test split: its dataset folder and metadata, its frames, whether it has
    frame labels, and the videos with pixel masks (0-based)."""

    dataset_dir: Path
    metadata: dict[str, Any]
    table: pipeline.FrameTable
    labeled: bool
    masked_videos: list[int]


def open_test_split(dataset_dir: Path) -> TestSplit:
    metadata = builder.read_metadata(dataset_dir)
    videos = metadata["splits"]["test"]["videos"]
    return TestSplit(
        dataset_dir,
        metadata,
        pipeline.open_prepared(dataset_dir, "test"),
        builder.split_has_labels(metadata, "test"),
        [i for i, v in enumerate(videos) if v["has_pixel_mask"]],
    )


def protocol(
    config: ml_collections.ConfigDict,
    found: detector_lib.Detector,
    split: TestSplit,
    errors: scoring.SplitErrors,
) -> dict[str, Any]:
    """metrics.json's `protocol`: every choice behind the numbers."""
    return {
        "score": scoring.describe(found.settings),
        "threshold": {"rule": found.threshold_rule, "value": found.threshold},
        "checkpoint": "the latest in the workdir (no selection on test data)",
        "unscored_frames": (
            f"the first T={config.history} frames of each video have no prediction: "
            "excluded from every metric, written with scored=0 and empty scores"
        ),
        "macro_auc_padding": (
            "a video whose scored frames are all one class gets a normal frame with the "
            "lowest score of the split prepended and an anomalous frame with the highest "
            "appended (the field's 0/1 padding, for scores in [0, 1])"
        ),
        "pixel_map": (
            "A = sum_c w_c*(m_c - shift_c)/scale_c (error-variant normalisation), blurred "
            f"by a Gaussian of sigma {config.eval.map_sigma * config.data.size:g} pixels"
        ),
        "rbdc": {"beta": 0.1, "alpha": 0.1, "thresholds": config.eval.rbdc_thresholds},
        "label_version": split.metadata.get("label_version"),
        "frames": len(errors.video),
        "frames_scored": int(errors.scored.sum()),
        "videos": len(errors.names),
    }


def object_maps(
    split: TestSplit,
    objects: object_scores.SplitObjects,
    scores: np.ndarray,
    floor: float,
    detail: np.ndarray | None = None,
    margin: float = 0.0,
) -> np.ndarray:
    """Object mode's pixel maps `[N, S, S]` of the test split: each object's score (`scores`
    `[M]`) over its box, `floor` elsewhere; with `detail` (`ObjectScores.detail`) the error
    component's map of each crop over the box grown by the crops' `margin`."""
    videos = split.metadata["splits"]["test"]["videos"]
    frame_sizes = np.array([[v["height"], v["width"]] for v in videos])
    size = split.metadata["size"]
    return object_scores.box_maps(objects, scores, floor, frame_sizes, size, detail, margin)


def object_localisation(
    split: TestSplit,
    errors: scoring.SplitErrors,
    scores: scoring.Scores,
    objects: object_scores.ObjectScores,
    threshold: float,
) -> dict[str, Any]:
    """metrics.json's `objects.detection` (the share of ground-truth regions, connected
    components of the test masks, that overlap a box) and `objects.pointing` (the share of
    frames labelled anomalous and flagged whose top object's box holds mask pixels), over the
    scored frames of the videos with masks, at the stored resolution."""
    frames = errors.scored & np.isin(errors.video, split.masked_videos)
    masks = errors.maps["mask"]
    boxes = objects.objects
    inside = object_maps(split, boxes, np.ones(len(boxes.boxes)), 0.0) > 0
    flagged = frames & (errors.label == 1) & (scores.score > threshold)
    order = np.lexsort((-objects.score, boxes.frame_position))  # Each frame's best first.
    first = np.ones(len(order), bool)
    first[1:] = boxes.frame_position[order][1:] != boxes.frame_position[order][:-1]
    top = order[first]
    top = top[flagged[boxes.frame_position[top]]]
    top_box = object_maps(split, boxes.take(top), np.ones(len(top)), 0.0) > 0
    return {
        "detection": metrics.region_recall(inside[frames], masks[frames]),
        "pointing": {
            "rule": "frames labelled anomalous and flagged (score > threshold); a frame "
            "without objects counts as a miss",
            **metrics.box_pointing(top_box[flagged], masks[flagged]),
        },
    }


def objects_summary(
    found: detector_lib.Detector, objects: object_scores.ObjectScores, errors: scoring.SplitErrors
) -> dict[str, Any]:
    """metrics.json's `objects`: how frames were scored from their objects."""
    counts = objects.objects.counts()
    return {
        "components": list(found.settings.components),
        "k": found.config.objects.k,
        "rule": 'object score = sum of the components\' calibrated kNN scores ("error": the '
        "model's error of the object's sample, z-scored with the training objects' errors, "
        'calibrated; "deep": the kNN density of the model\'s pooled latent of the sample); '
        "frame score = max over its objects; a frame with no object gets the training "
        "objects' minimum",
        "samples": found.config.objects.samples,
        "floor": found.objects.floor,
        "objects": len(objects.score),
        "boxes_per_frame": float(counts.mean()),
        "scored_frames_without_objects": int((counts[errors.scored] == 0).sum()),
        "training_objects": found.objects.training_objects,
    } | ({} if found.choice is None else {"component_choice": choice_summary(found.choice)})


def choice_summary(choice: component_choice.Choice) -> dict[str, Any]:
    """metrics.json's `objects.component_choice`: how components ("auto",) were chosen."""
    combo, auc, mean = choice.table[0]
    return {
        "chosen": list(combo),
        "rule": "no test label: training objects turned into pseudo-anomalies (kinds below), "
        "the candidate with the highest mean frame AUC against the training frames "
        "(jaxvad/component_choice.py; the whole table is stored with the checkpoint)",
        "pseudo_objects_per_kind": choice.objects,
        "pseudo_auc": auc,
        "mean_pseudo_auc": mean,
        "candidates": len(choice.table),
    }


def split_metrics(
    config: ml_collections.ConfigDict,
    found: detector_lib.Detector,
    split: TestSplit,
    errors: scoring.SplitErrors,
    scores: scoring.Scores,
    objects: object_scores.ObjectScores | None = None,
) -> dict[str, Any]:
    """The `frame`, `pixel` and `variants` entries of metrics.json, or `metrics_skipped` with
    the reason (no labels, or a single class)."""
    if not split.labeled:
        return {
            "metrics_skipped": f"the test split of {split.dataset_dir} has no frame labels: "
            "scores are written, metrics are not computed"
        }
    labels = errors.label[errors.scored]
    if labels.min() == labels.max():
        return {
            "metrics_skipped": f"every scored test frame has label {labels[0]}: ROC/PR "
            "metrics need both classes"
        }
    result = {"frame": frame_metrics(errors, scores, found.threshold)}
    if errors.maps is not None:
        if objects is None:
            sigma = config.eval.map_sigma * config.data.size
            maps = scoring.anomaly_maps(errors, scores, found.settings.alpha, sigma)
        else:
            floor = found.objects.floor
            margin = config.objects.margin if objects.detail is not None else 0.0
            maps = object_maps(
                split, objects.objects, objects.score, floor, objects.detail, margin
            )[errors.scored]
        result["pixel"] = pixel_metrics(
            errors, maps, split.masked_videos, rbdc_thresholds=config.eval.rbdc_thresholds
        )
    result["variants"] = variants_table(errors, found, objects)
    return result


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Scores the test split with the latest checkpoint of `workdir`; writes `workdir/eval/`
    (on process 0) and returns the contents of metrics.json. A weakly supervised model:
    `weak_scoring.evaluate` (frame AUC / AP, category accuracy, detection mAP)."""
    config_lib.validate(config)
    if config_lib.is_weak(config):
        return weak_scoring.evaluate(config, workdir)
    started = time.perf_counter()
    workdir = Path(workdir)
    found = detector_lib.load(workdir, config_lib.flatten(config))
    config = found.config
    split = open_test_split(config_lib.dataset_dir(config, needed_for="its test split"))
    maps = split.labeled and config.eval.pixel_metrics and bool(split.masked_videos)
    errors, seconds = found.errors(split.table, labels=split.labeled, maps=maps, desc="test")
    objects, objects_started = None, time.perf_counter()
    if found.objects is not None:
        table = split.table
        objects = found.score_objects(object_scores.read_objects(table), table, maps=maps)
    objects_seconds = time.perf_counter() - objects_started
    scores = found.scores(errors, objects)
    result: dict[str, Any] = {
        "dataset": config.data.dataset,
        "split": "test",
        "dataset_dir": str(split.dataset_dir),
        "workdir": str(workdir),
        "checkpoint_step": found.step,
        "protocol": protocol(config, found, split, errors),
        "timing": {
            "test_split_seconds": seconds,
            "frames_per_second": len(errors.video) / seconds,
        }
        | ({"objects_seconds": objects_seconds} if objects is not None else {}),
    }
    if objects is not None:
        result["objects"] = objects_summary(found, objects, errors)
        if maps:
            result["objects"] |= object_localisation(
                split, errors, scores, objects, found.threshold
            )
    result |= split_metrics(config, found, split, errors, scores, objects)
    if "metrics_skipped" in result:
        log.warning("metrics skipped: %s", result["metrics_skipped"])
    if jax.process_index() == 0:
        out = workdir / "eval"
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / "frame_scores.csv", frame_scores_csv(errors, scores), newline="")
        result["plots"] = write_plots(
            out / "plots", errors, scores, found.threshold, result.get("frame")
        )
        result["timing"]["total_seconds"] = time.perf_counter() - started
        result["config"] = json.loads(config.to_json_best_effort())
        atomic.write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
        log.info("%s", summary(result, out))
    return result


def summary(result: Mapping[str, Any], out: Path) -> str:
    """A few lines for the log: the headline metrics and where everything is."""
    lines = [
        f"step {result['checkpoint_step']}, {result['protocol']['frames_scored']} frames scored"
    ]
    if "frame" in result:
        f = result["frame"]
        lines.append(
            f"frame: AUC micro {f['auc_micro']:.4f}, macro {f['auc_macro']:.4f}, "
            f"PR-AUC {f['pr_auc']:.4f}, EER {f['eer']:.4f}"
        )
    if "pixel" in result:
        p = result["pixel"]
        lines.append(
            f"pixel: AUC {p['auc']:.4f}, AP {p['ap']:.4f}, "
            f"RBDC {p['rbdc']:.4f}, TBDC {p['tbdc']:.4f}"
        )
    lines.append(f"written: {out / 'metrics.json'}, {out / 'frame_scores.csv'}, {out / 'plots'}/")
    return "\n".join(lines)


USAGE = "python -m jaxvad.evaluate --config=FILE[:<model>,tiny] --workdir=DIR [--config.a.b=v ...]"

USER_ERRORS = (*detector_lib.LOAD_ERRORS, builder.DatasetNotPreparedError, DataError)


def main() -> None:
    config = cli.define_config_flag()
    workdir = flags.DEFINE_string("workdir", None, "the run's directory", required=True)
    cli.run(
        lambda: evaluate(config.value, workdir.value),
        config=config,
        usage=USAGE,
        user_errors=USER_ERRORS,
    )


if __name__ == "__main__":
    main()
