"""`jaxvad.explain ... --quality`: every heatmap of a model measured over the explained
anomalies (`quality.json`; maps: `jaxvad.explain.maps`, metrics: `jaxvad.explain.quality`,
where each metric's definition is).

A model of object samples is measured on each anomaly's top object's sample, cut as the
explanations cut it (`pipeline.crop_samples`; the mask, the background and the flow reference
cut the same way), under the training objects' normalisation: the maps explain the crop's
error score. The near pointing game's distance is then a fraction of the crop's side. The
objects' box maps (object mode's "where") are measured by the pointing games of
`summary.json`, and in the frame, against the frame's object score, by
`jaxvad.explain.box_quality`.

The anomalies measured are the explained ones, or `explain.quality_anomalies` of them evenly
spaced in (video, frame) order (0: all). Per map, per anomaly, in batches of
`explain.batch_size`:
- the pointing game, strict and near (`explain.pointing_tolerance`), where the frame's video
  has masks and its mask is not empty;
- deletion and insertion over `explain.quality_steps` steps: the most important pixels of the
  scored frame and of its flow are replaced by a reference, and the score (`maps.score_step`,
  the frame's own normalisation) is recorded at each step. The frame's reference is the frame
  the model expected (`maps.expected_frame`: its prediction, where the appearance error is
  zero); the flow's is the per-pixel median of the training split's flows
  (`pipeline.median_frame`: up to 256 frames evenly spaced, the scene's usual motion, about
  none);
- Max-Sensitivity: noise uniform in ±`explain.quality_noise` on the model-space inputs (the T
  past frames and the target frame in [−1, 1], their flows), `explain.quality_draws` draws.
On the first `explain.quality_randomised` measured anomalies, the model-parameter
randomisation test: the model's top-level parameter groups randomised one more at a time
(`quality.top_down_groups`; flax's State sorts its keys, so the order is by name, not from the
output side: the order changes the steps in between, not the last, where every group is
random); the map passes when its rank correlation with the trained model's map is ≤ 0.5 after
the last step. Over every measured anomaly, the modality
check of the attribution (`quality.modality_check`).
Each metric: the mean over anomalies and a bootstrap 95 % interval (`quality.bootstrap_interval`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxvad import scoring
from jaxvad.data import pipeline
from jaxvad.explain import maps as maps_lib
from jaxvad.explain import quality

INPUTS = ("frames", "flows", "target_frame", "target_flow")
IN_BOX = "anomaly_foreground_in_box"  # Object mode's "where" on the crop (`with_region`).
METRICS = ("pointing_strict", "pointing_near", "deletion_auc", "insertion_auc", "max_sensitivity")


@dataclasses.dataclass(frozen=True)
class QualitySettings:
    """`config.explain`'s quality fields (the module docstring)."""

    anomalies: int
    steps: int
    noise: float
    draws: int
    randomised: int
    tolerance: float  # Pixels: the near pointing game's distance.
    batch_size: int
    seed: int


def measured(count: int, most: int) -> np.ndarray:
    """`[M]` indices of the anomalies measured: all `count`, or `most` evenly spaced."""
    if not most or count <= most:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, most).round().astype(int))


