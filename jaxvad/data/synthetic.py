"""A synthetic, UCSD-Ped2-like anomaly-detection dataset, deterministic from a seed.

The scene: a fixed camera looks down at a paved walkway that crosses the image horizontally
between two lawns. The static background (paving stones with grout and grain, kerbs, textured
grass, bushes, lamp posts, a bench, mild vignetting) depends only on the seed and is the same in
every clip. Every frame adds Gaussian sensor noise (σ = 2.5 grey levels) and a mild global
brightness flicker (about ±2 %).

Normal activity, in train and test clips: pedestrians (body, head, swinging legs and arms, varied
grey levels) walk along the walkway in two lanes, the upper lane left → right and the lower lane
right → left, at 0.8–1.6 px/frame. They arrive at the image edges as a Poisson process, so a few
are in view at a time, and never leave their lane: no normal pixel ever falls on a lawn.
Sizes and speeds are given at 240 lines and scale with `height / 240`.

Anomalies, in test clips only (each test clip has one, sometimes two; the first one's kind
cycles through a seed-shuffled order of `ANOMALY_KINDS`, so any 5 consecutive test clips hold
every kind):

- `fast_rider`: a cyclist along a lane at 4.8–6.4 px/frame, ≥ 3× the fastest walker;
- `vehicle`: a cart-sized box with a cabin and wheels along a lane at 1.0–2.2 px/frame;
- `runner`: a person at 4.0–5.0 px/frame (≥ 2.5× the fastest walker) with longer, faster strides;
- `against_flow`: a walker at walking speed in a lane, going against that lane's direction;
- `lawn_crossing`: a walker crossing the scene top ↔ bottom, over the lawns.

Labels are derived from masks. Anomalous objects are drawn after (on top of) the walkers; the
pixel mask of a test frame is exactly the set of pixels they cover in it, clipped to the image,
and a frame is anomalous exactly when its mask is non-empty. Frame labels (`UCSDped2.m`), pixel
masks (`TestNNN_gt/*.bmp`) and the spans in `anomalies.json` therefore agree by construction.

Every clip comes from its own generator, `np.random.default_rng([seed, split_id, clip])`
(split_id 0 = train, 1 = test), so a clip does not depend on which other clips are made or in
what order; e.g. the test clips of `FULL` are the same whatever `train_clips` is.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from jaxvad import atomic

ANOMALY_KINDS = ("fast_rider", "vehicle", "runner", "against_flow", "lawn_crossing")
SPLITS = ("train", "test")  # a split's index is its id in the clip generator's seed
COMPLETE_MARKER = ".complete"

# Sizes and speeds in pixels (per frame) at REFERENCE_HEIGHT lines.
REFERENCE_HEIGHT = 240
WALK_SPEED = (0.8, 1.6)
RUNNER_SPEED = (4.0, 5.0)
RIDER_SPEED = (4.8, 6.4)
VEHICLE_SPEED = (1.0, 2.2)
NOISE_SIGMA = 2.5

_BACKGROUND_STREAM = 2  # generator ids after the split ids: background, anomaly-kind order
_KIND_ORDER_STREAM = 3
_WALKERS_PER_LANE = (1.5, 3.0)  # mean number in view, drawn per clip
_SECOND_ANOMALY_P = 0.4
_NOISE_FIELDS = 4  # noise comes from a few padded fields per clip, cut at random offsets
_NOISE_PAD = 32
_SHIFT = 4  # cv2 drawing with 4 fractional bits, for sub-pixel motion
_TIFF = (cv2.IMWRITE_TIFF_COMPRESSION, cv2.IMWRITE_TIFF_COMPRESSION_NONE)


@dataclass(frozen=True)
class SyntheticSpec:
    """Size of a synthetic dataset: clip counts, clip lengths (frames) and frame size."""

    train_clips: int
    test_clips: int
    min_frames: int
    max_frames: int
    height: int
    width: int
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.train_clips, self.test_clips) < 0:
            raise ValueError(f"clip counts must be ≥ 0: {self}")
        if not 1 <= self.min_frames <= self.max_frames <= 999:
            raise ValueError(f"need 1 ≤ min_frames ≤ max_frames ≤ 999 (3-digit names): {self}")
        if min(self.height, self.width) < 48:
            raise ValueError(f"frames must be at least 48×48: {self}")

    def clip_count(self, split: str) -> int:
        """Number of clips of `split` ("train" or "test")."""
        return self.train_clips if split == "train" else self.test_clips


FULL = SyntheticSpec(16, 12, 120, 180, 240, 360, seed=0)
TINY = SyntheticSpec(2, 2, 24, 32, 64, 96, seed=0)
PRESETS = {"full": FULL, "tiny": TINY}


@dataclass(frozen=True)
class Lane:
    """Rows a lane's walkers keep their reference point in, and their direction (+1: → , -1: ←)."""

    rows: tuple[float, float]
    direction: int


