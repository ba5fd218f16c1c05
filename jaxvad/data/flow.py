"""Dense optical flow between consecutive frames, and its normalisation.

Convention: the flow stored with frame k (1-based) is the motion *into* frame k, from frame k−1 to
frame k, so a window of past frames t−T+1..t carries no information about frame t+1, and the
target flow of frame t+1 is flow(t → t+1). Frame 1 has no predecessor: its flow is zeros.

Flow is computed on the resized grayscale frames, so displacements are in pixels of the stored
resolution. Normalisation, the same for every dataset and size:

    flow_normalised = flow_pixels / (FLOW_UNIT * size)

i.e. displacements are expressed in units of 2 % of the image side (4.48 px at 224×224), which
puts walking speeds near 0.3 and fast vehicles near 1–2, resolution-independent. The divisor and
the method's parameters are stored in the dataset metadata (`flow_metadata`).

Methods: Farneback (default) and DIS from OpenCV; TV-L1 from opencv-contrib's `cv2.optflow`.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

FLOW_UNIT = 0.02
METHODS = ("farneback", "dis", "tvl1")

FARNEBACK_PARAMS = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}
DIS_PRESET = "medium"
TVL1_PARAMS = {"tau": 0.25, "lambda": 0.15, "theta": 0.3, "nscales": 5, "warps": 5}

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _farneback() -> FlowFn:
    p = FARNEBACK_PARAMS

    def fn(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        return cv2.calcOpticalFlowFarneback(
            prev,
            nxt,
            None,
            p["pyr_scale"],
            p["levels"],
            p["winsize"],
            p["iterations"],
            p["poly_n"],
            p["poly_sigma"],
            p["flags"],
        )

    return fn


def _dis() -> FlowFn:
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return lambda prev, nxt: dis.calc(prev, nxt, None)


def _tvl1() -> FlowFn:
    if not hasattr(cv2, "optflow"):
        raise ImportError(
            "TV-L1 optical flow needs OpenCV's contrib modules: "
            "pip uninstall -y opencv-python-headless && pip install opencv-contrib-python-headless"
        )
    p = TVL1_PARAMS
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create(
        tau=p["tau"], lambda_=p["lambda"], theta=p["theta"], nscales=p["nscales"], warps=p["warps"]
    )
    return lambda prev, nxt: tvl1.calc(prev, nxt, None)


_FACTORIES: dict[str, Callable[[], FlowFn]] = {
    "farneback": _farneback,
    "dis": _dis,
    "tvl1": _tvl1,
}


def flow_function(method: str) -> FlowFn:
    """`(prev, next)` `[H, W]` uint8 → `[H, W, 2]` float32 pixels. Raises ValueError for an
    unknown method and ImportError when its package is missing."""
    if method not in _FACTORIES:
        raise ValueError(f"unknown flow method {method!r}; choose one of {', '.join(METHODS)}")
    return _FACTORIES[method]()


def flow_scale(size: int) -> float:
    """Pixels per normalised flow unit at a stored resolution of `size`×`size`."""
    return FLOW_UNIT * size


def video_flow(gray: np.ndarray, method: str = "farneback") -> np.ndarray:
    """Normalised flow into each frame.

    Args:
      gray: `[N, H, W]` uint8 frames of one video (H = W = size).
      method: one of METHODS.

    Returns:
      `[N, H, W, 2]` float32, (dx, dy) of frame k−1 → k divided by `flow_scale(W)`; zeros at k = 1.
    """
    fn = flow_function(method)
    flows = np.zeros((*gray.shape, 2), np.float32)
    for k in range(1, len(gray)):
        flows[k] = fn(gray[k - 1], gray[k])
    flows /= flow_scale(gray.shape[-1])
    return flows


def flow_metadata(method: str, size: int) -> dict:
    """What the dataset metadata records about the flow: method, parameters and normalisation."""
    params = {"farneback": FARNEBACK_PARAMS, "dis": {"preset": DIS_PRESET}, "tvl1": TVL1_PARAMS}
    return {
        "method": method,
        "params": params[method],
        "direction": "frame k-1 -> frame k stored with frame k; zeros for frame 1",
        "computed_on": f"grayscale frames resized to {size}x{size}",
        "normalisation": "flow_pixels / (unit * size)",
        "unit": FLOW_UNIT,
        "scale_pixels": flow_scale(size),
    }
