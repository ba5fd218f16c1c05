"""Objects per frame: boxes from a weight-free motion detector or from MOTChallenge files, and
IoU tracks.

Boxes are `[K, 4]` float32 arrays `[x0, y0, x1, y1]` in pixels of the video's original
resolution, x1 and y1 exclusive, one array per frame, rows sorted by (x0, y0, x1, y1), so the
same input always gives the same array.

The automatic detector (`detect_boxes`) needs no weights, only a static camera:

1. background subtraction: OpenCV's MOG2 per-pixel Gaussian mixtures, first shown the clip's
   last `history` frames with equal weights (so a mode's weight is the share of those frames
   that show it, and an object in view in the first frame is foreground from the first frame
   on), then run over the clip;
2. motion: the absolute difference to the previous frame above a threshold, or, where flow is
   given, also the flow magnitude above a threshold;
3. fusion: a connected component of the (opened, then closed) background mask is an object when
   enough of its pixels lie near motion, which drops ghosts and static changes;
4. boxes: the components' bounding boxes of at least a minimum area; boxes that cover each other
   are merged into their union until no pair does.

The background is learned from the clip alone, so what covers the same pixels in more than
about half of the clip's frames (a slow, long vehicle in a short clip) is background there.

A user's detector plugs in through MOTChallenge text files (`read_mot`), one per video, lines
`frame,id,x,y,w,h,score,...`. The file's own ids are not used: detection files carry id −1, and
`link_tracks` tracks boxes from either source the same way, so tracks mean the same thing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from jaxvad.data import flow as flow_lib
from jaxvad.data.video_io import DataError

VELOCITY_BINS = 8  # orientation bins of the velocity histograms
# Side of the window velocities are measured in (`velocity_window`), as a share of the frame
# height. Chosen without test labels on 2026-12-06: of 9, 13, 17, 25, 37, 49 and 65 px on Ped2
# (240 px high), the window whose velocities gave the component choice's best validation (mean
# pseudo-anomaly AUC on the held-out training videos, `jaxvad.component_choice`; README,
# "Objects"). The 15 % used before was picked on Ped2's test labels.
VELOCITY_WINDOW = 0.2


@dataclass(frozen=True)
class BoxSettings:
    """Thresholds of `detect_boxes`.

    The defaults were chosen on train clips only, whose objects are all walkers: the synthetic
    dataset's train clips at 240×360, where each walker's own mask (the clip rendered with that
    walker alone) gives its true box, and UCSD Ped2's train clips (240×360 grey, MPEG-4),
    by box counts and sizes and by eye. No threshold was tuned on a test clip or a test label.
    Two design choices were not label-free: priming the background model on the whole clip and
    counting motion within `close_kernel` px of a component both came from diagnosing a slow
    vehicle that a synthetic test clip's mask showed missed.

    - `history`, `variance_threshold`: OpenCV's defaults. 500 frames is longer than a Ped2 or
      synthetic clip (120–180 frames), so the whole clip primes the model. 16 (a 4σ match): 9
      joined more Ped2 walkers into groups (median box 663 against 570 px²), 25 split more of
      them (25 % of boxes under 300 px² against 19 %).
    - `background_ratio`: OpenCV's 0.9 makes any mode holding 10 % of a pixel's weight
      background, so a walker's coat on a pixel for 10 % of the clip punches a hole in the next
      walker there: it split Ped2 walkers (54 % of boxes under 300 px²) and lost 0.3 % of the
      synthetic train walkers. From 0.7 down the counts level off (22 %, 19 % at 0.5 and 0.3).
    - `diff_threshold`: 15 grey levels, the 99.99th percentile of the frame difference of the
      static synthetic scene (sensor noise σ = 2.5 per frame, flicker); MPEG-4 leaves less
      noise on Ped2 (90 % of its pixel differences, walkers included, are ≤ 4).
    - `flow_threshold`: 0.5 px/frame, above the Farneback flow of the static synthetic scene
      (median 0.06, 99.9th percentile 0.49) and below the slowest walker (0.8 px/frame).
    - `min_moving_fraction`: 0.05. A ghost (a wrong background) has no motion, while a
      walker's changing edges reach most of it within `close_kernel` px: among the components
      of the synthetic train clips the least share is 0.43; of Ped2's 7,585 train components 3
      fall below 0.05 (one at 0). A large body that moves slowly changes only at its leading and
      trailing edges, hence the margin.
    - `open_kernel`, `close_kernel`: 3 px removes isolated noisy pixels; 5 px joins a walker's
      limbs, head and body. 3 px split Ped2 walkers (28 % of boxes under 300 px² against 19 %);
      7 px joined more synthetic walkers who pass each other within a few pixels.
    - `min_area`: 100 px², below the smallest whole pedestrians on Ped2's far side (about
      8 × 18 px; 5 % of boxes are under 160 px²) and above most lone heads or legs.
    - `merge_overlap`: 0.5: a box at least half inside another is a piece of it (a leg, a wheel)
      while walkers passing each other stay apart; from 0.3 to 1.0 Ped2 counts vary by 1 %.
    """

    history: int = 500  # frames: the model is primed on the clip's last `history` frames,
    # then learns at rate 1 / history per frame
    variance_threshold: float = 16.0  # squared distance, in variances, to match a MOG2 mode
    background_ratio: float = 0.5  # MOG2: a mode is background while the heavier modes hold
    # less than this share of the pixel's weight
    diff_threshold: int = 15  # grey levels: |frame t − frame t−1| above this is motion
    flow_threshold: float = 0.5  # px/frame: a flow magnitude above this is motion
    min_moving_fraction: float = 0.05  # fusion: share of a component's pixels near motion
    open_kernel: int = 3  # px, ellipse: opening of the background mask (0: none)
    close_kernel: int = 5  # px, ellipse: closing of the mask; also what "near motion" means
    min_area: int = 100  # px² of the original resolution: smaller boxes are dropped
    merge_overlap: float = 0.5  # merge two boxes when their intersection covers this share
    # of the smaller one

    def __post_init__(self) -> None:
        if self.history < 1 or self.min_area < 1 or self.diff_threshold < 0:
            raise ValueError(f"need history ≥ 1, min_area ≥ 1, diff_threshold ≥ 0: {self}")
        if not (0 < self.background_ratio <= 1 and 0 <= self.min_moving_fraction <= 1):
            raise ValueError(f"background_ratio in (0, 1], min_moving_fraction in [0, 1]: {self}")
        if not 0 < self.merge_overlap <= 1:
            raise ValueError(f"merge_overlap must be in (0, 1]: {self}")
        if self.open_kernel < 0 or self.close_kernel < 1:
            raise ValueError(f"need open_kernel ≥ 0 and close_kernel ≥ 1: {self}")


# --- boxes --------------------------------------------------------------------------------------


def _sorted(boxes: np.ndarray) -> np.ndarray:
    """`[K, 4]` boxes in (x0, y0, x1, y1) order, as float32."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return boxes[np.lexsort(boxes.T[::-1])]


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas `[K, M]` of boxes `a` `[K, 4]` and `b` `[M, 4]`."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    return np.prod(np.clip(hi - lo, 0, None), axis=-1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union `[K, M]` float32 of boxes `a` `[K, 4]` and `b` `[M, 4]`
    (`[x0, y0, x1, y1]`); 0 where the union is empty."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    inter = _intersection(a, b)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0).astype(np.float32)


