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


def class_activation_maps(
    score_fn: ScoreFn, features: jax.Array, size: int
) -> tuple[dict[str, jax.Array], Any]:
    """Grad-CAM and HiResCAM heatmaps of the scores `score_fn(features)` with respect to
    `features`, from one gradient.

    Grad-CAM (the module docstring) weights each channel by its gradient's mean over time and
    space, so a channel counts everywhere it is active, also where it cannot change S.
    HiResCAM (Draelos & Carin, 2020) keeps the gradient where it is:

        L = ReLU(Σ_k ∂S/∂A^k ⊙ A^k)     `[T, h, w]`, then mean over t, upsampled, min–max

    Args:
      score_fn: features `[B, T, h, w, K]` → (scores `[B]`, aux), sample b's score depending on
        sample b's features only.
      features: A^k, `[B, T, h, w, K]`.
      size: S, the side of the (square) frame the heatmaps are upsampled to.

    Returns:
      {"gradcam", "hirescam"}: heatmaps `[B, S, S]` float32 in [0, 1] (bilinear upsampling;
      0 where L is zero everywhere), and `aux`.
    """

    def total(a_k: jax.Array) -> tuple[jax.Array, Any]:
        scores, aux = score_fn(a_k)
        return scores.sum(), aux

    grads, aux = jax.grad(total, has_aux=True)(features)
    grads, activations = grads.astype(jnp.float32), features.astype(jnp.float32)
    weights = grads.mean(axis=(1, 2, 3))  # α_k: [B, K]
    cams = {
        "gradcam": jnp.einsum("bthwk,bk->bthw", activations, weights),
        "hirescam": (grads * activations).sum(axis=-1),
    }
    return {name: _heatmap(cam, size) for name, cam in cams.items()}, aux


def grad_cam(score_fn: ScoreFn, features: jax.Array, size: int) -> tuple[jax.Array, Any]:
    """The Grad-CAM heatmaps `[B, S, S]` of `class_activation_maps` (same arguments), and `aux`."""
    maps, aux = class_activation_maps(score_fn, features, size)
    return maps["gradcam"], aux


def _heatmap(cam: jax.Array, size: int) -> jax.Array:
    """`[B, T, h, w]` → ReLU, mean over time, bilinear to `[B, S, S]`, min–max to [0, 1]."""
    cam = jax.nn.relu(cam).mean(axis=1)
    return unit_range(jax.image.resize(cam, (cam.shape[0], size, size), "bilinear"))


def unit_range(maps: jax.Array) -> jax.Array:
    """`[B, S, S]` min–max normalised per sample to [0, 1] (a flat map → 0)."""
    low = maps.min(axis=(1, 2), keepdims=True)
    high = maps.max(axis=(1, 2), keepdims=True)
    return jnp.where(high > low, (maps - low) / jnp.where(high > low, high - low, 1.0), 0.0)


def head_score(head: model_lib.Head, shift: jax.Array, scale: jax.Array, alpha: float) -> ScoreFn:
    """The `ScoreFn` of a model's `head`: features → (S `[B]` under `shift`, `scale` `[B, 2]`,
    the head's maps with `score` and `errors` `[B, 2]` (E_rgb, E_flow))."""

    def score(a_k: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        maps = head(a_k)
        errors = jnp.stack([maps["rgb"].mean(axis=(1, 2)), maps["flow"].mean(axis=(1, 2))], -1)
        normalised = (errors - shift) / scale  # [B, 2]
        s = normalised[:, 0] + alpha * normalised[:, 1]
        return s, maps | {"score": s, "errors": errors}

    return score


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
    `flow_map` `[B, S, S]` (the component maps), `gradcam` and `hirescam` `[B, S, S]` in
    [0, 1] (on the model's Grad-CAM features, `class_activation_maps`), `predicted`
    `[B, S, S, C]` uint8 (the model's predicted or reconstructed frame) and each of the
    model's `EXTRA_MAPS` `[B, S, S]`.
    """
    inputs = model_lib.model_inputs(batch)
    model = nnx.merge(graphdef, params)
    features, head = model.explained(inputs)
    score = head_score(head, shift, scale, alpha)
    cams, aux = class_activation_maps(score, features, inputs["target_frame"].shape[1])
    predicted = jnp.round((jnp.clip(aux["image"], -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)
    return {
        "score": aux["score"],
        "rgb": aux["errors"][:, 0],
        "flow": aux["errors"][:, 1],
        "rgb_map": aux["rgb"],
        "flow_map": aux["flow"],
        "gradcam": cams["gradcam"],
        "hirescam": cams["hirescam"],
        "predicted": predicted,
        **{name: aux[name] for name in type(model).EXTRA_MAPS},
    }
