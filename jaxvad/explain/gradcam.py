"""Grad-CAM of the anomaly score on the motion branch, and the explained forward pass.

With A^k `[T, h, w]` the K feature maps of the motion encoder's last conv layer (the predictor
returns them, and `decode` is a pure function of them) and S the frame's anomaly score:

    α_k = (1/Z) Σ_{t,i,j} ∂S/∂A^k_{t,i,j}      (Z = T·h·w)
    L   = ReLU(Σ_k α_k A^k)                     `[T, h, w]`
    H   = upsample(mean_t L) to the frame, then (H − min) / (max − min)   `[S, S]` in [0, 1]

(H = 0 where L is zero everywhere: nothing in the motion features raises the score.)

S is the score of the "error" variant under the frame's own normalisation (per component a shift
and a scale: the training statistics by default; see `jaxvad.scoring`), so
S = (E_rgb − b_rgb) / s_rgb + α·(E_flow − b_flow) / s_flow. Samples of a batch are independent,
so one `jax.grad` of the batch's summed score gives every sample's gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvad import model as model_lib

ScoreFn = Callable[[jax.Array], tuple[jax.Array, Any]]


def grad_cam(score_fn: ScoreFn, features: jax.Array, size: int) -> tuple[jax.Array, Any]:
    """Grad-CAM heatmaps of the scores `score_fn(features)` with respect to `features`.

    Args:
      score_fn: features `[B, T, h, w, K]` → (scores `[B]`, aux), sample b's score depending on
        sample b's features only.
      features: A^k, `[B, T, h, w, K]`.
      size: S, the side of the (square) frame the heatmap is upsampled to.

    Returns:
      heatmaps `[B, S, S]` float32 in [0, 1] (bilinear upsampling), and `aux`.
    """

    def total(a_k: jax.Array) -> tuple[jax.Array, Any]:
        scores, aux = score_fn(a_k)
        return scores.sum(), aux

    grads, aux = jax.grad(total, has_aux=True)(features)
    weights = grads.astype(jnp.float32).mean(axis=(1, 2, 3))  # α_k: [B, K]
    cam = jax.nn.relu(jnp.einsum("bthwk,bk->bthw", features.astype(jnp.float32), weights))
    cam = cam.mean(axis=1)  # Reduction over time: [B, h, w].
    cam = jax.image.resize(cam, (cam.shape[0], size, size), "bilinear")
    low = cam.min(axis=(1, 2), keepdims=True)
    high = cam.max(axis=(1, 2), keepdims=True)
    return jnp.where(high > low, (cam - low) / jnp.where(high > low, high - low, 1.0), 0.0), aux


def explain_step(
    params: nnx.State,
    batch: Mapping[str, jax.Array],
    shift: jax.Array,
    scale: jax.Array,
    *,
    graphdef: nnx.GraphDef,
    alpha: float,
) -> dict[str, jax.Array]:
    """Everything an explanation needs of B frames, as a pure function.

    Args:
      params, graphdef: the predictor (`nnx.split(model, nnx.Param)`).
      batch: evaluation samples (`jaxvad.data.pipeline.eval_samples`).
      shift, scale: `[B, 2]` each frame's normalisation of (E_rgb, E_flow).
      alpha: the score's α.

    Returns float32 `score` `[B]` (S above), `rgb`, `flow` `[B]` (E_rgb, E_flow), `rgb_map`,
    `flow_map` `[B, S, S]` (per-pixel squared errors, mean over channels), `gradcam`
    `[B, S, S]` in [0, 1] and `predicted` `[B, S, S, C]` uint8 (the predicted frame).
    """
    inputs = model_lib.model_inputs(batch)
    model = nnx.merge(graphdef, params)
    appearance = model.temporal(model.encode_frames(inputs["frames"]))[:, -1]
    features = model.encode_motion(inputs["flows"])

    def score(a_k: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        frame, flow = model.decode(appearance, a_k)
        rgb_map = jnp.mean((frame - inputs["target_frame"]) ** 2, axis=-1)
        flow_map = jnp.mean((flow - inputs["target_flow"]) ** 2, axis=-1)
        errors = jnp.stack([rgb_map.mean(axis=(1, 2)), flow_map.mean(axis=(1, 2))], axis=-1)
        normalised = (errors - shift) / scale  # [B, 2]
        s = normalised[:, 0] + alpha * normalised[:, 1]
        aux = {"score": s, "errors": errors, "frame": frame}
        return s, aux | {"rgb_map": rgb_map, "flow_map": flow_map}

    heatmap, aux = grad_cam(score, features, inputs["target_frame"].shape[1])
    predicted = jnp.round((jnp.clip(aux["frame"], -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)
    return {
        "score": aux["score"],
        "rgb": aux["errors"][:, 0],
        "flow": aux["errors"][:, 1],
        "rgb_map": aux["rgb_map"],
        "flow_map": aux["flow_map"],
        "gradcam": heatmap,
        "predicted": predicted,
    }