def _merge(boxes: np.ndarray, overlap: float) -> np.ndarray:
    """Replaces the pair of boxes whose intersection covers the largest share of the smaller one
    by their union while that share is ≥ `overlap`; `[K, 4]` → `[K', 4]`, K' ≤ K."""
    while len(boxes) > 1:
        area = _area(boxes)
        cover = _intersection(boxes, boxes) / np.minimum(area[:, None], area[None, :])
        np.fill_diagonal(cover, 0)
        i, j = np.unravel_index(np.argmax(cover), cover.shape)
        if cover[i, j] < overlap:
            break
        union = np.concatenate(
            [np.minimum(boxes[i, :2], boxes[j, :2]), np.maximum(boxes[i, 2:], boxes[j, 2:])]
        )
        boxes = np.concatenate([np.delete(boxes, [i, j], axis=0), union[None]])
    return boxes


# --- the automatic detector ---------------------------------------------------------------------


def _grey(frames: np.ndarray) -> np.ndarray:
    """`[N, H, W]`, `[N, H, W, 1]` or `[N, H, W, 3]` (RGB) uint8 → `[N, H, W]` uint8."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or len(frames) == 0:
        raise ValueError(
            f"frames must be [N, H, W(, C)] uint8 with N ≥ 1, not {frames.dtype} {frames.shape}"
        )
    if frames.ndim == 3:
        return frames
    if frames.shape[-1] == 1:
        return frames[..., 0]
    if frames.shape[-1] == 3:
        return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    raise ValueError(f"frames must have 1 or 3 channels, not {frames.shape[-1]}")


def _primed_subtractor(grey: np.ndarray, settings: BoxSettings) -> cv2.BackgroundSubtractorMOG2:
    """MOG2 that has seen the last `history` frames of `grey` `[N, H, W]` uint8, each with the same
    weight: its modes' weights are the shares of those frames that show them."""
    subtractor = cv2.createBackgroundSubtractorMOG2(
        settings.history, settings.variance_threshold, detectShadows=False
    )
    subtractor.setBackgroundRatio(settings.background_ratio)
    for k, frame in enumerate(grey[-settings.history :]):
        subtractor.apply(frame, learningRate=1 / (k + 1))
    return subtractor


