"""The paper's next-frame and next-flow predictor (DESIGN.md "Model").

Shapes: B batch, T = `history` past frames, H = W = `image_size`, C `channels`, P `patch`,
h = w = H/P, N = h·w tokens, D `width`, K = `motion_channels[-1]`.

1. Patch embedding per frame (the paper's z = W_p x + b_p on flattened P×P×C patches) plus a
   learnable spatial position embedding `[N, D]`.
2. Spatial pre-LN transformer, one frame at a time (frames folded into the batch), final LN
   → `[B, T, N, D]`.
3. Causal temporal transformer over per-patch sequences `[B·N, T, D]` with a learnable temporal
   position embedding `[T, D]`, final LN; its last step is the appearance `A_app [B, N, D]`.
4. Motion encoder: `len(motion_channels)` `TemporalConv` stages (3×3×3, spatial stride 2, GELU)
   over the flow clip `[B, T, H, W, 2]` → motion features `A^k [B, T, h, w, K]` (the last conv
   layer's activations: Grad-CAM's feature maps) → motion tokens `M = Linear(A^k) [B, T·N, D]`.
5. Gated cross-attention fusion: `A = MHA(LN(A_app), LN(M))`, `G = σ(W_m M̄)` with M̄ the mean
   of M over T (aligned with the N appearance tokens), `F = A_app + G ⊙ A`.
6. Two `ConvDecoder`s on F as a `[B, h, w, D]` grid: RGB → tanh → `[B, H, W, C]` in [-1, 1];
   flow (linear) → `[B, H, W, 2]`.

Choices of ours where the paper is silent: the spatial encoder ends with a LayerNorm (ViT); the
motion tokens get their own learnable spatial `[N, D]` and temporal `[T, D]` position
embeddings, because the 3D CNN is translation-equivariant and an appearance token could not
otherwise tell where (or when) the motion it attends to happened; the motion encoder keeps T
(T' = T, 'SAME' in time); decoders upsample by nearest ×2 + 3×3 conv rather than transposed
convolutions; dropout (if any) acts on the transformer residual branches and the fused
attention output.

Every method is a pure function of the module's parameters (no stored RNG, no mutable state),
so Grad-CAM is `jax.grad` of e.g. `lambda a_k: score(model.decode(appearance, a_k))`.

As a `VadModel` (`interface`): the loss terms are DESIGN.md's (`jaxvad.losses.loss_terms`);
Grad-CAM explains the motion features A^k; the score's components are the next frame's and
the next flow's squared prediction errors; the deep feature (`features`) is F's mean over the
N tokens `[B, D]`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvad import losses
from jaxvad.model.interface import Head, Maps, VadModel, squared_error
from jaxvad.model.layers import (
    CONV_IN,
    EMBED,
    ConvDecoder,
    Dtype,
    MultiHeadAttention,
    TemporalConv,
    TransformerBlock,
    apply_dropout,
    gelu,
    layer_norm,
    linear,
    position_embedding,
)


class Predictor(VadModel):
    """Predicts frame t+1 and flow t+1 from T past frames and their flows.

    Call inside a jitted function as `model(frames, flows, rngs=nnx.Rngs(dropout=key))` for
    training (dropout on) or `model(frames, flows)` for evaluation (deterministic).

    Args:
      image_size: H = W of the (square) input frames.
      channels: C, frame channels (3 RGB, 1 gray); the RGB head predicts C channels.
      history: T, past frames (and flows) per sample.
      patch: P, a power of two dividing `image_size`; the token grid is (H/P) × (W/P).
      width: D; `heads` must divide it.
      motion_channels: widths of the log2(P) motion 3D-conv stages (each halves H and W);
        the last one is K, the channels of the Grad-CAM feature maps.
      decoder_channels: widths of the log2(P) decoder stages (each doubles H and W).
      dropout: rate on the transformer residual branches and the fused attention output;
        active only when the call gets `rngs`.
      conv3d: "taps" (one 2D conv over the time taps as channels, fast on CPU) or "native"
        (one 3D conv).
      dtype: compute dtype (a dtype or its name); parameters are always float32.
      rngs: parameter initialisation keys (`rngs.params()`).
    """

    LOSS_TERMS = losses.LOSS_TERMS
    FINE_LAYER = "motion encoder, first 3D-conv stage (S/2 × S/2)"
    FEATURE_INPUTS = ("frames", "flows")  # `features` reads the past, not the predicted frame.

    def __init__(
        self,
        *,
        image_size: int,
        channels: int,
        history: int,
        patch: int = 16,
        width: int,
        spatial_depth: int,
        temporal_depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        motion_channels: Sequence[int],
        decoder_channels: Sequence[int],
        dropout: float = 0.0,
        conv3d: str = "taps",
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        _validate(
            image_size=image_size,
            channels=channels,
            history=history,
            patch=patch,
            width=width,
            heads=heads,
            spatial_depth=spatial_depth,
            temporal_depth=temporal_depth,
            motion_channels=motion_channels,
            decoder_channels=decoder_channels,
            dropout=dropout,
            conv3d=conv3d,
        )
        dtype = jnp.dtype(dtype)  # also accepts a name: "float32", "bfloat16"
        self.image_size = image_size
        self.channels = channels
        self.history = history
        self.patch = patch
        self.width = width
        self.grid = image_size // patch
        self.dtype = dtype
        tokens = self.grid**2
        block = {"dropout": dropout, "dtype": dtype, "rngs": rngs}

        # 1-2. Patch embedding and spatial encoder (per frame).
        self.patch_embed = linear(
            patch * patch * channels, width, (None, EMBED), dtype=dtype, rngs=rngs
        )
        self.space_position = position_embedding(tokens, width, rngs=rngs)
        self.spatial_blocks = nnx.List(
            [TransformerBlock(width, heads, mlp_ratio, **block) for _ in range(spatial_depth)]
        )
        self.spatial_norm = layer_norm(width, dtype=dtype, rngs=rngs)

        # 3. Causal temporal transformer (per patch).
        self.time_position = position_embedding(history, width, rngs=rngs)
        self.temporal_blocks = nnx.List(
            [
                TransformerBlock(width, heads, mlp_ratio, causal=True, **block)
                for _ in range(temporal_depth)
            ]
        )
        self.temporal_norm = layer_norm(width, dtype=dtype, rngs=rngs)

        # 4. Motion encoder (3D CNN on flows) and motion tokens.
        widths = [2, *motion_channels]
        self.motion_convs = nnx.List(
            [
                TemporalConv(a, b, stride_space=2, impl=conv3d, dtype=dtype, rngs=rngs)
                for a, b in itertools.pairwise(widths)
            ]
        )
        self.motion_proj = linear(widths[-1], width, (CONV_IN, EMBED), dtype=dtype, rngs=rngs)
        self.motion_space_position = position_embedding(tokens, width, rngs=rngs)
        self.motion_time_position = position_embedding(history, width, rngs=rngs)

        # 5. Gated cross-attention fusion. The gate's output axis is left unnamed: "embed" is
        # already its input axis, and one mesh axis cannot shard two dimensions.
        self.fusion_query_norm = layer_norm(width, dtype=dtype, rngs=rngs)
        self.fusion_motion_norm = layer_norm(width, dtype=dtype, rngs=rngs)
        self.cross_attention = MultiHeadAttention(width, heads, dtype=dtype, rngs=rngs)
        self.gate = linear(width, width, (EMBED, None), dtype=dtype, rngs=rngs)
        self.fusion_drop = nnx.Dropout(dropout)

        # 6. Decoders.
        self.rgb_decoder = ConvDecoder(width, decoder_channels, channels, dtype=dtype, rngs=rngs)
        self.flow_decoder = ConvDecoder(width, decoder_channels, 2, dtype=dtype, rngs=rngs)

    def encode_frames(self, frames: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """frames: `[B, T, H, W, C]` in [-1, 1] → spatial tokens `[B, T, N, D]` (compute dtype).

        Each frame is encoded on its own: token (t, n) depends on frame t only.
        """
        B, T, _, _, C = frames.shape
        P, g = self.patch, self.grid
        patches = frames.astype(self.dtype).reshape(B * T, g, P, g, P, C)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(B * T, g * g, P * P * C)
        x = self.patch_embed(patches) + self.space_position[...].astype(self.dtype)
        for block in self.spatial_blocks:
            x = block(x, rngs=rngs)
        return self.spatial_norm(x).reshape(B, T, g * g, self.width)

    def temporal(self, tokens: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """tokens: `[B, T, N, D]` (T ≤ history) → causal features `[B, T, N, D]`; step t sees
        steps ≤ t only. The last step `[:, -1]` is the appearance `A_app [B, N, D]`."""
        B, T, N, D = tokens.shape
        x = tokens.astype(self.dtype).transpose(0, 2, 1, 3).reshape(B * N, T, D)
        x = x + self.time_position[:T].astype(self.dtype)
        for block in self.temporal_blocks:
            x = block(x, rngs=rngs)
        return self.temporal_norm(x).reshape(B, N, T, D).transpose(0, 2, 1, 3)

    def encode_motion(self, flows: jax.Array, *, stages: slice = slice(None)) -> jax.Array:
        """flows: `[B, T, H, W, 2]` → motion features `A^k [B, T, h, w, K]` (compute dtype):
        the last conv layer's GELU activations, Grad-CAM's feature maps. `stages` runs only
        those conv stages (their input is then the stage before's output)."""
        x = flows
        for conv in self.motion_convs[stages]:
            x = gelu(conv(x))
        return x

    def fuse(
        self,
        appearance: jax.Array,
        motion_features: jax.Array,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Gated cross-attention fusion: appearance `[B, N, D]` (A_app) and motion_features
        `[B, T, h, w, K]` (A^k) → F `[B, N, D]` (compute dtype), the decoders' input."""
        B, T, h, w, _ = motion_features.shape
        N, D = h * w, self.width
        appearance = appearance.astype(self.dtype)
        motion = self.motion_proj(motion_features.astype(self.dtype)).reshape(B, T, N, D)
        motion = (
            motion
            + self.motion_space_position[...].astype(self.dtype)
            + self.motion_time_position[:T, None].astype(self.dtype)
        )
        gate = jax.nn.sigmoid(self.gate(motion.mean(axis=1)))  # G = σ(W_m M̄): [B, N, D]
        attended = self.cross_attention(
            self.fusion_query_norm(appearance),
            self.fusion_motion_norm(motion.reshape(B, T * N, D)),
        )
        return appearance + gate * apply_dropout(self.fusion_drop, attended, rngs)

    def decode(
        self,
        appearance: jax.Array,
        motion_features: jax.Array,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Fusion and decoders.

        appearance: `[B, N, D]` (A_app); motion_features: `[B, T, h, w, K]` (A^k).
        Returns (frame `[B, H, W, C]` float32 in [-1, 1], flow `[B, H, W, 2]` float32).
        """
        B, _, h, w, _ = motion_features.shape
        grid = self.fuse(appearance, motion_features, rngs=rngs).reshape(B, h, w, self.width)
        frame = jnp.tanh(self.rgb_decoder(grid))
        flow = self.flow_decoder(grid)
        return frame.astype(jnp.float32), flow.astype(jnp.float32)

    def __call__(
        self, frames: jax.Array, flows: jax.Array, *, rngs: nnx.Rngs | None = None
    ) -> dict[str, jax.Array]:
        """frames: `[B, T, H, W, C]` in [-1, 1]; flows: `[B, T, H, W, 2]` (normalised).
        rngs: an `nnx.Rngs` with a `dropout` stream turns dropout on; None is deterministic.

        Returns float32 `frame [B, H, W, C]`, `flow [B, H, W, 2]` (the predictions for t+1),
        `motion_features [B, T, h, w, K]` and `appearance [B, N, D]` (for the explanations).
        """
        T, S = self.history, self.image_size
        expected = {"frames": (T, S, S, self.channels), "flows": (T, S, S, 2)}
        for name, array in (("frames", frames), ("flows", flows)):
            if array.ndim != 5 or array.shape[1:] != expected[name]:
                raise ValueError(
                    f"{name} must be [B, {', '.join(map(str, expected[name]))}], "
                    f"got {list(array.shape)}"
                )
        if frames.shape[0] != flows.shape[0]:
            raise ValueError(
                f"batch sizes differ: frames {frames.shape[0]}, flows {flows.shape[0]}"
            )
        appearance = self.temporal(self.encode_frames(frames, rngs=rngs), rngs=rngs)[:, -1]
        motion_features = self.encode_motion(flows)
        frame, flow = self.decode(appearance, motion_features, rngs=rngs)
        return {
            "frame": frame,
            "flow": flow,
            "motion_features": motion_features.astype(jnp.float32),
            "appearance": appearance.astype(jnp.float32),
        }

    def loss_terms(
        self, inputs: Mapping[str, jax.Array], *, rngs: nnx.Rngs, vgg=None
    ) -> dict[str, jax.Array]:
        out = self(inputs["frames"], inputs["flows"], rngs=rngs)
        return losses.loss_terms(
            out["frame"], out["flow"], inputs["target_frame"], inputs["target_flow"], vgg=vgg
        )

    def explained(self, inputs: Mapping[str, jax.Array]) -> tuple[jax.Array, Head]:
        return self._split(inputs, len(self.motion_convs))

    def explained_fine(self, inputs: Mapping[str, jax.Array]) -> tuple[jax.Array, Head]:
        """`explained` split after the motion encoder's first stage: features
        `[B, T, S/2, S/2, motion_channels[0]]`, and the head runs the other stages first."""
        return self._split(inputs, 1)

    def _split(self, inputs: Mapping[str, jax.Array], at: int) -> tuple[jax.Array, Head]:
        """The forward pass split after the motion encoder's first `at` stages."""
        appearance = self.temporal(self.encode_frames(inputs["frames"]))[:, -1]
        head = self._head(appearance, inputs, stages=slice(at, None))
        return self.encode_motion(inputs["flows"], stages=slice(0, at)), head

    def _head(
        self, appearance: jax.Array, inputs: Mapping[str, jax.Array], stages: slice = slice(0, 0)
    ) -> Head:
        """The maps of A_app `[B, N, D]` as a function of the motion features A^k (of the
        stage before `stages`, which the head runs first; none by default)."""

        def head(motion_features: jax.Array) -> Maps:
            motion_features = self.encode_motion(motion_features, stages=stages)
            frame, flow = self.decode(appearance, motion_features)
            return {
                "image": frame,
                "rgb": squared_error(frame, inputs["target_frame"]),
                "flow": squared_error(flow, inputs["target_flow"]),
            }

        return head

    def cached_frame(self, frame: jax.Array) -> jax.Array:
        """frame `[B, H, W, C]` → its spatial tokens `[B, N, D]` (`encode_frames`: a frame's
        tokens depend on it alone, so each is computed once in streaming)."""
        return self.encode_frames(frame[:, None])[:, 0]

    def maps_from_cache(self, cache: jax.Array, inputs: Mapping[str, jax.Array]) -> Maps:
        """`maps` from the past frames' spatial tokens `cache` `[B, T, N, D]`. Recomputed: the
        temporal transformer (its temporal position embedding is absolute within the window,
        so a frame's keys and values change as the window slides), the motion encoder (its
        'SAME' temporal padding at the window's ends changes every frame's features) and the
        fusion and decoders."""
        head = self._head(self.temporal(cache)[:, -1], inputs)
        return head(self.encode_motion(inputs["flows"]))

    def features(self, inputs: Mapping[str, jax.Array]) -> jax.Array:
        """The mean over the N tokens of the fused F `[B, N, D]` (appearance and motion, the
        decoders' input) → `[B, D]` float32."""
        appearance = self.temporal(self.encode_frames(inputs["frames"]))[:, -1]
        fused = self.fuse(appearance, self.encode_motion(inputs["flows"]))
        return fused.astype(jnp.float32).mean(axis=1)


def _validate(
    *,
    image_size: int,
    channels: int,
    history: int,
    patch: int,
    width: int,
    heads: int,
    spatial_depth: int,
    temporal_depth: int,
    motion_channels: Sequence[int],
    decoder_channels: Sequence[int],
    dropout: float,
    conv3d: str,
) -> None:
    """Raises ValueError naming the first inconsistent constructor argument."""
    positive = {
        "image_size": image_size,
        "channels": channels,
        "history": history,
        "width": width,
        "heads": heads,
    }
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    for name, value in (("spatial_depth", spatial_depth), ("temporal_depth", temporal_depth)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if patch < 2 or patch & (patch - 1):
        raise ValueError(f"patch must be a power of two >= 2, got {patch}")
    if image_size % patch:
        raise ValueError(f"image_size {image_size} is not divisible by patch {patch}")
    if width % heads:
        raise ValueError(f"width {width} is not divisible by heads {heads}")
    stages = int(math.log2(patch))
    for name, seq in (("motion_channels", motion_channels), ("decoder_channels", decoder_channels)):
        if len(seq) != stages:
            raise ValueError(
                f"{name} needs log2(patch) = {stages} entries (one ×2 stage each), "
                f"got {len(seq)}: {tuple(seq)}"
            )
        if any(c < 1 for c in seq):
            raise ValueError(f"{name} must be positive, got {tuple(seq)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if conv3d not in ("taps", "native"):
        raise ValueError(f"conv3d must be 'taps' or 'native', got {conv3d!r}")
