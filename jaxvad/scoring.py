"""Anomaly scores from the per-frame errors of a split: pure numpy arithmetic, no model.

For frame t every model gives two per-pixel maps m_rgb, m_flow (appearance and motion; see
`jaxvad.model.interface`) whose spatial means are the frame's errors E_rgb(t), E_flow(t). The
predictor (DESIGN.md) predicts the frame Î and the flow F̂ into it from frames t−T..t−1:

    E_rgb(t)  = mean over pixels and channels of (Î − I)²   (frames in [−1, 1])
    E_flow(t) = mean over pixels and both components of (F̂ − F)²   (the dataset's flow units)

(`motion_mae`: the reconstruction error and the flow-magnitude-weighted reconstruction error;
`mdsf`: the squared norm of the fused discrepancy features, and zero.) The first T frames of a
video (T = `config.history`) have no window: they are "not scored" and every metric leaves
them out. Per scored frame:

A score is built from the two components c ∈ {rgb, flow} in three steps, set by
`ScoreSettings` (the fields of `config.score`):

1. variant: c = E ("error", the paper's) or c = −PSNR = 10·log10(E / P²) ("psnr", the
   field's), with peak P = 2 for frames (the range of [−1, 1], i.e. 255 of 8-bit) and 1 for flow.
2. normalisation n(c): "train" — z-score (c − μ) / σ with μ, σ over the scored frames of the
   training split (normal video only; stored with the checkpoint, so it works on any unlabeled
   video); "minmax" — (c − min) / (max − min) over the scored frames of each video (the field's
   per-video normalisation: needs the whole video); "none" — c itself.
3. S = n(c_rgb) + α·n(c_flow), then Gaussian smoothing over each video's scored frames with σ
   frames (σ = 0: none). Smoothing is linear, so it is applied to both normalised components and
   S = score_rgb + α·score_flow holds for the reported numbers too.

The alarm threshold is the `threshold_quantile` quantile of the training split's scores, passed
through the same three steps (for "minmax", each training video normalised on its own).

Pixel anomaly maps: with m_c the component maps of a frame (squared errors for the predictor),
A = Σ_c w_c·(m_c − b_c) / s_c with weights (1, α) and (b_c, s_c) the shift and scale with which
the normalisation maps E_c of that frame ("none": 0, 1; "train": μ, σ; "minmax": the video's
min and range), so the spatial mean of A is the frame's unsmoothed "error" score; then A is
blurred by a Gaussian of σ = `config.eval.map_sigma` × S pixels (squared errors are speckled
at the pixel level; regions for RBDC/TBDC need blobs, as in the field's evaluations). Maps
always use the error variant's normalisation.

The errors come from `jaxvad.inference` (the jitted model over a split); the training split's
errors are stored with each checkpoint (`jaxvad.detector`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.ndimage

COMPONENTS = ("rgb", "flow")
PEAK = {"rgb": 2.0, "flow": 1.0}  # PSNR peaks: frames span [−1, 1]; flow in dataset units.
TINY = 1e-12  # Floor of E in −PSNR (a perfect prediction would give log(0)).


@dataclasses.dataclass(frozen=True)
class SplitErrors:
    """Prediction errors of every frame of a split, in (video, frame) order; N frames.

    `video` `[N]` int32 (0-based index into `names`), `frame` `[N]` int32 (1-based),
    `scored` `[N]` bool (False: no prediction), `rgb`, `flow` `[N]` float64 (E; 0 where not
    scored; NaN throughout where only deep features were computed,
    `ErrorScorer.split_errors(errors=False)`), `label` `[N]` int32 0/1 or None (an unlabeled
    split), `maps`: None or
    {"rgb", "flow": `[N, S, S]` float16, "mask": `[N, S, S]` uint8}, `features`: None or
    `[N, D]` float32, the model's deep feature of each row (`VadModel.features`; NaN where
    not scored).
    """

    names: list[str]
    video: np.ndarray
    frame: np.ndarray
    scored: np.ndarray
    rgb: np.ndarray
    flow: np.ndarray
    label: np.ndarray | None = None
    maps: dict[str, np.ndarray] | None = None
    features: np.ndarray | None = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What a checkpoint stores of the training split (no labels, no maps)."""
        return {
            "video": self.video,
            "frame": self.frame,
            "scored": self.scored.astype(np.int8),
            "rgb": self.rgb,
            "flow": self.flow,
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> SplitErrors:
        video = np.asarray(arrays["video"], np.int32)
        return cls(
            names=[str(v) for v in range(int(video.max()) + 1)],
            video=video,
            frame=np.asarray(arrays["frame"], np.int32),
            scored=np.asarray(arrays["scored"]).astype(bool),
            rgb=np.asarray(arrays["rgb"], np.float64),
            flow=np.asarray(arrays["flow"], np.float64),
        )


@dataclasses.dataclass(frozen=True)
class ScoreSettings:
    """How a split's errors become scores and the alarm threshold (`config.score`'s fields;
    `ScoreSettings(**config.score)`): the `variant` ("error" or "psnr"), `alpha` (the motion
    component's weight), the `normalisation` ("train", "minmax" or "none"), the Gaussian
    `smoothing_sigma` in frames (0: none), the `threshold_quantile` of the training split's
    scores, and the `components`: ("error",) for these frame errors, or the object components
    of `jaxvad.object_scores`, whose frame scores replace S (then normalised by their own
    calibration, smoothed the same way); `object_samples` (`config.objects.samples`): the
    model scores objects, so frames are always scored from their objects ("error" is then each
    object's model error); `calibration`: how each object component is calibrated before
    they are summed (`jaxvad.object_scores.calibration`)."""

    variant: str
    alpha: float
    normalisation: str
    smoothing_sigma: float
    threshold_quantile: float
    components: tuple[str, ...] = ("error",)
    object_samples: bool = False
    calibration: str = "zscore"

    def __post_init__(self) -> None:
        object.__setattr__(self, "components", tuple(self.components))

    @property
    def object_mode(self) -> bool:
        """Whether frames are scored from their objects (`jaxvad.object_scores`)."""
        return self.object_samples or self.components != ("error",)


@dataclasses.dataclass(frozen=True)
class Affine:
    """Per-frame normalisation n = (c − shift) / scale; `shift`, `scale` `[N]`."""

    shift: np.ndarray
    scale: np.ndarray

    def __call__(self, c: np.ndarray) -> np.ndarray:
        return (c - self.shift) / self.scale


@dataclasses.dataclass(frozen=True)
class Scores:
    """Scores of a split: `score`, `rgb`, `flow` `[N]` float64 (NaN where not scored; `rgb` and
    `flow` are the normalised, smoothed components), and each component's `error_affine`
    (the error variant's normalisation, for pixel maps)."""

    score: np.ndarray
    rgb: np.ndarray
    flow: np.ndarray
    error_affine: dict[str, Affine]


def components(errors: SplitErrors, variant: str) -> dict[str, np.ndarray]:
    """c_rgb, c_flow `[N]` of `variant` ("error": E, "psnr": −PSNR)."""
    if variant == "error":
        return {"rgb": errors.rgb, "flow": errors.flow}
    return {
        c: 10 * np.log10(np.maximum(getattr(errors, c), TINY) / PEAK[c] ** 2) for c in COMPONENTS
    }


def _per_video(values: np.ndarray, videos: np.ndarray, reduce) -> np.ndarray:
    """`reduce` of each video's `values`, broadcast back to its frames."""
    out = np.empty_like(values)
    for v in np.unique(videos):
        out[videos == v] = reduce(values[videos == v])
    return out


def normaliser(
    c: np.ndarray, errors: SplitErrors, method: str, normal_c: np.ndarray | None
) -> Affine:
    """The affine map of `method` for component values `c` `[N]` of `errors`' frames;
    `normal_c`: the same component on the scored training frames ("train" only)."""
    n = len(c)
    if method == "none":
        return Affine(np.zeros(n), np.ones(n))
    if method == "train":
        mu, sigma = float(np.mean(normal_c)), float(np.std(normal_c))
        return Affine(np.full(n, mu), np.full(n, sigma if sigma > 0 else 1.0))
    scored, videos = errors.scored, errors.video
    low = np.full(n, np.nan)
    high = np.full(n, np.nan)
    low[scored] = _per_video(c[scored], videos[scored], np.min)
    high[scored] = _per_video(c[scored], videos[scored], np.max)
    span = high - low
    return Affine(low, np.where(span > 0, span, 1.0))


def smooth(values: np.ndarray, errors: SplitErrors, sigma: float) -> np.ndarray:
    """Gaussian smoothing (σ frames, edges repeat the end values) over each video's scored
    frames; σ = 0 returns `values`."""
    if sigma == 0:
        return values
    out = values.copy()
    scored = errors.scored
    out[scored] = _per_video(
        values[scored],
        errors.video[scored],
        lambda x: scipy.ndimage.gaussian_filter1d(x, sigma, mode="nearest"),
    )
    return out


def frame_scores(errors: SplitErrors, score: ScoreSettings, normal: SplitErrors) -> Scores:
    """The scores of `errors` under the settings `score`; `normal`: the training split's
    errors."""
    scored = errors.scored
    result, error_affine = {}, {}
    for variant in dict.fromkeys((score.variant, "error")):
        c, c_normal = components(errors, variant), components(normal, variant)
        for name in COMPONENTS:
            affine = normaliser(c[name], errors, score.normalisation, c_normal[name][normal.scored])
            if variant == "error":
                error_affine[name] = affine
            if variant == score.variant:
                value = np.where(scored, affine(c[name]), np.nan)
                result[name] = smooth(value, errors, score.smoothing_sigma)
    return Scores(
        score=result["rgb"] + score.alpha * result["flow"],
        rgb=result["rgb"],
        flow=result["flow"],
        error_affine=error_affine,
    )


def settle(
    values: np.ndarray, errors: SplitErrors, score: ScoreSettings, normal_values: np.ndarray
) -> np.ndarray:
    """Frame values `[N]` of `errors`' frames (e.g. object scores) through the normalisation
    and smoothing of `score`, as a component is; NaN where not scored. `normal_values`: the
    same values on the scored training frames ("train" normalisation)."""
    affine = normaliser(values, errors, score.normalisation, normal_values)
    return smooth(np.where(errors.scored, affine(values), np.nan), errors, score.smoothing_sigma)


def training_threshold(normal: SplitErrors, score: ScoreSettings) -> float:
    """The `score.threshold_quantile` quantile of the training split's own scores."""
    scores = frame_scores(normal, score, normal).score[normal.scored]
    return float(np.quantile(scores, score.threshold_quantile))


def anomaly_maps(
    errors: SplitErrors, scores: Scores, alpha: float, sigma: float = 0.0
) -> np.ndarray:
    """Pixel anomaly maps `[M, S, S]` float32 of the scored frames (see the module docstring),
    each blurred by a Gaussian of `sigma` pixels (0: none)."""
    if errors.maps is None:
        raise ValueError("these errors were collected without pixel maps")
    scored = errors.scored
    return pixel_maps(
        {name: errors.maps[name][scored] for name in COMPONENTS},
        {name: scores.error_affine[name].shift[scored] for name in COMPONENTS},
        {name: scores.error_affine[name].scale[scored] for name in COMPONENTS},
        alpha,
        sigma,
    )


def pixel_maps(
    maps: Mapping[str, np.ndarray],
    shift: Mapping[str, np.ndarray],
    scale: Mapping[str, np.ndarray],
    alpha: float,
    sigma: float = 0.0,
    components: Sequence[str] = COMPONENTS,
) -> np.ndarray:
    """A = Σ_c w_c·(m_c − shift_c) / scale_c, blurred by a Gaussian of `sigma` pixels.

    maps: per component `[M, S, S]` the component maps; shift, scale: per component `[M]`
    (each frame's error-variant normalisation); `components`: the terms summed (all by
    default). Returns `[M, S, S]` float32.
    """
    out = np.zeros(np.shape(maps["rgb"]), np.float32)
    for name, weight in zip(COMPONENTS, (1.0, alpha), strict=True):
        if name not in components:
            continue
        b = np.asarray(shift[name], np.float32)[:, None, None]
        s = np.asarray(scale[name], np.float32)[:, None, None]
        out += np.float32(weight) * (np.asarray(maps[name], np.float32) - b) / s
    if sigma > 0:
        out = scipy.ndimage.gaussian_filter(out, (0, sigma, sigma), mode="nearest")
    return out


def describe(score: ScoreSettings) -> dict[str, Any]:
    """The scoring protocol, as metrics.json states it."""
    return {
        "variant": score.variant,
        "formula": (
            "S = n(E_rgb) + alpha*n(E_flow)"
            if score.variant == "error"
            else "S = n(-PSNR_rgb) + alpha*n(-PSNR_flow)"
        ),
        "alpha": score.alpha,
        "normalisation": {
            "train": "z-score with mean/std of the training split's scored frames",
            "minmax": "per video min-max over its scored frames",
            "none": "none (raw components)",
        }[score.normalisation],
        "normalisation_name": score.normalisation,
        "smoothing": (
            f"gaussian, sigma={score.smoothing_sigma} frames, per video"
            if score.smoothing_sigma
            else "none"
        ),
    }