@dataclass(frozen=True)
class Layout:
    """Geometry of the scene: `walkway` holds rows [top, bottom), all other rows are lawn; the
    upper lane goes left → right, the lower one right → left."""

    scale: float  # pixels per reference pixel: height / REFERENCE_HEIGHT
    walkway: tuple[int, int]
    lanes: tuple[Lane, Lane]


def scene_layout(spec: SyntheticSpec) -> Layout:
    """Walkway rows and lanes of `spec`'s frames (the same for every seed)."""
    h = spec.height
    lanes = (Lane((0.43 * h, 0.50 * h), 1), Lane((0.62 * h, 0.70 * h), -1))
    return Layout(h / REFERENCE_HEIGHT, (round(0.30 * h), round(0.82 * h)), lanes)


@dataclass(frozen=True)
class Actor:
    """A moving object; its reference point (mid-body) is at `origin + velocity * t` in frame t."""

    kind: str  # "walker" or one of ANOMALY_KINDS
    origin: tuple[float, float]  # (x, y) in pixels at frame 0, possibly outside the image
    velocity: tuple[float, float]  # (vx, vy) in px/frame
    size: float  # drawing scale: pixels per reference pixel
    greys: tuple[int, int, int]  # grey levels (1..255): body, limbs or wheels, head or cabin
    phase: float  # gait or pedalling phase at frame 0, in radians

    @property
    def speed(self) -> float:
        """Pixels per frame."""
        return math.hypot(*self.velocity)

    def position(self, t: float) -> tuple[float, float]:
        """(x, y) of the reference point in frame t."""
        return self.origin[0] + self.velocity[0] * t, self.origin[1] + self.velocity[1] * t


@dataclass(frozen=True)
class ClipPlan:
    """Everything that decides a clip: its length, its actors and its noise."""

    split: str
    n_frames: int
    walkers: tuple[Actor, ...]
    anomalies: tuple[Actor, ...]
    noise_seed: int


# --- drawing ------------------------------------------------------------------------------------

Drawer = Callable[[np.ndarray, "Actor", int, tuple[int, int]], None]


def _fixed(p: tuple[float, float], offset: tuple[int, int]) -> tuple[int, int]:
    """An image point as cv2 fixed-point coordinates in a patch whose corner is at `offset`."""
    return round((p[0] - offset[0]) * (1 << _SHIFT)), round((p[1] - offset[1]) * (1 << _SHIFT))


def _line(patch, a, b, grey, width, offset) -> None:
    cv2.line(patch, _fixed(a, offset), _fixed(b, offset), grey, width, cv2.LINE_8, _SHIFT)


def _disc(patch, centre, radius, grey, offset, thickness=-1) -> None:
    r = round(radius * (1 << _SHIFT))
    cv2.circle(patch, _fixed(centre, offset), r, grey, thickness, cv2.LINE_8, _SHIFT)


