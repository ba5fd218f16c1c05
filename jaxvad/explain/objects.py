"""Object mode's explanations (DESIGN.md, "Objects"): per anomaly its frame's objects in numbers
against training, its top object's box as "where" (Grad-CAM restricted to the box), that box cut
from the original-resolution frame for BLIP, and the objects of a user's video found on the fly.

Where. The top object is the frame's highest-scoring one (it set the frame's score). Its box,
scaled from the original resolution to the stored S×S frame and rounded outwards
(`object_scores.box_maps`, the pixels of `jaxvad.evaluate`'s object pointing game), is the
anomaly's region; the Grad-CAM heatmap restricted to it (min–max renormalised over the box, zero
outside, `images.restrict`) is the "where" map, its peak searched inside the box. A model of
object samples explains the top object's crop instead: its Grad-CAM, computed inside the crop,
is resized back onto the crop's region of the stored frame (the box grown by the margin,
`paste`), and restricted to the box the same way; a frame without objects has none.

What. With `config.explain.caption_source = "object"` BLIP captions the top box cut from the
frame at the original resolution (`object_crops`): for a user's video (`--video`) the decoded
frames; for a prepared split the video in the dataset's source folder (`config.data.source` when
set, else the folder the dataset was prepared from, which its metadata records), listed by the
dataset's reader (`jaxvad.data.readers`, through its builder), read one video at a time and
checked against the prepared video's frame count and size (`SourceVideos`). When they cannot
be read (the folder moved or differs), the box is cut from the stored S×S frame instead, scaled
to it; a warning is logged and the record's `caption_note` says so. A frame without objects is
captioned whole (its stored frame).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxvad import object_scores
from jaxvad.data import builder, pipeline, preprocess
from jaxvad.data import objects as object_lib
from jaxvad.data.readers import VideoSpec
from jaxvad.data.video_io import DataError, read_frames
from jaxvad.explain import images
from jaxvad.explain.video import video_name

log = logging.getLogger("jaxvad.explain")

# Video v (0-based) → its frames at the original resolution `[N, H, W, C]` uint8; DataError
# when they cannot be read.
OriginalFrames = Callable[[int], np.ndarray]


def frame_objects(
    scored: object_scores.ObjectScores, shares: np.ndarray, position: int
) -> list[dict[str, Any]]:
    """The objects of the frame at `position`, highest score first: box (original-resolution
    pixels), track, score, calibrated components, attributes (`object_scores.ATTRIBUTES`
    and `slower_nearby`: the share of the 100 training objects nearest its place that move
    slower; `shares` `[M]`)."""
    mine = np.flatnonzero(scored.objects.frame_position == position)
    mine = mine[np.argsort(-scored.score[mine], kind="stable")]
    values = object_scores.attributes(scored.objects)
    return [
        {
            "box": [float(v) for v in scored.objects.boxes[m]],
            "track": int(scored.objects.tracks[m]),
            "score": float(scored.score[m]),
            "components": {k: float(v[m]) for k, v in scored.components.items()},
            "attributes": dict(zip(object_scores.ATTRIBUTES, map(float, values[m]), strict=True))
            | {"slower_nearby": float(shares[m])},
        }
        for m in mine
    ]


def object_sentence(found_objects: Sequence[Mapping[str, Any]]) -> str:
    """What makes a frame's top object unusual, in numbers against training."""
    if not found_objects:
        return "no object found in this frame: it has the training objects' minimum score"
    top = found_objects[0]
    a = top["attributes"]
    x0, y0, x1, y1 = (round(v) for v in top["box"])
    return (
        f"the object in box [{x0}, {y0}, {x1}, {y1}] ({a['width']:.0f}×{a['height']:.0f} px) "
        f"moves {a['speed']:.1f} px/frame; {100 * a['slower_nearby']:.1f} % of training "
        "objects near this place move slower"
    )


@dataclasses.dataclass(frozen=True)
class AnomalyObjects:
    """The object part of A explained anomalies: `listed`, per anomaly its frame's objects
    (`frame_objects`, the top one first); `top` `[A]` the top object's index among the scored
    objects (−1: a frame without objects); `region` `[A, S, S]` bool its box's pixels in the
    stored frame (empty without one), the pixels of the "where" map; `gradcam_in_box`
    `[A, S, S]` float32 that map: the Grad-CAM (with object `samples` the crop's own, pasted
    into the box grown by the margin) restricted to the box (zeros without a box)."""

    listed: list[list[dict[str, Any]]]
    top: np.ndarray
    region: np.ndarray
    gradcam_in_box: np.ndarray
    samples: bool = False

    def has_box(self, a: int) -> bool:
        return bool(self.top[a] >= 0)


