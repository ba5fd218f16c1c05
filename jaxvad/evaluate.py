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

The default path needs no test labels: the checkpoint is the latest one, and the normalisation
and threshold come from the training split's errors (`jaxvad.scoring`). Test labels are used
only to compute the metrics. A test split without labels is scored, and its metrics are skipped
with a message.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags
from flax import nnx

from jaxvad import cli, distributed, metrics, model, plots, scoring
from jaxvad import config as config_lib
from jaxvad.checkpoint import CheckpointMismatchError, Checkpoints
from jaxvad.data import builder, pipeline
from jaxvad.data.video_io import DataError
from jaxvad.train import DatasetNotPreparedError, dataset_dir

log = logging.getLogger("jaxvad.evaluate")

CSV_COLUMNS = ("video", "frame", "score", "score_rgb", "score_flow", "label", "scored")
# What the model was trained on and must be evaluated on (dataset-specific fields: when used).
DATA_FIELDS = ("dataset", "size", "flow", "channels")
DATA_FIELDS_OF = {"avenue": ("label_version",), "synthetic": ("synthetic", "synthetic_seed")}
COMPARED_SIGMAS = (0.0, 3.0)  # Smoothing of the variants table (plus the configured σ).


class NoCheckpointError(FileNotFoundError):
    """The workdir holds no checkpoint."""


class DatasetMismatchError(ValueError):
    """The config's dataset settings differ from those the checkpoint was trained with."""


# ---------------------------------------------------------------------------------------------
# Checks and loading.


def check_same_data(trained: Mapping[str, Any], config: ml_collections.ConfigDict) -> list[str]:
    """The data settings (and history T) in which `config` differs from the checkpoint's
    config `trained`, as "field: trained value → configured value"."""
    data = config.data
    fields = DATA_FIELDS + DATA_FIELDS_OF.get(data.dataset, ())
    differ = [
        f"data.{f}: {trained['data'].get(f)!r} in the checkpoint, {data[f]!r} now"
        for f in fields
        if trained["data"].get(f) != data[f]
    ]
    if trained.get("history") != config.history:
        differ.append(
            f"history: {trained.get('history')!r} in the checkpoint, {config.history!r} now"
        )
    return differ


def latest_checkpoint(workdir: Path, config: ml_collections.ConfigDict) -> tuple[Checkpoints, int]:
    """The workdir's checkpoints and latest step, checked against the config's data."""
    if not (workdir / "checkpoints").is_dir():
        raise NoCheckpointError(
            f"{workdir}: no checkpoints/ folder: nothing to evaluate. Train first, e.g. "
            f"python -m jaxvad.train --config=CONFIG --workdir={workdir}"
        )
    checkpoints = Checkpoints(workdir, keep=config.train.keep_checkpoints)
    step = checkpoints.latest_step()
    if step is None:
        checkpoints.close()
        raise NoCheckpointError(f"{checkpoints.directory}: no complete checkpoint to evaluate")
    differ = check_same_data(checkpoints.config(step), config)
    if differ:
        checkpoints.close()
        raise DatasetMismatchError(
            f"{checkpoints.directory / str(step)} was trained on other data than the config "
            f"names: {'; '.join(differ)}. Evaluate with the run's own config "
            f"({workdir / 'config.json'} lists it)."
        )
    return checkpoints, step


def load_params(
    config: ml_collections.ConfigDict, checkpoints: Checkpoints, step: int, mesh
) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's graphdef and the parameters of `step`, sharded on `mesh`."""
    abstract_model = nnx.eval_shape(lambda: model.make_model(config, rngs=nnx.Rngs(0)))
    graphdef, abstract = nnx.split(abstract_model, nnx.Param)
    checkpoints.check_fits(step, abstract, config.to_dict(), part="params")
    shardings = distributed.state_shardings(abstract, mesh, config.mesh.rules)
    abstract = distributed.with_shardings(abstract, shardings)
    return graphdef, checkpoints.params(step, abstract)


@dataclasses.dataclass(frozen=True)
class Detector:
    """A run's latest checkpoint, ready to score: the model's graphdef and sharded parameters,
    the jitted scorer, the training split's errors (normal statistics) and the prepared data."""

    step: int
    graphdef: nnx.GraphDef
    params: nnx.State
    scorer: scoring.ErrorScorer
    normal: scoring.SplitErrors
    data_dir: Path