def _ellipse(patch, centre, axes, angle, grey, offset) -> None:
    ax = (round(axes[0] * (1 << _SHIFT)), round(axes[1] * (1 << _SHIFT)))
    cv2.ellipse(patch, _fixed(centre, offset), ax, angle, 0, 360, grey, -1, cv2.LINE_8, _SHIFT)


def _box(patch, a, b, grey, offset) -> None:
    cv2.rectangle(patch, _fixed(a, offset), _fixed(b, offset), grey, -1, cv2.LINE_8, _SHIFT)


def _unit(actor: Actor) -> tuple[float, float]:
    return actor.velocity[0] / actor.speed, actor.velocity[1] / actor.speed


def _gait_phase(actor: Actor, t: int, stride: float) -> float:
    """Phase that advances by 2π per `stride` reference pixels travelled."""
    return actor.phase + 2 * math.pi * actor.speed * t / (stride * actor.size)


def _draw_person(patch: np.ndarray, actor: Actor, t: int, offset: tuple[int, int]) -> None:
    """Legs and arms swinging with the gait, an elliptic body and a round head."""
    x, y = actor.position(t)
    s = actor.size
    ux, uy = _unit(actor)
    body, limbs, head = actor.greys
    stride, swing = (32.0, 0.9) if actor.kind == "runner" else (26.0, 0.5)
    phase = _gait_phase(actor, t, stride)
    for side in (1, -1):
        a = side * swing * math.sin(phase)
        hip = (x + 2 * s * side * abs(uy), y + 3 * s)
        foot = (hip[0] + 14 * s * math.sin(a) * ux, hip[1] + 14 * s * math.cos(a))
        _line(patch, hip, foot, limbs, max(1, round(3 * s)), offset)
        shoulder = (x + 4.5 * s * side * abs(uy), y - 11 * s)
        hand = (shoulder[0] - 10 * s * math.sin(a) * ux, shoulder[1] + 10 * s * math.cos(a))
        _line(patch, shoulder, hand, max(1, round(body * 0.85)), max(1, round(2 * s)), offset)
    _ellipse(patch, (x, y - 5 * s), ((5 + 1.5 * abs(uy)) * s, 10 * s), 0, body, offset)
    _disc(patch, (x, y - 19 * s), 4.5 * s, head, offset)


def _draw_rider(patch: np.ndarray, actor: Actor, t: int, offset: tuple[int, int]) -> None:
    """A bicycle (two wheels, frame) with a pedalling rider leaning forward."""
    x, y = actor.position(t)
    s = actor.size
    d = 1 if actor.velocity[0] >= 0 else -1
    body, wheels, head = actor.greys
    pedal = _gait_phase(actor, t, 24.0)
    seat, bar = (x - 3 * s * d, y), (x + 8 * s * d, y - 2 * s)
    for wx in (x - 11 * s * d, x + 11 * s * d):
        _disc(patch, (wx, y + 12 * s), 6.5 * s, wheels, offset, max(1, round(1.8 * s)))
    tube = max(1, round(1.6 * s))
    _line(patch, (x - 11 * s * d, y + 12 * s), seat, wheels, tube, offset)
    _line(patch, seat, bar, wheels, tube, offset)
    _line(patch, bar, (x + 11 * s * d, y + 12 * s), wheels, tube, offset)
    foot = (x + 3 * s * math.sin(pedal), y + 12 * s + 3 * s * math.cos(pedal))
    _line(patch, (x - 2 * s * d, y - 1 * s), foot, wheels, max(1, round(2.5 * s)), offset)
    _ellipse(patch, (x + 1 * s * d, y - 8 * s), (4 * s, 9 * s), 25 * d, body, offset)
    _line(patch, (x + 4 * s * d, y - 14 * s), bar, body, max(1, round(2 * s)), offset)
    _disc(patch, (x + 5.5 * s * d, y - 18 * s), 4 * s, head, offset)


