"""Loading a local Hugging Face `BlipForConditionalGeneration` folder into a `CaptionModel`.

The folder is what `save_pretrained` writes: `config.json` (read with
`transformers.BlipConfig.from_pretrained`, offline) and the weights as `model.safetensors` or a
sharded `model.safetensors.index.json` + shards, read by `jaxvad.vlm.hf_weights` (safetensors
only, never pickles; any float dtype becomes float32 parameters).

Every HF tensor name maps onto our parameters (`_rules`): linear weights `[out, in]` are
transposed to kernels `[in, out]`, the patch convolution OIHW becomes HWIO, the vision `qkv`
weight `[3·D, D]` is split into query/key/value (HF's reshape `(3, heads, head_dim)` order), the
class and position embeddings lose their leading 1-axes. `*.position_ids` buffers are ignored.

Tied LM head, as HF's `tie_weights` decides it when loading (tied when the top-level or the text
config sets `tie_word_embeddings`):

* tied: the output matrix is the word embeddings; a stored `cls.predictions.decoder.weight` equal
  to them is redundant (old checkpoints store both), one that differs unties the head (HF warns
  and keeps both); with only the decoder matrix stored, it also serves as the word embeddings.
  The output bias is `cls.predictions.decoder.bias` if stored, else `cls.predictions.bias`.
* untied: `cls.predictions.decoder.weight` and `.decoder.bias` are both required.

Errors are `BlipWeightsError` (a ValueError) with a message that starts with the offending file or
folder: a missing folder, a missing or invalid config.json, no safetensors file, a shard named in
the index that is missing, a missing tensor (named), a tensor of the wrong shape (named, expected
and found shapes). Tensors that map onto nothing are logged as a warning. Everything is checked
and converted before the model is assembled, so an error leaves nothing half-loaded.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import transformers
from flax import nnx

from jaxvad.vlm import hf_weights
from jaxvad.vlm.blip.model import CaptionModel, Dtype, ModelConfig
from jaxvad.vlm.hf_weights import Checkpoint, Path_, Rule, copy, linear, norm

log = logging.getLogger(__name__)

HEAD = "text_decoder.cls.predictions."
WORD_EMBEDDINGS = "text_decoder.bert.embeddings.word_embeddings.weight"
DECODER_WEIGHT = f"{HEAD}decoder.weight"
DECODER_BIAS = f"{HEAD}decoder.bias"
BIAS = f"{HEAD}bias"  # the tied head's bias (HF ties decoder.bias to it)


class BlipWeightsError(ValueError):
    """A BLIP folder that cannot be loaded; the message starts with the file or folder."""


def _qkv(name: str, ours: Path_, dim: int) -> Iterator[Rule]:
    """HF `BlipAttention.qkv`: rows `[q; k; v]` (its reshape `(3, heads, head_dim)`)."""
    parts = ("query", "key", "value")

    def weight(a: np.ndarray) -> dict[Path_, np.ndarray]:
        weights = a.reshape(3, dim, dim)
        return {(*ours, p, "kernel"): w.T for p, w in zip(parts, weights, strict=True)}

    def bias(a: np.ndarray) -> dict[Path_, np.ndarray]:
        return {(*ours, p, "bias"): b for p, b in zip(parts, a.reshape(3, dim), strict=True)}

    yield Rule(f"{name}.weight", (3 * dim, dim), weight)
    yield Rule(f"{name}.bias", (3 * dim,), bias)


def _rules(config: ModelConfig) -> list[Rule]:
    """Every HF tensor the model needs, for `config` (its `tie_word_embeddings` decides whether
    the decoder matrix is one). The output bias is listed as the tied head's
    `cls.predictions.bias`; `_resolve_head` redirects it to `decoder.bias` where that counts."""
    v, t = config.vision, config.text
    dv, dt, p = v.hidden_size, t.hidden_size, v.patch_size
    tokens = (v.image_size // p) ** 2 + 1
    vision = "vision_model."
    rules = [
        copy(
            f"{vision}embeddings.class_embedding", ("vision", "class_embedding"), (1, 1, dv), drop=2
        ),
        copy(
            f"{vision}embeddings.position_embedding",
            ("vision", "position_embedding"),
            (1, tokens, dv),
            drop=1,
        ),
        Rule(
            f"{vision}embeddings.patch_embedding.weight",
            (dv, 3, p, p),
            lambda a: {("vision", "patch_embed", "kernel"): a.transpose(2, 3, 1, 0)},
        ),
        copy(f"{vision}embeddings.patch_embedding.bias", ("vision", "patch_embed", "bias"), (dv,)),
        *norm(f"{vision}post_layernorm", ("vision", "post_norm"), dv),
    ]
    for i in range(v.num_hidden_layers):
        hf, ours = f"{vision}encoder.layers.{i}.", ("vision", "layers", i)
        rules += [
            *_qkv(f"{hf}self_attn.qkv", (*ours, "attention"), dv),
            *linear(f"{hf}self_attn.projection", (*ours, "attention", "out"), dv, dv),
            *norm(f"{hf}layer_norm1", (*ours, "norm1"), dv),
            *linear(f"{hf}mlp.fc1", (*ours, "fc1"), dv, v.intermediate_size),
            *linear(f"{hf}mlp.fc2", (*ours, "fc2"), v.intermediate_size, dv),
            *norm(f"{hf}layer_norm2", (*ours, "norm2"), dv),
        ]
    bert = "text_decoder.bert."
    rules += [
        copy(WORD_EMBEDDINGS, ("text", "word_embeddings", "embedding"), (t.vocab_size, dt)),
        copy(
            f"{bert}embeddings.position_embeddings.weight",
            ("text", "position_embeddings", "embedding"),
            (t.max_position_embeddings, dt),
        ),
        *norm(f"{bert}embeddings.LayerNorm", ("text", "embed_norm"), dt),
        *linear(f"{HEAD}transform.dense", ("text", "head_dense"), dt, dt),
        *norm(f"{HEAD}transform.LayerNorm", ("text", "head_norm"), dt),
    ]
    rules.append(copy(BIAS, ("text", "decoder_bias"), (t.vocab_size,)))  # see _resolve_head
    if not t.tie_word_embeddings:
        rules.append(
            Rule(DECODER_WEIGHT, (t.vocab_size, dt), lambda a: {("text", "decoder", "kernel"): a.T})
        )
    for i in range(t.num_hidden_layers):
        hf, ours = f"{bert}encoder.layer.{i}.", ("text", "layers", i)
        for block, attention, block_norm, context in (
            ("attention", "self_attention", "self_norm", dt),
            ("crossattention", "cross_attention", "cross_norm", t.encoder_hidden_size),
        ):
            rules += [
                *linear(f"{hf}{block}.self.query", (*ours, attention, "query"), dt, dt),
                *linear(f"{hf}{block}.self.key", (*ours, attention, "key"), context, dt),
                *linear(f"{hf}{block}.self.value", (*ours, attention, "value"), context, dt),
                *linear(f"{hf}{block}.output.dense", (*ours, attention, "out"), dt, dt),
                *norm(f"{hf}{block}.output.LayerNorm", (*ours, block_norm), dt),
            ]
        rules += [
            *linear(f"{hf}intermediate.dense", (*ours, "intermediate"), dt, t.intermediate_size),
            *linear(f"{hf}output.dense", (*ours, "output"), t.intermediate_size, dt),
            *norm(f"{hf}output.LayerNorm", (*ours, "output_norm"), dt),
        ]
    return rules


def read_config(folder: str | Path) -> ModelConfig:
    """`folder/config.json`, read by `transformers.BlipConfig` (no network)."""

    def load(path: Path) -> ModelConfig:
        return ModelConfig.from_hf(
            transformers.BlipConfig.from_pretrained(path, local_files_only=True)
        )

    return hf_weights.read_config(folder, load, BlipWeightsError, "BLIP")


def _resolve_head(
    checkpoint: Checkpoint, config: ModelConfig
) -> tuple[ModelConfig, dict[str, str]]:
    """HF's tying of the LM head (module docstring) → the config with the effective
    `tie_word_embeddings`, and aliases {tensor name in `_rules`: stored tensor name}."""
    stored = checkpoint.shapes
    if not config.text.tie_word_embeddings:
        return config, {BIAS: DECODER_BIAS}
    aliases = {BIAS: DECODER_BIAS} if DECODER_BIAS in stored else {}
    if DECODER_WEIGHT in stored and WORD_EMBEDDINGS not in stored:
        aliases[WORD_EMBEDDINGS] = DECODER_WEIGHT
    elif DECODER_WEIGHT in stored and (
        stored[DECODER_WEIGHT] != stored[WORD_EMBEDDINGS]
        or not np.array_equal(checkpoint.read(DECODER_WEIGHT), checkpoint.read(WORD_EMBEDDINGS))
    ):
        log.warning(
            "%s: %s differs from the word embeddings, so the LM head is not tied (as in "
            "transformers)",
            checkpoint.source(),
            DECODER_WEIGHT,
        )
        text = dataclasses.replace(config.text, tie_word_embeddings=False)
        config = dataclasses.replace(config, text=text)
    return config, aliases


def load_state(
    folder: str | Path, config: ModelConfig
) -> tuple[ModelConfig, dict[Path_, np.ndarray]]:
    """The parameters stored in `folder` for `config` → (the config with the head's effective
    tying, {parameter path: float32 array}). Raises BlipWeightsError (module docstring)."""
    checkpoint = Checkpoint(Path(folder), BlipWeightsError)
    config, aliases = _resolve_head(checkpoint, config)
    # The head's other tensors are redundant (tied) or unused by HF's forward (untied `bias`).
    arrays = hf_weights.convert(
        checkpoint, _rules(config), aliases=aliases, unused=(BIAS, DECODER_WEIGHT)
    )
    return config, arrays


def assemble(config: ModelConfig, arrays: dict[Path_, np.ndarray], *, dtype: Dtype) -> CaptionModel:
    """A `CaptionModel` holding `arrays` (every parameter, by path), without a random init."""
    return hf_weights.assemble(lambda: CaptionModel(config, dtype=dtype, rngs=nnx.Rngs(0)), arrays)


def load_model(folder: str | Path, *, dtype: Dtype = jnp.float32) -> CaptionModel:
    """The `CaptionModel` of a local HF `BlipForConditionalGeneration` folder (module
    docstring); `dtype` is the compute dtype (parameters are float32)."""
    config, arrays = load_state(folder, read_config(folder))
    return assemble(config, arrays, dtype=dtype)
