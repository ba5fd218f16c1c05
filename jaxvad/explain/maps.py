"""Every heatmap a model offers, by name, from one jitted pure function batched over anomalies
(what `jaxvad.explain.quality` measures).

For B evaluation samples of S × S frames (`jaxvad.data.pipeline.eval_samples`), each map is
`[B, S, S]` float32, min–max normalised per sample to [0, 1] (0 everywhere for a flat map), so
that the maps are compared on the same scale:

- `gradcam`: the paper's Grad-CAM of the score on the model's explained features
  (`gradcam.class_activation_maps`: channel weights are mean gradients);
- `hirescam`: HiResCAM on the same features (the gradient times the activation, element by
  element, so a place counts only where it can change the score);
- `anomaly_map`: the error map, A = Σ_c w_c·(m_c − shift_c) / scale_c of the model's component
  maps (the score's per-pixel terms: its mean is the frame's score), blurred by a Gaussian of
  `sigma` pixels as `scoring.pixel_maps` blurs it (edges repeated);
- one map per name of the model's `EXTRA_MAPS` (MDSF's `saliency`).

Object boxes are a map of object mode (`jaxvad.explain.objects`), not of a model's pass.
Grad-CAM at a finer layer is not offered: each model splits at one layer (`explained`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvad import model as model_lib
from jaxvad.explain.gradcam import explain_step, unit_range

CAMS = ("gradcam", "hirescam")
ERROR = "anomaly_map"  # The error map, named as the explanations' pictures name it.


def names(model_name: str) -> tuple[str, ...]:
    """The maps a model offers, in the order reports list them."""
    return (*CAMS, ERROR, *model_lib.MODELS[model_name].EXTRA_MAPS)


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


def map_step(
    params: nnx.State,
    batch: Mapping[str, jax.Array],
    shift: jax.Array,
    scale: jax.Array,
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
      alpha: the score's α; sigma: the error map's blur in pixels.
    """
    out = explain_step(params, batch, shift, scale, graphdef=graphdef, alpha=alpha)
    weights = jnp.asarray([1.0, alpha], jnp.float32)
    terms = [
        weights[c] * (out[key] - shift[:, c, None, None]) / scale[:, c, None, None]
        for c, key in enumerate(("rgb_map", "flow_map"))
    ]
    error = gaussian_blur(terms[0] + terms[1], sigma)
    extra = type(nnx.merge(graphdef, params)).EXTRA_MAPS
    return {
        **{name: out[name] for name in CAMS},
        ERROR: unit_range(error),
        **{name: unit_range(out[name]) for name in extra},
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