def _draw_vehicle(patch: np.ndarray, actor: Actor, t: int, offset: tuple[int, int]) -> None:
    """A cart: a long box body, a cabin with a dark window on top, two visible wheels."""
    x, y = actor.position(t)
    s = actor.size
    d = 1 if actor.velocity[0] >= 0 else -1
    body, wheels, cabin = actor.greys
    _box(patch, (x - 38 * s, y - 10 * s), (x + 38 * s, y + 12 * s), body, offset)
    cx = x + 6 * s * d  # the cabin sits towards the front
    _box(patch, (cx - 18 * s, y - 22 * s), (cx + 18 * s, y - 10 * s), cabin, offset)
    _box(patch, (cx - 13 * s, y - 19 * s), (cx + 13 * s, y - 12 * s), 30, offset)
    for wx in (x - 26 * s, x + 26 * s):
        _disc(patch, (wx, y + 13 * s), 6 * s, wheels, offset)


def _shape(kind: str) -> tuple[Drawer, tuple[float, float, float]]:
    """Drawing function of a kind, and its extent in reference pixels around the reference
    point: (half width, height above, height below), with a margin."""
    if kind == "fast_rider":
        return _draw_rider, (21.0, 26.0, 22.0)
    if kind == "vehicle":
        return _draw_vehicle, (41.0, 26.0, 22.0)
    return _draw_person, (17.0, 26.0, 22.0)


