"""Finds the anomalies of a video and explains each: which modality, where, and what.

    python -m jaxvad.explain --config=configs/ped2_cpu.py --workdir=runs/ped2_cpu \
        --video=PATH [--top=K] [--blip=BLIP_DIR]
    python -m jaxvad.explain --config=configs/ped2_cpu.py --workdir=runs/ped2_cpu --split=test

PATH is a video file OpenCV can read or a folder of numbered frames, with no labels; it is
decoded, resized and its flow computed with the dataset's settings (`video`); explaining it
needs the workdir alone (`jaxvad.detector`), no prepared dataset. Every frame is scored with
the run's latest checkpoint, normalised and thresholded with the training split's statistics
stored with it (`jaxvad.scoring`, as `jaxvad.evaluate` does); the frames above the threshold are
the anomalies (`--top=K`: the K highest-scoring of them). For each anomaly:

- attribution: appearance or motion, from the training-normalised errors (`attribution`);
- where: the "where" map (`explain.where`: by default `anomaly_foreground`, the score's own
  per-pixel terms with the motion term kept where the frame differs from the training
  background, which `--quality` measured as the best; or the anomaly map, the paper's Grad-CAM
  of the score on the motion features, or HiResCAM; `maps`), its overlay on the frame, and
  beside it the Grad-CAM, HiResCAM, both decoders' pixel error maps and their combined anomaly
  map (`gradcam`, `images`); `--quality` measures every map (`measure`, quality.json; object
  mode's box maps also in the frame, `box_quality`);
- what: a BLIP caption of the frame, of the crop around the Grad-CAM peak, of the overlay or
  (object mode) of the top object's box cut from the original-resolution frame
  (`config.explain.caption_source`), with `--blip=DIR` (a Hugging Face
  `BlipForConditionalGeneration` folder); without it captions are null, with the reason.

In object mode (`config.score.components` other than "error") frames are scored from their
objects: a prepared split's stored ones, or a video's found on the fly with the preparation's
detector (`objects`); each anomaly also lists its frame's objects in numbers against training,
its explanation is the top object's, and "where" is the anomaly map (for `explain.where`
"anomaly_map" or "anomaly_foreground", the default: the objects' scores over their boxes, with
the error map inside them where "error" is a component) or, with any other `explain.where`, the
Grad-CAM restricted to the top object's box
(`objects`), measured beside the box itself in the pointing game. A model of object samples
(`config.objects.samples`) takes crops, not frames: Grad-CAM and the error maps are computed on
the top object's crop sample (the one it scores) and pasted back into its box grown by the
margin (`explain_crops`); the attribution compares that crop's errors with the training
objects'. A video's table then carries the video's own frame size, so its objects are cut as a
prepared split's are.

A weakly supervised model (`aadc`) explains a split of its snippet features (`--split`):
alarms named by their category with its text similarity, and a description of every video
(`weak_alarms`).

Writes `WORKDIR/explain/<video name>/` (`WORKDIR/explain/<split>/` with `--split`), replacing
an earlier one only once complete: `records.jsonl` (one line per anomaly, fields in
`RECORD_FIELDS`), `summary.json`, `images/` (PNG) and `report.html` (opens offline).

`explain` reads top to bottom: load (the detector, the input), score, pick, explain (Grad-CAM
and maps), render (pictures, captions, records), write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags
from tqdm import tqdm

from jaxvad import atomic, cli, distributed, model, object_scores, plots, scoring
from jaxvad import config as config_lib
from jaxvad import detector as detector_lib
from jaxvad.data import builder, pipeline
from jaxvad.data.video_io import DataError
from jaxvad.explain import attribution, box_quality, images, measure, report, weak_alarms
from jaxvad.explain import maps as maps_lib
from jaxvad.explain import objects as object_explain
from jaxvad.explain import quality as quality_lib
from jaxvad.explain.gradcam import explain_step
from jaxvad.explain.video import decode, open_video, video_name
from jaxvad.vlm import blip as blip_lib

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
    "objects",
)
NO_BLIP = "no captioner: run with --blip=DIR (a Hugging Face BlipForConditionalGeneration folder)"
# The picture BLIP captions for each `config.explain.caption_source`.
CAPTIONED = {"frame": "frame", "crop": "crop", "overlay": "overlay", "object": "object_crop"}


class UsageError(ValueError):
    """The command's flags contradict each other."""


@dataclasses.dataclass(frozen=True)
class ExplainSettings:
    """How anomalies are explained: `config.explain`'s fields (`ExplainSettings(**config.explain)`;
    see `jaxvad.config`)."""

    batch_size: int  # Anomalies per Grad-CAM and caption batch (global).
    overlay_beta: float
    caption_source: str  # "frame", "crop", "overlay" or "object" (object mode).
    crop_fraction: float
    caption_beams: int
    caption_tokens: int
    pointing_tolerance: float  # In frame widths.
    where: str  # The "where" map: one of `config.WHERE` (`heatmap_kind`).
    quality_anomalies: int  # --quality (`measure`): anomalies measured (0: all).
    quality_steps: int
    quality_noise: float
    quality_draws: int
    quality_randomised: int
    alarm_score: float  # Weakly supervised models: snippet score of an alarm.


@dataclasses.dataclass(frozen=True)
class Input:
    """The frames to explain: `table`; `name`, the output folder's; `shown`, what the report
    calls the input; whether it has frame labels; the videos with pixel masks (0-based). With
    objects: the table's `frame_sizes` `[V, 2]` (each video's original (height, width)),
    `originals` its frames at that resolution, and `objects` when they were found on the fly
    (a video)."""

    table: pipeline.FrameTable
    name: str
    shown: str
    labeled: bool
    masked: frozenset[int]
    originals: object_explain.OriginalFrames | None = None
    objects: object_scores.SplitObjects | None = None


