"""What every detector supplies, so that `jaxvad.train`, `jaxvad.evaluate` and `jaxvad.explain`
run any of them with no model-specific code.

A detector is a `VadModel` (an `nnx.Module`) taking `inputs = model_inputs(batch)`: `frames`
`[B, T, S, S, C]` and `target_frame` `[B, S, S, C]` in [-1, 1], `flows` `[B, T, S, S, 2]` and
`target_flow` `[B, S, S, 2]` (the flow into the target frame). The target frame (frame t+1 of
the window) is the frame being scored: a predictor predicts it from the T frames before it, a
reconstruction model reconstructs it. It supplies:

- `LOSS_TERMS`: the names of its training loss terms; the trainer weights term k by
  `config.loss[k]` (`jaxvad.losses.total_loss`).
- `FROZEN`: attribute names whose parameters (anywhere in the model) the optimizer leaves
  unchanged, e.g. a pretrained tower (`jaxvad.train.freeze`); empty by default.
- `EXTRA_MAPS`: `{name: title}` of model-specific heatmaps that explanations show.
- `loss_terms(inputs, *, rngs, vgg)` → `{term: float32 scalar}`: the training forward pass.
  `rngs` has a `dropout` and a `masking` stream (any training randomness draws from them);
  `vgg` is the frozen perceptual-loss network or None.
- `explained(inputs)` → `(features, head)`: the deterministic forward pass split at the layer
  Grad-CAM explains: `features` `[B, T', h, w, K]` (T' = 1 for single-frame models) and
  `head(features)` → `Maps`, a pure function, so `jax.grad` of a score of `head` gives ∂S/∂A^k.
- `FINE_LAYER` and `explained_fine(inputs)`: where a model has a layer finer than
  `explained`'s (more places, fewer channels), its name and the same split there, so that
  Grad-CAM can also be read at that resolution (`jaxvad.explain.maps`: `gradcam_fine`).
  `FINE_LAYER = ""` (the default) means the model has none.
- `maps(inputs)` → `Maps` (= `head(features)`).
- `features(inputs)` → `[B, D]` float32: a pooled latent of the sample, its deep feature (the
  object component "deep", `jaxvad.object_scores`); by default the mean over (T', h, w) of
  `explained`'s features. Called beside `maps` in one jitted step (`inference.error_step`),
  the shared encoder is computed once (XLA's common-subexpression elimination).
- `FEATURE_INPUTS`: the inputs `features` reads (all four by default). A caller that changes
  only the others keeps its samples' deep features (`Detector.score_objects(changed=...)`).

Streaming (`jaxvad.watch`, `inference.stream_step`) splits `maps` at the per-frame work that a
frame's windows share:
- `cached_frame(frame)`: frame `[B, S, S, C]` in [-1, 1] → its per-frame cache `[B, ...]`,
  the work that is the same in every window the frame is in. By default the frame itself:
  nothing is cached, everything is recomputed from the frames.
- `maps_from_cache(cache, inputs)`: `cache` `[B, T, ...]` (the T past frames'
  `cached_frame`s, oldest first) and `inputs` without `frames` → the `Maps` that `maps`
  gives for those frames.

`Maps` is a dict of float32 arrays: `image` `[B, S, S, C]` in [-1, 1] (the predicted or
reconstructed frame), `rgb` and `flow` `[B, S, S]` ≥ 0, the per-pixel maps of the score's two
components (the frame's appearance and motion errors E_rgb, E_flow are their spatial means;
the frame score is S = n(E_rgb) + α·n(E_flow), see `jaxvad.scoring`), and one `[B, S, S]` map
in [0, 1] per name of `EXTRA_MAPS`. A model without a motion cue returns zeros as `flow`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

Maps = dict[str, jax.Array]
Head = Callable[[jax.Array], Maps]


class VadModel(nnx.Module):
    """Base class of the detectors: the interface above (`maps` is derived from `explained`)."""

    LOSS_TERMS: ClassVar[tuple[str, ...]] = ()
    EXTRA_MAPS: ClassVar[dict[str, str]] = {}
    FINE_LAYER: ClassVar[str] = ""
    FROZEN: ClassVar[tuple[str, ...]] = ()
    FEATURE_INPUTS: ClassVar[tuple[str, ...]] = ("frames", "flows", "target_frame", "target_flow")

    def loss_terms(
        self, inputs: Mapping[str, jax.Array], *, rngs: nnx.Rngs, vgg: Any = None
    ) -> dict[str, jax.Array]:
        raise NotImplementedError

    def explained(self, inputs: Mapping[str, jax.Array]) -> tuple[jax.Array, Head]:
        raise NotImplementedError

    def explained_fine(self, inputs: Mapping[str, jax.Array]) -> tuple[jax.Array, Head]:
        raise NotImplementedError(f"{type(self).__name__} has no finer layer (FINE_LAYER)")

    def maps(self, inputs: Mapping[str, jax.Array]) -> Maps:
        features, head = self.explained(inputs)
        return head(features)

    def cached_frame(self, frame: jax.Array) -> jax.Array:
        return frame

    def maps_from_cache(self, cache: jax.Array, inputs: Mapping[str, jax.Array]) -> Maps:
        return self.maps({**inputs, "frames": cache})

    def features(self, inputs: Mapping[str, jax.Array]) -> jax.Array:
        features, _ = self.explained(inputs)
        return features.astype(jnp.float32).mean(axis=(1, 2, 3))


def squared_error(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Per-pixel squared error of `[B, S, S, C]` images, mean over channels → `[B, S, S]`
    float32."""
    return jnp.mean((pred.astype(jnp.float32) - target.astype(jnp.float32)) ** 2, axis=-1)
