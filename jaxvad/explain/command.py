"""Finds the anomalies of a video and explains each: which modality, where, and what.

    python -m jaxvad.explain --config=configs/ped2_cpu.py --workdir=runs/ped2_cpu \
        --video=PATH [--top=K] [--blip=BLIP_DIR]
    python -m jaxvad.explain --config=configs/ped2_cpu.py --workdir=runs/ped2_cpu --split=test

PATH is a video file OpenCV can read or a folder of numbered frames, with no labels; it is
decoded, resized and its flow computed with the dataset's settings (`video`). Every frame is
scored with the run's latest checkpoint, normalised and thresholded with the training split's
statistics (`jaxvad.scoring`, as `jaxvad.evaluate` does); the frames above the threshold are the
anomalies (`--top=K`: the K highest-scoring of them). For each anomaly:

- attribution: appearance or motion, from the training-normalised errors (`attribution`);
- where: the Grad-CAM heatmap of the score on the motion features, its overlay on the frame,
  both decoders' pixel error maps and their combined anomaly map (`gradcam`, `images`);
- what: a BLIP caption of the frame, of the crop around the Grad-CAM peak, or of the overlay
  (`config.explain.caption_source`), with `--blip=DIR` (a Hugging Face
  `BlipForConditionalGeneration` folder); without it captions are null, with the reason.

Writes `WORKDIR/explain/<video name>/` (`WORKDIR/explain/<split>/` with `--split`), replacing
an earlier one only once complete: `records.jsonl` (one line per anomaly, fields in
`RECORD_FIELDS`), `summary.json`, `images/` (PNG) and `report.html` (opens offline).
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags
from tqdm import tqdm

from jaxvad import cli, distributed, evaluate, model, plots, scoring
from jaxvad import config as config_lib
from jaxvad.data import builder, pipeline
from jaxvad.explain import attribution, images, report
from jaxvad.explain import blip as blip_lib
from jaxvad.explain.gradcam import explain_step
from jaxvad.explain.video import open_video, video_name

log = logging.getLogger("jaxvad.explain")

# One JSON object per anomaly in records.jsonl (the README lists what each holds).
RECORD_FIELDS = (
    "video",
    "frame",
    "score",
    "score_rgb",
    "score_flow",
    "z_rgb",
    "z_flow",
    "threshold",
    "label",
    "modality",
    "explanation",
    "heatmap",
    "overlay",
    "images",
    "peaks",
    "pointing",
    "caption",
    "caption_source",
    "caption_note",
    "checkpoint_step",
)
NO_BLIP = "no captioner: run with --blip=DIR (a Hugging Face BlipForConditionalGeneration folder)"


class UsageError(ValueError):
    """The command's flags contradict each other."""


def explain_frames(
    config: ml_collections.ConfigDict,
    detector: evaluate.Detector,
    table: pipeline.FrameTable,
    positions: np.ndarray,
    scores: scoring.Scores,
) -> dict[str, np.ndarray]:
    """Grad-CAM, predictions and error maps of the frames at `positions` `[A]` of `table`
    (in batches of `config.explain.batch_size`, split over processes and devices).

    Returns host arrays over the A frames: `gradcam`, `rgb_map`, `flow_map`, `anomaly_map`
    `[A, S, S]` float32, `predicted`, `frame` `[A, S, S, C]` uint8, `mask` `[A, S, S]` uint8,
    `score` `[A]` (the error variant's score, recomputed by the step).
    """
    batch_size = config.explain.batch_size
    count, index = jax.process_count(), jax.process_index()
    step = jax.jit(
        functools.partial(explain_step, graphdef=detector.graphdef, alpha=float(config.score.alpha))
    )
    affine = scores.error_affine
    parts = []
    for start in tqdm(
        range(0, len(positions), batch_size), desc="explain", unit="batch", disable=index != 0
    ):
        chunk = positions[start : start + batch_size]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk))])
        local = np.array_split(padded, count)[index]  # This process's part of the batch.
        samples = pipeline.eval_samples(
            table, local, history=config.history, channels=config.data.channels
        )
        samples["shift"] = np.stack([affine[c].shift[local] for c in scoring.COMPONENTS], -1)
        samples["scale"] = np.stack([affine[c].scale[local] for c in scoring.COMPONENTS], -1)
        keys = (*pipeline.TRAIN_KEYS, "mask", "shift", "scale")
        batch = distributed.global_batch(
            {k: np.asarray(samples[k]) for k in keys}, detector.scorer.data_sharding
        )
        out = step(detector.params, batch, batch["shift"], batch["scale"])
        out = distributed.to_host(out | {"frame": batch["target_frame"], "mask": batch["mask"]})
        parts.append({k: np.asarray(v)[: len(chunk)] for k, v in out.items()})
    result = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    sigma = config.eval.map_sigma * config.data.size
    result["anomaly_map"] = scoring.pixel_maps(
        {"rgb": result["rgb_map"], "flow": result["flow_map"]},
        {c: affine[c].shift[positions] for c in scoring.COMPONENTS},
        {c: affine[c].scale[positions] for c in scoring.COMPONENTS},
        float(config.score.alpha),
        sigma,
    )
    return result


