"""Every heatmap a model offers, by name, from one jitted pure function batched over anomalies
(what `jaxvad.explain.quality` measures).

For B evaluation samples of S × S frames (`jaxvad.data.pipeline.eval_samples`), each map is
`[B, S, S]` float32, min–max normalised per sample to [0, 1] (0 everywhere for a flat map), so
that the maps are compared on the same scale:

- `gradcam`: the paper's Grad-CAM of the score on the model's explained features
  (`gradcam.class_activation_maps`: channel weights are mean gradients);
- `hirescam`: HiResCAM on the same features (the gradient times the activation, element by
  element, so a place counts only where it can change the score);
- `gradcam_fine`: Grad-CAM at the model's finer layer, where it has one (`FINE_LAYER`; the
  predictor: its motion encoder's first stage, S/2 × S/2 cells instead of S/P × S/P);
- `anomaly_map`: the error map, A = Σ_c w_c·(m_c − shift_c) / scale_c of the model's component
  maps (the score's per-pixel terms: its mean is the frame's score), blurred by a Gaussian of
  `sigma` pixels as `scoring.pixel_maps` blurs it (edges repeated);
- `anomaly_foreground`: the anomaly map with its motion term kept where the scored frame
  shows something, F = A_rgb + (A_flow − min A_flow) ⊙ G / max G, A_c the two blurred terms
  of A (A = A_rgb + A_flow) and G = blur(mean_c |I_t − B|), B the training split's median
  frame (a fixed camera's background, `Detector.background`; `foreground`, `gated`). The
  motion error also lands where the frame shows the background (the flow is stored at the
  previous frame's pixels, and the model predicts motion where it expected the object): on
  the synthetic test split 75 % of the anomaly map's misses had their peak on the motion
  term. The appearance term is the model's alone;
- one map per name of the model's `EXTRA_MAPS` (MDSF's `saliency`).

Object boxes are a map of object mode (`jaxvad.explain.objects`), not of a model's pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvad import model as model_lib
from jaxvad.explain.gradcam import class_activation_maps, explain_step, head_score, unit_range

CAMS = ("gradcam", "hirescam")
FINE = "gradcam_fine"
ERROR = "anomaly_map"  # The error map, named as the explanations' pictures name it.
FOREGROUND = "anomaly_foreground"


def names(model_name: str) -> tuple[str, ...]:
    """The maps a model offers, in the order reports list them."""
    model = model_lib.MODELS[model_name]
    return (*CAMS, *([FINE] if model.FINE_LAYER else []), ERROR, FOREGROUND, *model.EXTRA_MAPS)


def gaussian_blur(maps: jax.Array, sigma: float) -> jax.Array:
    """`[B, S, S]` blurred by a Gaussian of `sigma` pixels along both axes: scipy's
    `gaussian_filter(mode="nearest", truncate=4)`, separably (no blur for sigma ≤ 0)."""
    if sigma <= 0:
        return maps
    radius = int(4.0 * sigma + 0.5)
    taps = [math.exp(-0.5 * (d / sigma) ** 2) for d in range(-radius, radius + 1)]
    total = sum(taps)
    for axis in (1, 2):
        padded = jnp.pad(
            maps, [(radius, radius) if a == axis else (0, 0) for a in range(3)], mode="edge"
        )
        length = maps.shape[axis]
        maps = sum(
            (w / total) * jax.lax.slice_in_dim(padded, i, i + length, axis=axis)
            for i, w in enumerate(taps)
        )
    return maps


def foreground(frames: jax.Array, background: jax.Array, sigma: float) -> jax.Array:
    """G `[B, S, S]`: the mean over channels of |I − B| of frames `[B, S, S, C]` against the
    background `[S, S, C]`, or one per frame `[B, S, S, C]` (both in [0, 255]), blurred by
    `gaussian_blur(sigma)`."""
    difference = jnp.abs(frames.astype(jnp.float32) - background.astype(jnp.float32))
    return gaussian_blur(difference.mean(axis=-1), sigma)


def gated(appearance: jax.Array, motion: jax.Array, foreground_map: jax.Array) -> jax.Array:
    """`anomaly_foreground` `[B, S, S]` in [0, 1]: A_rgb + (A_flow − min A_flow) ⊙ G / max G
    per sample, min–max normalised (A_rgb, A_flow: the blurred terms of the anomaly map;
    G: `foreground`)."""
    low = motion.min(axis=(1, 2), keepdims=True)
    high = foreground_map.max(axis=(1, 2), keepdims=True)
    gate = foreground_map / jnp.where(high > 0, high, 1.0)
    return unit_range(appearance + (motion - low) * gate)


def map_step(
    params: nnx.State,
    batch: Mapping[str, jax.Array],
    shift: jax.Array,
    scale: jax.Array,
    background: jax.Array,
    *,
    graphdef: nnx.GraphDef,
    alpha: float,
    sigma: float,
) -> dict[str, jax.Array]:
    """Every map of `names` (the module docstring) and the `score` `[B]` of B samples; a pure
    function.

    Args:
      params, graphdef: the model.
      batch: evaluation samples (`eval_samples`'s keys; frames uint8 or float32 in [0, 255]).
      shift, scale: `[B, 2]` each sample's normalisation of (E_rgb, E_flow).
      background: `[S, S, C]` the training split's median frame in [0, 255].
      alpha: the score's α; sigma: the error map's blur in pixels.
    """
    out = explain_step(params, batch, shift, scale, graphdef=graphdef, alpha=alpha)
    weights = jnp.asarray([1.0, alpha], jnp.float32)
    terms = [
        weights[c] * (out[key] - shift[:, c, None, None]) / scale[:, c, None, None]
        for c, key in enumerate(("rgb_map", "flow_map"))
    ]
    appearance, motion = (gaussian_blur(term, sigma) for term in terms)
    error = appearance + motion
    model = nnx.merge(graphdef, params)
    fine = {}
    if model.FINE_LAYER:
        features, head = model.explained_fine(model_lib.model_inputs(batch))
        cams, _ = class_activation_maps(
            head_score(head, shift, scale, alpha), features, error.shape[1]
        )
        fine = {FINE: cams["gradcam"]}
    return {
        **{name: out[name] for name in CAMS},
        **fine,
        ERROR: unit_range(error),
        FOREGROUND: gated(appearance, motion, foreground(batch["target_frame"], background, sigma)),
        **{name: unit_range(out[name]) for name in type(model).EXTRA_MAPS},
        "score": out["score"],
    }


def score_step(
    params: nnx.State,
    batch: Mapping[str, jax.Array],
    shift: jax.Array,
    scale: jax.Array,
    *,
    graphdef: nnx.GraphDef,
    alpha: float,
) -> jax.Array:
    """`[B]` the samples' scores S = n(E_rgb) + α·n(E_flow) under `shift`, `scale` `[B, 2]`
    (the model's forward pass alone); a pure function."""
    maps = nnx.merge(graphdef, params).maps(model_lib.model_inputs(batch))
    errors = jnp.stack([maps["rgb"].mean(axis=(1, 2)), maps["flow"].mean(axis=(1, 2))], -1)
    normalised = (errors - shift) / scale
    return normalised[:, 0] + alpha * normalised[:, 1]


def expected_frame(
    params: nnx.State, batch: Mapping[str, jax.Array], *, graphdef: nnx.GraphDef
) -> jax.Array:
    """`[B, S, S, C]` float32 in the stored frames' units ([0, 255], unclipped): the frame the
    model expected at t (its predicted or reconstructed `image`), where its appearance error is
    zero; a pure function."""
    image = nnx.merge(graphdef, params).maps(model_lib.model_inputs(batch))["image"]
    return (image + 1.0) * 127.5
