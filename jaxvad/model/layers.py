"""Reusable Flax NNX blocks: attention, MLP, pre-LN transformer block, temporal (3D) convolution,
upsampling conv decoder.

Conventions shared by every block here (and by the detectors built from them):

* Shapes are channels-last: tokens `[B, L, D]`, images `[B, H, W, C]`, clips `[B, T, H, W, C]`.
* `dtype` is the compute dtype (`jnp.float32` or `jnp.bfloat16`); parameters are always float32
  (`param_dtype=jnp.float32`), so optimiser state and checkpoints do not depend on `dtype`.
* Every parameter carries logical axis names (`nnx.with_partitioning`), one per dimension:

  ============  ==================================================================
  `embed`       the transformer width D
  `mlp`         the MLP hidden width
  `heads`       attention projection outputs/inputs (size heads · head_dim)
  `conv_in`     convolution input channels (also: conv features entering a Linear)
  `conv_out`    convolution output channels
  `None`        spatial/temporal kernel taps, patch pixels, position index, and the
                2- or 3-channel outputs of image/flow heads (they divide no mesh axis)
  ============  ==================================================================

  No parameter names the same logical axis twice, so any rules table mapping each logical axis
  to at most one mesh axis gives a valid `PartitionSpec`. Turn the names into specs with::

      with nnx.logical_axis_rules((("embed", "fsdp"), ("mlp", None), ...)):
          specs = nnx.get_partition_spec(nnx.state(model))

  The annotations are *not* applied eagerly (`eager_sharding=False`): flax 0.12 otherwise
  shards each variable as it is created and fails without a mesh in context. Models are thus
  built the same way on a laptop and on a pod; the trainer places the parameters with
  `jax.jit(init, out_shardings=...)` from the specs above (shape first, then shard, then
  materialise).
* Dropout is stateless in the module: no RNG state is stored in the model. A block is
  deterministic unless its call receives `rngs` (an `nnx.Rngs` with a `dropout` stream, or a
  `default` one), e.g. `model(x, rngs=nnx.Rngs(dropout=key))` inside a jitted train step, and
  `model(x)` for evaluation. The same key gives the same masks.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
CONV_IN = "conv_in"
CONV_OUT = "conv_out"

AxisNames = tuple[str | None, ...]
Dtype = Any  # a jnp dtype such as jnp.float32 or jnp.bfloat16
PARAM_DTYPE = jnp.float32

# ViT-style initialisers (big_vision): Xavier-uniform matrices, N(0, 0.02) position embeddings.
DENSE_INIT = nnx.initializers.xavier_uniform()
CONV_INIT = nnx.initializers.lecun_normal()
POSITION_INIT = nnx.initializers.normal(stddev=0.02)
_SQRT_HALF = 1 / math.sqrt(2)  # `gelu`: Φ(x) = (1 + erf(x · √½)) / 2.


def partitioned(initializer: Callable[..., jax.Array], names: AxisNames) -> Callable[..., Any]:
    """`initializer` annotated with logical axis `names` (one per dimension), not eagerly
    sharded (see the module docstring)."""
    return nnx.with_partitioning(initializer, names, eager_sharding=False)


def position_embedding(length: int, dim: int, *, rngs: nnx.Rngs) -> nnx.Param:
    """A learnable `[length, dim]` float32 position embedding, axes `(None, "embed")`."""
    init = partitioned(POSITION_INIT, (None, EMBED))
    return nnx.Param(init(rngs.params(), (length, dim), PARAM_DTYPE))


def linear(
    in_features: int,
    out_features: int,
    axes: tuple[str | None, str | None],
    *,
    dtype: Dtype,
    rngs: nnx.Rngs,
    kernel_init: nnx.Initializer = DENSE_INIT,
) -> nnx.Linear:
    """`nnx.Linear` with a `axes`-annotated kernel `[in, out]` (drawn by `kernel_init`) and a
    bias annotated `(axes[1],)`."""
    return nnx.Linear(
        in_features,
        out_features,
        dtype=dtype,
        param_dtype=PARAM_DTYPE,
        kernel_init=partitioned(kernel_init, axes),
        bias_init=partitioned(nnx.initializers.zeros_init(), (axes[1],)),
        rngs=rngs,
    )


def conv2d(
    in_features: int,
    out_features: int,
    *,
    kernel_size: int = 3,
    out_axis: str | None = CONV_OUT,
    dtype: Dtype,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """'SAME'-padded 2D `nnx.Conv`, kernel `[k, k, in, out]` annotated
    `(None, None, "conv_in", out_axis)`; pass `out_axis=None` for image/flow heads."""
    return nnx.Conv(
        in_features,
        out_features,
        kernel_size=(kernel_size, kernel_size),
        padding="SAME",
        dtype=dtype,
        param_dtype=PARAM_DTYPE,
        kernel_init=partitioned(CONV_INIT, (None, None, CONV_IN, out_axis)),
        bias_init=partitioned(nnx.initializers.zeros_init(), (out_axis,)),
        rngs=rngs,
    )


def layer_norm(dim: int, *, dtype: Dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over the last axis (width `dim`, axis "embed"); statistics in float32."""
    return nnx.LayerNorm(
        dim,
        epsilon=1e-6,
        dtype=dtype,
        param_dtype=PARAM_DTYPE,
        scale_init=partitioned(nnx.initializers.ones_init(), (EMBED,)),
        bias_init=partitioned(nnx.initializers.zeros_init(), (EMBED,)),
        rngs=rngs,
    )


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, x·Φ(x) = x/2 · (1 + erf(x/√2)), in PyTorch's `nn.GELU` form (the paper's
    implementation). The same function as `jax.nn.gelu(x, approximate=False)`, which goes
    through erfc, within 1e-6; written with erf because XLA:CPU runs the train step about 11 %
    faster so (the README's Watch section)."""
    return 0.5 * x * (1 + jax.lax.erf(x * _SQRT_HALF))


def apply_dropout(layer: nnx.Dropout, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
    """Applies `layer` only when `rngs` is given (training); identity otherwise."""
    return layer(x, deterministic=rngs is None, rngs=rngs)


class MultiHeadAttention(nnx.Module):
    """Multi-head (self- or cross-) attention through `jax.nn.dot_product_attention`, so
    XLA/cuDNN can choose a fused kernel.

    q, k, v: `[dim → heads·head_dim]` projections (kernel axes `("embed", "heads")`);
    out: `[heads·head_dim → dim]` (`("heads", "embed")`). head_dim = dim // heads.
    """

    def __init__(self, dim: int, heads: int, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.query = linear(dim, dim, (EMBED, HEADS), dtype=dtype, rngs=rngs)
        self.key = linear(dim, dim, (EMBED, HEADS), dtype=dtype, rngs=rngs)
        self.value = linear(dim, dim, (EMBED, HEADS), dtype=dtype, rngs=rngs)
        self.out = linear(dim, dim, (HEADS, EMBED), dtype=dtype, rngs=rngs)

    def __call__(
        self, x: jax.Array, context: jax.Array | None = None, *, causal: bool = False
    ) -> jax.Array:
        """x: `[B, L, D]` queries; context: `[B, S, D]` keys/values (None: self-attention,
        S = L). causal: query i attends to keys j ≤ i only (lower-triangular mask; meant for
        self-attention). Returns `[B, L, D]` in the compute dtype."""
        context = x if context is None else context
        B, L, D = x.shape
        S = context.shape[1]
        split = (self.heads, self.head_dim)
        q = self.query(x).reshape(B, L, *split)
        k = self.key(context).reshape(B, S, *split)
        v = self.value(context).reshape(B, S, *split)
        y = jax.nn.dot_product_attention(q, k, v, is_causal=causal)  # [B, L, heads, head_dim]
        return self.out(y.reshape(B, L, D))


class Mlp(nnx.Module):
    """`[..., dim] → GELU(Linear(dim → hidden)) → Linear(hidden → dim) → [..., dim]`."""

    def __init__(self, dim: int, hidden: int, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.fc1 = linear(dim, hidden, (EMBED, MLP), dtype=dtype, rngs=rngs)
        self.fc2 = linear(hidden, dim, (MLP, EMBED), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu(self.fc1(x)))


class TransformerBlock(nnx.Module):
    """Pre-LN transformer block: `x + drop(attn(LN(x)))`, then `x + drop(mlp(LN(x)))`.

    `causal=True` masks attention to the past (the temporal transformer). Dropout (rate
    `dropout`, on both residual branches) is active only when the call gets `rngs`.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        *,
        dropout: float = 0.0,
        causal: bool = False,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.causal = causal
        self.norm1 = layer_norm(dim, dtype=dtype, rngs=rngs)
        self.attn = MultiHeadAttention(dim, heads, dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm(dim, dtype=dtype, rngs=rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(dropout)  # no stored RNG: keys come with the call

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """x: `[B, L, D]` → `[B, L, D]`."""
        x = x + apply_dropout(self.drop, self.attn(self.norm1(x), causal=self.causal), rngs)
        return x + apply_dropout(self.drop, self.mlp(self.norm2(x)), rngs)


class TemporalConv(nnx.Module):
    """3D convolution over a clip `[B, T, H, W, Cin] → [B, T, H', W', Cout]`, 'SAME' padded in
    time (T' = T) and space (H' = ceil(H / stride_space)).

    One kernel `[kt, ks, ks, Cin, Cout]` (axes `(None, None, None, "conv_in", "conv_out")`) and
    bias `[Cout]`, used by two equivalent implementations:

    * `impl="taps"`: the kt temporal taps as channels of one 2D convolution: the kt shifted
      `[B·T, H, W, Cin]` slices of the time-padded clip side by side, `[B·T, H, W, kt·Cin]`,
      with the kernel's taps stacked the same way `[ks, ks, kt·Cin, Cout]`. XLA:CPU's native
      3D convolution is slow, above all its gradient (DESIGN.md: 1.73 s → 0.23 s in a
      stand-in train step; the 224² predictor's forward + backward at batch 4 on 2 cores:
      3.5 s with taps, 8.6 s native), so this is the default. Until 2026-12-07 the taps were
      kt 2D convolutions summed; one convolution makes the synthetic train step 1.05–1.09×
      as fast on the 2-core CPU (one kernel gradient per stage instead of kt).
    * `impl="native"`: one 3D `lax.conv_general_dilated` (check which is faster on GPU/TPU).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        kernel_time: int = 3,
        kernel_space: int = 3,
        stride_space: int = 1,
        impl: str = "taps",
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if impl not in ("taps", "native"):
            raise ValueError(f"TemporalConv impl must be 'taps' or 'native', got {impl!r}")
        self.kernel_time = kernel_time
        self.kernel_space = kernel_space
        self.stride_space = stride_space
        self.impl = impl
        self.dtype = dtype
        shape = (kernel_time, kernel_space, kernel_space, in_ch, out_ch)
        kernel_init = partitioned(CONV_INIT, (None, None, None, CONV_IN, CONV_OUT))
        bias_init = partitioned(nnx.initializers.zeros_init(), (CONV_OUT,))
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, PARAM_DTYPE))
        self.bias = nnx.Param(bias_init(rngs.params(), (out_ch,), PARAM_DTYPE))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: `[B, T, H, W, Cin]` → `[B, T, ceil(H/s), ceil(W/s), Cout]` in the compute dtype."""
        B, T, H, W, _ = x.shape
        kt, ks, s = self.kernel_time, self.kernel_space, self.stride_space
        x = x.astype(self.dtype)
        kernel = self.kernel[...].astype(self.dtype)
        # 'SAME' as XLA defines it: the extra pad (even kernels) goes after.
        time_pad = ((kt - 1) // 2, kt - 1 - (kt - 1) // 2)
        space_pad = jax.lax.padtype_to_pads((H, W), (ks, ks), (s, s), "SAME")
        if self.impl == "native":
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=(1, s, s),
                padding=[time_pad, *space_pad],
                dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
            )
        else:
            padded = jnp.pad(x, ((0, 0), time_pad, (0, 0), (0, 0), (0, 0)))
            frames = jnp.concatenate([padded[:, tap : tap + T] for tap in range(kt)], axis=-1)
            y = jax.lax.conv_general_dilated(
                frames.reshape(B * T, H, W, -1),  # [B·T, H, W, kt·Cin], tap-major channels.
                jnp.moveaxis(kernel, 0, 2).reshape(ks, ks, -1, kernel.shape[-1]),
                window_strides=(s, s),
                padding=space_pad,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            y = y.reshape(B, T, *y.shape[1:])
        return y + self.bias[...].astype(self.dtype)


def upsample2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour ×2 upsampling: `[B, h, w, C] → [B, 2h, 2w, C]`."""
    B, h, w, C = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (B, h, 2, w, 2, C))
    return x.reshape(B, 2 * h, 2 * w, C)


def _phase_taps(kernel: jax.Array, axis: int) -> jax.Array:
    """A 3-tap axis of a kernel folded for nearest ×2 upsampling: the even outputs read the
    input taps (i − 1, i) with weights (k0, k1 + k2), the odd ones (i, i + 1) with (k0 + k1,
    k2). `[..., 3 (axis), ...]` → `[2 (phase), ..., 2 (axis), ...]`."""
    k0, k1, k2 = (jnp.take(kernel, i, axis=axis) for i in range(3))
    even = jnp.stack([k0, k1 + k2], axis=axis)
    odd = jnp.stack([k0 + k1, k2], axis=axis)
    return jnp.stack([even, odd])


def upsampled_conv(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """`conv(upsample2x(x))` for a 'SAME' 3×3 `conv` (`conv2d`), computed on the small grid:
    `[B, h, w, C_in] → [B, 2h, 2w, C_out]` in `conv`'s compute dtype.

    Each output pixel's 3×3 window over the upsampled image covers 2×2 input pixels, so each
    of the 4 output phases (row and column parity) is a 2×2 convolution of `x` with the
    kernel's taps summed (`_phase_taps`). The 4 phases are one matrix product of the 4
    shifted views of `x` `[B, h + 1, w + 1, 4·C_in]` with `[4·C_in, 4·C_out]`, then interleave:
    16·h·w·C_in·C_out multiply-adds instead of 36 (a dot: XLA:CPU runs the 2×2 phase kernels
    as convolutions several times slower). The same function of the same parameters: taps
    are summed in float32, so results differ from upsample-then-convolve by rounding only.
    """
    kernel = conv.kernel[...]  # [3, 3, C_in, C_out]
    if kernel.shape[:2] != (3, 3) or conv.padding != "SAME":
        raise ValueError(f"upsampled_conv takes a 'SAME' 3×3 conv, not {kernel.shape[:2]}")
    B, h, w, _ = x.shape
    c = kernel.shape[-1]
    taps = _phase_taps(_phase_taps(kernel.astype(jnp.float32), 0), 2)  # [2 b, 2 a, 2, 2, I, O]
    taps = jnp.moveaxis(taps, (0, 1), (-2, -3))  # [2, 2, C_in, 2 (a), 2 (b), C_out]
    taps = taps.reshape(-1, 4 * c).astype(conv.dtype)
    padded = jnp.pad(x.astype(conv.dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
    views = jnp.concatenate(  # [B, h + 1, w + 1, 4·C_in]: position p reads rows (p − 1, p).
        [padded[:, i : i + h + 1, j : j + w + 1] for i in range(2) for j in range(2)], axis=-1
    )
    y = (views @ taps).reshape(B, h + 1, w + 1, 2, 2, c)
    phases = [[y[:, a : a + h, b : b + w, a, b] for b in range(2)] for a in range(2)]
    out = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # [B, h, 2, w, 2, C]
    return out.reshape(B, 2 * h, 2 * w, c) + conv.bias[...].astype(conv.dtype)


class ConvDecoder(nnx.Module):
    """Upsampling conv decoder `[B, h, w, in_ch] → [B, h·2^n, w·2^n, out_ch]`, n = len(channels).

    Each stage: nearest ×2 upsampling, then 3×3 conv + GELU (upsample-then-convolve avoids the
    checkerboard artefacts of strided transposed convolutions, Odena et al. 2016), computed on
    the small grid (`upsampled_conv`). A final 3×3 conv maps to `out_ch` with a linear output:
    the caller applies any squashing (tanh for RGB).
    """

    def __init__(
        self,
        in_ch: int,
        channels: Sequence[int],
        out_ch: int,
        *,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        widths = [in_ch, *channels]
        self.stages = nnx.List(
            [conv2d(a, b, dtype=dtype, rngs=rngs) for a, b in itertools.pairwise(widths)]
        )
        self.head = conv2d(widths[-1], out_ch, out_axis=None, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: `[B, h, w, in_ch]` → `[B, h·2^n, w·2^n, out_ch]` in the compute dtype."""
        for conv in self.stages:
            x = gelu(upsampled_conv(conv, x))
        return self.head(x)


def max_pool2x(x: jax.Array) -> jax.Array:
    """2×2 max pooling, stride 2: `[B, h, w, C] → [B, h/2, w/2, C]` (h, w even)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def random_patch_mask(key: jax.Array, shape: Sequence[int], patch: int, ratio: float) -> jax.Array:
    """A random keep-mask of `[B, H, W, 1]` float32 (1 kept, 0 masked) that hides a fraction
    `ratio` of each image's `patch`×`patch` cells (rounded down; cells drawn without
    replacement). `shape` is `(B, H, W)` with H, W divisible by `patch`."""
    B, H, W = shape
    h, w = H // patch, W // patch
    hidden = int(ratio * h * w)
    ranks = jnp.argsort(jax.random.uniform(key, (B, h * w)), axis=-1).argsort(axis=-1)
    keep = (ranks >= hidden).astype(jnp.float32).reshape(B, h, w)
    keep = jnp.repeat(jnp.repeat(keep, patch, axis=1), patch, axis=2)
    return keep[..., None]


class ConvAutoencoder(nnx.Module):
    """A convolutional autoencoder `[B, H, W, C] → [B, H, W, C]` in [-1, 1], with its features.

    Encoder: per width w_i of `widths`, `convs_per_stage` 3×3 convs (ReLU) then 2×2 max pooling;
    the feature map after stage i is `[B, H/2^(i+1), W/2^(i+1), w_i]`. Bottleneck: one 3×3 conv
    (ReLU) keeping w_last. Decoder: per stage from the deepest, nearest ×2 upsampling then a 3×3
    conv to the next shallower width (ReLU), the last one to C channels with the output
    2·sigmoid − 1 (a sigmoid output in the [-1, 1] model space). With `widths=(32, 64, 128)`,
    one conv per stage and C = 1 this is Table 1 of the motion-enhanced MAE paper, 332,801
    parameters. Dropout (rate `dropout`, only when called with `rngs`) follows each pooling.
    """

    def __init__(
        self,
        channels: int,
        widths: Sequence[int],
        *,
        convs_per_stage: int = 1,
        dropout: float = 0.0,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if not widths or any(w < 1 for w in widths) or convs_per_stage < 1:
            raise ValueError(
                f"widths must be positive and non-empty, got {tuple(widths)}; convs_per_stage "
                f"must be ≥ 1, got {convs_per_stage}"
            )
        conv = functools.partial(conv2d, dtype=dtype, rngs=rngs)
        ins = [channels, *widths[:-1]]
        self.encoder = nnx.List(
            [
                nnx.List([conv(a if k == 0 else b, b) for k in range(convs_per_stage)])
                for a, b in zip(ins, widths, strict=True)
            ]
        )
        self.bottleneck = conv(widths[-1], widths[-1])
        outs = [*reversed(widths[:-1]), channels]
        self.decoder = nnx.List(
            [
                conv(a, b, out_axis=None if i == len(outs) - 1 else CONV_OUT)
                for i, (a, b) in enumerate(zip(reversed(widths), outs, strict=True))
            ]
        )
        self.drop = nnx.Dropout(dropout)
        self.dtype = dtype

    def encode(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> list[jax.Array]:
        """x: `[B, H, W, C]` → the stages' features, shallow to deep: stage i
        `[B, H/2^(i+1), W/2^(i+1), w_i]` (compute dtype)."""
        features = []
        x = x.astype(self.dtype)
        for stage in self.encoder:
            for conv in stage:
                x = jax.nn.relu(conv(x))
            x = apply_dropout(self.drop, max_pool2x(x), rngs)
            features.append(x)
        return features

    def decode(self, deepest: jax.Array) -> jax.Array:
        """The last stage's features `[B, h, w, w_last]` → bottleneck → decoder → the image
        `[B, H, W, C]` float32 in [-1, 1]."""
        x = jax.nn.relu(self.bottleneck(deepest))
        for i, conv in enumerate(self.decoder):
            x = upsampled_conv(conv, x)
            x = x if i == len(self.decoder) - 1 else jax.nn.relu(x)
        return 2.0 * jax.nn.sigmoid(x.astype(jnp.float32)) - 1.0
