"""Blocks the Hugging Face vision–language ports share (BLIP, CLIP): HF's activations by name, a
LayerNorm with HF's epsilon, lookup tables, multi-head attention over a context, and the pre-LN
transformer layer of HF's ViT-style encoders (`BlipEncoderLayer`, `CLIPEncoderLayer`).

Shapes: B rows, L queries, S keys, D width, H heads, hd = D/H. `dtype` is the compute dtype;
parameters are float32 and carry the logical axis names of `jaxvad.model.layers`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvad.model.layers import (
    EMBED,
    HEADS,
    MLP,
    PARAM_DTYPE,
    POSITION_INIT,
    Dtype,
    linear,
    partitioned,
)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {  # HF's `ACT2FN` names
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
}


def layer_norm(dim: int, epsilon: float, *, dtype: Dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over the last axis with HF's `epsilon`; statistics in float32."""
    return nnx.LayerNorm(
        dim,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=PARAM_DTYPE,
        scale_init=partitioned(nnx.initializers.ones_init(), (EMBED,)),
        bias_init=partitioned(nnx.initializers.zeros_init(), (EMBED,)),
        rngs=rngs,
    )


def embedding(count: int, dim: int, *, dtype: Dtype, rngs: nnx.Rngs) -> nnx.Embed:
    """`[count, dim]` lookup table, N(0, 0.02) init, axes `(None, "embed")`."""
    return nnx.Embed(
        count,
        dim,
        dtype=dtype,
        param_dtype=PARAM_DTYPE,
        embedding_init=partitioned(POSITION_INIT, (None, EMBED)),
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Multi-head attention: `query` from x `[B, L, D]`, `key`/`value` from a context `[Bc, S, Dc]`
    (`context_dim` Dc, default D), then the `out` projection; softmax scale hd^-1/2. HF's BLIP
    vision `qkv`/`projection`, BLIP text `self.query/key/value` + `output.dense` and CLIP's
    `q_proj/k_proj/v_proj/out_proj` all map onto it."""

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        context_dim: int | None = None,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        context_dim = dim if context_dim is None else context_dim
        self.heads = heads
        self.head_dim = dim // heads
        self.query = linear(dim, dim, (EMBED, HEADS), dtype=dtype, rngs=rngs)
        self.key = linear(context_dim, dim, (EMBED, HEADS), dtype=dtype, rngs=rngs)
        self.value = linear(context_dim, dim, (EMBED, HEADS), dtype=dtype, rngs=rngs)
        self.out = linear(dim, dim, (HEADS, EMBED), dtype=dtype, rngs=rngs)

    def keys_values(self, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        """context `[Bc, S, Dc]` → keys, values `[Bc, S, H, hd]` (compute dtype)."""
        shape = (*context.shape[:2], self.heads, self.head_dim)
        return self.key(context).reshape(shape), self.value(context).reshape(shape)

    def __call__(
        self, x: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array | None = None
    ) -> jax.Array:
        """x `[B, L, D]`; keys, values `[Bc, S, H, hd]` with B = r·Bc: rows r·c … r·c + r − 1 of x
        (e.g. the beams of image c) attend to context c, with no copy of the context. mask: bool,
        True where query i may attend to key j: `[L, S]` for every row or `[B, L, S]` per row
        (None: everything). → `[B, L, D]`."""
        B, L, D = x.shape
        Bc, S = keys.shape[:2]
        r = B // Bc
        q = self.query(x).reshape(Bc, r * L, self.heads, self.head_dim)
        if mask is not None and mask.ndim == 2:
            mask = jnp.tile(mask, (r, 1))[None, None]  # [1, 1, r·L, S]
        elif mask is not None:
            mask = mask.reshape(Bc, 1, r * L, S)
        y = jax.nn.dot_product_attention(q, keys, values, mask=mask)
        return self.out(y.reshape(B, L, D))


class EncoderLayer(nnx.Module):
    """Pre-LN transformer layer (HF `BlipEncoderLayer`, `CLIPEncoderLayer`): `x + attn(LN(x))`,
    then `x + fc2(act(fc1(LN(x))))`; `act` is an `ACTIVATIONS` name, `eps` the LayerNorm
    epsilon."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_dim: int,
        *,
        act: str,
        eps: float,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.act = ACTIVATIONS[act]
        self.norm1 = layer_norm(dim, eps, dtype=dtype, rngs=rngs)
        self.attention = Attention(dim, heads, dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm(dim, eps, dtype=dtype, rngs=rngs)
        self.fc1 = linear(dim, mlp_dim, (EMBED, MLP), dtype=dtype, rngs=rngs)
        self.fc2 = linear(mlp_dim, dim, (MLP, EMBED), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x `[B, L, D]`; mask as `Attention`'s (None: full attention) → `[B, L, D]`."""
        h = self.norm1(x)
        x = x + self.attention(h, *self.attention.keys_values(h), mask)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))