def measure(
    found,
    table: pipeline.FrameTable,
    positions: np.ndarray,
    affine: Mapping[str, scoring.Affine],
    z: Mapping[str, np.ndarray],
    modalities: Sequence[str],
    masked: frozenset[int],
    references: Mapping[str, np.ndarray],
    settings: QualitySettings,
    crops: pipeline.ObjectCrops | None = None,
    regions: np.ndarray | None = None,
) -> dict[str, Any]:
    """quality.json's content for the anomalies at `positions` `[A]` of `table` (their frames;
    with `crops`, a model of object samples: each anomaly's top object's sample, cut at
    `crops.boxes` `[A, 4]`, as the explanations cut it, and with `regions` `[A, S, S]` bool
    each top object's own box in the stored frame, which adds the map `IN_BOX`,
    `with_region`; `affine`: per component each
    anomaly's normalisation `[A]`; `z`, `modalities`: their attribution; `masked`: the videos
    with pixel masks; `references`: `target_frame` `[S, S, C]`, the training background
    (Max-Sensitivity's map reads it), and `target_flow` `[S, S, 2]`, the flow's deletion
    reference (`deletion_references`)."""
    started = time.perf_counter()
    chosen = measured(len(positions), settings.anomalies)
    names = maps_lib.names(found.config.model.name) + ((IN_BOX,) if regions is not None else ())
    alpha = found.settings.alpha
    side = found.config.data.size if crops is None else crops.size
    sigma = found.config.eval.map_sigma * side
    step = jax.jit(
        functools.partial(maps_lib.map_step, graphdef=found.graphdef, alpha=alpha, sigma=sigma)
    )

    def map_step(params, inputs, shift, scale, background, region):
        return with_region(step(params, inputs, shift, scale, background), region)

    score_step = jax.jit(
        functools.partial(maps_lib.score_step, graphdef=found.graphdef, alpha=alpha)
    )
    expected = jax.jit(functools.partial(maps_lib.expected_frame, graphdef=found.graphdef))
    samples = functools.partial(_samples, found, table, positions, references, crops, regions)
    key = jax.random.key(settings.seed)
    per: dict[str, dict[str, list[np.ndarray]]] = {n: {m: [] for m in METRICS} for n in names}
    curves: dict[str, dict[str, list[np.ndarray]]] = {
        n: {"deletion": [], "insertion": []} for n in names
    }
    fractions = None
    for start in tqdm(range(0, len(chosen), settings.batch_size), desc="quality", unit="batch"):
        rows = chosen[start : start + settings.batch_size]
        batch, reference = samples(rows)
        background = reference["target_frame"]
        shift = np.stack([affine[c].shift[rows] for c in scoring.COMPONENTS], -1).astype(np.float32)
        scale = np.stack([affine[c].scale[rows] for c in scoring.COMPONENTS], -1).astype(np.float32)
        inputs = {k: np.asarray(batch[k], np.float32) for k in INPUTS}
        region = batch.get("region")
        out = map_step(found.params, inputs, shift, scale, background, region)
        masks = np.asarray(batch["mask"]) > 0
        video = table.video_index[table.frame_ids[positions[rows]]]
        has_mask = np.isin(video, list(masked)) & masks.any(axis=(1, 2))
        scored = {k: inputs[k] for k in ("target_frame", "target_flow")}
        fixed = {k: inputs[k] for k in ("frames", "flows")}
        ref = {
            "target_frame": np.asarray(expected(found.params, inputs)),
            "target_flow": np.broadcast_to(reference["target_flow"], scored["target_flow"].shape),
        }

        def map_fn(x, shift=shift, scale=scale, background=background, region=region):
            stored = {k: stored_values(k, v) for k, v in x.items()}
            out = map_step(found.params, stored, shift, scale, background, region)
            return {name: out[name] for name in names}

        key, noise_key = jax.random.split(key)
        sensitivity = quality.max_sensitivity(
            map_fn,
            {k: model_space(k, v) for k, v in inputs.items()},
            radius=settings.noise,
            samples=settings.draws,
            key=noise_key,
        )

        def score_fn(x, fixed=fixed, shift=shift, scale=scale):
            return score_step(found.params, {**fixed, **x}, shift, scale)

        for name in names:
            key, order_key = jax.random.split(key)
            game = quality.pointing(out[name], masks, settings.tolerance)
            strict = np.where(has_mask, np.asarray(game["strict"], np.float64), np.nan)
            near = np.where(has_mask, np.asarray(game["near"], np.float64), np.nan)
            curve = quality.deletion_insertion(
                score_fn, scored, ref, out[name], steps=settings.steps, key=order_key
            )
            fractions = np.asarray(curve["fractions"])
            values = {
                "pointing_strict": strict,
                "pointing_near": near,
                "deletion_auc": np.asarray(curve["deletion_auc"]),
                "insertion_auc": np.asarray(curve["insertion_auc"]),
                "max_sensitivity": np.asarray(sensitivity[name]),
            }
            for metric, v in values.items():
                per[name][metric].append(v)
            curves[name]["deletion"].append(np.asarray(curve["deletion"]))
            curves[name]["insertion"].append(np.asarray(curve["insertion"]))
    result = {
        "anomalies_measured": len(chosen),
        "anomalies_explained": len(positions),
        "reference": (
            "frame: the model's expected frame (its prediction); flow: the per-pixel median "
            "of up to 256 training flows (evenly spaced)"
        ),
        "settings": dataclasses.asdict(settings),
        "maps": {
            name: {metric: summary(np.concatenate(per[name][metric])) for metric in METRICS}
            for name in names
        },
        "curves": {
            name: {
                "fractions": [] if fractions is None else fractions.tolist(),
                **{
                    kind: np.nanmean(np.concatenate(curves[name][kind]), axis=0).tolist()
                    for kind in ("deletion", "insertion")
                },
            }
            for name in names
            if curves[name]["deletion"]
        },
    }
    result["randomisation"] = randomisation(
        found, samples, affine, chosen[: settings.randomised], names, map_step, key
    )
    checks = quality.modality_check(
        jnp.asarray(z["rgb"][chosen]),
        jnp.asarray(z["flow"][chosen]),
        alpha,
        [modalities[i] for i in chosen],
    )
    result["modality_check"] = summary(np.asarray(checks, np.float64))
    seconds = time.perf_counter() - started
    result["seconds"] = seconds
    result["seconds_per_anomaly"] = seconds / max(len(chosen), 1)
    return result