def video_input(
    path: str | Path, *, size: int, history: int, flow: str, objects: str = "none"
) -> Input:
    """A user's video (file or folder of frames), unlabeled; `objects` ("auto" or "mot:DIR",
    object mode's `config.data.objects`): its objects found on the fly, as the preparation
    finds a dataset's."""
    path = Path(path)
    if objects == "none":
        table = open_video(path, size=size, history=history, flow=flow)
        return Input(table, video_name(path), str(path), False, frozenset())
    originals = decode(path, history=history)
    table = open_video(path, size=size, history=history, flow=flow, originals=originals)
    found = object_explain.video_objects(originals, path, objects)
    return Input(
        table, video_name(path), str(path), False, frozenset(), lambda video: originals, found
    )


def split_input(config: ml_collections.ConfigDict, split: str) -> Input:
    """The prepared `split` of `config`'s dataset, with its labels and masks where it has them
    and, with objects, its source videos (`object_explain.SourceVideos`: from
    `config.data.source`, else the folder the dataset was prepared from)."""
    dataset_dir = config_lib.dataset_dir(config, needed_for=f"--split={split}")
    metadata = builder.read_metadata(dataset_dir)
    if split not in metadata["splits"]:
        raise UsageError(f"{dataset_dir}: no split {split!r}; it has {sorted(metadata['splits'])}")
    videos = metadata["splits"][split]["videos"]
    originals = None
    if "objects" in metadata:
        originals = object_explain.SourceVideos(
            metadata["dataset"],
            config_lib.dataset_settings(config),
            Path(config.data.source or metadata["source"]),
            split,
            videos,
            Path(config.data.root),
        )
    return Input(
        pipeline.open_prepared(dataset_dir, split),
        split,
        f"{split} split of {dataset_dir}",
        builder.split_has_labels(metadata, split),
        frozenset(i for i, v in enumerate(videos) if v["has_pixel_mask"]),
        originals,
    )


def pick(
    errors: scoring.SplitErrors, scores: scoring.Scores, threshold: float, top: int
) -> tuple[np.ndarray, int]:
    """The anomalies to explain: positions `[A]` of the scored frames above `threshold` (the
    `top` highest-scoring of them; 0: all) in (video, frame) order, and how many are above."""
    above = np.flatnonzero(errors.scored & (scores.score > threshold))
    chosen = above[np.argsort(-scores.score[above], kind="stable")]
    chosen = np.sort(chosen[:top] if top else chosen)
    log.info(
        "%d of %d scored frames above the threshold %.4g; explaining %d",
        len(above),
        int(errors.scored.sum()),
        threshold,
        len(chosen),
    )
    return chosen, len(above)


# One compilation per model and batch shape, shared by every call (the randomisation test
# explains the same frames once per randomised parameter set).
_explain_step = jax.jit(explain_step, static_argnames=("graphdef", "alpha"))