def top_objects(scored: object_scores.ObjectScores, positions: np.ndarray) -> np.ndarray:
    """`[A]` the index among the scored objects of the top object of each frame at `positions`
    `[A]`: its highest-scoring one, the first of the highest as `frame_objects` orders them
    (−1: a frame without objects)."""
    top = np.full(len(positions), -1, np.int64)
    for a, p in enumerate(positions):
        mine = np.flatnonzero(scored.objects.frame_position == p)
        if len(mine):
            top[a] = mine[np.argmax(scored.score[mine])]
    return top


def top_boxes(scored: object_scores.ObjectScores, top: np.ndarray) -> object_scores.SplitObjects:
    """The top objects `top` `[A]` (`top_objects`) as objects of A "frames", one per anomaly
    (none for −1), for `object_scores.box_maps`."""
    has = top >= 0
    return dataclasses.replace(
        scored.objects.take(top[has]), frame_position=np.flatnonzero(has), num_frames=len(top)
    )


def explain_objects(
    model: object_scores.ObjectModel,
    scored: object_scores.ObjectScores,
    positions: np.ndarray,
    gradcam: np.ndarray,
    frame_sizes: np.ndarray,
    *,
    nearby: int,
    samples: bool = False,
) -> AnomalyObjects:
    """The objects of the anomalies at frame `positions` `[A]`, their top boxes and the
    "where" map; `frame_sizes` `[V, 2]` each video's original (height, width); `nearby`: the
    training objects that make up an object's place (`config.objects.nearby`). `gradcam`
    `[A, S, S]`: the frames' Grad-CAM or, with object `samples`, the top crops' Grad-CAM
    pasted into their boxes grown by the margin (`paste`); either is restricted here to the
    top box (the object; the margin is the crop's context)."""
    shares = model.slower_share(scored.objects, nearby)
    listed = [frame_objects(scored, shares, int(p)) for p in positions]
    top = top_objects(scored, positions)
    boxes, size = top_boxes(scored, top), gradcam.shape[-1]
    ones = np.ones(len(boxes.boxes))
    region = object_scores.box_maps(boxes, ones, 0.0, frame_sizes, size) > 0
    in_box = np.array([images.restrict(h, r) for h, r in zip(gradcam, region, strict=True)])
    in_box = in_box.astype(np.float32).reshape(gradcam.shape)
    return AnomalyObjects(listed, top, region, in_box, samples=samples)


def paste(crops: np.ndarray, regions: np.ndarray, has: np.ndarray, size: int) -> np.ndarray:
    """The crops' maps or images `crops` `[A, s, s, ...]` back in their S × S frames (S =
    `size`): crop a resized (bilinear) onto its region `regions[a]` `[x0, y0, x1, y1)` (stored
    pixels, `pipeline.ObjectCrops.boxes`), the part inside the frame kept, zeros elsewhere and
    for the anomalies without a crop (`has` `[A]` False). `[A, S, S, ...]`, the crops' dtype
    (integers rounded)."""
    out = np.zeros((len(crops), size, size, *crops.shape[3:]), crops.dtype)
    integer = np.issubdtype(crops.dtype, np.integer)
    for a in np.flatnonzero(has):
        inside, values = pipeline.uncrop(crops[a], regions[a], size)
        out[a][inside] = np.round(values) if integer else values
    return out


def stored_box(box: Sequence[float], frame_size: Sequence[int], size: int) -> np.ndarray:
    """An original-resolution box `[x0, y0, x1, y1]` of a frame of `frame_size` (height,
    width) in pixels of the stored `size`×`size` frame."""
    height, width = frame_size
    return np.asarray(box, np.float64) * size / np.array([width, height, width, height])


def object_pictures(
    found: AnomalyObjects, frames: np.ndarray, frame_sizes: np.ndarray
) -> list[dict[str, np.ndarray]]:
    """Per anomaly `objects` (its frame `frames[a]` `[S, S, C]` with its objects' boxes drawn,
    the top one in red) and `gradcam_in_box` (`[S, S, 3]` uint8 each); `frame_sizes[a]` its
    video's original (height, width)."""
    size = frames.shape[1]
    return [
        {
            "objects": images.draw_boxes(
                images.as_rgb(frame), [stored_box(o["box"], hw, size) for o in listed]
            ),
            "gradcam_in_box": images.colormap(heat),
        }
        for frame, listed, hw, heat in zip(
            frames, found.listed, frame_sizes, found.gradcam_in_box, strict=True
        )
    ]