def randomisation(found, samples, affine, rows, names, map_step, key) -> dict[str, Any]:
    """The cascading randomisation test of every map on the anomalies `rows` (indices into
    `affine`'s arrays; `samples(rows)`: their batch and references, `_samples`), one batch."""
    if not len(rows):
        return {}
    batch, reference = samples(rows)
    background, region = reference["target_frame"], batch.get("region")
    inputs = {k: np.asarray(batch[k], np.float32) for k in INPUTS}
    shift = np.stack([affine[c].shift[rows] for c in scoring.COMPONENTS], -1).astype(np.float32)
    scale = np.stack([affine[c].scale[rows] for c in scoring.COMPONENTS], -1).astype(np.float32)
    groups = quality.top_down_groups(found.params)
    out = {}
    for name in names:
        key, draw = jax.random.split(key)
        test = quality.randomisation_test(
            lambda p, name=name: map_step(p, inputs, shift, scale, background, region)[name],
            found.params,
            groups,
            key=draw,
        )
        correlation = np.asarray(test["correlation"])  # [G, B]
        out[name] = {
            "correlation_by_step": np.nanmean(correlation, axis=1).tolist(),
            "passes": summary(np.asarray(test["passes"], np.float64)),
        }
    return {
        "anomalies": len(rows),
        "groups": ["/".join(map(str, group)) for group in groups],
        "maps": out,
    }


def _samples(
    found,
    table: pipeline.FrameTable,
    positions: np.ndarray,
    references: Mapping[str, np.ndarray],
    crops: pipeline.ObjectCrops | None,
    regions: np.ndarray | None,
    rows: np.ndarray,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The samples of the anomalies `rows` (`eval_samples` of their frames at `positions`, or
    with `crops` their object samples, mask included, and with `regions` their `region`
    `[B, s, s]` bool cut as the mask is), and the `references` `[S, S, C]` of the frame
    (background) and the flow (deletion reference), each `[B, s, s, C]` cut as the sample is
    (`[S, S, C]` unchanged without crops)."""
    batch = pipeline.eval_samples(
        table, positions[rows], history=found.scorer.history, channels=found.scorer.channels
    )
    if crops is None:
        return batch, dict(references)
    boxes, size = crops.boxes[rows], crops.size
    whole = {k: np.broadcast_to(v, (len(rows), *v.shape)) for k, v in references.items()}
    cut = pipeline.crop_samples(batch, boxes, size)
    if regions is not None:
        own = {"mask": regions[rows].astype(np.uint8)}
        cut["region"] = pipeline.crop_samples(own, boxes, size)["mask"] > 0
    return cut, pipeline.crop_samples(whole, boxes, size)


def deletion_references(found, train: pipeline.FrameTable) -> dict[str, np.ndarray]:
    """The frame's training background `target_frame` `[S, S, C]` (`found.background`) and the
    flow's deletion reference `target_flow` `[S, S, 2]`: the per-pixel median of `train`'s
    flows (`pipeline.median_frame`)."""
    return {
        "target_flow": pipeline.median_frame(train, "flow"),
        "target_frame": np.asarray(found.background, np.float32),
    }


def with_region(maps: Mapping[str, jax.Array], region: np.ndarray | None) -> dict[str, jax.Array]:
    """`maps` (`maps.map_step`'s), with `region` `[B, s, s]` bool (each crop's object's own
    box) also `IN_BOX`: the crop's `anomaly_foreground` inside the box, 0 outside (object
    mode's "where" as the crop sees it: `explain_crops`'s box map less the object's score)."""
    if region is None:
        return dict(maps)
    return {**maps, IN_BOX: jnp.where(region, maps[maps_lib.FOREGROUND], 0.0)}


def summary(values: np.ndarray) -> dict[str, float | int]:
    """The mean of `values` `[N]` and its bootstrap 95 % interval, and N (finite ones)."""
    mean, low, high = quality.bootstrap_interval(values)
    return {"mean": mean, "low": low, "high": high, "n": int(np.isfinite(values).sum())}


def model_space(key: str, value: np.ndarray) -> np.ndarray:
    """Frames [0, 255] → [−1, 1] (what the noise is added to); flows unchanged."""
    return value / 127.5 - 1.0 if key in ("frames", "target_frame") else value


def stored_values(key: str, value: jax.Array) -> jax.Array:
    """`model_space`'s inverse: frames back to [0, 255] floats, as `map_step` reads them."""
    return (value + 1.0) * 127.5 if key in ("frames", "target_frame") else value
