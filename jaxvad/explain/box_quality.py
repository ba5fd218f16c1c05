"""Object mode's box maps measured in the frame (`quality.json`'s `object_frame`): deletion,
insertion and Max-Sensitivity of the maps the records show (`command.explain_crops`: the top
object's score over its box, with its crop's pattern), against the score they explain: the
frame's object score, the maximum over its objects of their summed calibrated components
(`Detector.score_objects`).

The frame's objects keep their boxes: the detector is not learned (as in the randomisation
test, `command.object_randomisation`). Everything else the score reads is measured again from
the changed inputs:
- the target frame t and its flow at S × S (the stored records' `frame` and `flow`), from
  which every object's sample is cut (the error and deep components);
- the attribute flow, DIS into frame t at the original resolution, from which the velocity
  histograms are measured (the velocity, speed and faster components), with the frame's
  background mask as the preparation found it (`objects.attribute_inputs`).
A pixel of the S × S map stands for the original pixels it covers (nearest neighbour).

- Deletion and insertion (`quality.deletion_insertion`, `steps` steps): the ranked pixels of
  the target frame take the training median frame (the background: the object removed), those
  of its flow the median training flow, those of the attribute flow no motion (a fixed
  camera's usual motion). Insertion starts from the three references. The past frames and
  flows stay as they are, so where the score reads the model only through deep features that
  read the past alone (the predictor's, `VadModel.FEATURE_INPUTS`), the objects keep their
  deep features and the model does not run again (`Detector.score_objects(changed_inputs=)`).
- Max-Sensitivity (`quality.max_sensitivity`): uniform noise of ±`noise` on the model-space
  inputs, as for the frame's maps (the T past frames and the target frame in [−1, 1], their
  flows); the attribute flow takes the target flow's noise, resized to the original
  resolution (nearest) and into its pixels. The objects are scored again and the top crop
  explained again.

Anomalies whose samples read a frame another anomaly changes (the same video, T frames or
fewer apart) go to different batches, so each anomaly's score reads only its own changes.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxvad import detector as detector_lib
from jaxvad import object_scores
from jaxvad.data import flow as flow_lib
from jaxvad.data import objects as object_lib
from jaxvad.data import pipeline
from jaxvad.explain import measure, quality

# (table, positions [B], scored objects) → box map name → [B, S, S] (`command.explain_crops`).
ExplainBoxes = Callable[
    [pipeline.FrameTable, np.ndarray, object_scores.ObjectScores], Mapping[str, np.ndarray]
]
Attribute = Mapping[int, tuple[np.ndarray, np.ndarray]]  # position → (mask [H, W], flow [H, W, 2])
METRICS = ("deletion_auc", "insertion_auc", "max_sensitivity")
DELETED = ("target_frame", "target_flow")  # The model inputs deletion and insertion change.
REFERENCE = (
    "frame: the training median frame (the background); its flow: the per-pixel median of up "
    "to 256 training flows; the attribute flow (DIS, original resolution): no motion"
)


class _Changed(Sequence):
    """`source`'s records, with the fields of `changed` (record id → field → value) replaced."""

    def __init__(self, source: Sequence[Mapping[str, Any]], changed: Mapping[int, Mapping]):
        self.source, self.changed = source, changed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> Mapping[str, Any]:
        record = self.source[i]
        return {**record, **self.changed[int(i)]} if int(i) in self.changed else record


def changed_table(
    table: pipeline.FrameTable,
    positions: np.ndarray,
    history: int,
    changed: Mapping[str, np.ndarray],
) -> pipeline.FrameTable:
    """`table` with the samples of the frames at `positions` `[B]` (`pipeline.eval_samples`'
    frames, T = `history` past ones) showing `changed` instead of their stored values, rounded
    into the stored dtypes: `target_frame` `[B, S, S, C]` and `target_flow` `[B, S, S, 2]`,
    and, when given, `frames` `[B, T, S, S, C]` and `flows` `[B, T, S, S, 2]` (past frame
    numbers below 1, which samples fill with frame 1, are left as they are)."""
    target, past_ids, past = pipeline.sample_ids(table, positions, history)
    ids, frames, flows = (
        [target[:, None]],
        [changed["target_frame"][:, None]],
        [changed["target_flow"][:, None]],
    )
    if "frames" in changed:
        ids.append(np.where(past >= 1, past_ids, -1))
        frames.append(changed["frames"])
        flows.append(changed["flows"])
    ids = np.concatenate(ids, 1).ravel()
    frames = np.concatenate(frames, 1).reshape(len(ids), *changed["target_frame"].shape[1:])
    flows = np.concatenate(flows, 1).reshape(len(ids), *changed["target_flow"].shape[1:])
    stored = table.source[int(target[0])]
    frame_dtype, flow_dtype = np.asarray(stored["frame"]).dtype, np.asarray(stored["flow"]).dtype
    if np.issubdtype(frame_dtype, np.integer):
        limits = np.iinfo(frame_dtype)
        frames = np.clip(np.rint(frames), limits.min, limits.max)
    replaced = {
        int(i): {"frame": f.astype(frame_dtype), "flow": g.astype(flow_dtype)}
        for i, f, g in zip(ids, frames, flows, strict=True)
        if i >= 0
    }
    view = copy.copy(table)
    view.source = _Changed(table.source, replaced)
    return view