def _motion_frame(t: int, num_frames: int) -> int:
    """The frame whose change marks motion in frame t: t itself, frame 1 for frame 0 (which has
    no predecessor)."""
    return min(max(t, 1), num_frames - 1)


def _moving(
    previous: np.ndarray, current: np.ndarray, flow: np.ndarray | None, settings: BoxSettings
) -> np.ndarray:
    """`[H, W]` bool: the pixels that change from grey frame `previous` to `current` (`[H, W]`
    uint8): the frame difference, or `flow` `[H, W, 2]` px/frame between them."""
    moving = cv2.absdiff(current, previous) > settings.diff_threshold
    if flow is not None:
        moving |= np.hypot(flow[..., 0], flow[..., 1]) > settings.flow_threshold
    return moving


def _kernel(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _clean(foreground: np.ndarray, settings: BoxSettings) -> np.ndarray:
    """One frame's MOG2 mask `[H, W]` bool → `[H, W]` uint8 0/1, opened, then closed."""
    mask = foreground.astype(np.uint8)
    if settings.open_kernel:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _kernel(settings.open_kernel))
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _kernel(settings.close_kernel))


def _frame_boxes(foreground: np.ndarray, moving: np.ndarray, settings: BoxSettings) -> np.ndarray:
    """Boxes `[K, 4]` of one frame's cleaned background mask `[H, W]` uint8 given its motion
    `[H, W]` bool: components near enough motion, minimum area, merging."""
    near_motion = cv2.dilate(moving.astype(np.uint8), _kernel(settings.close_kernel))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    moving_pixels = np.bincount(labels.ravel(), weights=near_motion.ravel(), minlength=count)
    x, y, w, h, area = stats.T
    keep = (w * h >= settings.min_area) & (moving_pixels >= settings.min_moving_fraction * area)
    keep[0] = False  # label 0 is the background
    boxes = np.stack([x, y, x + w, y + h], axis=1)[keep].astype(np.float32)
    return _sorted(_merge(boxes, settings.merge_overlap))


def _foreground(grey: np.ndarray, settings: BoxSettings) -> Iterator[np.ndarray]:
    """Per frame of `grey` `[N, H, W]` uint8 the cleaned background mask `[H, W]` uint8 0/1."""
    subtractor = _primed_subtractor(grey, settings)
    for frame in grey:
        yield _next_foreground(subtractor, frame, settings)


def _next_foreground(
    subtractor: cv2.BackgroundSubtractorMOG2, frame: np.ndarray, settings: BoxSettings
) -> np.ndarray:
    """The cleaned background mask `[H, W]` uint8 0/1 of the next grey `frame` `[H, W]`."""
    return _clean(subtractor.apply(frame, learningRate=1 / settings.history) > 0, settings)


def _check_flows(flows: np.ndarray | None, grey: np.ndarray) -> None:
    if flows is not None and np.shape(flows) != (*grey.shape, 2):
        raise ValueError(
            f"flows must be {[*grey.shape, 2]} for these frames, not {np.shape(flows)}"
        )


