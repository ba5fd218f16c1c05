"""The motion-enhanced masked autoencoder with hybrid scoring
(`../shared/papers/motion_enhanced_mae_vad.txt`).

Shapes: B batch, S = `image_size`, C `channels`; the model sees only the window's target frame
`[B, S, S, C]` and the flow into it `[B, S, S, 2]` (set `history` = 1: the earlier frames are
not used).

- Network: the paper's Table 1 (`layers.ConvAutoencoder`, one 3×3 conv per stage, widths
  32-64-128, 2×2 max pooling, a 128-wide bottleneck conv, nearest ×2 upsampling + 3×3 conv
  decoder, sigmoid output; 332,801 parameters on gray frames), with the paper's dropout (0.2)
  after each pooling.
- Masking (training only): a fraction `mask_ratio` of the frame's `mask_patch`² cells is set to
  0 (mid-gray) before encoding, and the whole frame is reconstructed. The paper gives no ratio
  or cell size; at evaluation nothing is masked, so scores are deterministic.
- Motion: the per-pixel flow magnitude m(x) = ‖F(x)‖ of our prepared flow into the frame
  (not frame-difference gradients: the flow is already prepared and is what the other models
  use). The paper's "motion gradients" are not defined further.
- Loss α·L_rec + β·L_motion, α = `config.loss.rec`, β = `config.loss.motion`:
  L_rec = mean_x e(x) with e(x) = (Î(x) − I(x))² (mean over channels), and
  L_motion = mean_x m(x)·e(x), the motion-weighted reconstruction error (the paper's "spatially
  weighted reconstruction loss" that favours motion-rich regions).
- Score S_hybrid(t) = α·L_rec(t) + β·S_motion(t) with S_motion = L_motion of frame t: the two
  components of `jaxvad.scoring` are E_rgb = L_rec (appearance) and E_flow = S_motion (motion),
  each normalised (training z-scores by default), and β/α is `config.score.alpha`.
- Grad-CAM explains the encoder's last stage `[B, 1, S/8, S/8, 128]`; its mean over space
  `[B, 128]` is the deep feature (`VadModel.features`).
- Not done: the paper's data augmentation (crops, flips, rotation) and early stopping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvad.model.interface import Head, Maps, VadModel, squared_error
from jaxvad.model.layers import ConvAutoencoder, Dtype, random_patch_mask


def check_autoencoder(
    image_size: int, widths: Sequence[int], mask_ratio: float, mask_patch: int
) -> None:
    """Raises ValueError when the frame cannot be pooled len(`widths`) times or masked in
    `mask_patch` cells."""
    if image_size % 2 ** len(widths):
        raise ValueError(
            f"image_size {image_size} must be divisible by 2^{len(widths)} (one 2×2 pooling per "
            f"width of {tuple(widths)})"
        )
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    if mask_patch < 1 or image_size % mask_patch:
        raise ValueError(f"mask_patch {mask_patch} must divide image_size {image_size}")


def masked(frame: jax.Array, key: jax.Array, patch: int, ratio: float) -> jax.Array:
    """`frame` `[B, S, S, C]` with a fraction `ratio` of its `patch`² cells set to 0."""
    return frame * random_patch_mask(key, frame.shape[:3], patch, ratio).astype(frame.dtype)


class MotionMae(VadModel):
    """Masked convolutional autoencoder of the target frame with motion-weighted errors.

    Args:
      image_size: S (divisible by 2^len(widths) and by `mask_patch`).
      channels: C.
      widths: encoder widths, one 3×3 conv + 2×2 pooling each.
      mask_ratio: fraction of cells masked in training.
      mask_patch: side of a masked cell, in pixels.
      dropout: rate after each pooling, in training.
      dtype: compute dtype; parameters are float32.
    """

    LOSS_TERMS = ("rec", "motion")
    FEATURE_INPUTS = ("target_frame",)  # `features` pools the encoder of the frame it reconstructs.

    def __init__(
        self,
        *,
        image_size: int,
        channels: int,
        widths: Sequence[int],
        mask_ratio: float,
        mask_patch: int,
        dropout: float,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_autoencoder(image_size, widths, mask_ratio, mask_patch)
        self.mask_ratio = mask_ratio
        self.mask_patch = mask_patch
        self.autoencoder = ConvAutoencoder(
            channels, widths, dropout=dropout, dtype=jnp.dtype(dtype), rngs=rngs
        )

    def loss_terms(
        self, inputs: Mapping[str, jax.Array], *, rngs: nnx.Rngs, vgg=None
    ) -> dict[str, jax.Array]:
        frame = inputs["target_frame"]
        visible = masked(frame, rngs.masking(), self.mask_patch, self.mask_ratio)
        image = self.autoencoder.decode(self.autoencoder.encode(visible, rngs=rngs)[-1])
        maps = hybrid_maps(image, frame, inputs["target_flow"])
        return {"rec": maps["rgb"].mean(), "motion": maps["flow"].mean()}

    def explained(self, inputs: Mapping[str, jax.Array]) -> tuple[jax.Array, Head]:
        frame, flow = inputs["target_frame"], inputs["target_flow"]
        deepest = self.autoencoder.encode(frame)[-1]

        def head(features: jax.Array) -> Maps:
            return hybrid_maps(self.autoencoder.decode(features[:, 0]), frame, flow)

        return deepest[:, None], head


def hybrid_maps(image: jax.Array, frame: jax.Array, flow: jax.Array) -> Maps:
    """e(x) = (Î − I)² (mean over channels) and m(x)·e(x) with m = ‖flow(x)‖: the maps of L_rec
    and S_motion `[B, S, S]`, with the reconstruction `image`."""
    error = squared_error(image, frame)
    magnitude = jnp.linalg.norm(flow.astype(jnp.float32), axis=-1)
    return {"image": image, "rgb": error, "flow": magnitude * error}