def _number(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _write_images(
    folder: Path, stem: str, frame_images: Mapping[str, np.ndarray]
) -> dict[str, str]:
    """Writes `folder/images/<stem>_<kind>.png` for each image; returns kind → relative path."""
    paths = {}
    for kind, image in frame_images.items():
        name = f"images/{stem}_{kind}.png"
        images.write_png(folder / name, image)
        paths[kind] = name
    return paths


def _pictures(
    config: ml_collections.ConfigDict,
    explained: Mapping[str, np.ndarray],
    *,
    crop: bool,
    extra: Mapping[str, str],
) -> list[dict[str, np.ndarray]]:
    """The RGB images of each explained frame: kind (those of `report.IMAGE_TITLES`; "crop"
    only with `crop`; the model's `extra` maps, in [0, 1]) → `[S, S, 3]` uint8. Error maps are
    each scaled to their own min–max."""
    pictures = []
    for a, frame in enumerate(explained.get("frame", [])):
        heat = explained["gradcam"][a]
        picture = {
            "frame": images.as_rgb(frame),
            "predicted": images.as_rgb(explained["predicted"][a]),
            "error_rgb": images.colormap(images.unit_range(explained["rgb_map"][a])),
            "error_flow": images.colormap(images.unit_range(explained["flow_map"][a])),
            "anomaly_map": images.colormap(images.unit_range(explained["anomaly_map"][a])),
            "gradcam": images.colormap(heat),
            "overlay": images.overlay(frame, heat, config.explain.overlay_beta),
        }
        picture |= {name: images.colormap(explained[name][a]) for name in extra}
        if crop:
            picture["crop"] = images.crop_around(frame, heat, config.explain.crop_fraction)
        pictures.append(picture)
    return pictures


def _captions(
    config: ml_collections.ConfigDict,
    captioner: blip_lib.Captioner,
    pictures: list[dict[str, np.ndarray]],
) -> list[str]:
    """BLIP captions of each anomaly's `config.explain.caption_source` picture, in batches of
    `explain.batch_size` (padded: one compilation)."""
    shown = [p[config.explain.caption_source] for p in pictures]
    batch, captions = config.explain.batch_size, []
    for i in tqdm(range(0, len(shown), batch), desc="caption", unit="batch"):
        captions += captioner.caption(
            shown[i : i + batch],
            beams=config.explain.caption_beams,
            max_new_tokens=config.explain.caption_tokens,
            pad_to=batch,
        )
    return captions


def _open_input(
    config: ml_collections.ConfigDict,
    data_dir: Path,
    video: str | Path | None,
    split: str | None,
) -> tuple[pipeline.FrameTable, str, str, bool, set[int]]:
    """The frames to explain: (table, output name, what the report calls the input, whether
    it has labels, the videos with pixel masks)."""
    if video is not None:
        return open_video(video, config), video_name(Path(video)), str(video), False, set()
    metadata = builder.read_metadata(data_dir)
    if split not in metadata["splits"]:
        raise UsageError(f"{data_dir}: no split {split!r}; it has {sorted(metadata['splits'])}")
    videos = metadata["splits"][split]["videos"]
    return (
        pipeline.open_prepared(data_dir, split),
        split,
        f"{split} split of {data_dir}",
        builder.split_has_labels(metadata, split),
        {i for i, v in enumerate(videos) if v["has_pixel_mask"]},
    )


def explain(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    video: str | Path | None = None,
    split: str | None = None,
    top: int = 0,
    blip: str | Path | None = None,
) -> Path:
    """Explains the anomalies of `video` (a file or folder of frames) or of the prepared
    `split`; writes the outputs (on process 0) and returns their folder."""
    config_lib.validate(config)
    if (video is None) == (split is None):
        raise UsageError("give exactly one of --video=PATH and --split=NAME")
    if top < 0:
        raise UsageError(f"--top must be ≥ 0 (0: every anomaly), got {top}")
    distributed.initialize()  # Before any other use of JAX.
    started = time.perf_counter()
    workdir = Path(workdir)
    captioner = blip_lib.Captioner.load(blip) if blip else None  # Bad folders fail first.
    detector = evaluate.load_detector(config, workdir)

    table, name, shown, labeled, masked = _open_input(config, detector.data_dir, video, split)

    errors, score_seconds = detector.scorer.split_errors(
        detector.params, table, labels=labeled, maps=False, desc=f"score {name}"
    )
    scores = scoring.frame_scores(errors, config.score, detector.normal)
    threshold = scoring.training_threshold(detector.normal, config.score)
    z = attribution.training_z(errors, detector.normal)
    above = np.flatnonzero(errors.scored & (scores.score > threshold))
    chosen = above[np.argsort(-scores.score[above], kind="stable")]
    chosen = np.sort(chosen[:top] if top else chosen)  # In (video, frame) order.
    log.info(
        "%d of %d scored frames above the threshold %.4g; explaining %d",
        len(above),
        int(errors.scored.sum()),
        threshold,
        len(chosen),
    )

    start = time.perf_counter()
    explained = explain_frames(config, detector, table, chosen, scores) if len(chosen) else {}
    gradcam_seconds = time.perf_counter() - start
    extra = model.MODELS[config.model.name].EXTRA_MAPS
    pictures = _pictures(
        config,
        explained,
        crop=captioner is not None and config.explain.caption_source == "crop",
        extra=extra,
    )
    start = time.perf_counter()
    captions = _captions(config, captioner, pictures) if captioner else [None] * len(chosen)
    caption_seconds = time.perf_counter() - start

    if jax.process_index() != 0:
        return workdir / "explain" / name
    out = workdir / "explain" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent))
    try:
        records = []
        for a, i in enumerate(chosen):
            video_index = int(errors.video[i])
            heat, anomaly = explained["gradcam"][a], explained["anomaly_map"][a]
            stem = f"{errors.names[video_index]}_{int(errors.frame[i]):06d}"
            paths = _write_images(staging, stem, pictures[a])
            mask = explained["mask"][a]
            known_mask = video_index in masked and bool(mask.any())
            peak = images.peak(heat)
            records.append(
                {
                    "video": errors.names[video_index],
                    "frame": int(errors.frame[i]),
                    "score": _number(scores.score[i]),
                    "score_rgb": _number(scores.rgb[i]),
                    "score_flow": _number(scores.flow[i]),
                    "z_rgb": _number(z["rgb"][i]),
                    "z_flow": _number(z["flow"][i]),
                    "threshold": threshold,
                    "label": None if errors.label is None else int(errors.label[i]),
                    "modality": attribution.modality(z["rgb"][i], z["flow"][i]),
                    "explanation": attribution.sentence(z["rgb"][i], z["flow"][i]),
                    "heatmap": paths["gradcam"],
                    "overlay": paths["overlay"],
                    "images": paths,
                    "peaks": {"gradcam": list(peak), "anomaly_map": list(images.peak(anomaly))},
                    "pointing": {
                        "gradcam": images.pointing(heat, mask),
                        "anomaly_map": images.pointing(anomaly, mask),
                    }
                    if known_mask
                    else None,
                    "caption": captions[a],
                    "caption_source": config.explain.caption_source if captioner else None,
                    "caption_note": None if captioner else NO_BLIP,
                    "checkpoint_step": detector.step,
                }
            )
        curves = _score_curves(staging, errors, scores, threshold, chosen)
        summary = _summary(
            config,
            shown=shown,
            errors=errors,
            threshold=threshold,
            above=len(above),
            records=records,
            step=detector.step,
            captioned=captioner is not None,
            seconds={
                "score": score_seconds,
                "gradcam_and_maps": gradcam_seconds,
                "captions": caption_seconds,
                "total": time.perf_counter() - started,
            },
        )
        (staging / "records.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        )
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        report.write(
            staging / "report.html",
            summary=summary,
            records=records,
            curves=curves,
            extra_titles=extra,
        )
        staging.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        staging.replace(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("%s", _log_lines(summary, out))
    return out


def _score_curves(
    folder: Path,
    errors: scoring.SplitErrors,
    scores: scoring.Scores,
    threshold: float,
    chosen: np.ndarray,
) -> dict[str, str]:
    """Each video's score curve with the explained anomalies marked: video → relative path."""
    curves = {}
    for v, name in enumerate(errors.names):
        rows = errors.video == v
        marked = chosen[errors.video[chosen] == v]
        path = plots.score_curve(
            folder / "images" / f"{name}_scores.png",
            name,
            errors.frame[rows],
            scores.score[rows],
            None if errors.label is None else errors.label[rows],
            threshold,
            marks=(errors.frame[marked], scores.score[marked]),
        )
        curves[name] = str(path.relative_to(folder))
    return curves


def _summary(
    config: ml_collections.ConfigDict,
    *,
    shown: str,
    errors: scoring.SplitErrors,
    threshold: float,
    above: int,
    records: list[dict[str, Any]],
    step: int,
    captioned: bool,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """summary.json: what was explained, how, the pointing game where masks are known, times."""
    games = [r["pointing"] for r in records if r["pointing"] is not None]
    tolerance = config.explain.pointing_tolerance * config.data.size

    def fraction(kind: str, hit: Callable[[dict], bool]) -> float | None:
        return sum(hit(g[kind]) for g in games) / len(games) if games else None

    frames = len(errors.video)
    return {
        "input": shown,
        "model": config.model.name,
        "videos": list(errors.names),
        "checkpoint_step": step,
        "frames": frames,
        "frames_scored": int(errors.scored.sum()),
        "threshold": threshold,
        "threshold_rule": f"quantile {config.score.threshold_quantile} of the training "
        "split's scores",
        "score": scoring.describe(config.score),
        "anomalies": above,
        "explained": len(records),
        "modalities": {
            m: sum(r["modality"] == m for r in records) for m in ("appearance", "motion")
        },
        "pointing_game": {
            "frames_with_mask": len(games),
            "rule": "the map's maximum lies inside the ground-truth mask (inside), or within "
            f"{tolerance:.1f} px of it (near: the usual 15 px at 224 px, scaled), over the "
            "explained frames whose mask is not empty",
            **{
                f"{kind}_{rule}": fraction(kind, hit)
                for kind in ("gradcam", "anomaly_map")
                for rule, hit in (
                    ("inside", lambda g: g["inside"]),
                    ("near", lambda g: g["distance"] <= tolerance),
                )
            },
        },
        "captions": (
            {
                "source": config.explain.caption_source,
                "beams": config.explain.caption_beams,
                "max_new_tokens": config.explain.caption_tokens,
            }
            if captioned
            else {"note": NO_BLIP}
        ),
        "explain": config.explain.to_dict(),
        "seconds": seconds,
        "frames_per_second": frames / seconds["total"],
    }


def _log_lines(summary: Mapping[str, Any], out: Path) -> str:
    lines = [
        f"{summary['explained']} anomalies explained of {summary['anomalies']} above the "
        f"threshold ({summary['frames_scored']} frames scored)"
    ]
    game = summary["pointing_game"]
    if game["frames_with_mask"]:
        lines.append(
            f"pointing game over {game['frames_with_mask']} frames with masks (peak inside / "
            f"near the mask): Grad-CAM {game['gradcam_inside']:.3f} / {game['gradcam_near']:.3f}, "
            f"anomaly map {game['anomaly_map_inside']:.3f} / {game['anomaly_map_near']:.3f}"
        )
    lines.append(f"written: {out / 'report.html'}, {out / 'records.jsonl'}")
    return "\n".join(lines)


USAGE = (
    "python -m jaxvad.explain --config=FILE[:tiny] --workdir=DIR (--video=PATH | --split=NAME) "
    "[--top=K] [--blip=BLIP_DIR]"
)


def main() -> None:
    config = cli.define_config_flag()
    workdir = flags.DEFINE_string("workdir", None, "the run's directory", required=True)
    video = flags.DEFINE_string("video", None, "a video file or a folder of frames (no labels)")
    split = flags.DEFINE_string("split", None, "explain this prepared split (e.g. test) instead")
    top = flags.DEFINE_integer("top", 0, "explain the K highest-scoring anomalies (0: all)")
    blip = flags.DEFINE_string("blip", None, "a Hugging Face BlipForConditionalGeneration folder")
    cli.run(
        lambda: explain(
            config.value,
            workdir.value,
            video=video.value,
            split=split.value,
            top=top.value,
            blip=blip.value,
        ),
        config=config,
        usage=USAGE,
        user_errors=(*evaluate.USER_ERRORS, UsageError, blip_lib.BlipWeightsError),
    )
