"""AADC-Net (`papers/aadc_net_multimodal_vad.txt`, §III-C, D, G): weakly supervised anomaly
detection and categorisation over per-snippet CLIP features.

Shapes: B videos, T snippets (padded; `length` `[B]` valid ones), D the feature width (= the
CLIP projection width E, so that snippets and class texts share CLIP's space), C classes
(index 0 the normal class), m learnable context tokens, L the text tower's positions.

1. MTN (multiscale temporal network): three 1-D convolutions over time, kernel 3, dilations
   1, 2, 4 (PDC), each D → D/4, and temporal self-attention (TSA): a 1×1 conv D → D/4 (X_c),
   three 1×1 convs → X_c1, X_c2, X_c3, attention map M = softmax(X_c1 X_c2ᵀ / √(D/4)) over the
   valid snippets, X_c4 = 1×1 conv(M X_c3), plus the skip X_c. The four D/4 outputs are
   concatenated to D, mixed by a 1×1 conv (s_θ) and added to the input: F = X + s_θ([PDC₁,
   PDC₂, PDC₃, TSA]) (RTFM's aggregation, which the paper's MTN follows). Every conv is followed
   by ReLU and a LayerNorm (RTFM: BatchNorm; LayerNorm needs no batch statistics in the pure
   train step and ignores padding). Padded snippets are zeroed after every layer, so they act
   as the convolutions' zero padding and attention never looks at them.
2. Snippet anomaly head: h = F + FFN(F), logit = FC(h), score = σ(logit) (`[B, T]`).
3. MIL-Align with a learnable prompt (CoOp / VadCLIP): each class name's CLIP tokens sit in
   the middle of m learnable context embeddings, [sos, c₁…c_{m/2}, name, c_{m/2+1}…c_m, eos],
   through CLIP's text tower → class embedding t_c `[C, D]`. VadCLIP's visual prompt adds the
   video: v = Σ_t score_t F_t (normalised), t'_c = t_c + v, t'_c ← t'_c + MLP(t'_c)
   (`[B, C, D]`). Snippet–class similarity = cos(F_t, t'_c) `[B, T, C]`; the alignment score
   s_c is the mean of its K highest values over the video's snippets; class logits = γ·s_c.

The CLIP text tower is read from the local Hugging Face CLIP folder `clip` when the model is
built (its config, tokenizer and weights; they enter a jitted initialiser as constants) and is
frozen: its parameters sit under `text_tower` (`FROZEN`), which the trainer's optimizer leaves
unchanged (`jaxvad.train.make_optimizer`), so only the context tokens learn on the text side.
The checkpoint still holds the tower, so a workdir scores on its own; building the model (also
abstractly, to restore a checkpoint) reads the folder.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvad import weak_losses
from jaxvad.model.interface import VadModel
from jaxvad.model.layers import (
    CONV_IN,
    CONV_OUT,
    DENSE_INIT,
    EMBED,
    PARAM_DTYPE,
    Dtype,
    Mlp,
    layer_norm,
    linear,
    partitioned,
)

# jaxvad.vlm.clip is imported where it is used: it imports jaxvad.model.layers, and so the
# jaxvad.model package that imports this module.
CONTEXT_INIT = nnx.initializers.normal(stddev=0.02)  # CoOp's context initialisation


@functools.lru_cache(maxsize=2)
def _text_tower_weights(folder: str) -> dict[tuple, np.ndarray]:
    """The text tower's parameters of a CLIP folder, by path inside `TextTower`."""
    from jaxvad.vlm.clip import load_state, read_config

    arrays = load_state(folder, read_config(folder))
    return {path[1:]: a for path, a in arrays.items() if path[0] == "text"}


