"""BLIP image captioning (Hugging Face `BlipForConditionalGeneration`) as Flax NNX modules.

Shapes: B images, S = `image_size`, P = `patch_size`, g = S/P, N = g² patches, Dv / Dt the vision /
text widths, H heads, hd = width/H, V vocabulary, L new tokens in a call, T cache length.

* `VisionEncoder` (HF `BlipVisionModel`): P×P stride-P patch convolution (with bias) of
  channels-last pixels `[B, S, S, 3]`, a class token, a learnt `[N + 1, Dv]` position embedding,
  pre-LN ViT layers (`vlm.layers.EncoderLayer`) and a final LayerNorm → image
  embeddings `[B, N + 1, Dv]`.
  HF's fused `qkv` projection is split into `query`/`key`/`value` at load time, so one `Attention`
  module serves the vision self-attention and the text self- and cross-attention.
* `TextDecoder` (HF `BlipTextLMHeadModel`, a BERT decoder): word + position embeddings and
  LayerNorm; per layer causal self-attention, cross-attention over the image embeddings and the
  MLP, each post-LN as in BERT (`LN(x + f(x))`); the LM head (dense, activation, LayerNorm, then
  the word embeddings transposed, or an untied `decoder` matrix, plus a vocabulary bias).
* Incremental decoding: `TextDecoder.init_cache` computes each layer's cross-attention keys/values
  of the image once and allocates self-attention key/value buffers `[B, T, H, hd]`; a call writes
  the keys/values of its L tokens at `position` and attends to cache slots ≤ its own position, so a
  generation step costs O(T) and every shape is static (jittable in a `lax.while_loop`).
  Teacher forcing is the same call on all L tokens with a cache of length L.

Activations and LayerNorm epsilons come from the configs, as in HF (BLIP: exact-erf GELU
everywhere, eps 1e-5 in the vision tower and 1e-12 in the text decoder). `dtype` is the compute
dtype; parameters are float32, logits are returned in float32. Parameters carry the logical axis
names of `jaxvad.model.layers`; the vocabulary axis is unnamed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvad.model.layers import (
    EMBED,
    MLP,
    PARAM_DTYPE,
    POSITION_INIT,
    Dtype,
    linear,
    partitioned,
    position_embedding,
)
from jaxvad.vlm.layers import ACTIVATIONS, Attention, EncoderLayer, embedding, layer_norm


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The fields of HF's `BlipVisionConfig` the vision tower uses (same names and defaults)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 384
    patch_size: int = 16
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The fields of HF's `BlipTextConfig` the decoder and generation use (same names and
    defaults). `tie_word_embeddings`: the LM head reuses the word embeddings (no `decoder` matrix);
    `pad_token_id=None` means "pad with sep", as HF's generate does."""

    vocab_size: int = 30524
    hidden_size: int = 768
    encoder_hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 512
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    bos_token_id: int = 30522
    sep_token_id: int = 102
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Vision and text configs of a captioning model."""

    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()

    @classmethod
    def from_hf(cls, config: Any) -> ModelConfig:
        """From a `transformers.BlipConfig` (read by attribute; transformers is not imported).

        The head is tied when the top-level or the text config ties word embeddings (HF ties
        when either model asks for it). Raises ValueError for what this port does not support.
        """
        vision, text = config.vision_config, config.text_config

        def pick(kind: type, source: Any, **override: Any) -> Any:
            names = [f.name for f in dataclasses.fields(kind) if f.name not in override]
            return kind(**{name: getattr(source, name) for name in names}, **override)

        tie = bool(getattr(config, "tie_word_embeddings", False) or text.tie_word_embeddings)
        result = cls(
            vision=pick(VisionConfig, vision),
            text=pick(TextConfig, text, tie_word_embeddings=tie),
        )
        result.validate()
        return result

    def validate(self) -> None:
        """Raises ValueError for configs this port does not support."""
        v, t = self.vision, self.text
        if not isinstance(v.image_size, int) or not isinstance(v.patch_size, int):
            raise ValueError(
                f"only square images and patches are supported, got image_size={v.image_size!r}, "
                f"patch_size={v.patch_size!r}"
            )
        if t.encoder_hidden_size != v.hidden_size:
            raise ValueError(
                f"text encoder_hidden_size {t.encoder_hidden_size} != vision hidden_size "
                f"{v.hidden_size}"
            )
        for name, act in (("vision", v.hidden_act), ("text", t.hidden_act)):
            if act not in ACTIVATIONS:
                raise ValueError(f"{name} hidden_act {act!r} is not one of {sorted(ACTIVATIONS)}")
        for name, width, heads in (
            ("vision", v.hidden_size, v.num_attention_heads),
            ("text", t.hidden_size, t.num_attention_heads),
        ):
            if width % heads:
                raise ValueError(f"{name} hidden_size {width} is not divisible by {heads} heads")
        if t.bos_token_id is None or t.sep_token_id is None:
            raise ValueError("the text config needs a bos_token_id and a sep_token_id to generate")


class VisionEncoder(nnx.Module):
    """HF `BlipVisionModel`: pixels `[B, S, S, 3]` → image embeddings `[B, N + 1, Dv]`."""

    def __init__(self, config: VisionConfig, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        d, p = config.hidden_size, config.patch_size
        self.image_size = config.image_size
        self.dtype = dtype
        tokens = (config.image_size // p) ** 2 + 1
        self.patch_embed = nnx.Conv(
            3,
            d,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            dtype=dtype,
            param_dtype=PARAM_DTYPE,
            kernel_init=partitioned(nnx.initializers.lecun_normal(), (None, None, None, EMBED)),
            bias_init=partitioned(nnx.initializers.zeros_init(), (EMBED,)),
            rngs=rngs,
        )
        self.class_embedding = nnx.Param(
            partitioned(POSITION_INIT, (EMBED,))(rngs.params(), (d,), PARAM_DTYPE)
        )
        self.position_embedding = position_embedding(tokens, d, rngs=rngs)
        self.layers = nnx.List(
            [
                EncoderLayer(
                    d,
                    config.num_attention_heads,
                    config.intermediate_size,
                    act=config.hidden_act,
                    eps=config.layer_norm_eps,
                    dtype=dtype,
                    rngs=rngs,
                )
                for _ in range(config.num_hidden_layers)
            ]
        )
        self.post_norm = layer_norm(d, config.layer_norm_eps, dtype=dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values `[B, S, S, 3]` (normalised by the BLIP image processor, channels last)
        → `[B, N + 1, Dv]` in the compute dtype; token 0 is the class token, then the patches in
        row-major order (as HF's `flatten(2)` of the conv output)."""
        B = pixel_values.shape[0]
        x = self.patch_embed(pixel_values.astype(self.dtype))  # [B, g, g, Dv]
        x = x.reshape(B, -1, x.shape[-1])
        cls = jnp.broadcast_to(self.class_embedding[...].astype(self.dtype), (B, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embedding[...].astype(self.dtype)
        for layer in self.layers:
            x = layer(x)
        return self.post_norm(x)


class LayerCache(NamedTuple):
    """One decoder layer's keys/values: self-attention buffers `[B, T, H, hd]` (slots after the
    written positions hold zeros and are masked) and the image's cross-attention keys/values
    `[Bi, S, H, hd]` (B = r·Bi: r rows, e.g. beams, share an image)."""

    self_keys: jax.Array
    self_values: jax.Array
    cross_keys: jax.Array
    cross_values: jax.Array


class TextLayer(nnx.Module):
    """BERT decoder layer (HF `BlipTextLayer`, post-LN): causal self-attention, cross-attention
    over the image, MLP; each `LN(x + f(x))`."""

    def __init__(self, config: TextConfig, *, dtype: Dtype, rngs: nnx.Rngs):
        d, eps, heads = config.hidden_size, config.layer_norm_eps, config.num_attention_heads
        self.act = ACTIVATIONS[config.hidden_act]
        self.self_attention = Attention(d, heads, dtype=dtype, rngs=rngs)
        self.self_norm = layer_norm(d, eps, dtype=dtype, rngs=rngs)
        self.cross_attention = Attention(
            d, heads, context_dim=config.encoder_hidden_size, dtype=dtype, rngs=rngs
        )
        self.cross_norm = layer_norm(d, eps, dtype=dtype, rngs=rngs)
        self.intermediate = linear(
            d, config.intermediate_size, (EMBED, MLP), dtype=dtype, rngs=rngs
        )
        self.output = linear(config.intermediate_size, d, (MLP, EMBED), dtype=dtype, rngs=rngs)
        self.output_norm = layer_norm(d, eps, dtype=dtype, rngs=rngs)

    def __call__(
        self, x: jax.Array, position: jax.Array | int, cache: LayerCache
    ) -> tuple[jax.Array, LayerCache]:
        """x `[B, L, Dt]`: the tokens at positions `position … position + L − 1` → `[B, L, Dt]`
        and the cache with their self-attention keys/values written."""
        L, T = x.shape[1], cache.self_keys.shape[1]
        keys, values = self.self_attention.keys_values(x)
        start = (0, position, 0, 0)
        self_keys = jax.lax.dynamic_update_slice(
            cache.self_keys, keys.astype(cache.self_keys.dtype), start
        )
        self_values = jax.lax.dynamic_update_slice(
            cache.self_values, values.astype(cache.self_values.dtype), start
        )
        causal = jnp.arange(T)[None, :] <= position + jnp.arange(L)[:, None]  # [L, T]
        x = self.self_norm(x + self.self_attention(x, self_keys, self_values, causal))
        x = self.cross_norm(x + self.cross_attention(x, cache.cross_keys, cache.cross_values))
        x = self.output_norm(x + self.output(self.act(self.intermediate(x))))
        return x, cache._replace(self_keys=self_keys, self_values=self_values)


class TextDecoder(nnx.Module):
    """HF `BlipTextLMHeadModel` (the BERT decoder with its LM head), with a key/value cache."""

    def __init__(self, config: TextConfig, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        d, eps = config.hidden_size, config.layer_norm_eps
        self.dtype = dtype
        self.act = ACTIVATIONS[config.hidden_act]
        self.word_embeddings = embedding(config.vocab_size, d, dtype=dtype, rngs=rngs)
        self.position_embeddings = embedding(
            config.max_position_embeddings, d, dtype=dtype, rngs=rngs
        )
        self.embed_norm = layer_norm(d, eps, dtype=dtype, rngs=rngs)
        self.layers = nnx.List(
            [TextLayer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_hidden_layers)]
        )
        self.head_dense = linear(d, d, (EMBED, None), dtype=dtype, rngs=rngs)
        self.head_norm = layer_norm(d, eps, dtype=dtype, rngs=rngs)
        self.decoder = (
            None
            if config.tie_word_embeddings
            else nnx.Linear(
                d,
                config.vocab_size,
                use_bias=False,
                dtype=dtype,
                param_dtype=PARAM_DTYPE,
                kernel_init=partitioned(nnx.initializers.xavier_uniform(), (EMBED, None)),
                rngs=rngs,
            )
        )
        self.decoder_bias = nnx.Param(jnp.zeros((config.vocab_size,), PARAM_DTYPE))

    def init_cache(
        self, image_embeds: jax.Array, batch: int, length: int
    ) -> tuple[LayerCache, ...]:
        """image_embeds `[Bi, S, Dv]`; `batch` = r·Bi decoder rows (row b reads image b // r);
        `length` T: the most token positions the cache will hold. Computes each layer's
        cross-attention keys/values once."""
        caches = []
        for layer in self.layers:
            attention = layer.self_attention
            empty = jnp.zeros((batch, length, attention.heads, attention.head_dim), self.dtype)
            cross_keys, cross_values = layer.cross_attention.keys_values(
                image_embeds.astype(self.dtype)
            )
            caches.append(LayerCache(empty, empty, cross_keys, cross_values))
        return tuple(caches)

    def __call__(
        self, tokens: jax.Array, position: jax.Array | int, cache: tuple[LayerCache, ...]
    ) -> tuple[jax.Array, tuple[LayerCache, ...]]:
        """tokens `[B, L]` at positions `position … position + L − 1` (earlier positions are in
        `cache`) → float32 logits `[B, L, V]` of the next token, and the updated cache."""
        L = tokens.shape[1]
        positions = position + jnp.arange(L)
        x = self.word_embeddings(tokens) + self.position_embeddings(positions)[None]
        x = self.embed_norm(x)
        new_cache = []
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            x, layer_cache = layer(x, position, layer_cache)
            new_cache.append(layer_cache)
        h = self.head_norm(self.act(self.head_dense(x)))
        logits = self.word_embeddings.attend(h) if self.decoder is None else self.decoder(h)
        return logits.astype(jnp.float32) + self.decoder_bias[...], tuple(new_cache)


class CaptionModel(nnx.Module):
    """HF `BlipForConditionalGeneration`: `vision` (image → embeddings) and `text` (decoder)."""

    def __init__(self, config: ModelConfig, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        config.validate()
        dtype = jnp.dtype(dtype)
        self.config = config
        self.vision = VisionEncoder(config.vision, dtype=dtype, rngs=rngs)
        self.text = TextDecoder(config.text, dtype=dtype, rngs=rngs)

    def logits(self, pixel_values: jax.Array, tokens: jax.Array) -> jax.Array:
        """Teacher forcing: pixel_values `[B, S, S, 3]`, tokens `[B, L]` (starting with bos) →
        float32 next-token logits `[B, L, V]` (HF `model(pixel_values, input_ids).logits`)."""
        image_embeds = self.vision(pixel_values)
        cache = self.text.init_cache(image_embeds, tokens.shape[0], tokens.shape[1])
        return self.text(tokens, 0, cache)[0]