def separate_batches(
    video: np.ndarray, frame: np.ndarray, reach: int, size: int
) -> list[np.ndarray]:
    """Indices into `video`, `frame` `[A]` in batches of at most `size`, no two in a batch of
    the same video and `reach` frames or fewer apart (first fit, in order)."""
    batches: list[list[int]] = []
    for i in range(len(video)):
        for batch in batches:
            if len(batch) < size and all(
                video[j] != video[i] or abs(int(frame[j]) - int(frame[i])) > reach for j in batch
            ):
                batch.append(i)
                break
        else:
            batches.append([i])
    return [np.asarray(b) for b in batches]


def _nearest(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """`x` `[S, S(, C)]` resized to `[height, width(, C)]` float32, nearest neighbour."""
    x = np.ascontiguousarray(x, np.float32)
    return cv2.resize(x, (width, height), interpolation=cv2.INTER_NEAREST)


def remeasured_velocity(
    objects: object_scores.SplitObjects,
    attribute: Attribute,
    keep: np.ndarray,
    positions: np.ndarray,
    noise: np.ndarray | None = None,
) -> np.ndarray:
    """`[M, bins]`: `objects`' velocity histograms measured again from each frame's (at
    `positions` `[B]`) attribute flow, kept where `keep` `[B, S, S]` is 1 and no motion where
    it is 0, plus `noise` `[B, S, S, 2]` (normalised flow units, `flow.FLOW_UNIT`), both
    resized to the original resolution (nearest)."""
    velocity = objects.velocity.copy()
    for b, position in enumerate(positions):
        mask, flow = attribute[int(position)]
        height, width = mask.shape
        flow = flow * _nearest(keep[b], height, width)[..., None]
        if noise is not None:
            pixels = np.array([flow_lib.flow_scale(width), flow_lib.flow_scale(height)])
            flow = flow + _nearest(noise[b], height, width) * pixels.astype(np.float32)
        where = objects.frame_position == position
        velocity[where] = object_lib.velocity_histograms(
            flow, mask, objects.boxes[where], object_lib.velocity_window(height)
        )
    return velocity


def attribute_inputs(
    table: pipeline.FrameTable, positions: np.ndarray, originals: Callable[[int], np.ndarray]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per position of `positions` (into `table.frame_ids`) its frame's background mask and
    attribute flow at the original resolution (`objects.attribute_inputs`), each video's
    original frames read once (`originals(video)` `[N, H, W, C]`)."""
    ids = table.frame_ids[positions]
    video, frame = table.video_index[ids], table.frame_index[ids] - 1
    out = {}
    for v in np.unique(video):
        here = np.flatnonzero(video == v)
        found = object_lib.attribute_inputs(originals(int(v)), frame[here])
        out |= {int(positions[i]): found[int(frame[i])] for i in here}
    return out


def measure_boxes(
    found: detector_lib.Detector,
    table: pipeline.FrameTable,
    positions: np.ndarray,
    scored: object_scores.ObjectScores,
    maps: Mapping[str, np.ndarray],
    attribute: Attribute,
    explain_boxes: ExplainBoxes,
    references: Mapping[str, np.ndarray],
    *,
    steps: int,
    noise: float,
    draws: int,
    batch_size: int,
    key: jax.Array,
) -> dict[str, Any]:
    """quality.json's `object_frame` (the module docstring) for the frames at `positions`
    `[A]` of `table`, with their box `maps` (name → `[A, S, S]`, as the records show them),
    `scored` objects (theirs included), `attribute` inputs (`attribute_inputs`),
    `explain_boxes` (their maps again), and `references` `target_frame` `[S, S, C]` (the
    background) and `target_flow` `[S, S, 2]` (the median training flow).
    `score_reproduced_within`: the largest difference between a frame's score measured
    again from its unchanged inputs and its score in `scored` (both in float32)."""
    ids, history = table.frame_ids[positions], found.scorer.history
    batches = separate_batches(table.video_index[ids], table.frame_index[ids], history, batch_size)
    per = {name: {metric: [] for metric in METRICS} for name in maps}
    curves = {name: {"deletion": [], "insertion": []} for name in maps}
    fractions, reproduced = None, []
    for rows in tqdm(batches, desc="box maps in the frame", unit="batch"):
        pos = positions[rows]
        objects = scored.objects.take(np.flatnonzero(np.isin(scored.objects.frame_position, pos)))
        sample = pipeline.eval_samples(table, pos, history=history)
        stored = {k: np.asarray(sample[k], np.float32) for k in measure.INPUTS}
        # The scores pass through JAX in float32: compare with the stored ones in float32.
        stored_scores = scored.frame[pos].astype(np.float32)

        def rescored(x, keep, flow_noise=None, changed_inputs=None, pos=pos, objects=objects):
            """The table showing `x` and the frames' objects scored again from it."""
            velocity = remeasured_velocity(objects, attribute, keep, pos, flow_noise)
            view = changed_table(table, pos, history, x)
            moved = dataclasses.replace(objects, velocity=velocity)
            return view, found.score_objects(
                moved, view, changed_inputs=changed_inputs, progress=False
            )

        def frame_scores(x, pos=pos):
            x = {k: np.asarray(v) for k, v in x.items()}
            # Deletion and insertion change the scored frame and its flow, not the past.
            scores = rescored(x, x["keep"][..., 0], changed_inputs=DELETED)[1]
            return jnp.asarray(scores.frame[pos])

        def box_maps(x, pos=pos, stored=stored):
            x = {k: np.asarray(measure.stored_values(k, v)) for k, v in x.items()}
            flow_noise = x["target_flow"] - stored["target_flow"]
            view, scores = rescored(x, np.ones(flow_noise.shape[:3], np.float32), flow_noise)
            out = explain_boxes(view, pos, scores)
            return {name: jnp.asarray(out[name]) for name in maps}

        scored_inputs = {k: stored[k] for k in ("target_frame", "target_flow")}
        inputs = {
            **scored_inputs,
            "keep": np.ones((len(rows), *stored["target_flow"].shape[1:3], 1)),
        }
        reference = {
            k: np.broadcast_to(references[k], v.shape).astype(np.float32)
            for k, v in scored_inputs.items()
        } | {"keep": np.zeros_like(inputs["keep"])}
        key, noise_key = jax.random.split(key)
        sensitivity = quality.max_sensitivity(
            box_maps,
            {k: measure.model_space(k, v) for k, v in stored.items()},
            radius=noise,
            samples=draws,
            key=noise_key,
        )
        for name, values in maps.items():
            key, order_key = jax.random.split(key)
            curve = quality.deletion_insertion(
                frame_scores, inputs, reference, values[rows], steps=steps, key=order_key
            )
            fractions = np.asarray(curve["fractions"])
            reproduced.append(np.abs(np.asarray(curve["original"]) - stored_scores))
            for metric, v in (
                ("deletion_auc", curve["deletion_auc"]),
                ("insertion_auc", curve["insertion_auc"]),
                ("max_sensitivity", sensitivity[name]),
            ):
                per[name][metric].append(np.asarray(v, np.float64))
            for kind in ("deletion", "insertion"):
                curves[name][kind].append(np.asarray(curve[kind]))
    if fractions is None:
        return {}
    return {
        "anomalies": len(positions),
        "reference": REFERENCE,
        "score_reproduced_within": float(np.max(np.concatenate(reproduced))),
        "maps": {
            name: {m: measure.summary(np.concatenate(per[name][m])) for m in METRICS}
            for name in maps
        },
        "curves": {
            name: {
                "fractions": fractions.tolist(),
                **{k: np.nanmean(np.concatenate(c[k]), axis=0).tolist() for k in c},
            }
            for name, c in curves.items()
        },
    }