def load_detector(config: ml_collections.ConfigDict, workdir: Path) -> Detector:
    """The latest checkpoint of `workdir` (checked against `config`) on a mesh of every
    device, with its normal statistics (computed and stored with the checkpoint if missing)."""
    distributed.initialize()  # Before any other use of JAX.
    checkpoints, step = latest_checkpoint(workdir, config)
    try:
        mesh = distributed.setup(config.mesh.fsdp)
        data_dir = dataset_dir(config)
        graphdef, params = load_params(config, checkpoints, step, mesh)
        scorer = scoring.ErrorScorer(config, graphdef, mesh)
        normal = scoring.normal_errors(checkpoints, step, scorer, params, data_dir)
    finally:
        checkpoints.close()
    return Detector(step, graphdef, params, scorer, normal, data_dir)


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
    scores: scoring.Scores,
    config: ml_collections.ConfigDict,
    masked_videos: list[int],
) -> dict[str, Any]:
    """Pixel AUC / AP and RBDC / TBDC over the scored frames of the videos with masks."""
    sigma = config.eval.map_sigma * config.data.size
    maps = scoring.anomaly_maps(errors, scores, config.score.alpha, sigma)
    keep = np.isin(errors.video[errors.scored], masked_videos)
    maps, masks = maps[keep], errors.maps["mask"][errors.scored][keep]
    videos = errors.video[errors.scored][keep]
    pixel = metrics.pixel_scores(maps, masks)
    detection = metrics.rbdc_tbdc(maps, masks, videos, thresholds=config.eval.rbdc_thresholds)
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
    errors: scoring.SplitErrors, normal: scoring.SplitErrors, score: ml_collections.ConfigDict
) -> list[dict[str, Any]]:
    """Micro / macro AUC and PR-AUC of every score variant and normalisation, at the compared
    smoothings: for comparison with other papers' protocols (the configured one is marked)."""
    rows = []
    scored = errors.scored
    for variant in config_lib.SCORE_VARIANTS:
        for normalisation in config_lib.NORMALISATIONS:
            for sigma in sorted({*COMPARED_SIGMAS, score.smoothing_sigma}):
                setting = ml_collections.ConfigDict(
                    {
                        **score.to_dict(),
                        "variant": variant,
                        "normalisation": normalisation,
                        "smoothing_sigma": sigma,
                    }
                )
                s = scoring.frame_scores(errors, setting, normal).score[scored]
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


def _write_atomic(path: Path, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, then renames it: never half-written."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    paths = []
    for v, name in enumerate(errors.names):
        rows = errors.video == v
        labels = None if errors.label is None else errors.label[rows]
        paths.append(
            plots.score_curve(
                folder / "scores" / f"{name}.png",
                name,
                errors.frame[rows],
                scores.score[rows],
                labels,
                threshold,
            )
        )
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


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Scores the test split with the latest checkpoint of `workdir`; writes `workdir/eval/`
    (on process 0) and returns the contents of metrics.json."""
    config_lib.validate(config)
    started = time.perf_counter()
    workdir = Path(workdir)
    detector = load_detector(config, workdir)
    step, normal, data_dir = detector.step, detector.normal, detector.data_dir
    metadata = builder.read_metadata(data_dir)
    table = pipeline.open_prepared(data_dir, "test")
    labeled = builder.split_has_labels(metadata, "test")
    masked_videos = [
        i for i, v in enumerate(metadata["splits"]["test"]["videos"]) if v["has_pixel_mask"]
    ]
    want_maps = labeled and config.eval.pixel_metrics and bool(masked_videos)
    errors, seconds = detector.scorer.split_errors(
        detector.params, table, labels=labeled, maps=want_maps, desc="test"
    )
    scores = scoring.frame_scores(errors, config.score, normal)
    threshold = scoring.training_threshold(normal, config.score)

    scored = int(errors.scored.sum())
    result: dict[str, Any] = {
        "dataset": config.data.dataset,
        "split": "test",
        "dataset_dir": str(data_dir),
        "workdir": str(workdir),
        "checkpoint_step": step,
        "protocol": {
            "score": scoring.describe(config.score),
            "threshold": {
                "rule": f"quantile {config.score.threshold_quantile} of the training split's "
                "scores (same score pipeline, training videos)",
                "value": threshold,
            },
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
            "label_version": metadata.get("label_version"),
            "frames": len(errors.video),
            "frames_scored": scored,
            "videos": len(errors.names),
        },
        "timing": {
            "test_split_seconds": seconds,
            "frames_per_second": len(errors.video) / seconds,
        },
    }
    if not labeled:
        result["metrics_skipped"] = (
            f"the test split of {data_dir} has no frame labels: scores are written, metrics "
            "are not computed"
        )
    elif errors.label[errors.scored].min() == errors.label[errors.scored].max():
        result["metrics_skipped"] = (
            f"every scored test frame has label {errors.label[errors.scored][0]}: ROC/PR "
            "metrics need both classes"
        )
    else:
        result["frame"] = frame_metrics(errors, scores, threshold)
        if want_maps:
            result["pixel"] = pixel_metrics(errors, scores, config, masked_videos)
        result["variants"] = variants_table(errors, normal, config.score)
    if "metrics_skipped" in result:
        log.warning("metrics skipped: %s", result["metrics_skipped"])

    if jax.process_index() == 0:
        out = workdir / "eval"
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(out / "frame_scores.csv", frame_scores_csv(errors, scores))
        result["plots"] = write_plots(out / "plots", errors, scores, threshold, result.get("frame"))
        result["timing"]["total_seconds"] = time.perf_counter() - started
        result["config"] = json.loads(config.to_json_best_effort())
        _write_atomic(out / "metrics.json", json.dumps(result, indent=2) + "\n")
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


USAGE = "python -m jaxvad.evaluate --config=FILE[:tiny] --workdir=DIR [--config.a.b=v ...]"

USER_ERRORS = (
    config_lib.ConfigError,
    NoCheckpointError,
    DatasetMismatchError,
    CheckpointMismatchError,
    DatasetNotPreparedError,
    DataError,
)


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
