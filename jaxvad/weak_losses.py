"""Loss terms of weakly supervised training (AADC-Net, `papers/aadc_net_multimodal_vad.txt`,
§III-G): videos carry labels, snippets do not, so both terms pool a video's snippets by the
mean of its K highest values (multiple-instance learning).

    L = L_bce + λ·L_nce

- L_bce (top-K MIL): ŷ = σ(mean of the K highest snippet anomaly logits of the video), binary
  cross-entropy against the video label. The paper averages the top-K "anomaly scores" and
  feeds the average to a sigmoid, so the scores pooled here are the pre-sigmoid logits of the
  snippet head (its frame scores are their sigmoids; the top K are the same snippets).
- L_nce (MIL-Align): cross-entropy of the softmax over the C classes of the video's alignment
  logits γ·s_c, s_c the mean of the K highest snippet-to-class similarities (the model computes
  them: `jaxvad.model.aadc`), against the video's class distribution (one-hot; a video of
  several anomaly categories spreads its mass evenly over them, as VadCLIP's CLASM does).

K is capped by each video's own snippet count (`length`): a video of 3 snippets pools 3.
Padded snippets (t ≥ length) never count. Every function is pure, jit-able and float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

LOSS_TERMS = ("bce", "nce")


def top_k_mean(values: jax.Array, length: jax.Array, k: int) -> jax.Array:
    """Mean of the min(k, length_b) largest valid entries along time, per video and channel.

    values: `[B, T]` or `[B, T, C]`; length: `[B]` int, valid snippets t < length_b (≥ 1);
    k: a Python int ≥ 1 (static). Returns `[B]` or `[B, C]` float32.
    """
    values = jnp.asarray(values, jnp.float32)
    T = values.shape[1]
    k = min(k, T)
    valid = jnp.arange(T)[None, :] < length[:, None]  # [B, T]
    if values.ndim == 3:
        valid = valid[:, :, None]
    masked = jnp.where(valid, values, -jnp.inf)
    top = jax.lax.top_k(jnp.moveaxis(masked, 1, -1), k)[0]  # [B, (C,) k], descending
    count = jnp.minimum(length, k).astype(jnp.float32)  # [B]
    count = count.reshape(count.shape + (1,) * (top.ndim - 1))
    taken = jnp.arange(k) < count  # [B, (1,) k]
    return jnp.sum(jnp.where(taken, top, 0.0), axis=-1) / count[..., 0]


def mil_bce(logits: jax.Array, length: jax.Array, label: jax.Array, k: int) -> jax.Array:
    """Top-K MIL binary cross-entropy → scalar. logits: `[B, T]` snippet anomaly logits;
    length `[B]`; label `[B]` 0/1 video labels."""
    video_logit = top_k_mean(logits, length, k)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(video_logit, label.astype(jnp.float32)))


def class_targets(categories: jax.Array) -> jax.Array:
    """Multi-hot video classes `[B, C]` (normal videos: the normal class) → the target
    distribution `[B, C]` float32 (each row sums to 1)."""
    categories = jnp.asarray(categories, jnp.float32)
    return categories / jnp.maximum(categories.sum(axis=-1, keepdims=True), 1.0)


def mil_align_nce(class_logits: jax.Array, categories: jax.Array) -> jax.Array:
    """MIL-Align cross-entropy → scalar. class_logits: `[B, C]` = γ·s (alignment logits);
    categories: `[B, C]` multi-hot video classes (`class_targets`)."""
    targets = class_targets(categories)
    return jnp.mean(optax.softmax_cross_entropy(class_logits.astype(jnp.float32), targets))