def detect_boxes(
    frames: np.ndarray, flows: np.ndarray | None = None, settings: BoxSettings = BoxSettings()
) -> list[np.ndarray]:
    """Moving objects of one clip from a static camera, by background subtraction fused with
    motion (see the module docstring).

    Args:
      frames: `[N, H, W]` uint8 grey, or `[N, H, W, 1]` / `[N, H, W, 3]` (RGB, converted to grey),
        at the video's original resolution.
      flows: optional `[N, H, W, 2]` float32 flow into each frame in px/frame at that resolution
        (frame 0 zeros); moving pixels are then those of the frame difference or the flow.
      settings: the detector's thresholds.

    Returns:
      Per frame a `[K, 4]` float32 array of boxes `[x0, y0, x1, y1]` (pixels, x1 and y1
      exclusive), sorted by (x0, y0, x1, y1).
    """
    grey = _grey(frames)
    _check_flows(flows, grey)
    boxes = []
    for t, foreground in enumerate(_foreground(grey, settings)):
        m = _motion_frame(t, len(grey))
        flow = None if flows is None else flows[m]
        moving = _moving(grey[max(m - 1, 0)], grey[m], flow, settings)
        boxes.append(_frame_boxes(foreground, moving, settings))
    return boxes


# --- attributes ---------------------------------------------------------------------------------


def velocity_window(height: int) -> int:
    """The side (odd, px) of the window velocities are measured in, for frames `height` px
    high: `VELOCITY_WINDOW` of the height (49 px of Ped2's 240; its training boxes' median
    height is 34 px)."""
    return round(VELOCITY_WINDOW * height) // 2 * 2 + 1


def velocity_histograms(
    flow: np.ndarray,
    foreground: np.ndarray,
    boxes: np.ndarray,
    window: int,
    min_fill: float = 0.3,
    bins: int = VELOCITY_BINS,
) -> np.ndarray:
    """Magnitude-weighted histograms of flow orientation (AI-VAD's velocity), one per box, over
    the fastest object-sized part of the box: boxes often hold several objects (walkers that
    touch are one foreground component), and a cyclist among walkers is the fast part.

    For each pixel, the window of `window`×`window` px centred on it has a mean speed over its
    object pixels (those of `foreground`), when at least `min_fill` of it is object. A box's
    histogram is taken over the object pixels of its fastest window (centre inside the box);
    a box with no such window uses its own object pixels, or all its pixels if it has none.

    Args:
      flow: `[H, W, 2]` flow (dx, dy) into the frame, px/frame.
      foreground: `[H, W]` the frame's object pixels (nonzero).
      boxes: `[K, 4]` `[x0, y0, x1, y1]` pixels.
      window: the window's side, px (`velocity_window`).
      min_fill: the least share of object pixels in a window that counts.
      bins: orientation bins of 2π / bins from −π (atan2(dy, dx)).

    Returns:
      `[K, bins]` float32: bin b sums the flow magnitudes of the chosen pixels whose
      orientation falls in b, divided by their count, so a row sums to their mean speed.
    """
    fg = (foreground > 0).astype(np.float32)
    magnitude = np.hypot(flow[..., 0], flow[..., 1])
    which = np.floor((np.arctan2(flow[..., 1], flow[..., 0]) + np.pi) / (2 * np.pi) * bins)
    which = which.astype(int) % bins
    sums = functools.partial(
        cv2.boxFilter,
        ddepth=-1,
        ksize=(window, window),
        normalize=False,
        borderType=cv2.BORDER_CONSTANT,
    )
    moving, filled = sums(magnitude * fg), sums(fg)
    local = np.where(filled >= min_fill * window * window, moving / np.maximum(filled, 1), -1.0)
    height, width = fg.shape
    out = np.zeros((len(boxes), bins), np.float32)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes).astype(int)):
        region = local[y0:y1, x0:x1]
        if region.size and region.max() >= 0:
            cy, cx = np.unravel_index(np.argmax(region), region.shape)
            cy, cx, half = cy + y0, cx + x0, window // 2
            x0, x1 = max(cx - half, 0), min(cx + half + 1, width)
            y0, y1 = max(cy - half, 0), min(cy + half + 1, height)
        chosen = fg[y0:y1, x0:x1] > 0
        if not chosen.any():
            chosen = np.ones_like(chosen)
        if not chosen.size:
            continue
        m, b = magnitude[y0:y1, x0:x1][chosen], which[y0:y1, x0:x1][chosen]
        out[i] = np.bincount(b, weights=m, minlength=bins) / len(m)
    return out


