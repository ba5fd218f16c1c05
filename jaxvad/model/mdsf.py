"""MDSF: teacher–student multi-scale discrepancy saliency fusion
(`../shared/papers/mdsf_teacher_student_vad.txt`).

Shapes: B batch, S = `image_size`, C `channels`, widths w_1..w_n; scale s has features
`[B, S/2^s, S/2^s, w_s]`. The model sees single frames: the window's target frame (set
`history` = 1).

1. Teacher and student: `layers.ConvAutoencoder`s on the frame (eqs. 1–4) with the same widths,
   so their features can be compared; the teacher has `teacher_convs` 3×3 convs per stage, the
   "relatively lightweight" student `student_convs`.
2. Discrepancy per scale (eq. 5): F_diff = |F_teach − F_stud| after each encoder stage.
3. Amplification (eqs. 6–7): W = σ(MLP(GAP(F_diff))), an MLP w → w/`reduction` → w with ReLU;
   F_amp = F_diff ⊗ W (per channel).
4. Saliency (eq. 8): S^(s) = σ(1×1 conv(F_amp)) `[B, h_s, w_s, 1]`.
5. Fusion (eq. 9): F_fusion = Σ_s up(S^(s) ⊗ P_s(F_amp)), with P_s a 1×1 conv to w_1 channels
   and up bilinear to the finest scale S/2 (the paper sums scales of different widths and sizes
   without saying how they are aligned: P_s and up are ours).
6. Score (eq. 10): ‖F_fusion‖₂. The appearance map is ‖F_fusion(x)‖² (sum over channels),
   repeated ×2 to S×S, so the frame error E_rgb (its mean) is ‖F_fusion‖₂² / (S/2)²: a
   monotone function of the paper's score, hence the same ranking and AUCs. Single frames carry
   no motion cue: the motion map is zero (set `config.score.alpha` = 0).

Training (the paper only says "MSE between the input and the student's reconstruction", trained
end to end). Ours, so that every parameter that affects the score gets gradients:

- teacher: L_teacher = MSE(Î_teach, I), on the frame with a fraction `mask_ratio` of its
  `mask_patch`² cells hidden (the MAE part; 0 turns it off);
- student: L_student = MSE(Î_stud, I) and L_distill = mean over scales of
  mean((sg(F_teach) − F_stud)²) (sg: stop-gradient), so the student imitates the teacher on
  normal frames and their discrepancy grows where the frame is unlike them;
- amplification MLPs, saliency and alignment convs: L_fusion on the discrepancies of the clean
  frames and of pseudo-anomalies (each frame with a square of side `paste_fraction`·S cut from
  the next frame of the batch, intensity-inverted, pasted at a random place: CutPaste with
  content unlike the scene's, since a plain pasted square of the same scene barely changes the
  discrepancy), both under stop-gradient
  so this term trains the fusion layers only:
  L_fusion = mean softplus(`margin` − (log ‖F_fusion(pasted)‖₂ − log ‖F_fusion(clean)‖₂)),
  a ranking loss on the log-ratio (scale-free, so it cannot be met by shrinking everything;
  plain minimisation of ‖F_fusion‖ on normal frames would drive W and S^(s) to zero).

The loss is Σ config.loss[k]·L_k over k in `LOSS_TERMS`. Grad-CAM explains the student's last
encoder stage `[B, 1, S/2^n, S/2^n, w_n]` (its mean over space `[B, w_n]` is the deep
feature, `VadModel.features`); the saliency maps (mean over scales, at S×S) are an
extra heatmap of the explanations. Not done: the paper's crops and flips, its LR-on-plateau.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvad import losses
from jaxvad.model.interface import Head, Maps, VadModel
from jaxvad.model.layers import (
    CONV_IN,
    CONV_OUT,
    MLP,
    ConvAutoencoder,
    Dtype,
    conv2d,
    linear,
    upsample2x,
)
from jaxvad.model.motion_mae import check_autoencoder, masked

EPS = 1e-6  # Floor of ‖F_fusion‖₂ inside the log of the fusion loss.


def cut_paste(key: jax.Array, frames: jax.Array, side: int) -> jax.Array:
    """Pseudo-anomalies: each frame of `[B, S, S, C]` (in [-1, 1]) with a `side`² square of the
    next frame (cyclically), intensity-inverted, pasted in; source and destination corners
    uniform at random."""
    B, S, _, C = frames.shape
    corners = jax.random.randint(key, (2, B, 2), 0, S - side + 1)
    donors = jnp.roll(frames, -1, axis=0)

    def paste(frame, donor, source, dest):
        patch = jax.lax.dynamic_slice(donor, (source[0], source[1], 0), (side, side, C))
        return jax.lax.dynamic_update_slice(frame, -patch, (dest[0], dest[1], 0))

    return jax.vmap(paste)(frames, donors, corners[0], corners[1])


class Amplifier(nnx.Module):
    """Channel attention of one scale: F_diff `[B, h, w, c]` → F_diff ⊗ σ(MLP(GAP(F_diff)))."""

    def __init__(self, width: int, reduction: int, *, dtype: Dtype, rngs: nnx.Rngs):
        hidden = max(1, width // reduction)
        self.squeeze = linear(width, hidden, (CONV_IN, MLP), dtype=dtype, rngs=rngs)
        self.excite = linear(hidden, width, (MLP, CONV_OUT), dtype=dtype, rngs=rngs)

    def __call__(self, diff: jax.Array) -> jax.Array:
        weights = jax.nn.sigmoid(self.excite(jax.nn.relu(self.squeeze(diff.mean(axis=(1, 2))))))
        return diff * weights[:, None, None, :]


class Mdsf(VadModel):
    """Teacher–student discrepancy detector with saliency-guided multi-scale fusion.

    Args:
      image_size: S (divisible by 2^len(widths) and by `mask_patch`).
      channels: C.
      widths: encoder widths of both networks, one scale each.
      teacher_convs, student_convs: 3×3 convs per encoder stage.
      reduction: the amplification MLP's hidden width is w/reduction.
      mask_ratio, mask_patch: the teacher's training mask.
      paste_fraction: side of the pseudo-anomaly square, in frame widths.
      margin: of the fusion ranking loss, in log units.
      dtype: compute dtype; parameters are float32.
    """

    LOSS_TERMS = ("teacher", "student", "distill", "fusion")
    FEATURE_INPUTS = ("target_frame",)  # `features` pools the student's encoder of the frame.
    EXTRA_MAPS: ClassVar[dict[str, str]] = {"saliency": "MDSF saliency S⁽ˢ⁾ (mean over scales)"}

    def __init__(
        self,
        *,
        image_size: int,
        channels: int,
        widths: Sequence[int],
        teacher_convs: int,
        student_convs: int,
        reduction: int,
        mask_ratio: float,
        mask_patch: int,
        paste_fraction: float,
        margin: float,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if not 0.0 < paste_fraction < 1.0 or reduction < 1:
            raise ValueError(
                f"paste_fraction must be in (0, 1), got {paste_fraction}; reduction ≥ 1, "
                f"got {reduction}"
            )
        check_autoencoder(image_size, widths, mask_ratio, mask_patch)
        dtype = jnp.dtype(dtype)
        net = {"dtype": dtype, "rngs": rngs}
        self.teacher = ConvAutoencoder(channels, widths, convs_per_stage=teacher_convs, **net)
        self.student = ConvAutoencoder(channels, widths, convs_per_stage=student_convs, **net)
        self.amplifiers = nnx.List([Amplifier(w, reduction, **net) for w in widths])
        self.saliency = nnx.List(
            [conv2d(w, 1, kernel_size=1, out_axis=None, **net) for w in widths]
        )
        self.align = nnx.List([conv2d(w, widths[0], kernel_size=1, **net) for w in widths])
        self.mask_ratio = mask_ratio
        self.mask_patch = mask_patch
        self.paste_side = max(1, int(paste_fraction * image_size))
        self.margin = margin

    def fuse(
        self, teacher: Sequence[jax.Array], student: Sequence[jax.Array]
    ) -> tuple[jax.Array, list[jax.Array]]:
        """Per-scale features of both networks → F_fusion `[B, S/2, S/2, w_1]` float32 and the
        saliency maps S^(s) `[B, h_s, w_s]` float32."""
        finest = teacher[0].shape[:3]  # (B, S/2, S/2)
        fusion, saliencies = 0.0, []
        for t, s, amplify, saliency, align in zip(
            teacher, student, self.amplifiers, self.saliency, self.align, strict=True
        ):
            amplified = amplify(jnp.abs(t - s))
            weight = jax.nn.sigmoid(saliency(amplified).astype(jnp.float32))
            part = weight * align(amplified).astype(jnp.float32)
            fusion = fusion + jax.image.resize(part, (*finest, part.shape[-1]), "bilinear")
            saliencies.append(weight[..., 0])
        return fusion, saliencies

    def loss_terms(
        self, inputs: Mapping[str, jax.Array], *, rngs: nnx.Rngs, vgg=None
    ) -> dict[str, jax.Array]:
        frame = inputs["target_frame"]
        teacher = self.teacher.encode(frame, rngs=rngs)
        student = self.student.encode(frame, rngs=rngs)
        if self.mask_ratio > 0:
            visible = masked(frame, rngs.masking(), self.mask_patch, self.mask_ratio)
            teacher_image = self.teacher.decode(self.teacher.encode(visible, rngs=rngs)[-1])
        else:
            teacher_image = self.teacher.decode(teacher[-1])
        targets = [jax.lax.stop_gradient(t) for t in teacher]
        pasted = cut_paste(rngs.masking(), frame, self.paste_side)
        frozen = jax.lax.stop_gradient((self.teacher.encode(pasted), self.student.encode(pasted)))
        clean = fusion_norm(self.fuse(targets, [jax.lax.stop_gradient(s) for s in student])[0])
        anomalous = fusion_norm(self.fuse(*frozen)[0])
        ratio = jnp.log(anomalous + EPS) - jnp.log(clean + EPS)
        return {
            "teacher": losses.mse(teacher_image, frame),
            "student": losses.mse(self.student.decode(student[-1]), frame),
            "distill": jnp.mean(
                jnp.stack([losses.mse(t, s) for t, s in zip(targets, student, strict=True)])
            ),
            "fusion": jnp.mean(jax.nn.softplus(self.margin - ratio)),
        }

    def explained(self, inputs: Mapping[str, jax.Array]) -> tuple[jax.Array, Head]:
        frame = inputs["target_frame"]
        teacher = self.teacher.encode(frame)
        student = self.student.encode(frame)

        def head(features: jax.Array) -> Maps:
            deepest = features[:, 0]
            fusion, saliencies = self.fuse(teacher, [*student[:-1], deepest])
            size = frame.shape[1:3]
            saliency = sum(
                jax.image.resize(m, (m.shape[0], *size), "bilinear") for m in saliencies
            ) / len(saliencies)
            energy = upsample2x(jnp.sum(fusion**2, axis=-1, keepdims=True))[..., 0]
            return {
                "image": self.student.decode(deepest),
                "rgb": energy,
                "flow": jnp.zeros_like(energy),
                "saliency": saliency,
            }

        return student[-1][:, None], head


def fusion_norm(fusion: jax.Array) -> jax.Array:
    """‖F_fusion‖₂ per sample of `[B, h, w, c]` → `[B]`."""
    return jnp.sqrt(jnp.sum(fusion.astype(jnp.float32) ** 2, axis=(1, 2, 3)))