def explain_batches(
    found: detector_lib.Detector,
    table: pipeline.FrameTable,
    positions: np.ndarray,
    affine: Mapping[str, scoring.Affine],
    *,
    batch_size: int,
    crops: pipeline.ObjectCrops | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """The explain step (`explain_step`, jitted) on the evaluation samples of the frames at
    `positions` `[A]` (A > 0) of `table`, or with `crops` (one per frame: `crops.position` =
    `positions`) on their object samples (`pipeline.crop_samples`), in batches of `batch_size`
    split over processes and devices; `affine`: per component each sample's normalisation
    (`[A]`); `progress`: show the progress bar.

    Returns host arrays over the A samples: the step's outputs at the model's input side
    (S, or s with crops) and the stored frames' `frame` `[A, S, S, C]` uint8 and `mask`
    `[A, S, S]` uint8.
    """
    count, index = jax.process_count(), jax.process_index()
    parts = []
    for start in tqdm(
        range(0, len(positions), batch_size),
        desc="explain",
        unit="batch",
        disable=not progress or index != 0,
    ):
        chunk = np.arange(start, min(start + batch_size, len(positions)))
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk))])
        local = np.array_split(padded, count)[index]  # This process's part of the batch.
        samples = pipeline.eval_samples(
            table, positions[local], history=found.scorer.history, channels=found.scorer.channels
        )
        stored = {"frame": samples["target_frame"], "mask": samples["mask"]}  # The pictures'.
        if crops is not None:
            samples = pipeline.crop_samples(samples, crops.boxes[local], crops.size)
        samples |= stored
        samples["shift"] = np.stack([affine[c].shift[local] for c in scoring.COMPONENTS], -1)
        samples["scale"] = np.stack([affine[c].scale[local] for c in scoring.COMPONENTS], -1)
        keys = (*pipeline.TRAIN_KEYS, "frame", "mask", "shift", "scale")
        batch = distributed.global_batch(
            {k: np.asarray(samples[k]) for k in keys}, found.scorer.data_sharding
        )
        out = _explain_step(
            found.params,
            batch,
            batch["shift"],
            batch["scale"],
            graphdef=found.graphdef,
            alpha=found.settings.alpha,
        )
        out = distributed.to_host(out | {"frame": batch["frame"], "mask": batch["mask"]})
        parts.append({k: np.asarray(v)[: len(chunk)] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def explain_frames(
    found: detector_lib.Detector,
    table: pipeline.FrameTable,
    positions: np.ndarray,
    scores: scoring.Scores,
    *,
    batch_size: int,
    map_sigma: float,
) -> dict[str, np.ndarray]:
    """Grad-CAM, predictions and error maps of the frames at `positions` `[A]` of `table`
    (in batches of `batch_size`, split over processes and devices; `explain_batches`), under
    the frames' normalisation (`scores.error_affine`); `map_sigma`: the anomaly map's blur in
    pixels.

    Returns host arrays over the A frames (empty when A = 0): `gradcam`, `rgb_map`,
    `flow_map`, `anomaly_map`, `anomaly_foreground` (`maps.gated`) `[A, S, S]` float32,
    `predicted`, `frame` `[A, S, S, C]` uint8, `mask` `[A, S, S]` uint8, `score` `[A]` (the
    error variant's score, recomputed by the step) and the model's extra maps.
    """
    if not len(positions):
        return {}
    affine = {
        c: scoring.Affine(a.shift[positions], a.scale[positions])
        for c, a in scores.error_affine.items()
    }
    result = explain_batches(found, table, positions, affine, batch_size=batch_size)
    result["anomaly_map"] = scoring.pixel_maps(
        {"rgb": result["rgb_map"], "flow": result["flow_map"]},
        {c: affine[c].shift for c in scoring.COMPONENTS},
        {c: affine[c].scale for c in scoring.COMPONENTS},
        found.settings.alpha,
        map_sigma,
    )
    result[maps_lib.FOREGROUND] = gated_map(
        result, affine, found.settings.alpha, map_sigma, result["frame"], found.background
    )
    return result


def gated_map(
    explained: Mapping[str, np.ndarray],
    affine: Mapping[str, scoring.Affine],
    alpha: float,
    map_sigma: float,
    frames: np.ndarray,
    background: np.ndarray,
) -> np.ndarray:
    """`anomaly_foreground` `[A, s, s]` in [0, 1] (`maps.gated`) of A samples' error maps
    `explained["rgb_map"]`, `["flow_map"]` `[A, s, s]` under `affine` (per component `[A]`):
    the anomaly map's appearance term, plus its motion term where the `frames`
    `[A, s, s, C]` differ from the `background` (`[s, s, C]`, or `[A, s, s, C]` one per
    sample, both in [0, 255]; `maps.foreground`); `map_sigma`: the blur in pixels."""
    terms = [
        scoring.pixel_maps(
            {"rgb": explained["rgb_map"], "flow": explained["flow_map"]},
            {c: affine[c].shift for c in scoring.COMPONENTS},
            {c: affine[c].scale for c in scoring.COMPONENTS},
            alpha,
            map_sigma,
            components=(c,),
        )
        for c in scoring.COMPONENTS
    ]
    foreground = maps_lib.foreground(frames, background, map_sigma)
    return np.asarray(maps_lib.gated(*terms, foreground))


def explain_crops(
    found: detector_lib.Detector,
    table: pipeline.FrameTable,
    errors: scoring.SplitErrors,
    positions: np.ndarray,
    scored: object_scores.ObjectScores,
    *,
    batch_size: int,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A model of object samples' explanations of the frames at `positions` `[A]` of `table`
    (`errors`: its frames, `scored` its objects): Grad-CAM, predictions and error maps of each
    frame's top object's sample, cut as `score_objects` cuts it (`pipeline.object_crops`,
    normalised as the error component normalises it: the training objects' mean and std,
    `ObjectModel.attribution`, whichever the components), pasted back into the box grown by
    the margin in the stored S × S frame (`object_explain.paste`; zeros outside). The anomaly
    map is the top object's score plus its crop's error pattern (`ErrorComponent.detail`) (as
    `jaxvad.evaluate`'s object maps, `ObjectScores.detail`; the score over the box without the
    error component), the objects' floor elsewhere. `anomaly_foreground` is the top object's
    score plus its crop's `anomaly_foreground` pattern (`gated_map` of the crop against the
    background cut as the crop is, `object_scores.scaled_detail`) over the object's own box
    (not grown: the object), the floor elsewhere. A frame without objects has no crop: zero
    maps (a black `predicted`), the floor as anomaly maps, NaN z.

    Returns the keys of `explain_frames` (A = 0: empty) with `crop_boxes` `[A, 4]` (where
    each top crop was cut, `ObjectCrops.boxes`), `has_object` `[A]` bool and
    `object_region` `[A, S, S]` bool (the top object's own box), and the top
    crops' training z (`attribution.training_z` against the training objects' errors) `[A]`
    per component. `progress`: show the progress bar.
    """
    count, error = len(positions), found.objects.error
    attribution_errors = found.objects.attribution  # The training objects' errors.
    nan = {c: np.full(count, np.nan) for c in scoring.COMPONENTS}
    if not count:
        return {}, nan
    o = found.config.objects
    top = object_explain.top_objects(scored, positions)
    has = top >= 0
    boxes = np.zeros((count, 4), np.float32)  # Without an object: a 1-pixel stand-in.
    boxes[has] = scored.objects.boxes[top[has]]
    crops = pipeline.object_crops(table, positions, boxes, size=o.size, margin=o.margin)
    affine = crop_affine(found, count)
    result = explain_batches(
        found, table, positions, affine, batch_size=batch_size, crops=crops, progress=progress
    )
    result |= {"crop_boxes": crops.boxes, "has_object": has}
    crop_errors = scoring.SplitErrors(
        names=errors.names,
        video=errors.video[positions],
        frame=errors.frame[positions],
        scored=has,
        rgb=np.where(has, result["rgb"], 0.0),
        flow=np.where(has, result["flow"], 0.0),
        maps={"rgb": result["rgb_map"], "flow": result["flow_map"]},
    )
    detail, z = None, nan
    if error is not None:
        detail = error.detail(crop_errors)[has]
    if attribution_errors is not None:
        z = {
            c: np.where(has, v, np.nan)
            for c, v in attribution.training_z(crop_errors, attribution_errors.train).items()
        }
    size, floor = result["frame"].shape[1], found.objects.floor
    top_boxes = object_explain.top_boxes(scored, top)
    result["anomaly_map"] = object_scores.box_maps(
        top_boxes,
        scored.score[top[has]],
        floor,
        table.frame_sizes,
        size,
        detail,
        o.margin if detail is not None else 0.0,
    )
    # The crop's anomaly_foreground as the top box's pattern, inside the box itself.
    frames = pipeline.crop_samples({"target_frame": result["frame"]}, crops.boxes, o.size)
    whole = np.broadcast_to(found.background, result["frame"].shape)
    background = pipeline.crop_samples({"target_frame": whole}, crops.boxes, o.size)
    gated = gated_map(
        result,
        affine,
        found.settings.alpha,
        found.config.eval.map_sigma * o.size,
        frames["target_frame"],
        background["target_frame"],
    )
    boxed = object_scores.box_maps(
        top_boxes,
        scored.score[top[has]],
        floor,
        table.frame_sizes,
        size,
        object_scores.scaled_detail(gated[has]),
        o.margin,
    )
    own = object_scores.box_maps(top_boxes, np.ones(has.sum()), 0.0, table.frame_sizes, size) > 0
    result[maps_lib.FOREGROUND] = np.where(own, boxed, np.float32(floor))
    result["object_region"] = own
    pasted = (
        "gradcam",
        "hirescam",
        "rgb_map",
        "flow_map",
        "predicted",
        *model.MODELS[found.config.model.name].EXTRA_MAPS,
    )
    for key in pasted:
        result[key] = object_explain.paste(result[key], crops.boxes, has, size)
    return result, z


def crop_affine(found: detector_lib.Detector, count: int) -> dict[str, scoring.Affine]:
    """Per component the normalisation `[count]` of object samples' errors: the training
    objects' mean and std (`ObjectModel.attribution`), or none (0 and 1) without them."""
    if found.objects.attribution is None:
        return dict.fromkeys(scoring.COMPONENTS, scoring.Affine(np.zeros(count), np.ones(count)))
    return found.objects.attribution.normalisation(count)


def render(
    explained: Mapping[str, np.ndarray],
    settings: ExplainSettings,
    *,
    count: int,
    crop: bool,
    extra: Mapping[str, str],
    where: str = "gradcam",
) -> list[dict[str, np.ndarray]]:
    """The RGB images of each of the `count` explained frames: kind (those of
    `report.IMAGE_TITLES`; "crop" only with `crop`; the model's `extra` maps, in [0, 1]) →
    `[S, S, 3]` uint8. Error maps are each scaled to their own min–max; the overlay and the
    crop follow the heatmap `explained[where]` (`heatmap_kind`)."""
    pictures = []
    for a in range(count):
        frame, heat = explained["frame"][a], explained[where][a]
        picture = {
            "frame": images.as_rgb(frame),
            "predicted": images.as_rgb(explained["predicted"][a]),
            "error_rgb": images.colormap(images.unit_range(explained["rgb_map"][a])),
            "error_flow": images.colormap(images.unit_range(explained["flow_map"][a])),
            "anomaly_map": images.colormap(images.unit_range(explained["anomaly_map"][a])),
            "anomaly_foreground": images.colormap(
                images.unit_range(explained[maps_lib.FOREGROUND][a])
            ),
            "gradcam": images.colormap(explained["gradcam"][a]),
            "hirescam": images.colormap(explained["hirescam"][a]),
            "overlay": images.overlay(frame, images.unit_range(heat), settings.overlay_beta),
        }
        picture |= {name: images.colormap(explained[name][a]) for name in extra}
        if crop:
            picture["crop"] = images.crop_around(frame, heat, settings.crop_fraction)
        pictures.append(picture)
    return pictures


def caption(
    captioner: blip_lib.Captioner,
    pictures: Sequence[Mapping[str, np.ndarray]],
    settings: ExplainSettings,
) -> list[str]:
    """BLIP captions of each anomaly's `settings.caption_source` picture (`CAPTIONED`), in
    batches of `settings.batch_size` (padded: one compilation)."""
    shown = [p[CAPTIONED[settings.caption_source]] for p in pictures]
    batch, captions = settings.batch_size, []
    for i in tqdm(range(0, len(shown), batch), desc="caption", unit="batch"):
        captions += captioner.caption(
            shown[i : i + batch],
            beams=settings.caption_beams,
            max_new_tokens=settings.caption_tokens,
            pad_to=batch,
        )
    return captions


def _number(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def make_records(
    found: detector_lib.Detector,
    source: Input,
    errors: scoring.SplitErrors,
    scores: scoring.Scores,
    chosen: np.ndarray,
    explained: Mapping[str, np.ndarray],
    pictures: Sequence[Mapping[str, np.ndarray]],
    captions: Sequence[str | None],
    *,
    z: Mapping[str, np.ndarray],
    caption_source: str | None,
    caption_notes: Sequence[str | None],
    objects: object_explain.AnomalyObjects | None = None,
    where: str = "anomaly_foreground",
) -> list[dict[str, Any]]:
    """One record per explained anomaly (`RECORD_FIELDS`; `where`: the "where" map of a
    run, `explain.where`, see `heatmap_kind`; `z`: per component `[A]` the
    anomalies' training z, `attribution.training_z`; `caption_source` None: no captioner;
    `caption_notes`: per anomaly how its caption was made, or None; `objects`: in object mode
    the anomalies' objects, else None); `images` holds the paths `write` puts each picture
    at. In object mode the explanation is the top object's (`object_sentence`)."""
    where = heatmap_kind(where, object_mode=objects is not None)
    records = []
    for a, i in enumerate(chosen):
        video = int(errors.video[i])
        stem = f"{errors.names[video]}_{int(errors.frame[i]):06d}"
        paths = {kind: f"images/{stem}_{kind}.png" for kind in pictures[a]}
        peaks, pointing = peaks_and_pointing(explained, a, objects, video in source.masked)
        records.append(
            {
                "video": errors.names[video],
                "frame": int(errors.frame[i]),
                "score": _number(scores.score[i]),
                "score_rgb": _number(scores.rgb[i]),
                "score_flow": _number(scores.flow[i]),
                "z_rgb": _number(z["rgb"][a]),
                "z_flow": _number(z["flow"][a]),
                "threshold": found.threshold,
                "label": None if errors.label is None else int(errors.label[i]),
                "modality": attribution.modality(z["rgb"][a], z["flow"][a]),
                "explanation": attribution.sentence(z["rgb"][a], z["flow"][a])
                if objects is None
                else object_explain.object_sentence(objects.listed[a]),
                "heatmap": paths[where],
                "overlay": paths["overlay"],
                "images": paths,
                "peaks": peaks,
                "pointing": pointing,
                "caption": captions[a],
                "caption_source": caption_source,
                "caption_note": caption_notes[a] if caption_source else NO_BLIP,
                "checkpoint_step": found.step,
                "objects": None if objects is None else objects.listed[a],
            }
        )
    return records


def heatmap_kind(where: str, *, object_mode: bool) -> str:
    """The map of `explained` that the records' heatmap, overlay and crop follow: `where`
    (`explain.where`); in object mode "anomaly_map" (the objects' scores over their boxes)
    and "anomaly_foreground" (the top box with its crop's foreground pattern,
    `explain_crops`) as they are, the Grad-CAM inside the top object's box for the others."""
    if not object_mode or where in ("anomaly_map", maps_lib.FOREGROUND):
        return where
    return "gradcam_in_box"


def peaks_and_pointing(
    explained: Mapping[str, np.ndarray],
    a: int,
    objects: object_explain.AnomalyObjects | None,
    masked: bool,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Anomaly `a`'s map peaks, and its pointing games when its video has masks (`masked`) and
    its mask is not empty (else None). In object mode also `gradcam_in_box` (the peak of the
    "where" map inside the top box, `AnomalyObjects.region`; None in a frame without objects)
    and `object_box` (the top box holds mask pixels). With object samples a frame without
    objects has no maps at all: every peak is None, every game a miss."""
    mask = explained["mask"][a]
    kinds = tuple(k for k in ("gradcam", "anomaly_map", maps_lib.FOREGROUND) if k in explained)
    mapless = objects is not None and objects.samples and not objects.has_box(a)
    peaks = {k: None if mapless else list(images.peak(explained[k][a])) for k in kinds}
    pointing = None
    if masked and bool(mask.any()):
        pointing = {k: None if mapless else images.pointing(explained[k][a], mask) for k in kinds}
    if objects is None:
        return peaks, pointing
    where, in_box, boxed = objects.region[a], objects.gradcam_in_box[a], objects.has_box(a)
    peaks["gradcam_in_box"] = list(images.peak(in_box, where)) if boxed else None
    if pointing is not None:
        pointing["gradcam_in_box"] = images.pointing(in_box, mask, where) if boxed else None
        pointing["object_box"] = bool((objects.region[a] & (mask > 0)).any())
    return peaks, pointing


def make_summary(
    found: detector_lib.Detector,
    source: Input,
    errors: scoring.SplitErrors,
    records: Sequence[Mapping[str, Any]],
    *,
    above: int,
    settings: ExplainSettings,
    captioned: bool,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """summary.json: what was explained, how, the pointing game where masks are known, times."""
    tolerance = settings.pointing_tolerance * found.config.data.size
    frames = len(errors.video)
    return {
        "input": source.shown,
        "model": found.config.model.name,
        "videos": list(errors.names),
        "checkpoint_step": found.step,
        "frames": frames,
        "frames_scored": int(errors.scored.sum()),
        "threshold": found.threshold,
        "threshold_rule": found.threshold_rule,
        "score": scoring.describe(found.settings),
        "anomalies": above,
        "explained": len(records),
        "modalities": {
            m: sum(r["modality"] == m for r in records) for m in ("appearance", "motion")
        },
        "pointing_game": pointing_game(
            records,
            tolerance,
            objects=found.objects is not None,
            samples=found.config.objects.samples,
        ),
        "captions": (
            {
                "source": settings.caption_source,
                "beams": settings.caption_beams,
                "max_new_tokens": settings.caption_tokens,
            }
            if captioned
            else {"note": NO_BLIP}
        ),
        "explain": dataclasses.asdict(settings),
        "seconds": seconds,
        "frames_per_second": frames / seconds["total"],
    }


def pointing_game(
    records: Sequence[Mapping[str, Any]], tolerance: float, *, objects: bool, samples: bool = False
) -> dict[str, Any]:
    """summary.json's `pointing_game` over the records with a pointing game (`tolerance`: the
    "near" distance in pixels); `objects`: object mode's games too; `samples`: the maps are
    the top objects' crops' (a model of object samples)."""
    games = [r["pointing"] for r in records if r["pointing"] is not None]
    kinds = ("gradcam", "anomaly_map", maps_lib.FOREGROUND, *(("gradcam_in_box",) * objects))

    def fraction(hit: Callable[[dict], bool]) -> float | None:
        return sum(map(hit, games)) / len(games) if games else None

    rule = (
        "the map's maximum lies inside the ground-truth mask (inside), or within "
        f"{tolerance:.1f} px of it (near: the usual 15 px at 224 px, scaled), over the "
        "explained (flagged) frames whose mask is not empty"
    )
    if objects:
        rule += (
            "; gradcam_in_box: the maximum of the Grad-CAM inside the frame's top object's box; "
            "object_box: the top object's box holds mask pixels (as jaxvad.evaluate's object "
            "pointing game); a frame without objects is a miss for both"
        )
    if samples:
        rule += (
            "; object samples: Grad-CAM and every map are the top object's crop's, pasted into "
            "its box grown by config.objects.margin (zero, or the floor, elsewhere), and "
            "gradcam_in_box is that Grad-CAM restricted to the top object's own box, its peak "
            "searched there; anomaly_foreground is the top object's score plus its crop's "
            "anomaly_foreground pattern over the object's own box, the floor elsewhere; a "
            "frame without objects has no maps: a miss in every game"
        )
    game: dict[str, Any] = {"frames_with_mask": len(games), "rule": rule}
    for kind in kinds:
        game[f"{kind}_inside"] = fraction(lambda g, k=kind: g.get(k) is not None and g[k]["inside"])
        game[f"{kind}_near"] = fraction(
            lambda g, k=kind: g.get(k) is not None and g[k]["distance"] <= tolerance
        )
    if objects:
        game["object_box"] = fraction(lambda g: g["object_box"])
    return game


def write(
    out: Path,
    records: Sequence[Mapping[str, Any]],
    pictures: Sequence[Mapping[str, np.ndarray]],
    summary: Mapping[str, Any],
    errors: scoring.SplitErrors,
    scores: scoring.Scores,
    chosen: np.ndarray,
    *,
    extra_titles: Mapping[str, str],
    quality: Mapping[str, Any] | None = None,
) -> Path:
    """The output folder `out` (replacing an earlier one only once complete): the pictures at
    their records' paths, each video's score curve with the explained anomalies marked,
    records.jsonl, summary.json and report.html; with `quality` (`measure.measure`) also
    quality.json and its deletion curves (images/deletion.png), shown in the report."""
    with atomic.folder(out) as staging:
        for record, picture in zip(records, pictures, strict=True):
            for kind, image in picture.items():
                images.write_png(staging / record["images"][kind], image)
        curves = plots.score_curves(
            staging / "images",
            errors,
            scores,
            summary["threshold"],
            marked=chosen,
            file_name="{video}_scores.png",
        )
        (staging / "records.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        )
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        deletion = None
        if quality is not None:
            (staging / "quality.json").write_text(json.dumps(quality, indent=2) + "\n")
            boxes = quality.get("object_frame", {}).get("curves", {})
            shown = {**quality["curves"], **{f"box map {k}": v for k, v in boxes.items()}}
            if shown:
                path = plots.deletion_curves(staging / "images" / "deletion.png", shown)
                deletion = str(path.relative_to(staging))
        report.write(
            staging / "report.html",
            summary=summary,
            records=records,
            curves={name: str(path.relative_to(staging)) for name, path in curves.items()},
            extra_titles=extra_titles,
            quality=quality,
            deletion=deletion,
        )
    return out


def measure_maps(
    found: detector_lib.Detector,
    source: Input,
    errors: scoring.SplitErrors,
    chosen: np.ndarray,
    scores: scoring.Scores,
    scored: object_scores.ObjectScores | None,
    explained: Mapping[str, np.ndarray],
    z: Mapping[str, np.ndarray],
    records: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """`--quality`: every map of the explained anomalies `chosen` measured (`measure.measure`);
    a model of object samples is measured on the anomalies' top crops (those with an object),
    under the training objects' normalisation, with the near distance scaled to the crop,
    and its "where" also by `object_randomisation` (`errors`: the frames', `scored`: their
    objects')."""
    config, settings = found.config, ExplainSettings(**found.config.explain)
    modalities = [r["modality"] for r in records]
    side, crops, regions = config.data.size, None, None
    affine = {
        c: scoring.Affine(a.shift[chosen], a.scale[chosen]) for c, a in scores.error_affine.items()
    }
    train = pipeline.open_prepared(config_lib.dataset_dir(config, needed_for="--quality"), "train")
    references = measure.deletion_references(found, train)
    with_object = np.arange(len(chosen))
    if config.objects.samples:
        has = np.asarray(explained.get("has_object", np.zeros(0, bool)), bool)
        with_object = np.flatnonzero(has)
        side, chosen = config.objects.size, chosen[has]
        crops = pipeline.ObjectCrops(chosen, explained["crop_boxes"][has], side)
        regions = explained["object_region"][has]
        affine = crop_affine(found, len(chosen))
        z = {c: np.asarray(v)[has] for c, v in z.items()}
        modalities = [m for m, h in zip(modalities, has, strict=True) if h]
    result = measure.measure(
        found,
        source.table,
        chosen,
        affine,
        z,
        modalities,
        source.masked,
        references,
        measure.QualitySettings(
            anomalies=settings.quality_anomalies,
            steps=settings.quality_steps,
            noise=settings.quality_noise,
            draws=settings.quality_draws,
            randomised=settings.quality_randomised,
            tolerance=settings.pointing_tolerance * side,
            batch_size=settings.batch_size,
            seed=config.seed,
        ),
        crops,
        regions,
    )
    if crops is not None and scored is not None:
        index = measure.measured(len(chosen), settings.quality_anomalies)
        rows = chosen[index]
        result["object_randomisation"] = object_randomisation(
            found,
            source.table,
            errors,
            rows[: settings.quality_randomised],
            scored,
            batch_size=settings.batch_size,
            key=jax.random.key(config.seed),
        )
        result["object_frame"] = object_frame(
            found,
            source,
            errors,
            rows,
            scored,
            {name: explained[name][with_object[index]] for name in BOX_MAPS},
            references,
        )
    return result


def object_frame(
    found: detector_lib.Detector,
    source: Input,
    errors: scoring.SplitErrors,
    positions: np.ndarray,
    scored: object_scores.ObjectScores,
    maps: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    """Deletion, insertion and Max-Sensitivity of object mode's box maps `maps` (name →
    `[R, S, S]`, the records' maps of the frames at `positions` `[R]`) in the frame, against
    the frame's object score (`box_quality.measure_boxes`, with `measure.deletion_references`); the
    original frames come from `source.originals`. Without them (the source folder
    unreadable): a note saying why."""
    settings = ExplainSettings(**found.config.explain)
    if not len(positions):
        return {}
    if source.originals is None:
        return {"skipped": "no original frames for this input"}
    try:
        attribute = box_quality.attribute_inputs(source.table, positions, source.originals)
    except DataError as e:
        log.warning("--quality: the box maps are not measured in the frame: %s", e)
        return {"skipped": str(e)}

    def explain_boxes(table, at, rescored):
        explained, _ = explain_crops(
            found, table, errors, at, rescored, batch_size=settings.batch_size, progress=False
        )
        return explained

    return box_quality.measure_boxes(
        found,
        source.table,
        positions,
        scored,
        maps,
        attribute,
        explain_boxes,
        references,
        steps=settings.quality_steps,
        noise=settings.quality_noise,
        draws=settings.quality_draws,
        # Frames per score call: each re-scores its frames' objects, whose samples go
        # through the model in batches of eval.batch_size, so fewer, larger calls run faster.
        batch_size=found.config.eval.batch_size,
        key=jax.random.fold_in(jax.random.key(found.config.seed), 1),
    )


BOX_MAPS = ("anomaly_map", maps_lib.FOREGROUND)  # Object mode's box maps (`explain_crops`).


def object_randomisation(
    found: detector_lib.Detector,
    table: pipeline.FrameTable,
    errors: scoring.SplitErrors,
    positions: np.ndarray,
    scored: object_scores.ObjectScores,
    *,
    batch_size: int,
    key: jax.Array,
) -> dict[str, Any]:
    """The cascading randomisation test (`quality.randomisation_test`) of object mode's box
    maps `BOX_MAPS` as the records show them (`explain_crops`: the top object's score over
    its box, with its crop's error or foreground pattern, in the S × S frame), for the
    frames at `positions` `[R]`: everything the map learned is randomised, the crop model's
    parameter groups one more at a time (`quality.top_down_groups`), then the components'
    memory banks (`Bank.bank`, each redrawn from the normal of its own mean and std). Each
    step re-scores the frames' objects (the top object can change) and re-explains the top
    crop. The box detector is not learned and is not randomised."""
    if not len(positions):
        return {}
    keep = np.flatnonzero(np.isin(scored.objects.frame_position, positions))
    objects = scored.objects.take(keep)
    banks = found.objects.banks

    def map_fn(params: Mapping[str, Any]) -> jax.Array:
        model = dataclasses.replace(
            found.objects,
            banks={
                n: dataclasses.replace(b, bank=np.asarray(params["banks"][n]))
                for n, b in banks.items()
            },
        )
        trial = dataclasses.replace(found, params=params["model"], objects=model)
        rescored = trial.score_objects(objects, table, progress=False)
        explained, _ = explain_crops(
            trial, table, errors, positions, rescored, batch_size=batch_size, progress=False
        )
        return jax.numpy.concatenate([explained[name] for name in BOX_MAPS])  # [M·R, S, S]

    params = {"model": found.params, "banks": {n: b.bank for n, b in banks.items()}}
    groups = [("model", *g) for g in quality_lib.top_down_groups(found.params)] + [("banks",)]
    test = quality_lib.randomisation_test(map_fn, params, groups, key=key)
    correlation = np.asarray(test["correlation"]).reshape(len(groups), len(BOX_MAPS), -1)
    passes = np.asarray(test["passes"], np.float64).reshape(len(BOX_MAPS), -1)
    return {
        "anomalies": len(positions),
        "groups": ["/".join(map(str, g)) for g in groups],
        "maps": {
            name: {
                "correlation_by_step": np.nanmean(correlation[:, m], axis=1).tolist(),
                "passes": measure.summary(passes[m]),
            }
            for m, name in enumerate(BOX_MAPS)
        },
    }


def explain(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    video: str | Path | None = None,
    split: str | None = None,
    top: int = 0,
    blip: str | Path | None = None,
    quality: bool = False,
) -> Path:
    """Explains the anomalies of `video` (a file or folder of frames) or of the prepared
    `split`; writes the outputs (on process 0) and returns their folder. `quality`: also
    measures every map (`measure`, quality.json)."""
    config_lib.validate(config)
    _check_flags(video, split, top)
    if quality and split is None:
        raise UsageError("--quality measures maps against a prepared split's masks: use --split")
    distributed.initialize()  # Before any other use of JAX.
    started = time.perf_counter()
    captioner = blip_lib.Captioner.load(blip) if blip else None  # Bad folders fail first.
    if config_lib.is_weak(config):
        if video is not None or quality:
            raise UsageError(
                "a weakly supervised model explains a split of its features: use --split "
                "(no --video, no --quality)"
            )
        return weak_alarms.explain_weak(
            config, workdir, split=split, top=top, captioner=captioner, started=started
        )

    # --- Load: the detector (from the workdir alone), then the input.
    found = detector_lib.load(workdir, config_lib.flatten(config))
    config, settings = found.config, ExplainSettings(**found.config.explain)
    object_mode = found.objects is not None
    if settings.caption_source == "object" and not object_mode:
        raise UsageError(
            "config.explain.caption_source='object' captions the top object: it needs object "
            "mode (config.score.components other than 'error')"
        )
    if video is not None:
        data = config.data
        source = video_input(
            video,
            size=data.size,
            history=config.history,
            flow=data.flow,
            objects=data.objects if object_mode else "none",
        )
    else:
        source = split_input(config, split)
    out = Path(workdir) / "explain" / source.name
    explain_source(
        found, source, out, top=top, captioner=captioner, started=started, quality=quality
    )
    return out


def explain_source(
    found: detector_lib.Detector,
    source: Input,
    out: Path,
    *,
    top: int = 0,
    captioner: blip_lib.Captioner | None = None,
    started: float | None = None,
    quality: bool = False,
) -> list[dict[str, Any]]:
    """Explains the anomalies of `source` with the detector `found` into the folder `out`
    (written by process 0; see the module docstring); returns the records. `started`: when the
    command started (perf_counter; the summary's total time), default now. `quality`: also
    measures every map of a frame-level run (`measure`), for quality.json."""
    started = time.perf_counter() if started is None else started
    seconds: dict[str, float] = {}
    config, settings = found.config, ExplainSettings(**found.config.explain)
    object_mode = found.objects is not None

    # --- Score every frame (object mode: from its objects); pick the anomalies.
    errors, seconds["score"] = found.errors(
        source.table, labels=source.labeled, maps=False, desc=f"score {source.name}"
    )
    scored = None
    if object_mode:
        if source.objects is None:
            scored = found.score_objects(object_scores.read_objects(source.table), source.table)
        else:
            scored = found.score_objects(source.objects, source.table)
    scores = found.scores(errors, scored)
    chosen, above = pick(errors, scores, found.threshold, top)

    # --- Explain: Grad-CAM, predictions and maps of the anomalies (and their objects).
    # A model of object samples explains each anomaly's top object's crop (`explain_crops`).
    samples = config.objects.samples
    with _timed(seconds, "gradcam_and_maps"):
        if samples:
            explained, z = explain_crops(
                found, source.table, errors, chosen, scored, batch_size=settings.batch_size
            )
        else:
            sigma = config.eval.map_sigma * config.data.size
            explained = explain_frames(
                found, source.table, chosen, scores, batch_size=settings.batch_size, map_sigma=sigma
            )
            z = {c: v[chosen] for c, v in attribution.training_z(errors, found.normal).items()}
        found_objects = None
        if scored is not None and len(chosen):
            found_objects = object_explain.explain_objects(
                found.objects,
                scored,
                chosen,
                explained["gradcam"],
                source.table.frame_sizes,
                nearby=config.objects.nearby,
                samples=samples,
            )
            explained["gradcam_in_box"] = found_objects.gradcam_in_box

    # --- Render: pictures, captions, records.
    extra = model.MODELS[config.model.name].EXTRA_MAPS
    crop = captioner is not None and settings.caption_source == "crop"
    where = heatmap_kind(settings.where, object_mode=found_objects is not None)
    pictures = render(explained, settings, count=len(chosen), crop=crop, extra=extra, where=where)
    notes: list[str | None] = [None] * len(chosen)
    if found_objects is not None:
        notes = add_object_pictures(
            pictures,
            found_objects,
            explained["frame"],
            source,
            errors.video[chosen],
            errors.frame[chosen],
            crops=captioner is not None and settings.caption_source == "object",
        )
        extra = {**extra, **report.OBJECT_TITLES}
    with _timed(seconds, "captions"):
        captions = caption(captioner, pictures, settings) if captioner else [None] * len(chosen)
    records = make_records(
        found,
        source,
        errors,
        scores,
        chosen,
        explained,
        pictures,
        captions,
        z=z,
        caption_source=settings.caption_source if captioner else None,
        caption_notes=notes,
        objects=found_objects,
        where=settings.where,
    )

    # --- Measure (--quality): every map, every metric.
    measured = None
    if quality:
        with _timed(seconds, "quality"):
            measured = measure_maps(
                found, source, errors, chosen, scores, scored, explained, z, records
            )

    # --- Write (process 0): pictures, curves, records, summary, report.
    if jax.process_index() == 0:
        seconds["total"] = time.perf_counter() - started
        summary = make_summary(
            found,
            source,
            errors,
            records,
            above=above,
            settings=settings,
            captioned=captioner is not None,
            seconds=seconds,
        )
        write(
            out,
            records,
            pictures,
            summary,
            errors,
            scores,
            chosen,
            extra_titles=extra,
            quality=measured,
        )
        log.info("%s", _log_lines(summary, out))
    return records


def add_object_pictures(
    pictures: Sequence[dict[str, np.ndarray]],
    found: object_explain.AnomalyObjects,
    frames: np.ndarray,
    source: Input,
    videos: np.ndarray,
    frame_ids: np.ndarray,
    *,
    crops: bool,
) -> list[str | None]:
    """Adds object mode's pictures to each anomaly's (`frames` `[A, S, S, C]` its stored
    frames, `videos`, `frame_ids` `[A]` its video and 1-based frame): `objects`,
    `gradcam_in_box` and with `crops` `object_crop`, what BLIP captions. Returns per anomaly
    how its crop was cut (`object_explain.object_crops`; None without `crops`)."""
    sizes = source.table.frame_sizes[videos]
    for picture, more in zip(
        pictures, object_explain.object_pictures(found, frames, sizes), strict=True
    ):
        picture |= more
    if not crops:
        return [None] * len(pictures)
    cut, notes = object_explain.object_crops(
        found, videos, frame_ids, frames, source.table.frame_sizes, source.originals
    )
    for picture, image in zip(pictures, cut, strict=True):
        picture["object_crop"] = image
    return notes


def _check_flags(video: str | Path | None, split: str | None, top: int) -> None:
    if (video is None) == (split is None):
        raise UsageError("give exactly one of --video=PATH and --split=NAME")
    if top < 0:
        raise UsageError(f"--top must be ≥ 0 (0: every anomaly), got {top}")


@contextlib.contextmanager
def _timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Adds the seconds the block takes to `seconds[key]`."""
    start = time.perf_counter()
    yield
    seconds[key] = time.perf_counter() - start


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
        if "anomaly_foreground_inside" in game:
            lines[-1] += (
                f", anomaly × foreground {game['anomaly_foreground_inside']:.3f} / "
                f"{game['anomaly_foreground_near']:.3f}"
            )
        if "object_box" in game:
            lines.append(
                f"object mode: Grad-CAM inside the top box {game['gradcam_in_box_inside']:.3f} "
                f"/ {game['gradcam_in_box_near']:.3f}; the top box holds mask pixels "
                f"{game['object_box']:.3f}"
            )
    lines.append(f"written: {out / 'report.html'}, {out / 'records.jsonl'}")
    return "\n".join(lines)


USAGE = (
    "python -m jaxvad.explain --config=FILE[:<model>,tiny] --workdir=DIR "
    "(--video=PATH | --split=NAME [--quality]) [--top=K] [--blip=BLIP_DIR]"
)


USER_ERRORS = (
    *detector_lib.LOAD_ERRORS,
    builder.DatasetNotPreparedError,
    DataError,
    UsageError,
    blip_lib.BlipWeightsError,
)


def main() -> None:
    config = cli.define_config_flag()
    workdir = flags.DEFINE_string("workdir", None, "the run's directory", required=True)
    video = flags.DEFINE_string("video", None, "a video file or a folder of frames (no labels)")
    split = flags.DEFINE_string("split", None, "explain this prepared split (e.g. test) instead")
    top = flags.DEFINE_integer("top", 0, "explain the K highest-scoring anomalies (0: all)")
    blip = flags.DEFINE_string("blip", None, "a Hugging Face BlipForConditionalGeneration folder")
    quality = flags.DEFINE_boolean("quality", False, "measure every map (quality.json)")
    cli.run(
        lambda: explain(
            config.value,
            workdir.value,
            video=video.value,
            split=split.value,
            top=top.value,
            blip=blip.value,
            quality=quality.value,
        ),
        config=config,
        usage=USAGE,
        user_errors=USER_ERRORS,
    )