def object_crops(
    found: AnomalyObjects,
    videos: np.ndarray,
    frame_ids: np.ndarray,
    stored: np.ndarray,
    frame_sizes: np.ndarray,
    originals: OriginalFrames | None,
) -> tuple[list[np.ndarray], list[str]]:
    """What BLIP sees of each anomaly (video `videos[a]`, 1-based frame `frame_ids[a]`, stored
    frame `stored[a]` `[S, S, C]`, videos' original (height, width) `frame_sizes` `[V, 2]`):
    its top box cut from the original frame (`originals`; None: not reachable), else from the
    stored frame; and a note saying which. RGB `[h, w, 3]` uint8 crops."""
    size = stored.shape[1]
    crops, notes = [], []
    held, held_video, unreachable = None, -1, None  # One video's frames at a time.
    for a, (video, frame) in enumerate(zip(videos, frame_ids, strict=True)):
        if not found.has_box(a):
            crops.append(images.as_rgb(stored[a]))
            notes.append("no object in this frame: BLIP captioned the whole stored frame")
            continue
        box = found.listed[a][0]["box"]
        if originals is not None and video != held_video:
            held_video = int(video)
            try:
                held, unreachable = originals(held_video), None
            except DataError as e:
                held, unreachable = None, str(e)
                log.warning("object captions: %s; cutting boxes from the stored frames", e)
        if held is not None:
            height, width = held.shape[1:3]
            crops.append(images.box_crop(held[frame - 1], box))
            notes.append(f"the top object's box cut from the original {width}×{height} frame")
        else:
            reason = unreachable or "no original frames for this input"
            crops.append(images.box_crop(stored[a], stored_box(box, frame_sizes[video], size)))
            notes.append(
                f"the top object's box cut from the stored {size}×{size} frame (box scaled): "
                f"the original frames could not be read ({reason})"
            )
    return crops, notes


class SourceVideos:
    """A prepared split's videos at their original resolution (`OriginalFrames`), read from the
    dataset's source `folder` as the preparation listed them (`builder.BUILDERS[dataset]`'s
    reader with the preparation `settings`); `videos`: the split's metadata entries (name,
    frames, height, width), which each video read must match."""

    def __init__(
        self,
        dataset: str,
        settings: builder.VadConfig,
        folder: Path,
        split: str,
        videos: Sequence[Mapping[str, Any]],
        root: Path,
    ):
        self.dataset, self.settings, self.folder, self.split = dataset, settings, folder, split
        self.videos, self.root = list(videos), root

    @functools.cached_property
    def _specs(self) -> dict[str, VideoSpec]:
        reader = builder.BUILDERS[self.dataset](config=self.settings, data_dir=str(self.root))
        try:
            listed = reader.list_videos(self.folder)
        except (OSError, ValueError) as e:  # DataError is a ValueError.
            raise DataError(self.folder, f"cannot list the source videos: {e}") from e
        return {spec.name: spec for spec in listed.get(self.split, [])}

    def __call__(self, video: int) -> np.ndarray:
        entry = self.videos[video]
        spec = self._specs.get(entry["name"])
        if spec is None:
            raise DataError(self.folder, f"no {self.split} video {entry['name']!r} there")
        frames = read_frames(spec.frames)
        expected = (entry["frames"], entry["height"], entry["width"])
        if frames.shape[:3] != expected:
            raise DataError(
                spec.frames,
                f"{frames.shape[0]} frames of {frames.shape[2]}×{frames.shape[1]}, the prepared "
                f"video has {expected[0]} of {expected[2]}×{expected[1]}",
            )
        return frames


def video_objects(frames: np.ndarray, path: Path, objects: str) -> object_scores.SplitObjects:
    """The objects of a user's video found on the fly, as the preparation finds a dataset's
    (`config.data.objects` = `objects`: "auto", the motion detector, or "mot:DIR", the file
    `DIR/<video name>.txt`), from its frames `[N, H, W, C]` at the original resolution."""
    spec = VideoSpec(video_name(path), "video", path)
    found = object_lib.video_objects(frames, preprocess.video_boxes(objects, spec, frames))
    return object_scores.SplitObjects.from_frames(
        found.boxes, found.tracks, found.velocity, video_lengths=[len(frames)]
    )
