"""Pictures of an explanation: heatmaps in a colour map, the overlay I_overlay = β·I +
(1 − β)·colormap(H), the crop around the heatmap's peak, a heatmap restricted to a box, boxes
drawn and cut out, and PNG files.

Images are numpy arrays, RGB `[S, S, 3]` uint8 (frames with one channel are shown as gray RGB);
heatmaps `[S, S]` float.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from jaxvad.explain import quality


def as_rgb(frame: np.ndarray) -> np.ndarray:
    """`[S, S, C]` uint8 (C = 1 or 3) → `[S, S, 3]` uint8."""
    return np.repeat(frame, 3, axis=-1) if frame.shape[-1] == 1 else frame


def unit_range(values: np.ndarray) -> np.ndarray:
    """(v − min) / (max − min) `[S, S]` float32 (zeros for a constant map)."""
    values = np.asarray(values, np.float32)
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def colormap(heat: np.ndarray) -> np.ndarray:
    """`[S, S]` values in [0, 1] → `[S, S, 3]` uint8 RGB in the JET colour map (blue low,
    red high)."""
    levels = np.round(np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(frame: np.ndarray, heat: np.ndarray, beta: float) -> np.ndarray:
    """I_overlay = β·I + (1 − β)·colormap(H): `[S, S, 3]` uint8."""
    blend = beta * as_rgb(frame).astype(np.float32) + (1 - beta) * colormap(heat)
    return np.round(blend).astype(np.uint8)


def peak(heat: np.ndarray, within: np.ndarray | None = None) -> tuple[int, int]:
    """(row, column) of the heatmap's `[S, S]` maximum, over the pixels `within` `[S, S]`
    bool (non-empty) when given; of a plateau, the pixel nearest its centroid
    (`quality.peaks`)."""
    found = quality.peaks(heat[None], None if within is None else within[None])[0]
    return int(found[0]), int(found[1])


def pointing(
    heat: np.ndarray, mask: np.ndarray, within: np.ndarray | None = None
) -> dict[str, bool | float]:
    """The pointing game of one map (`quality.pointing`): is its peak (`peak(heat, within)`)
    inside the ground-truth `mask` `[S, S]` (non-empty), and how far (pixels) from the nearest
    mask pixel is it (0 inside)."""
    game = quality.pointing(
        heat[None], mask[None] > 0, 0.0, None if within is None else within[None]
    )
    return {"inside": bool(game["strict"][0]), "distance": float(game["distance"][0])}


def restrict(heat: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The heatmap inside `region` `[S, S]` bool: min–max renormalised over the region's
    pixels (zeros there if it is constant), zero outside. `[S, S]` float32."""
    out = np.zeros(heat.shape, np.float32)
    if region.any():
        out[region] = unit_range(heat[region])
    return out


def crop_around(frame: np.ndarray, heat: np.ndarray, fraction: float) -> np.ndarray:
    """The square of side `fraction`·S centred on the heatmap's peak, moved inside the frame:
    `[s, s, 3]` uint8."""
    size = frame.shape[0]
    side = max(1, round(fraction * size))
    row, col = peak(heat)
    top = min(max(row - side // 2, 0), size - side)
    left = min(max(col - side // 2, 0), size - side)
    return as_rgb(frame)[top : top + side, left : left + side]


def box_crop(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The pixels of `box` `[x0, y0, x1, y1]` (the image's pixels, x1 and y1 exclusive, rounded
    outwards to at least one pixel, as `object_scores.box_maps` does) of `image` `[H, W, C]`:
    `[h, w, 3]` uint8."""
    x0, y0, x1, y1 = (float(v) for v in box)
    left, top = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    right, bottom = max(int(np.ceil(x1)), left + 1), max(int(np.ceil(y1)), top + 1)
    return as_rgb(image[top:bottom, left:right])


def draw_boxes(image: np.ndarray, boxes: list[np.ndarray]) -> np.ndarray:
    """`image` `[S, S, 3]` uint8 with the boxes `[x0, y0, x1, y1]` (its pixels) outlined, the
    first in red, the others in green."""
    out = image.copy()
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        colour = (255, 0, 0) if k == 0 else (0, 255, 0)
        left, top = int(np.floor(x0)), int(np.floor(y0))
        right, bottom = max(int(np.ceil(x1)) - 1, left), max(int(np.ceil(y1)) - 1, top)
        cv2.rectangle(out, (left, top), (right, bottom), colour, 1)
    return out


def write_png(path: Path, image: np.ndarray) -> Path:
    """Writes an RGB `[H, W, 3]` (or gray `[H, W]`) uint8 image as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"{path}: could not write the PNG")
    return path