def attribute_flow() -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """`(prev, next)` `[H, W]` uint8 → `[H, W, 2]` float32 px/frame: the flow the velocity
    attributes are measured with, OpenCV's DIS (preset "medium")."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return lambda prev, nxt: dis.calc(prev, nxt, None)


@dataclass(frozen=True)
class FrameObjects:
    """One frame's objects: `boxes` `[K, 4]` float32 `[x0, y0, x1, y1]` original-resolution
    pixels, `tracks` `[K]` int32 ids (`Tracker`), `velocity` `[K, VELOCITY_BINS]` float32
    (`velocity_histograms`)."""

    boxes: np.ndarray
    tracks: np.ndarray
    velocity: np.ndarray


def grey_frame(image: np.ndarray) -> np.ndarray:
    """One frame `[H, W]`, `[H, W, 1]` or `[H, W, 3]` (RGB) uint8 → `[H, W]` uint8 grey."""
    return _grey(np.asarray(image)[None])[0]


class ObjectFinder:
    """A video's objects frame by frame, as its frames arrive: what `video_objects` runs over a
    whole video and `jaxvad.watch` over a stream, so both find the same objects.

    The background model is first primed on `priming` `[P, H, W]` uint8 grey frames (each with
    the same weight, `_primed_subtractor`; at most `settings.history` are read): a video's last
    `history` frames (`video_objects`), a stream's first ones. Each pushed frame then updates
    it at rate 1 / history. A frame's objects come out when it is pushed, except frame 0's: its
    motion is its change into frame 1 (it has no predecessor), so they come out with frame 1's
    (`finish` gives those of a one-frame video).

    Args:
      priming: the frames the background model is primed on, at the original resolution.
      detect: True: the boxes are `detect_boxes`'s (its motion test with the Farneback flow at
        this resolution); False: `push` is given each frame's boxes (a MOT file's), and the
        background model still gives the object pixels of the velocity histograms.
      settings: the detector's thresholds.
      velocity: False: the velocity histograms are not measured (each frame's `velocity` is
        `[K, 0]`; what needs boxes only, e.g. CLIP object features, skips the DIS flow).
    """

    def __init__(
        self,
        priming: np.ndarray,
        *,
        detect: bool,
        settings: BoxSettings = BoxSettings(),
        velocity: bool = True,
    ):
        priming = _grey(priming)
        self.settings = settings
        self._subtractor = _primed_subtractor(priming, settings)
        self._farneback = flow_lib.flow_function("farneback") if detect else None
        self._dis = attribute_flow() if velocity else None
        self._window = velocity_window(priming.shape[1])
        self._still = np.zeros((*priming.shape[1:], 2), np.float32)
        self._tracker = Tracker()
        self._first: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None
        self._previous: np.ndarray | None = None

    def push(self, grey: np.ndarray, boxes: np.ndarray | None = None) -> list[FrameObjects]:
        """The objects completed by the next frame `grey` `[H, W]` uint8 (and its `boxes`
        `[K, 4]` when not detecting): none for frame 0, frames 0 and 1 for frame 1, else that
        frame's."""
        if (boxes is None) != (self._farneback is not None):
            raise ValueError("boxes are given to push exactly when the finder does not detect")
        foreground = _next_foreground(self._subtractor, grey, self.settings)
        previous, self._previous = self._previous, grey
        if previous is None:
            self._first = (grey, foreground, boxes)
            return []
        flow = None if self._farneback is None else self._farneback(previous, grey)
        found = []
        if self._first is not None:  # Frame 0: the change into frame 1 marks its motion.
            first, first_foreground, first_boxes = self._first
            self._first = None
            found.append(self._objects(first_foreground, first, grey, flow, first_boxes, None))
        found.append(self._objects(foreground, previous, grey, flow, boxes, previous))
        return found

    def finish(self) -> list[FrameObjects]:
        """Frame 0's objects when it was the only frame pushed (no motion), else none."""
        if self._first is None:
            return []
        first, foreground, boxes = self._first
        self._first = None
        return [self._objects(foreground, first, first, None, boxes, None)]

    def _objects(
        self,
        foreground: np.ndarray,
        before: np.ndarray,
        after: np.ndarray,
        flow: np.ndarray | None,
        given: np.ndarray | None,
        previous: np.ndarray | None,
    ) -> FrameObjects:
        """A frame's objects from its `foreground`, the change from grey `before` to `after`
        (with `flow`) that marks its motion, and its `previous` frame (None: frame 0, whose
        velocities are measured with no flow)."""
        if given is None:
            boxes = _frame_boxes(
                foreground, _moving(before, after, flow, self.settings), self.settings
            )
        else:
            boxes = _sorted(np.asarray(given, np.float32).reshape(-1, 4))
        if self._dis is None:
            velocity = np.zeros((len(boxes), 0), np.float32)
        else:
            motion = self._still if previous is None else self._dis(previous, after)
            velocity = velocity_histograms(motion, foreground, boxes, self._window)
        return FrameObjects(boxes, self._tracker.link(boxes), velocity)