def _silhouette(
    actor: Actor, t: int, height: int, width: int
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """The actor drawn in frame t: the image region it may cover and a uint8 patch of that region
    (`[h, w]`) holding its grey levels where it covers a pixel and 0 elsewhere; None when out of
    view. Parts outside the image are clipped away."""
    draw, (half_w, above, below) = _shape(actor.kind)
    x, y = actor.position(t)
    s = actor.size
    x0, x1 = max(0, math.floor(x - half_w * s)), min(width, math.ceil(x + half_w * s) + 1)
    y0, y1 = max(0, math.floor(y - above * s)), min(height, math.ceil(y + below * s) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    patch = np.zeros((y1 - y0, x1 - x0), np.uint8)
    draw(patch, actor, t, (x0, y0))
    return (slice(y0, y1), slice(x0, x1)), patch


# --- background ---------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sx: float, sy: float):
    """Unit-variance Gaussian noise `[h, w]` float32, blurred with std (sx, sy) pixels."""
    noise = cv2.GaussianBlur(rng.standard_normal(shape, np.float32), (0, 0), sx, sigmaY=sy)
    return noise / max(float(noise.std()), 1e-6)


def _paving(rng: np.random.Generator, rows: int, width: int, s: float) -> np.ndarray:
    """Walkway texture `[rows, width]` float32: staggered stones with darker grout and grain."""
    tile_h, tile_w = max(3, round(18 * s)), max(6, round(36 * s))
    yy, xx = np.mgrid[0:rows, 0:width]
    row = yy // tile_h
    xs = xx + (row % 2) * (tile_w // 2)
    stone = rng.normal(0.0, 5.0, (row.max() + 1, xs.max() // tile_w + 1)).astype(np.float32)
    grout_w = max(1, round(1.5 * s))
    grout = (yy % tile_h < grout_w) | (xs % tile_w < grout_w)
    image = 158 + stone[row, xs // tile_w] - 28 * grout
    return image + 4 * _smooth_noise(rng, (rows, width), 10 * s, 10 * s)


def _lawn(rng: np.random.Generator, height: int, width: int, s: float) -> np.ndarray:
    """Grass texture `[height, width]` float32: patches plus short vertical blade streaks."""
    patches = _smooth_noise(rng, (height, width), 14 * s, 14 * s)
    blades = _smooth_noise(rng, (height, width), 0.5, max(0.5, 2.5 * s))
    return 100 + 8 * patches + 9 * blades


def _kerbs(image: np.ndarray, top: int, bottom: int, s: float) -> None:
    """Light kerb stones along both walkway edges, inside the walkway rows."""
    k = max(1, round(3 * s))
    image[top : top + k] = 188
    image[bottom - k : bottom] = 188


def _furniture(rng: np.random.Generator, image: np.ndarray, layout: Layout) -> None:
    """Bushes on both lawns, lamp posts on the upper lawn's edge, a bench on the lower lawn."""
    h, w = image.shape
    s = layout.scale
    top, bottom = layout.walkway
    for lawn_top, lawn_bottom in ((0, top), (bottom, h)):
        for _ in range(2):
            r = min(rng.uniform(8, 14) * s, 0.4 * (lawn_bottom - lawn_top))
            c = (rng.uniform(0.05, 0.95) * w, rng.uniform(lawn_top + r, lawn_bottom - r))
            _ellipse(image, c, (1.3 * r, r), 0, 62.0, (0, 0))
            _ellipse(image, (c[0] - 0.3 * r, c[1] - 0.3 * r), (0.6 * r, 0.45 * r), 0, 80.0, (0, 0))
    for x in rng.uniform(0.1, 0.9, 2) * w:
        _box(image, (x, top - 1 - 40 * s), (x + 2 * s, top - 1), 48.0, (0, 0))
        _box(image, (x - 3 * s, top - 1 - 44 * s), (x + 5 * s, top - 1 - 40 * s), 210.0, (0, 0))
    x, y = rng.uniform(0.2, 0.8) * w, bottom + 0.35 * (h - bottom)
    _box(image, (x, y), (x + 30 * s, y + 7 * s), 128.0, (0, 0))
    _box(image, (x, y + 7 * s), (x + 30 * s, y + 9 * s), 40.0, (0, 0))


def render_background(spec: SyntheticSpec) -> np.ndarray:
    """The static scene, `[height, width]` uint8: the same in every clip of a seed."""
    rng = np.random.default_rng([spec.seed, _BACKGROUND_STREAM])
    layout = scene_layout(spec)
    h, w = spec.height, spec.width
    top, bottom = layout.walkway
    image = _lawn(rng, h, w, layout.scale)
    image[top:bottom] = _paving(rng, bottom - top, w, layout.scale)
    _kerbs(image, top, bottom, layout.scale)
    _furniture(rng, image, layout)
    image += 3 * rng.standard_normal((h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    image *= 1.03 - 0.25 * ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --- planning -----------------------------------------------------------------------------------


def _person_greys(rng: np.random.Generator) -> tuple[int, int, int]:
    """Clothes dark or light (never paving- or grass-grey), darker legs, darkish head."""
    body = rng.uniform(25, 80) if rng.random() < 0.5 else rng.uniform(190, 235)
    return round(body), round(rng.uniform(20, 90)), round(rng.uniform(35, 110))


def _lane_walkers(
    rng: np.random.Generator, layout: Layout, lane: Lane, width: int, n: int
) -> Iterator[Actor]:
    """Normal walkers of one lane that are in view at some time in frames [0, n)."""
    s = layout.scale
    margin = 17 * 1.08 * s  # half width of the largest walker
    reach = width + 2 * margin  # path from just out of view on one side to the other
    x_entry = -margin if lane.direction > 0 else width + margin
    rate = rng.uniform(*_WALKERS_PER_LANE) * np.mean(WALK_SPEED) * s / reach  # arrivals/frame
    t = -reach / (WALK_SPEED[0] * s)  # the slowest walker entering then leaves just at frame 0
    while (t := t + rng.exponential(1 / rate)) < n:
        speed = rng.uniform(*WALK_SPEED) * s
        if t + reach / speed <= 0:
            continue
        vx = lane.direction * speed
        yield Actor(
            kind="walker",
            origin=(x_entry - vx * t, rng.uniform(*lane.rows)),
            velocity=(vx, 0.0),
            size=s * rng.uniform(0.92, 1.08),
            greys=_person_greys(rng),
            phase=rng.uniform(0, 2 * math.pi),
        )


def _speed_range(kind: str) -> tuple[float, float]:
    """Speed range of a kind, px/frame at REFERENCE_HEIGHT."""
    if kind == "fast_rider":
        return RIDER_SPEED
    if kind == "runner":
        return RUNNER_SPEED
    return VEHICLE_SPEED if kind == "vehicle" else WALK_SPEED


def _lawn_point(
    rng: np.random.Generator, spec: SyntheticSpec, layout: Layout
) -> tuple[float, float]:
    """A random point on the upper or the lower lawn."""
    top, bottom = layout.walkway
    x = rng.uniform(0.1, 0.9) * spec.width
    if rng.random() < 0.5:
        return x, rng.uniform(0.1 * top, top)
    return x, rng.uniform(bottom, bottom + 0.9 * (spec.height - bottom))


def _anomaly(
    rng: np.random.Generator, spec: SyntheticSpec, layout: Layout, kind: str, n: int
) -> Actor:
    """One anomalous actor whose reference point is inside the image at a frame in the middle
    60 % of the clip, so it is always in view for some frames."""
    s = layout.scale
    t_mid = rng.uniform(0.2, 0.8) * (n - 1)
    speed = s * rng.uniform(*_speed_range(kind))
    if kind == "lawn_crossing":
        mid = _lawn_point(rng, spec, layout)
        velocity = (0.0, speed if rng.random() < 0.5 else -speed)
    else:
        lane = layout.lanes[int(rng.integers(2))]
        direction = -lane.direction if kind == "against_flow" else lane.direction
        mid = (rng.uniform(0.15, 0.85) * spec.width, rng.uniform(*lane.rows))
        velocity = (direction * speed, 0.0)
    if kind == "vehicle":
        body = rng.uniform(40, 80) if rng.random() < 0.5 else rng.uniform(195, 240)
        greys = (round(body), round(rng.uniform(15, 35)), round(np.clip(body + 40, 60, 225)))
    else:
        greys = _person_greys(rng)
    return Actor(
        kind=kind,
        origin=(mid[0] - velocity[0] * t_mid, mid[1] - velocity[1] * t_mid),
        velocity=velocity,
        size=s * (rng.uniform(1.0, 1.1) if kind == "vehicle" else rng.uniform(0.95, 1.05)),
        greys=greys,
        phase=rng.uniform(0, 2 * math.pi),
    )


def _first_kind(spec: SyntheticSpec, clip: int) -> str:
    """Kind of a test clip's first anomaly: a seed-shuffled cycle through ANOMALY_KINDS."""
    order = np.random.default_rng([spec.seed, _KIND_ORDER_STREAM]).permutation(len(ANOMALY_KINDS))
    return ANOMALY_KINDS[order[clip % len(ANOMALY_KINDS)]]


def plan_clip(spec: SyntheticSpec, split: str, clip: int) -> ClipPlan:
    """The actors and length of clip `clip` (0-based) of `split`, from its own generator."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if not 0 <= clip < spec.clip_count(split):
        raise ValueError(f"{split} clip {clip} out of range: the spec has {spec.clip_count(split)}")
    rng = np.random.default_rng([spec.seed, SPLITS.index(split), clip])
    layout = scene_layout(spec)
    n = int(rng.integers(spec.min_frames, spec.max_frames + 1))
    walkers = [w for lane in layout.lanes for w in _lane_walkers(rng, layout, lane, spec.width, n)]
    anomalies = []
    if split == "test":
        kinds = [_first_kind(spec, clip)]
        if rng.random() < _SECOND_ANOMALY_P:
            others = [kind for kind in ANOMALY_KINDS if kind != kinds[0]]
            kinds.append(others[int(rng.integers(len(others)))])
        anomalies = [_anomaly(rng, spec, layout, kind, n) for kind in kinds]
    walkers.sort(key=lambda a: a.origin[1])  # drawn back (top) to front (bottom)
    return ClipPlan(split, n, tuple(walkers), tuple(anomalies), int(rng.integers(2**63)))


# --- rendering ----------------------------------------------------------------------------------


def _expose(frames: np.ndarray, rng: np.random.Generator) -> None:
    """Global brightness flicker and Gaussian sensor noise, in place on `[N, H, W]` uint8."""
    n, h, w = frames.shape
    t = np.arange(n)
    gains = (
        1
        + 0.015 * np.sin(2 * np.pi * t / rng.uniform(20, 60) + rng.uniform(0, 2 * np.pi))
        + 0.005 * rng.standard_normal(n)
    )
    shape = (_NOISE_FIELDS, h + _NOISE_PAD, w + _NOISE_PAD)
    noise = np.rint(NOISE_SIGMA * rng.standard_normal(shape, np.float32))
    up, down = np.clip(noise, 0, 255).astype(np.uint8), np.clip(-noise, 0, 255).astype(np.uint8)
    dy, dx = rng.integers(0, _NOISE_PAD + 1, (2, n))
    for i in range(n):
        cut = (i % _NOISE_FIELDS, slice(dy[i], dy[i] + h), slice(dx[i], dx[i] + w))
        frame = cv2.convertScaleAbs(frames[i], alpha=float(gains[i]))
        cv2.add(frame, up[cut], dst=frame)
        cv2.subtract(frame, down[cut], dst=frame)
        frames[i] = frame


def _direction(actor: Actor) -> str:
    vx, vy = actor.velocity
    if vx:
        return "left_to_right" if vx > 0 else "right_to_left"
    return "top_to_bottom" if vy > 0 else "bottom_to_top"


def render_clip(
    spec: SyntheticSpec, plan: ClipPlan
) -> tuple[np.ndarray, np.ndarray | None, list[dict]]:
    """Draws a planned clip: frames `[N, H, W]` uint8; masks `[N, H, W]` uint8 (1 = pixel covered
    by an actor of `plan.anomalies`, None for train clips); and one record per actor of
    `plan.anomalies` that comes into view: its kind, the 1-based first and last frames where it
    covers pixels, its speed and direction. Anomalies are drawn after the walkers, so the masks
    are exactly what is visible of them."""
    n, h, w = plan.n_frames, spec.height, spec.width
    frames = np.empty((n, h, w), np.uint8)
    frames[:] = render_background(spec)
    masks = np.zeros((n, h, w), np.uint8)
    seen: list[list[int]] = [[] for _ in plan.anomalies]
    for t in range(n):
        for i, actor in enumerate(plan.walkers + plan.anomalies):
            drawn = _silhouette(actor, t, h, w)
            if drawn is None:
                continue
            region, patch = drawn
            covered = patch > 0
            np.copyto(frames[t][region], patch, where=covered)
            if i >= len(plan.walkers) and covered.any():
                masks[t][region] |= covered
                seen[i - len(plan.walkers)].append(t)
    _expose(frames, np.random.default_rng(plan.noise_seed))
    records = [
        {
            "kind": actor.kind,
            "first_frame": frames_seen[0] + 1,
            "last_frame": frames_seen[-1] + 1,
            "speed_px_per_frame": round(actor.speed, 3),
            "direction": _direction(actor),
        }
        for actor, frames_seen in zip(plan.anomalies, seen, strict=True)
        if frames_seen
    ]
    return frames, (None if plan.split == "train" else masks), records


def generate_clip(
    spec: SyntheticSpec, split: str, clip: int
) -> tuple[np.ndarray, np.ndarray | None, list[dict]]:
    """Clip `clip` (0-based) of `split` ("train" or "test"): frames `[N, H, W]` uint8, masks
    `[N, H, W]` uint8 0/1 (None for train) and the anomaly records (empty for train); see
    `render_clip`. N is drawn in [min_frames, max_frames]."""
    return render_clip(spec, plan_clip(spec, split, clip))


# --- writing ------------------------------------------------------------------------------------


def _spans(flags: np.ndarray) -> list[tuple[int, int]]:
    """1-based inclusive (first, last) runs of True in a `[N]` bool array."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1) + 1, np.flatnonzero(edges == -1), strict=True))


def _matlab_labels(labels: list[np.ndarray]) -> str:
    """`UCSDped2.m` text: one `gt_frame` line of anomalous-frame ranges per test clip."""
    lines = ["TestVideoFile = {};"]
    for flags in labels:
        ranges = ", ".join(f"{a}:{b}" for a, b in _spans(flags))
        lines.append(f"TestVideoFile{{end+1}}.gt_frame = [{ranges}];")
    return "\n".join(lines) + "\n"


def _write_images(folder: Path, images: np.ndarray, suffix: str) -> None:
    """`[N, H, W]` uint8 → folder/001.suffix … (uncompressed TIFF for .tif)."""
    folder.mkdir(parents=True)
    params = _TIFF if suffix == ".tif" else ()
    for number, image in enumerate(images, start=1):
        path = folder / f"{number:03d}{suffix}"
        if not cv2.imwrite(str(path), image, params):
            raise OSError(f"{path}: cv2.imwrite failed")


def _write_tree(folder: Path, spec: SyntheticSpec, label: str) -> None:
    """Writes all clips, the frame labels and the anomaly list under `folder`."""
    jobs = [(split, clip) for split in SPLITS for clip in range(spec.clip_count(split))]
    labels, events = [], {}
    for split, clip in tqdm(jobs, desc=f"synthetic Ped2 → {label}", unit="clip"):
        frames, masks, records = generate_clip(spec, split, clip)
        name = f"{split.capitalize()}{clip + 1:03d}"
        _write_images(folder / split.capitalize() / name, frames, ".tif")
        if masks is not None:
            _write_images(folder / "Test" / f"{name}_gt", masks * 255, ".bmp")
            labels.append(masks.any(axis=(1, 2)))
            events[name] = records
    (folder / "Test").mkdir(exist_ok=True)
    (folder / "Test" / "UCSDped2.m").write_text(_matlab_labels(labels))
    (folder / "Test" / "anomalies.json").write_text(json.dumps(events, indent=2) + "\n")


def _marker_text(spec: SyntheticSpec) -> str:
    return json.dumps(dataclasses.asdict(spec), sort_keys=True) + "\n"


def _is_complete(root: Path, spec: SyntheticSpec) -> bool:
    marker = root / COMPLETE_MARKER
    return marker.is_file() and marker.read_text() == _marker_text(spec)


def write_ped2_layout(root: Path, spec: SyntheticSpec = FULL) -> Path:
    """Writes the dataset of `spec` under `root` in UCSD Ped2's official layout; returns `root`.

    ```
    root/Train/Train001/001.tif …       frames, grayscale uint8, uncompressed TIFF
    root/Test/Test001/001.tif …
    root/Test/Test001_gt/001.bmp …      pixel masks, 0 normal / 255 anomalous
    root/Test/UCSDped2.m                frame labels: `TestVideoFile{end+1}.gt_frame = [a:b, c:d];`
    root/Test/anomalies.json            per test clip: each anomaly's kind and frame span
    root/.complete                      the spec as JSON, written last
    ```
    The tree is written into a temporary sibling folder (`<name>.<random>.incomplete`, removed
    on failure) that is renamed to `root` once complete. If `root` already holds a complete
    dataset of the same spec this returns at once; any other existing `root` raises ValueError.
    """
    root = Path(root)
    if root.exists():
        if _is_complete(root, spec):
            return root
        raise ValueError(
            f"{root}: exists but holds no complete synthetic dataset of this spec "
            f"({COMPLETE_MARKER} missing or for another spec); remove it or choose another folder"
        )
    try:
        with atomic.folder(root, replace=False, suffix=".incomplete") as staging:
            _write_tree(staging, spec, root.name)
            (staging / COMPLETE_MARKER).write_text(_marker_text(spec))
    except OSError:
        if not _is_complete(root, spec):  # unless a concurrent writer finished it first
            raise
    return root
