"""CLIP (Hugging Face `CLIPModel`) as Flax NNX modules: the image and text embeddings.

Shapes: B images or texts, S = `image_size`, P = `patch_size`, g = S/P, N = g² patches, C
channels, Dv / Dt the vision / text widths, E the projection width (`projection_dim`), L tokens,
V vocabulary.

* `VisionTower` (HF `CLIPVisionModel` + `visual_projection`): P×P stride-P patch convolution
  (no bias) of channels-last pixels `[B, S, S, C]`, a class token, a learnt `[N + 1, Dv]` position
  embedding, a LayerNorm before the layers (HF's `pre_layrnorm`), pre-LN encoder layers
  (`vlm.layers.EncoderLayer`), a LayerNorm of the class token only, and the projection → `[B, E]`.
* `TextTower` (HF `CLIPTextModel` + `text_projection`): token + position embeddings, pre-LN
  encoder layers under a causal mask (and the padding mask, where given), a final LayerNorm, the
  state of one token per text (below), and the projection → `[B, E]`.
* `ClipModel`: both towers and the learnt `logit_scale` (`image_embeds`, `text_embeds` are HF's
  `get_image_features` / `get_text_features`: projected, not normalised).

The pooled text token follows transformers' `CLIPTextTransformer`: for `eos_token_id == 2` (the
configs saved before transformers PR #24773, e.g. openai/clip-vit-base-patch32) the position of
the largest token id (the original CLIP's rule: its end-of-text token has the largest id);
otherwise the first position of `eos_token_id` (padding may use the same id).

Activations (`hidden_act`, CLIP's `quick_gelu` by default) and LayerNorm epsilons come from the
configs. `dtype` is the compute dtype; parameters are float32, embeddings are returned in float32.
Parameters carry the logical axis names of `jaxvad.model.layers`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvad.model.layers import (
    EMBED,
    PARAM_DTYPE,
    POSITION_INIT,
    Dtype,
    partitioned,
    position_embedding,
)
from jaxvad.vlm.layers import ACTIVATIONS, EncoderLayer, embedding, layer_norm

LEGACY_EOS_TOKEN_ID = 2  # pool at the largest token id (module docstring)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The fields of HF's `CLIPVisionConfig` the vision tower uses (same names and defaults)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The fields of HF's `CLIPTextConfig` the text tower uses (same names and defaults)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int = 49407


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Vision and text configs and the shared projection width of a `CLIPConfig`."""

    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592

    @classmethod
    def from_hf(cls, config: Any) -> ModelConfig:
        """From a `transformers.CLIPConfig` (read by attribute; transformers is not imported).
        Raises ValueError for what this port does not support."""

        def pick(kind: type, source: Any) -> Any:
            return kind(**{f.name: getattr(source, f.name) for f in dataclasses.fields(kind)})

        result = cls(
            vision=pick(VisionConfig, config.vision_config),
            text=pick(TextConfig, config.text_config),
            projection_dim=config.projection_dim,
            logit_scale_init_value=config.logit_scale_init_value,
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
        for name, act in (("vision", v.hidden_act), ("text", t.hidden_act)):
            if act not in ACTIVATIONS:
                raise ValueError(f"{name} hidden_act {act!r} is not one of {sorted(ACTIVATIONS)}")
        for name, width, heads in (
            ("vision", v.hidden_size, v.num_attention_heads),
            ("text", t.hidden_size, t.num_attention_heads),
        ):
            if width % heads:
                raise ValueError(f"{name} hidden_size {width} is not divisible by {heads} heads")
        if not isinstance(t.eos_token_id, int):
            raise ValueError(f"the text eos_token_id must be one id, got {t.eos_token_id!r}")


def _encoder_layers(config: VisionConfig | TextConfig, *, dtype: Dtype, rngs: nnx.Rngs) -> nnx.List:
    """HF `CLIPEncoder`: `num_hidden_layers` pre-LN layers."""
    return nnx.List(
        [
            EncoderLayer(
                config.hidden_size,
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


def _projection(dim: int, projection_dim: int, *, dtype: Dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """HF's `visual_projection` / `text_projection`: `[D] → [E]`, no bias."""
    return nnx.Linear(
        dim,
        projection_dim,
        use_bias=False,
        dtype=dtype,
        param_dtype=PARAM_DTYPE,
        kernel_init=partitioned(nnx.initializers.xavier_uniform(), (EMBED, None)),
        rngs=rngs,
    )


class VisionTower(nnx.Module):
    """HF `CLIPVisionModel` and `visual_projection`: pixels `[B, S, S, C]` → `[B, E]`."""

    def __init__(
        self,
        config: VisionConfig,
        projection_dim: int,
        *,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        d, p, eps = config.hidden_size, config.patch_size, config.layer_norm_eps
        self.dtype = dtype
        tokens = (config.image_size // p) ** 2 + 1
        self.patch_embed = nnx.Conv(
            config.num_channels,
            d,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=False,
            dtype=dtype,
            param_dtype=PARAM_DTYPE,
            kernel_init=partitioned(nnx.initializers.lecun_normal(), (None, None, None, EMBED)),
            rngs=rngs,
        )
        self.class_embedding = nnx.Param(
            partitioned(POSITION_INIT, (EMBED,))(rngs.params(), (d,), PARAM_DTYPE)
        )
        self.position_embedding = position_embedding(tokens, d, rngs=rngs)
        self.pre_norm = layer_norm(d, eps, dtype=dtype, rngs=rngs)
        self.layers = _encoder_layers(config, dtype=dtype, rngs=rngs)
        self.post_norm = layer_norm(d, eps, dtype=dtype, rngs=rngs)
        self.projection = _projection(d, projection_dim, dtype=dtype, rngs=rngs)

    def hidden_states(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values `[B, S, S, C]` (normalised by the CLIP image processor, channels last)
        → the last layer's states `[B, N + 1, Dv]` (HF's `last_hidden_state`); token 0 is the
        class token, then the patches in row-major order."""
        B = pixel_values.shape[0]
        x = self.patch_embed(pixel_values.astype(self.dtype))  # [B, g, g, Dv]
        x = x.reshape(B, -1, x.shape[-1])
        cls = jnp.broadcast_to(self.class_embedding[...].astype(self.dtype), (B, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embedding[...].astype(self.dtype)
        x = self.pre_norm(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values `[B, S, S, C]` → image embeddings `[B, E]` float32 (not normalised)."""
        pooled = self.post_norm(self.hidden_states(pixel_values)[:, 0])
        return self.projection(pooled).astype(jnp.float32)


class TextTower(nnx.Module):
    """HF `CLIPTextModel` and `text_projection`: token ids `[B, L]` → `[B, E]`."""

    def __init__(
        self,
        config: TextConfig,
        projection_dim: int,
        *,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        d = config.hidden_size
        self.eos_token_id = config.eos_token_id
        self.token_embedding = embedding(config.vocab_size, d, dtype=dtype, rngs=rngs)
        self.position_embedding = embedding(
            config.max_position_embeddings, d, dtype=dtype, rngs=rngs
        )
        self.layers = _encoder_layers(config, dtype=dtype, rngs=rngs)
        self.final_norm = layer_norm(d, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.projection = _projection(d, projection_dim, dtype=dtype, rngs=rngs)

    def hidden_states(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """input_ids `[B, L]` int, L ≤ `max_position_embeddings`; attention_mask `[B, L]` (1:
        token, 0: padding; None: no padding) → the final-LayerNorm states `[B, L, Dt]` (HF's
        `last_hidden_state`). Token i attends to tokens j ≤ i that are not padding."""
        L = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.position_embedding(jnp.arange(L))[None]
        mask = jnp.tril(jnp.ones((L, L), bool))  # [L, L]
        if attention_mask is not None:
            mask = mask[None] & (attention_mask[:, None, :] != 0)  # [B, L, L]
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)

    def pooled_positions(self, input_ids: jax.Array) -> jax.Array:
        """input_ids `[B, L]` → `[B]` the position whose state is the text's (module
        docstring: the largest id for the legacy `eos_token_id == 2`, else the first eos)."""
        if self.eos_token_id == LEGACY_EOS_TOKEN_ID:
            return jnp.argmax(input_ids, axis=-1)
        return jnp.argmax(input_ids == self.eos_token_id, axis=-1)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """input_ids, attention_mask `[B, L]` (`hidden_states`) → text embeddings `[B, E]`
        float32 (not normalised)."""
        states = self.hidden_states(input_ids, attention_mask)
        pooled = jnp.take_along_axis(
            states, self.pooled_positions(input_ids)[:, None, None], axis=1
        )[:, 0]
        return self.projection(pooled).astype(jnp.float32)


class ClipModel(nnx.Module):
    """HF `CLIPModel`: `vision` and `text` towers with their projections, and `logit_scale`."""

    def __init__(self, config: ModelConfig, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        config.validate()
        dtype = jnp.dtype(dtype)
        self.config = config
        self.vision = VisionTower(config.vision, config.projection_dim, dtype=dtype, rngs=rngs)
        self.text = TextTower(config.text, config.projection_dim, dtype=dtype, rngs=rngs)
        self.logit_scale = nnx.Param(jnp.asarray(config.logit_scale_init_value, PARAM_DTYPE))

    def image_embeds(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values `[B, S, S, C]` float, channels last → `[B, E]` float32, HF's
        `get_image_features` (projected, not normalised)."""
        return self.vision(pixel_values)

    def text_embeds(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """input_ids `[B, L]` int, attention_mask `[B, L]` (None: no padding) → `[B, E]` float32,
        HF's `get_text_features` (projected, not normalised)."""
        return self.text(input_ids, attention_mask)

    def logits(self, image_embeds: jax.Array, text_embeds: jax.Array) -> jax.Array:
        """image_embeds `[Bi, E]`, text_embeds `[Bt, E]` → HF's `logits_per_image` `[Bi, Bt]`:
        exp(logit_scale) · cosine similarity."""
        images = image_embeds / jnp.linalg.norm(image_embeds, axis=-1, keepdims=True)
        texts = text_embeds / jnp.linalg.norm(text_embeds, axis=-1, keepdims=True)
        return jnp.exp(self.logit_scale[...]) * images @ texts.T