def attribute_inputs(
    frames: np.ndarray, wanted: Sequence[int], settings: BoxSettings = BoxSettings()
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """What the velocity histograms of the frames `wanted` (0-based) of one video are measured
    from, as `video_objects` measures them (`ObjectFinder`, primed on the video's last
    `settings.history` frames): per frame t its cleaned background mask `[H, W]` uint8 0/1
    and its attribute flow `[H, W, 2]` float32 (DIS from frame t − 1; none for frame 0), for
    `velocity_histograms` with the frame's boxes and `velocity_window(H)`.

    Args:
      frames: `[N, H, W(, C)]` uint8, the video at its original resolution.
      wanted: frame numbers in [0, N).
      settings: the detector's thresholds (its background model).
    """
    grey = _grey(frames)
    wanted = sorted({int(t) for t in wanted})
    if wanted and not 0 <= wanted[0] <= wanted[-1] < len(grey):
        raise ValueError(f"frames {wanted[0]}..{wanted[-1]} asked of a {len(grey)}-frame video")
    subtractor = _primed_subtractor(grey[-settings.history :], settings)
    dis = attribute_flow()
    out = {}
    for t, frame in enumerate(grey[: wanted[-1] + 1] if wanted else []):
        foreground = _next_foreground(subtractor, frame, settings)
        if t in wanted:
            still = np.zeros((*frame.shape, 2), np.float32)
            out[t] = (foreground, still if t == 0 else dis(grey[t - 1], frame))
    return out


@dataclass(frozen=True)
class VideoObjects:
    """The objects of one video, per frame: `boxes` `[K, 4]` float32 `[x0, y0, x1, y1]`
    original-resolution pixels, `tracks` `[K]` int32 ids (`link_tracks`), `velocity`
    `[K, VELOCITY_BINS]` float32 (`velocity_histograms`)."""

    boxes: list[np.ndarray]
    tracks: list[np.ndarray]
    velocity: list[np.ndarray]


def video_objects(
    frames: np.ndarray,
    boxes: Sequence[np.ndarray] | None = None,
    settings: BoxSettings = BoxSettings(),
    velocity: bool = True,
) -> VideoObjects:
    """Boxes, tracks and velocities of one video at its original resolution (`ObjectFinder`,
    primed on the video's last `settings.history` frames).

    Args:
      frames: `[N, H, W(, C)]` uint8, as `detect_boxes` takes them.
      boxes: per frame `[K, 4]` boxes from elsewhere (a MOT file); None: `detect_boxes`, given
        the Farneback flow (`flow.flow_function("farneback")`) at this resolution.
      settings: the detector's thresholds; its background model also gives the object pixels of
        the velocity histograms, whichever the boxes' source.
      velocity: False: no velocity histograms (`ObjectFinder`'s `velocity`).
    """
    grey = _grey(frames)
    if boxes is not None and len(boxes) != len(grey):
        raise ValueError(f"{len(boxes)} frames of boxes for {len(grey)} frames")
    finder = ObjectFinder(
        grey[-settings.history :], detect=boxes is None, settings=settings, velocity=velocity
    )
    found: list[FrameObjects] = []
    for t, frame in enumerate(grey):
        found += finder.push(frame, None if boxes is None else boxes[t])
    found += finder.finish()
    return VideoObjects(
        [f.boxes for f in found], [f.tracks for f in found], [f.velocity for f in found]
    )


# --- MOTChallenge files -------------------------------------------------------------------------


def mot_path(folder: str | Path, video_name: str) -> Path:
    """`<folder>/<video_name>.txt`, the MOTChallenge box file of one video; DataError if missing."""
    path = Path(folder) / f"{video_name}.txt"
    if not path.is_file():
        raise DataError(
            path,
            f"no MOT box file for video {video_name!r}: {folder} needs one text file per "
            "video, named <video name>.txt",
        )
    return path


def _mot_box(
    fields: list[str], num_frames: int, width: int, height: int
) -> tuple[int, tuple[float, float, float, float]]:
    """(0-based frame, clipped box) of one line's fields; ValueError says what is wrong."""
    if len(fields) < 6:
        raise ValueError(f"{len(fields)} fields, need at least 6 (frame,id,x,y,w,h,...)")
    try:
        values = [float(f) for f in fields[:6]]
    except ValueError:
        values = [math.nan]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"the first six fields must be numbers: {','.join(fields[:6])}")
    frame, _, x, y, w, h = values
    if frame != int(frame) or not 1 <= frame <= num_frames:
        raise ValueError(f"frame {fields[0].strip()} is not a frame number in 1..{num_frames}")
    if w <= 0 or h <= 0:
        raise ValueError(f"box width and height must be positive, not w={w:g}, h={h:g}")
    box = (max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height)))
    if box[0] >= box[2] or box[1] >= box[3]:
        raise ValueError(
            f"box x={x:g}, y={y:g}, w={w:g}, h={h:g} lies outside the {width}×{height} image"
        )
    return int(frame) - 1, box