@functools.lru_cache(maxsize=8)
def _class_tokens(folder: str, texts: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    """Each text's CLIP token ids with sos and eos, no padding."""
    import transformers  # Loads only where an aadc model is built.

    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    return tuple(tuple(int(i) for i in tokenizer(text)["input_ids"]) for text in texts)


def prompt_layout(
    tokens: Sequence[Sequence[int]], context: int, length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each class's prompt takes its embeddings: `ids` `[C, L]` token ids (0 at context
    and padding positions), `slots` `[C, L]` the context token at each position (-1: none),
    `eos` `[C]` the position of the end-of-text token (whose state is the class's). The layout
    is [sos, c_0…c_{p-1}, name tokens, c_p…c_{m-1}, eos, padding], p = m // 2."""
    prefix = context // 2
    ids = np.zeros((len(tokens), length), np.int32)
    slots = np.full((len(tokens), length), -1, np.int32)
    eos = np.zeros(len(tokens), np.int32)
    for c, (sos, *name, end) in enumerate(tokens):
        need = 2 + context + len(name)
        if need > length:
            raise ValueError(
                f"class {c}'s prompt needs {need} positions ({len(name)} name tokens, {context} "
                f"context tokens, sos, eos); the CLIP text tower has {length}: lower "
                "config.model.context"
            )
        row = [sos, *([-1] * prefix), *name, *([-1] * (context - prefix)), end]
        ids[c, : len(row)] = np.maximum(row, 0)
        where = np.flatnonzero(np.array(row) < 0)
        slots[c, where] = np.arange(context)
        eos[c] = len(row) - 1
    return ids, slots, eos


def conv1d(
    width_in: int, width_out: int, *, kernel: int, dilation: int, dtype: Dtype, rngs: nnx.Rngs
) -> nnx.Conv:
    """A temporal convolution `[B, T, width_in] → [B, T, width_out]`, 'SAME' padding."""
    return nnx.Conv(
        width_in,
        width_out,
        kernel_size=(kernel,),
        kernel_dilation=(dilation,),
        padding="SAME",
        dtype=dtype,
        param_dtype=PARAM_DTYPE,
        kernel_init=partitioned(nnx.initializers.lecun_normal(), (None, CONV_IN, CONV_OUT)),
        bias_init=partitioned(nnx.initializers.zeros_init(), (CONV_OUT,)),
        rngs=rngs,
    )


class ConvNorm(nnx.Module):
    """conv → ReLU → LayerNorm, padded snippets zeroed: `[B, T, W_in]` → `[B, T, W_out]`."""

    def __init__(self, w_in: int, w_out: int, *, kernel=1, dilation=1, dtype: Dtype, rngs):
        self.conv = conv1d(w_in, w_out, kernel=kernel, dilation=dilation, dtype=dtype, rngs=rngs)
        self.norm = layer_norm(w_out, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        return self.norm(jax.nn.relu(self.conv(x))) * valid


class TemporalSelfAttention(nnx.Module):
    """TSA (module docstring, 1): `[B, T, D]` → `[B, T, D/4]`."""

    def __init__(self, width: int, *, dtype: Dtype, rngs: nnx.Rngs):
        quarter = width // 4
        self.reduce = ConvNorm(width, quarter, dtype=dtype, rngs=rngs)
        self.query = conv1d(quarter, quarter, kernel=1, dilation=1, dtype=dtype, rngs=rngs)
        self.key = conv1d(quarter, quarter, kernel=1, dilation=1, dtype=dtype, rngs=rngs)
        self.value = conv1d(quarter, quarter, kernel=1, dilation=1, dtype=dtype, rngs=rngs)
        self.out = ConvNorm(quarter, quarter, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        xc = self.reduce(x, valid)  # [B, T, D/4]
        one_head = lambda y: y[:, :, None, :]  # noqa: E731  [B, T, 1, D/4]
        mask = valid[:, None, None, :, 0] > 0  # [B, 1, 1, T]: keys
        attended = jax.nn.dot_product_attention(
            one_head(self.query(xc)), one_head(self.key(xc)), one_head(self.value(xc)), mask=mask
        )[:, :, 0]
        return self.out(attended, valid) + xc


class Mtn(nnx.Module):
    """The multiscale temporal network (module docstring, 1): `[B, T, D]` → `[B, T, D]`."""

    DILATIONS = (1, 2, 4)

    def __init__(self, width: int, *, dtype: Dtype, rngs: nnx.Rngs):
        if width % 4:
            raise ValueError(f"the MTN splits the feature width into quarters: {width} % 4 != 0")
        self.pyramid = nnx.List(
            [
                ConvNorm(width, width // 4, kernel=3, dilation=d, dtype=dtype, rngs=rngs)
                for d in self.DILATIONS
            ]
        )
        self.attention = TemporalSelfAttention(width, dtype=dtype, rngs=rngs)
        self.mix = ConvNorm(width, width, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        parts = [pdc(x, valid) for pdc in self.pyramid] + [self.attention(x, valid)]
        return x + self.mix(jnp.concatenate(parts, axis=-1), valid)


class PromptedClasses(nnx.Module):
    """Class embeddings `[C, E]` from CLIP's frozen text tower with m learnable context tokens
    around each class name (module docstring, 3)."""

    def __init__(self, clip: str, texts: Sequence[str], context: int, *, rngs: nnx.Rngs):
        from jaxvad.vlm.clip import TextTower, read_config

        config = read_config(clip)
        self.text_tower = TextTower(config.text, config.projection_dim, rngs=rngs)
        nnx.update(
            self.text_tower,
            nnx.from_flat_state(
                {p: jnp.asarray(a) for p, a in _text_tower_weights(str(clip)).items()}
            ),
        )
        tokens = _class_tokens(str(clip), tuple(texts))
        ids, slots, eos = prompt_layout(tokens, context, config.text.max_position_embeddings)
        # Static layout (Python tuples: part of the graph definition, not of the state).
        self.ids, self.slots = tuple(map(tuple, ids.tolist())), tuple(map(tuple, slots.tolist()))
        self.eos = tuple(eos.tolist())
        init = partitioned(CONTEXT_INIT, (None, EMBED))
        self.context = nnx.Param(init(rngs.params(), (context, config.text.hidden_size)))

    def __call__(self) -> jax.Array:
        tower = self.text_tower
        ids, slots = jnp.asarray(self.ids), jnp.asarray(self.slots)  # [C, L]
        C, L = ids.shape
        x = jnp.where(
            slots[..., None] >= 0,
            self.context[...][jnp.maximum(slots, 0)],
            tower.token_embedding(ids),
        )
        x = x + tower.position_embedding(jnp.arange(L))[None]
        mask = jnp.tril(jnp.ones((L, L), bool))
        for layer in tower.layers:
            x = layer(x, mask)
        states = tower.final_norm(x)[jnp.arange(C), jnp.asarray(self.eos)]  # [C, Dt]
        return tower.projection(states).astype(jnp.float32)


def _unit(x: jax.Array) -> jax.Array:
    """Rows of unit L2 norm; a zero row (a padded snippet) stays zero, with finite gradients
    (the norm's own gradient is NaN at zero)."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


class Aadc(VadModel):
    """AADC-Net over snippet features (module docstring). `classes`: the C class names (index
    0 normal); `clip`: a local HF CLIP folder (text tower, tokenizer); `context`: m; `gamma`:
    γ; `k`: K of the top-K pooling (MIL and MIL-Align); `mlp_ratio`: the FFNs' hidden width
    in multiples of D; `head_zeroinit`: a zero kernel for the snippet score head, so that
    every snippet scores 0.5 before training; `dtype`: compute dtype of the MTN and heads
    (parameters float32); `feature_width`: D (None: the CLIP's E; 2E for object-fused
    features, which then reach the class texts through a linear D → E)."""

    LOSS_TERMS: ClassVar[tuple[str, ...]] = weak_losses.LOSS_TERMS
    FROZEN: ClassVar[tuple[str, ...]] = ("text_tower",)  # Attribute names anywhere in the model.

    def __init__(
        self,
        *,
        classes: Sequence[str],
        clip: str | Path,
        context: int = 8,
        gamma: float = 1.0,
        k: int = 5,
        mlp_ratio: int = 4,
        head_zeroinit: bool = True,
        dtype: str = "float32",
        feature_width: int | None = None,
        rngs: nnx.Rngs,
    ):
        from jaxvad.data.weak_input import prompt_text
        from jaxvad.vlm.clip import read_config

        dtype = jnp.dtype(dtype)
        embed = read_config(clip).projection_dim
        width = feature_width or embed
        self.width, self.gamma, self.k = width, float(gamma), int(k)
        # Object-fused features (D = 2E) meet the class texts (E) through a linear map.
        self.to_text = (
            linear(width, embed, (EMBED, None), dtype=dtype, rngs=rngs) if width != embed else None
        )
        self.mtn = Mtn(width, dtype=dtype, rngs=rngs)
        self.ffn = Mlp(width, mlp_ratio * width, dtype=dtype, rngs=rngs)
        # A zero kernel: every snippet scores σ(0) = 0.5 before training.
        head_init = nnx.initializers.zeros_init() if head_zeroinit else DENSE_INIT
        self.score_head = linear(
            width, 1, (EMBED, None), dtype=dtype, rngs=rngs, kernel_init=head_init
        )
        self.classes = PromptedClasses(
            str(clip), [prompt_text(c) for c in classes], context, rngs=rngs
        )
        self.text_mlp = Mlp(embed, mlp_ratio * embed, dtype=dtype, rngs=rngs)

    def forward(self, features: jax.Array, length: jax.Array) -> dict[str, jax.Array]:
        """features `[B, T, D]`, length `[B]` int → `logits` `[B, T]` snippet anomaly logits,
        `scores` `[B, T]` σ(logits), `similarity` `[B, T, C]` cos(F_t, t'_c), `class_logits`
        `[B, C]` γ·top-K mean of `similarity` (all float32; padded snippets: scores 0)."""
        T = features.shape[1]
        valid = (jnp.arange(T)[None, :] < length[:, None]).astype(jnp.float32)[..., None]
        F = self.mtn(features * valid, valid)  # [B, T, D]
        logits = self.score_head(F + self.ffn(F))[..., 0].astype(jnp.float32)
        scores = jax.nn.sigmoid(logits) * valid[..., 0]
        G = F if self.to_text is None else self.to_text(F)  # [B, T, E]
        video = _unit(jnp.einsum("bt,bte->be", scores, G.astype(jnp.float32)))  # [B, E]
        texts = self.classes()[None] + video[:, None]  # [B, C, E]
        texts = texts + self.text_mlp(texts).astype(jnp.float32)
        similarity = jnp.einsum("bte,bce->btc", _unit(G.astype(jnp.float32)), _unit(texts))
        align = weak_losses.top_k_mean(similarity, length, self.k)  # [B, C]
        return {
            "logits": logits,
            "scores": scores,
            "similarity": similarity,
            "class_logits": self.gamma * align,
        }

    def loss_terms(
        self, inputs: Mapping[str, jax.Array], *, rngs: nnx.Rngs, vgg: Any = None
    ) -> dict[str, jax.Array]:
        """inputs: `features` `[B, T, D]`, `length` `[B]`, `label` `[B]`, `categories` `[B, C]`
        → {"bce": L_bce, "nce": L_nce} (`jaxvad.weak_losses`)."""
        out = self.forward(inputs["features"], inputs["length"])
        return {
            "bce": weak_losses.mil_bce(out["logits"], inputs["length"], inputs["label"], self.k),
            "nce": weak_losses.mil_align_nce(out["class_logits"], inputs["categories"]),
        }
