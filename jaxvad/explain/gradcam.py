"""Grad-CAM of the anomaly score, and the explained forward pass of any model.

With A^k `[T, h, w]` the K feature maps of the layer the model's `explained` splits at (the
predictor: its motion encoder's last conv layer; `motion_mae`: its encoder's last stage;
`mdsf`: its student's last encoder stage; T = 1 for single-frame models) and S the frame's
anomaly score:

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
    """Everything an explanation needs of B frames, as a pure function of any `VadModel`.

    Args:
      params, graphdef: the model (`nnx.split(model, nnx.Param)`).
      batch: evaluation samples (`jaxvad.data.pipeline.eval_samples`).
      shift, scale: `[B, 2]` each frame's normalisation of (E_rgb, E_flow).
      alpha: the score's α.

    Returns float32 `score` `[B]` (S above), `rgb`, `flow` `[B]` (E_rgb, E_flow), `rgb_map`,
    `flow_map` `[B, S, S]` (the component maps), `gradcam` `[B, S, S]` in [0, 1] (on the
    model's Grad-CAM features), `predicted` `[B, S, S, C]` uint8 (the model's predicted or
    reconstructed frame) and each of the model's `EXTRA_MAPS` `[B, S, S]`.
    """
    inputs = model_lib.model_inputs(batch)
    model = nnx.merge(graphdef, params)
    features, head = model.explained(inputs)

    def score(a_k: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        maps = head(a_k)
        errors = jnp.stack([maps["rgb"].mean(axis=(1, 2)), maps["flow"].mean(axis=(1, 2))], -1)
        normalised = (errors - shift) / scale  # [B, 2]
        s = normalised[:, 0] + alpha * normalised[:, 1]
        return s, maps | {"score": s, "errors": errors}

    heatmap, aux = grad_cam(score, features, inputs["target_frame"].shape[1])
    predicted = jnp.round((jnp.clip(aux["image"], -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)
    return {
        "score": aux["score"],
        "rgb": aux["errors"][:, 0],
        "flow": aux["errors"][:, 1],
        "rgb_map": aux["rgb"],
        "flow_map": aux["flow"],
        "gradcam": heatmap,
        "predicted": predicted,
        **{name: aux[name] for name in type(model).EXTRA_MAPS},
    }