def read_mot(path: str | Path, num_frames: int, width: int, height: int) -> list[np.ndarray]:
    """Boxes of a MOTChallenge text file: lines `frame,id,x,y,w,h,score,...`.

    Frames are 1-based; (x, y) is the box's top-left corner and (w, h) its size in pixels of the
    video's original `width`×`height`; fields after the sixth are ignored, so are blank lines.

    Returns:
      Per frame (0-based, `num_frames` of them) the `[K, 4]` float32 boxes `[x0, y0, x1, y1]`,
      clipped to the image, sorted by (x0, y0, x1, y1).

    Raises:
      DataError naming the file and the 1-based line: too few fields, a non-number, a frame out
      of 1..num_frames, a width or height ≤ 0, a box entirely outside the image.
    """
    if min(num_frames, width, height) < 1:
        raise ValueError(f"need num_frames, width, height ≥ 1: {num_frames}, {width}, {height}")
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"unreadable MOT box file ({e})") from e
    frames: list[list[tuple[float, float, float, float]]] = [[] for _ in range(num_frames)]
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            frame, box = _mot_box(line.split(","), num_frames, width, height)
        except ValueError as e:
            raise DataError(path, f"line {number}: {e}") from None
        frames[frame].append(box)
    return [_sorted(boxes) for boxes in frames]


# --- tracks -------------------------------------------------------------------------------------


class Tracker:
    """Track ids by greedy IoU matching to the previous frame, one frame at a time.

    In each frame the pairs (box, previous frame's box) are taken by decreasing IoU (ties in
    box order); a pair with IoU ≥ `iou_threshold` (in (0, 1]) whose two boxes are both still
    free passes the previous box's id on. Every other box starts a new track. Ids start at 0
    and increase in order of first appearance (in box order within a frame).
    """

    def __init__(self, iou_threshold: float = 0.3):
        if not 0 < iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in (0, 1], not {iou_threshold}")
        self.iou_threshold = iou_threshold
        self._previous, self._ids = np.zeros((0, 4), np.float32), np.zeros(0, np.int32)
        self._next_id = 0

    def link(self, frame_boxes: np.ndarray) -> np.ndarray:
        """`[K]` int32 the track ids of the next frame's boxes `[K, 4]` `[x0, y0, x1, y1]`."""
        frame_boxes = np.asarray(frame_boxes, np.float32).reshape(-1, 4)
        previous, previous_ids = self._previous, self._ids
        ids = np.full(len(frame_boxes), -1, np.int32)
        iou = box_iou(frame_boxes, previous)
        taken = np.zeros(len(previous), bool)
        for flat in np.argsort(-iou, axis=None, kind="stable"):
            i, j = divmod(int(flat), len(previous))
            if iou[i, j] < self.iou_threshold:
                break
            if ids[i] < 0 and not taken[j]:
                ids[i], taken[j] = previous_ids[j], True
        new = ids < 0
        ids[new] = np.arange(self._next_id, self._next_id + new.sum(), dtype=np.int32)
        self._next_id += int(new.sum())
        self._previous, self._ids = frame_boxes, ids
        return ids


def link_tracks(boxes: Sequence[np.ndarray], iou_threshold: float = 0.3) -> list[np.ndarray]:
    """Per frame of `boxes` (each `[K, 4]` `[x0, y0, x1, y1]`) a `[K]` int32 array: the track
    id of each box (`Tracker`, linking the frames in order)."""
    tracker = Tracker(iou_threshold)
    return [tracker.link(frame_boxes) for frame_boxes in boxes]
